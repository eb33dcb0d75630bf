"""``bandit-router upstream``: the replay upstream, an OpenAI-compatible server over a file."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from bandit_router.cli.commands import bounded_int, key_in_env


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
            api_key=args.api_key_env,
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
    p.add_argument(
        "--host", type=_host, default="127.0.0.1", help="bind address (default 127.0.0.1)"
    )
    p.add_argument("--port", type=bounded_int(0, 65535), default=8081, help="port (default 8081)")
    p.add_argument(
        "--speed", type=_speed, default=1.0, help="divide recorded times by this (above 0)"
    )
    p.add_argument("--limit", type=bounded_int(1), help="only the first N rows (1 or more)")
    p.add_argument(
        "--api-key-env",
        type=key_in_env,
        metavar="NAME",
        help="require the key held by this environment variable (Bearer)",
    )
    p.set_defaults(func=upstream)


def _speed(text: str) -> float:
    """A finite factor above 0: 0 divided every answer's times by 0 (a 500), a negative or an
    infinite one answered at once."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"a finite number above 0 is needed, got {text!r}")
    return value


def _host(text: str) -> str:
    if not text.strip():  # uvicorn binds "" to every interface
        raise argparse.ArgumentTypeError(
            "an address to bind is needed (0.0.0.0: every interface), got an empty one"
        )
    return text
