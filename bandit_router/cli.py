"""The ``bandit-router`` command: a thin layer that parses arguments and prints."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

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
    _add_simulate(sub)
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


# --- simulate: the replay simulator (thin: parse, call bandit_router.replay, print) -----------


class _Progress:
    """A plain-text progress line on stderr, redrawn about every 1%."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.shown = max(total, 1), 0, -1
        self.start = time.monotonic()

    def __call__(self, steps: int) -> None:
        self.done += steps
        percent = 100 * self.done // self.total
        if percent != self.shown:
            self.shown = percent
            rate = self.done / max(time.monotonic() - self.start, 1e-9)
            print(
                f"\rsimulate: {percent:3d}% ({self.done}/{self.total} steps, {rate:.0f} steps/s)",
                end="\n" if self.done >= self.total else "",
                file=sys.stderr,
                flush=True,
            )


def _simulate_runs(args: argparse.Namespace, names: list[str], prepared: Any, settings: Any) -> Any:
    from bandit_router import replay

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    progress = _Progress(len(prepared.replay.rows) * len(seeds) * max(len(names), 1))
    if args.via is None:
        return replay.simulate(names, prepared, seeds, args.in_order, settings, progress)
    from bandit_router.replay_http import HttpStepper

    stepper = HttpStepper(args.via)
    try:
        name = stepper.policy()
        rows = replay.order(len(prepared.replay.rows), args.first_seed, args.in_order)
        return {name: [replay.run(name, stepper, prepared, rows, args.first_seed, progress)]}
    finally:
        stepper.close()


def _simulate_write(out: Path, result: dict[str, Any], runs: Any, args: argparse.Namespace) -> None:
    import csv
    import json

    from bandit_router import report

    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    n = result["rows"]
    rows = list(report.steps(runs, result["arms"], args.csv_every or max(1, n // 1000)))
    with (out / "steps.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if args.no_plots:
        return
    try:
        from bandit_router import plots
    except ImportError:
        print("simulate: no plots (pip install 'bandit-router[sim]')", file=sys.stderr)
        return
    title = Path(args.replay).name + (" (time order)" if args.in_order else " (shuffled)")
    plots.reward_over_time(rows, out / "reward.png", title, result.get("phase_changes", []))
    plots.arm_share_over_time(rows, result["arms"], out / "arm_share.png", title)


def _simulate_prepare(args: argparse.Namespace, names: list[str], settings: Settings) -> Any:
    """Check the policy names, read the replay file and score its outcomes; errors name the
    problem (ValueError, OSError)."""
    from bandit_router import replay
    from bandit_router.hindsight import fixed_spec
    from bandit_router.router import reward_config

    for name in names:
        replay.check_spec(name)
    data = replay.load(Path(args.replay), args.arms and Path(args.arms), args.skip_bad, args.limit)
    try:
        prepared = replay.prepare(data, reward_config(settings))
    except replay.ReplayError as e:
        raise replay.ReplayError(f"{args.replay}: {e}") from e
    for name in names:
        fixed_spec(name, prepared)  # a misspelt fixed arm fails here, before any work
    return prepared


def simulate(args: argparse.Namespace) -> int:
    """Replay a full-feedback log through policies, exactly as the service's loop, and report."""
    from bandit_router import replay, report

    settings = Settings()
    given = args.policies or ("" if args.via else f"{settings.policy},{_DEFAULT_POLICIES}")
    names = [n.strip() for n in given.split(",") if n.strip()]
    if args.via is not None and (args.seeds != 1 or len(names) > 1):
        print("simulate: --via replays one seed through the service's own policy", file=sys.stderr)
        return 2
    try:
        prepared = _simulate_prepare(args, names, settings)
    except (ValueError, OSError) as e:
        print(f"simulate: {e}", file=sys.stderr)
        return 2
    runs = _simulate_runs(args, names, prepared, settings)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    meta = {
        "replay": str(args.replay),
        "seeds": seeds,
        "in_order": args.in_order,
        "reward_weights": settings.reward_weights,
        "latency_budget_ms": settings.latency_budget_ms,
        "cost_budget_usd": settings.cost_budget_usd,
    }
    result = report.summary(runs, prepared, meta)
    if args.in_order:
        result["phase_changes"] = replay.phase_changes(prepared.replay.rows)
    if not args.no_skyline:
        result["skyline"] = report.skyline_summary(prepared, seeds, args.in_order)
    print(report.table(result))
    if args.out:
        _simulate_write(Path(args.out), result, runs, args)
    return 0


# After the service's own policy (BANDIT_POLICY), which leads the default list.
_DEFAULT_POLICIES = "random,static,best-fixed,oracle"


def _add_simulate(sub: Any) -> None:
    p = sub.add_parser("simulate", help="replay a full-feedback log", description=simulate.__doc__)
    p.add_argument("replay", help="replay file: one JSON row per query (see simulations/README.md)")
    p.add_argument("--arms", help='arms file, {"arms": [{"name", "params_b", "usd_per_mtok"}]}')
    p.add_argument(
        "--policies",
        help=f"comma list (default BANDIT_POLICY,{_DEFAULT_POLICIES}): service policies with "
        "parameters (egreedy:epsilon=0.05, linucb, ...), fixed:<arm>, best-fixed, "
        "best-context, oracle, mabwiser (MABWiser's LinUCB, a peer)",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds, each its own row order")
    p.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--in-order", action="store_true", help="keep time order (drift scenarios)")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed rows")
    p.add_argument("--out", help="write summary.json, steps.csv and plots here")
    p.add_argument("--csv-every", type=int, default=0, help="steps.csv stride (default: n/1000)")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots in --out")
    p.add_argument("--no-skyline", action="store_true", help="skip the full-information skyline")
    p.add_argument("--via", help="replay through a running service, e.g. http://127.0.0.1:8000")
    p.set_defaults(func=simulate)


if __name__ == "__main__":
    sys.exit(main())
