"""The ``bandit-router`` command: a thin layer that parses arguments and prints."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from bandit_router.commands import add_commands
from bandit_router.settings import Settings


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def serve(args: argparse.Namespace) -> int:
    """Start the HTTP service (uvicorn), on the embedded Redis unless BANDIT_REDIS_URL is set."""
    import uvicorn

    from bandit_router.embedded import EmbeddedRedis

    settings = _settings(host=args.host, port=args.port, workers=args.workers)
    embedded = None
    if settings.redis_url is None:
        # Started here, before the workers fork, so every worker shares one embedded server.
        embedded = EmbeddedRedis(settings.data_dir)
        os.environ["BANDIT_REDIS_URL"] = embedded.url
        print(f"embedded Redis in {embedded.data_dir}", file=sys.stderr)
    try:
        uvicorn.run(
            "bandit_router.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            http="httptools",
            log_level=settings.log_level,
        )
    finally:
        if embedded is not None:
            embedded.close()
    return 0


def learn(args: argparse.Namespace) -> int:
    """Run the learner on its own: it takes the lease in Redis, learns the log, publishes models.

    Run one beside service processes started with BANDIT_LEARN_IN_WORKERS=false (or let the
    service processes compete for the lease: only one learns at a time either way).
    """
    import asyncio
    import signal
    from contextlib import ExitStack

    from bandit_router.embedded import EmbeddedRedis
    from bandit_router.learner import run_learner
    from bandit_router.store import Store, connect

    settings = _settings()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with ExitStack() as stack:
            url = settings.redis_url or stack.enter_context(EmbeddedRedis(settings.data_dir)).url
            store = Store(
                connect(url), settings.key_prefix, settings.reward_wait_s, settings.stream_maxlen
            )
            try:
                learner = await run_learner(settings, store, stop)
            finally:
                await store.close()
        print(f"learner stopped at model version {learner.model.version}", file=sys.stderr)

    asyncio.run(main())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bandit-router",
        description="Learns which LLM size should answer each query. Settings: BANDIT_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the HTTP service", description=serve.__doc__)
    p.add_argument("--host", help="bind address (BANDIT_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (BANDIT_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (BANDIT_WORKERS, default 1)")
    p.set_defaults(func=serve)
    p = sub.add_parser("learn", help="run the learner on its own", description=learn.__doc__)
    p.set_defaults(func=learn)
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code: int = args.func(args)
    except ValidationError as e:
        print(f"bandit-router: invalid settings:\n{_describe(e)}", file=sys.stderr)
        return 2
    return code


def _describe(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        name = ".".join(str(p) for p in err["loc"])
        env = f"BANDIT_{str(err['loc'][0]).upper()}" if err["loc"] else ""
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"  {name} ({env}): {msg}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
