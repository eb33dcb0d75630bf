"""The ``bandit-router`` command: a thin layer that parses arguments and prints."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bandit_router.commands import add_commands
from bandit_router.settings import Settings

if TYPE_CHECKING:
    from bandit_router.estimators import Estimate
    from bandit_router.evaluate import LoggedRecord

    Results = dict[str, dict[str, Estimate]]


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
            loop=settings.loop,
            log_level=settings.log_level,
            # A spawned worker answers uvicorn's health pings only once its interpreter is up;
            # on a loaded machine that took over the default 5 s, and uvicorn killed and
            # respawned workers in a loop. A hung worker is still replaced, 30 s on.
            timeout_worker_healthcheck=30,
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
    _add_export_evaluate(sub)
    add_commands(sub)
    return parser


# --- export and evaluate (DSJSON log, off-policy estimates) ---------------------------------


def export(args: argparse.Namespace) -> int:
    """Write the joined-event log from Redis as DSJSON, one event per line (for vw --dsjson)."""
    import asyncio

    from bandit_router.errors import StoreUnavailable
    from bandit_router.export import export_log

    settings = _settings()
    try:
        if args.out in (None, "-"):
            count = asyncio.run(export_log(settings, sys.stdout))
        else:
            with open(args.out, "w", encoding="utf-8") as out:
                count = asyncio.run(export_log(settings, out))
    except (OSError, StoreUnavailable) as e:
        print(f"bandit-router export: {e}", file=sys.stderr)
        return 1
    print(f"exported {count} events", file=sys.stderr)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """Estimate candidate policies offline from an exported log: IPS, SNIPS and DR, 95% CIs."""
    from bandit_router.evaluate import baseline_specs, estimate_policies, read_log

    try:
        if args.log == "-":
            records = read_log(sys.stdin)
        else:
            with open(args.log, encoding="utf-8") as f:
                records = read_log(f)
        specs = [s.strip() for s in (args.policies or "").split(",") if s.strip()]
        specs = specs or baseline_specs(records[0].arms if records else [])
        results = estimate_policies(records, specs, _settings(), args.seed)
    except (OSError, ValueError) as e:
        print(f"bandit-router evaluate: {e}", file=sys.stderr)
        return 2
    print(_evaluation_json(records, results) if args.json else _evaluation_table(records, results))
    return 0


def _evaluation_json(records: Sequence[LoggedRecord], results: Results) -> str:
    import json

    from bandit_router.evaluate import logged_value

    table = {spec: {m: e.to_json() for m, e in r.items()} for spec, r in results.items()}
    return json.dumps({"logged": logged_value(records).to_json(), "policies": table}, indent=2)


def _evaluation_table(records: Sequence[LoggedRecord], results: Results) -> str:
    from bandit_router.evaluate import METHODS, logged_value

    lines = [
        f"{len(records)} events; the logging policy's mean reward: "
        f"{_interval(logged_value(records))}",
        f"{'policy':<28}" + "".join(f"{m:>22}" for m in METHODS),
    ]
    for spec, estimates in results.items():
        lines.append(f"{spec:<28}" + "".join(f"{_interval(estimates[m]):>22}" for m in METHODS))
    lines.append("value [95% interval, normal approximation]; candidates replayed in time order,")
    lines.append("learning as they go; DR's reward model: per-arm ridge regression fitted online")
    return "\n".join(lines)


def _interval(e: Estimate) -> str:
    return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"


def _add_export_evaluate(sub: Any) -> None:
    p = sub.add_parser("export", help="the event log as DSJSON", description=export.__doc__)
    p.add_argument("--out", help="file to write (default: stdout)")
    p.set_defaults(func=export)
    p = sub.add_parser("evaluate", help="off-policy estimates", description=evaluate.__doc__)
    p.add_argument("log", help="DSJSON file from `bandit-router export` (- for stdin)")
    p.add_argument(
        "--policies",
        help="comma-separated policy specs, e.g. egreedy:epsilon=0.1,linucb,static,fixed:7b "
        "(default: random, static and each arm fixed)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the candidates (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=evaluate)


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
