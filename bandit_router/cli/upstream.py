"""``bandit-router upstream``: the replay upstream, an OpenAI-compatible server over a file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def upstream(args: argparse.Namespace) -> int:
    """Serve a replay file's arms as an OpenAI-compatible chat API (/v1/chat/completions).

    Each request's `model` names an arm; its last user message picks the row; the answer has the
    arm's recorded latency (divided by --speed), output tokens and a gradable answer.
    """
    import uvicorn

    from bandit_router.sim.upstream import ReplayUpstream

    try:
        app = ReplayUpstream.load(
            Path(args.replay),
            args.arms and Path(args.arms),
            args.arm or (),
            limit=args.limit,
            speed=args.speed,
            api_key=os.environ.get(args.api_key_env) if args.api_key_env else None,
        )
    except (OSError, ValueError) as e:
        print(f"bandit-router upstream: {e}", file=sys.stderr)
        return 2
    print(
        f"replaying {len(app.rows)} rows as {', '.join(app.arms)} on "
        f"http://{args.host}:{args.port}/v1 (speed x{args.speed:g})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="off")
    return 0


def add_upstream(sub: Any) -> None:
    p = sub.add_parser(
        "upstream",
        help="an OpenAI-compatible server replaying a file",
        description=upstream.__doc__,
    )
    p.add_argument("replay", help="replay file: one JSON row per query")
    p.add_argument("--arms", help="arms file (prices: the usage's prompt tokens follow from them)")
    p.add_argument("--arm", action="append", help="an arm to serve (repeat; default: every arm)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8081, help="port (default 8081)")
    p.add_argument("--speed", type=float, default=1.0, help="divide recorded times by this")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument(
        "--api-key-env", help="require the key held by this environment variable (Bearer)"
    )
    p.set_defaults(func=upstream)
