"""The ``bandit-router`` command: a thin layer that parses arguments and prints."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bandit_router.cli.commands import (
    MAX_SEEDS,
    SEED_MAX,
    add_commands,
    add_deployment,
    bounded_int,
    deployment_settings,
)
from bandit_router.cli.train import add_train
from bandit_router.cli.upstream import add_upstream
from bandit_router.deployments import DeploymentsError, load_deployments
from bandit_router.errors import StoreDamaged, StoreUnavailable
from bandit_router.http.process import configure_logging
from bandit_router.inputs import LineError, reopenable
from bandit_router.progress import Progress
from bandit_router.settings import Settings, unknown_variables
from bandit_router.store.cluster import NotACluster

if TYPE_CHECKING:
    from bandit_router.offline.estimators import Estimate
    from bandit_router.offline.evaluate import LogSummary

    Results = dict[str, dict[str, Estimate]]


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _say_unknown_variables() -> None:
    for line in unknown_variables(os.environ):
        logging.getLogger("bandit_router").warning("%s", line)


def serve(args: argparse.Namespace) -> int:
    """Start the HTTP service (uvicorn), on the embedded Redis unless BANDIT_REDIS_URL is set."""
    import uvicorn

    from bandit_router.http.heads import ServedHeads
    from bandit_router.store.embedded import EmbeddedRedis

    settings = _settings(host=args.host, port=args.port, workers=args.workers)
    configure_logging(settings.log_level)
    _say_unknown_variables()
    load_deployments(settings)  # a wrong deployments file stops here, named, before any worker
    embedded = None
    if settings.redis_url is None:
        # Started here, before the workers start: each finds it running on the data folder.
        embedded = EmbeddedRedis(settings.data_dir)
        print(
            f"embedded Redis in {embedded.data_dir} (redis-cli -s {embedded.socket})",
            file=sys.stderr,
        )
    # uvicorn stops gracefully on SIGTERM, then raises it again once its handlers are gone;
    # with the default action the process would die there, before the embedded Redis is
    # stopped below. This handler makes that a SystemExit, which runs the ``finally``.
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    # SIGHUP's default action killed a one-worker `serve` at once (uvicorn handles SIGINT and
    # SIGTERM only): requests in flight cut, the embedded Redis left running with no owner.
    # It stops it as SIGTERM does; with --workers uvicorn's supervisor replaces it with its own
    # (a rolling restart of the workers).
    hangup = signal.signal(signal.SIGHUP, _stop_on_hangup)
    try:
        config = uvicorn.Config(
            "bandit_router.http.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop=settings.loop,
            http=ServedHeads,  # uvicorn's protocol, heads and unread responses bounded
            log_level=settings.log_level,
            # Above info uvicorn drops each access line, but only after formatting its parts.
            access_log=settings.log_level.lower() in ("trace", "debug", "info"),
            # A spawned worker answers uvicorn's health pings only once its interpreter is up,
            # which on a loaded machine can take longer than the default 5 s (uvicorn would
            # kill and respawn it in a loop). A hung worker is still replaced, 30 s on.
            timeout_worker_healthcheck=30,
            # Unset, uvicorn waits for every request in flight however long it runs: a gateway
            # stream whose upstream never ends (its keep-alives come within timeout_s) would hold a
            # SIGTERM for ever, the port closed to new requests meanwhile.
            timeout_graceful_shutdown=settings.shutdown_timeout_s,
        )
        if not _served(config):
            return STARTUP_FAILURE
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, hangup)
        if embedded is not None:
            embedded.close()
    return 0


STARTUP_FAILURE = 3  # uvicorn's exit code of a start-up that failed


def _served(config: Any) -> bool:
    """Run uvicorn as ``uvicorn.run`` does (without its reload); whether it started. With
    ``--workers`` uvicorn's supervisor stops once a worker failed to start, and exits 0 (a
    supervisor's restart-on-failure saw a clean stop): told here from the worker's exit code."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if config.workers == 1:
        server = uvicorn.Server(config)
        with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
            server.run()
        return bool(server.started)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    with contextlib.suppress(KeyboardInterrupt):
        supervisor.run()
    return not any(p.process.exitcode == STARTUP_FAILURE for p in supervisor.processes)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _stop_on_hangup(signum: int, frame: FrameType | None) -> None:
    """SIGHUP as SIGTERM: to the SIGTERM handler in place (uvicorn's graceful stop, the
    start-up's, or ``_exit_on_signal``)."""
    signal.raise_signal(signal.SIGTERM)


def learn(args: argparse.Namespace) -> int:
    """Run the learner on its own: it takes the lease in Redis, learns the log, publishes models.

    Run one beside service processes started with BANDIT_LEARN_IN_WORKERS=false (or let the
    service processes compete for the lease: only one learns at a time either way).
    """
    import asyncio
    import signal

    from bandit_router.service.learner import run_learner
    from bandit_router.store.repository import open_store

    settings = deployment_settings(args)
    configure_logging(settings.log_level)
    _say_unknown_variables()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # SIGHUP (a closed terminal) too: its default action killed the learner with its
        # snapshot unpublished and its lease held until it lapsed, as `serve` stops on it.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        async with open_store(settings) as store:
            where = f"deployment {args.deployment}: " if args.deployment else ""
            learner = await run_learner(settings, store, stop, where, args.deployment)
        if learner is None:
            print(
                "learner stopped while it started (waiting for Redis, or replaying the log): "
                "nothing published",
                file=sys.stderr,
            )
        elif learner.stopped_at is not None:
            print(f"learner stopped at model version {learner.stopped_at}", file=sys.stderr)
        else:  # what it printed as its version then was not the one in Redis
            print(
                f"learner stopped without publishing its model (version {learner.model.version}): "
                "it did not hold the lease, or its publish was refused or failed (said above)",
                file=sys.stderr,
            )

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
    add_deployment(p)
    p.set_defaults(func=learn)
    _add_export_evaluate(sub)
    _add_simulate(sub)
    add_commands(sub)
    add_train(sub)
    add_upstream(sub)
    return parser


# --- export and evaluate (DSJSON log, off-policy estimates) ---------------------------------


def export(args: argparse.Namespace) -> int:
    """Write the joined-event log from Redis as DSJSON, one event per line (for vw --dsjson)."""
    import asyncio

    from bandit_router.offline.export import export_log
    from bandit_router.service.backup import replacing

    settings = deployment_settings(args)
    try:
        if args.out in (None, "-"):
            count = asyncio.run(export_log(settings, sys.stdout))
        else:
            with replacing(Path(args.out)) as out:  # whole or not at all
                count = asyncio.run(export_log(settings, out))
    except BrokenPipeError:
        raise  # the reader stopped reading (`| head`): main() lets it go unsaid
    except OSError as e:  # the output cannot be written (a full disk, no such directory)
        # its strerror: the error's file name is the temporary file, not the one asked for
        where = "standard output" if args.out in (None, "-") else args.out
        print(f"bandit-router export: cannot write {where}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"exported {count} events", file=sys.stderr)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """Estimate candidate policies offline from an exported log: IPS, SNIPS and DR, 95% CIs."""
    from bandit_router.offline.evaluate import evaluate_file

    settings = _settings()
    try:
        specs = [s.strip() for s in (args.policies or "").split(",") if s.strip()]
        with reopenable(args.log) as path:  # - reads standard input; read twice
            summary, results = evaluate_file(path, specs, settings, args.seed)
    except (OSError, ValueError) as e:
        said = str(e)
        if isinstance(e, LineError):  # named in the log, as train's are (- is a copy's name)
            said = f"{'standard input' if args.log == '-' else args.log}: {said}"
        print(f"bandit-router evaluate: {said}", file=sys.stderr)
        return 2
    print(_evaluation_json(summary, results) if args.json else _evaluation_table(summary, results))
    return 0


def _evaluation_json(summary: LogSummary, results: Results) -> str:
    import json

    from bandit_router.offline.evaluate import MIN_PROPENSITY

    table = {spec: {m: e.to_json() for m, e in r.items()} for spec, r in results.items()}
    assert summary.logged is not None  # a log with events
    return json.dumps(
        {
            "logged": summary.logged.to_json(),
            "policies": table,
            "clipped_events": summary.clipped,
            "min_propensity": MIN_PROPENSITY,
        },
        indent=2,
    )


def _evaluation_table(summary: LogSummary, results: Results) -> str:
    from bandit_router.offline.evaluate import METHODS, MIN_PROPENSITY

    assert summary.logged is not None  # a log with events
    lines = [
        f"{summary.events} events; the logging policy's mean reward: {_interval(summary.logged)}",
        f"{'policy':<28}" + "".join(f"{m:>22}" for m in METHODS),
    ]
    for spec, estimates in results.items():
        lines.append(f"{spec:<28}" + "".join(f" {_interval(estimates[m]):>21}" for m in METHODS))
    lines.append("value [95% interval, normal approximation]; candidates replayed in time order,")
    lines.append("learning as they go; DR's reward model: per-arm ridge regression fitted online")
    if count := summary.clipped:
        lines.append(
            f"{count} of {summary.events} events logged a propensity below {MIN_PROPENSITY:g}, "
            f"weighed as {MIN_PROPENSITY:g} (clipped IPS): a policy that picks their arms is "
            "estimated low"
        )
    shown = (v for r in results.values() for e in r.values() for v in (e.value, e.low, e.high))
    if not all(math.isfinite(v) for v in shown):
        lines.append("-: no interval from one event, or no value (no logged arm the policy picks)")
    return "\n".join(lines)


def _interval(e: Estimate) -> str:
    def shown(v: float) -> str:
        return f"{v:.3f}" if math.isfinite(v) else "-"

    return f"{shown(e.value)} [{shown(e.low)}, {shown(e.high)}]"


def _add_export_evaluate(sub: Any) -> None:
    p = sub.add_parser("export", help="the event log as DSJSON", description=export.__doc__)
    p.add_argument("--out", help="file to write (default: stdout)")
    add_deployment(p)
    p.set_defaults(func=export)
    p = sub.add_parser("evaluate", help="off-policy estimates", description=evaluate.__doc__)
    p.add_argument("log", help="DSJSON file from `bandit-router export` (- for stdin)")
    p.add_argument(
        "--policies",
        help="comma-separated policy specs, e.g. egreedy:epsilon=0.1,linucb,static,fixed:7b "
        "(default: random, static and each arm fixed)",
    )
    p.add_argument(
        "--seed",
        type=bounded_int(0, SEED_MAX),
        default=0,
        help=f"seed of the candidates, 0 to {SEED_MAX} (0)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=evaluate)


# What a write to a full or failing disk raises.
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, not at exit: a reader gone (`| head`) is a BrokenPipeError
    except BrokenPipeError:
        # The reader stopped reading: nothing to say to it. Python would flush stdout again at
        # exit and say "Exception ignored"; it flushes into /dev/null instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ValidationError as e:
        print(f"bandit-router: invalid settings:\n{_describe(e)}", file=sys.stderr)
        return 2
    except DeploymentsError as e:
        print(f"bandit-router: {e}", file=sys.stderr)
        return 2
    except NotACluster as e:  # the settings name a cluster: said in a line, as a bad setting
        print(f"bandit-router {args.command}: {e}", file=sys.stderr)
        return 2
    except (StoreDamaged, StoreUnavailable) as e:  # said in a line: no traceback
        print(f"bandit-router {args.command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        # A write that failed (a full disk, /dev/full): one with no file name is a write to a
        # file already open, standard output among them. Anything else is no output's.
        if e.filename is not None or e.errno not in WRITE_ERRORS:
            raise
        print(f"bandit-router {args.command}: cannot write its output: {e}", file=sys.stderr)
        try:  # what the buffer still holds, flushed again at exit, would fail again there
            sys.stdout.flush()
        except OSError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


def _describe(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        name = ".".join(str(p) for p in err["loc"])
        env = f"BANDIT_{str(err['loc'][0]).upper()}" if err["loc"] else ""
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"  {name} ({env}): {msg}" if env else f"  {msg}")  # model checks name it
    return "\n".join(lines)


# --- simulate: the replay simulator (thin: parse, call bandit_router.replay, print) -----------


def _simulate_runs(args: argparse.Namespace, names: list[str], prepared: Any, settings: Any) -> Any:
    from bandit_router.sim import dataset, replay

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    total = len(prepared.replay.rows) * len(seeds) * max(len(names), 1)
    with Progress("simulate", total, "steps") as progress:
        if args.via is None:
            arrivals = dict(args.add_arm or [])
            return replay.simulate(
                names,
                prepared,
                seeds,
                args.in_order,
                settings,
                progress.advance,
                args.warm_start,
                arrivals,
            )
        from bandit_router.sim.replay_http import HttpStepper

        stepper = HttpStepper(args.via)
        try:
            name = stepper.policy()
            rows = dataset.order(len(prepared.replay.rows), args.first_seed, args.in_order)
            run = replay.run(name, stepper, prepared, rows, args.first_seed, progress.advance)
            return {name: [run]}
        finally:
            stepper.close()


def _simulate_write(out: Path, result: dict[str, Any], runs: Any, args: argparse.Namespace) -> None:
    import csv
    import json

    from bandit_router.sim import report

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
    from bandit_router.sim import plots

    if not plots.available():
        # The results are written; only the optional pictures are missing, so the exit code is 0.
        print(
            f"bandit-router simulate: wrote {out / 'summary.json'} and {out / 'steps.csv'}, "
            "but no plots: matplotlib is missing; install the sim extra "
            "(pip install 'bandit-router[sim]'; in the repository: "
            ".venv/bin/pip install -e '.[sim]'), or pass --no-plots",
            file=sys.stderr,
        )
        return
    title = Path(args.replay).name + (" (time order)" if args.in_order else " (shuffled)")
    plots.reward_over_time(rows, out / "reward.png", title, result.get("phase_changes", []))
    plots.arm_share_over_time(rows, result["arms"], out / "arm_share.png", title)


def _simulate_prepare(args: argparse.Namespace, names: list[str], settings: Settings) -> Any:
    """Check the policy names, read the replay file and score its outcomes; errors name the
    problem (ValueError, OSError)."""
    from bandit_router.service.router import reward_config
    from bandit_router.sim import dataset, replay
    from bandit_router.sim.champion import is_auto, parse_auto
    from bandit_router.sim.hindsight import fixed_spec

    for name in names:
        replay.check_spec(name, settings)
    with reopenable(args.replay) as path:  # - reads standard input
        data = dataset.load(
            path,
            args.arms and Path(args.arms),
            args.skip_bad,
            args.limit,
            settings.max_features,  # what /choose would take
        )
    try:
        words = dataset.replay_words(settings.hash_key)
        prepared = dataset.prepare(data, reward_config(settings), words, args.skip_bad)
    except dataset.ReplayError as e:
        raise dataset.ReplayError(f"{args.replay}: {e}") from e
    for name in names:
        name = name.removeprefix(replay.COLD)
        # auto's champion and challengers too: the bench built fixed with no arm (a traceback)
        # and served a misspelt arm's fixed as the first arm
        policies = [name]
        if is_auto(name):
            champion, challengers = parse_auto(name, settings)
            policies = [str(spec) for spec in (champion, *challengers)]
        for policy in policies:
            fixed_spec(policy, prepared)  # a misspelt arm fails here
    added: dict[str, int] = {}
    for arm, step in args.add_arm or []:
        if arm not in prepared.arm_index:
            raise ValueError(
                f"--add-arm: unknown arm {arm!r}; valid: {', '.join(prepared.arm_index)}"
            )
        if arm in added:  # the last would win, silently
            raise ValueError(f"--add-arm: {arm} is added twice (at {added[arm]} and {step})")
        added[arm] = step
    if added and all(added.get(arm, 0) > 0 for arm in prepared.arm_index):
        # the replay would offer every arm until one joins, against what --add-arm says
        raise ValueError("--add-arm: every arm joins after step 0; no arm could serve before")
    return prepared


def simulate(args: argparse.Namespace) -> int:
    """Replay a full-feedback log through policies, exactly as the service's loop, and report."""
    from bandit_router.sim import dataset, report

    settings = Settings()
    given = args.policies or ("" if args.via else f"{settings.policy},{_DEFAULT_POLICIES}")
    names = [n.strip() for n in given.split(",") if n.strip()]
    if not names and args.via is None:  # --via replays the service's own policy
        print(
            f"bandit-router simulate: --policies {args.policies!r} names no policy", file=sys.stderr
        )
        return 2
    if not args.policies:  # the default list: BANDIT_POLICY may be one of the references
        names = list(dict.fromkeys(names))
    if twice := [name for i, name in enumerate(names) if name in names[:i]]:
        # the runs are keyed by name: the second would replace the first's row
        print(f"bandit-router simulate: --policies lists {twice[0]} twice", file=sys.stderr)
        return 2
    if args.via is not None and (
        args.seeds != 1 or len(names) > 1 or args.warm_start or args.add_arm
    ):
        print(
            "bandit-router simulate: --via replays one seed, cold, "
            "through the service's own policy",
            file=sys.stderr,
        )
        return 2
    if args.first_seed + args.seeds - 1 > SEED_MAX:
        print(
            f"bandit-router simulate: --first-seed {args.first_seed} with --seeds {args.seeds} "
            f"runs seeds past {SEED_MAX}, the last BANDIT_SEED takes",
            file=sys.stderr,
        )
        return 2
    try:
        prepared = _simulate_prepare(args, names, settings)
    except (ValueError, OSError) as e:
        print(f"bandit-router simulate: {e}", file=sys.stderr)
        return 2
    if args.via is None:
        runs = _simulate_runs(args, names, prepared, settings)
    else:
        import http.client

        from bandit_router.sim.replay_http import ServiceError

        try:
            runs = _simulate_runs(args, names, prepared, settings)
        except (OSError, ValueError, http.client.HTTPException, ServiceError) as e:
            # a service that is down, answers an error or is no service: said in a line
            print(
                f"bandit-router simulate: --via {args.via}: {e or type(e).__name__}",
                file=sys.stderr,
            )
            return 1
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    meta = {
        "replay": str(args.replay),
        "seeds": seeds,
        "in_order": args.in_order,
        "reward_weights": settings.reward_weights,
        "latency_budget_ms": settings.latency_budget_ms,
        "cost_budget_usd": settings.cost_budget_usd,
        "warm_start": args.warm_start,
        "arrivals": dict(args.add_arm or []),
    }
    result = report.summary(runs, prepared, meta)
    if args.in_order:
        result["phase_changes"] = dataset.phase_changes(prepared.replay.rows)
    if not args.no_skyline and (sky := report.skyline_summary(prepared, seeds, args.in_order)):
        result["skyline"] = sky
    print(report.table(result))
    if args.out:
        _simulate_write(Path(args.out), result, runs, args)
    return 0


# After the service's own policy (BANDIT_POLICY), which leads the default list.
_DEFAULT_POLICIES = "random,static,best-fixed,oracle"


def _add_simulate(sub: Any) -> None:
    p = sub.add_parser("simulate", help="replay a full-feedback log", description=simulate.__doc__)
    p.add_argument(
        "replay",
        help="replay file: one JSON row per query, - for stdin (see the README's Replay simulator)",
    )
    p.add_argument("--arms", help='arms file, {"arms": [{"name", "params_b", "usd_per_mtok"}]}')
    p.add_argument(
        "--policies",
        help=f"comma list (default BANDIT_POLICY,{_DEFAULT_POLICIES}): service policies with "
        "parameters (egreedy:epsilon=0.05, linucb, ...), fixed:<arm>, best-fixed, "
        "best-context, oracle, mabwiser (MABWiser's LinUCB, a peer), auto (BANDIT_POLICY "
        "serving, BANDIT_CHALLENGERS scored and promoted) or "
        "auto:champion=SPEC:challengers=SPEC+SPEC",
    )
    p.add_argument(
        "--seeds",
        type=bounded_int(1, MAX_SEEDS),
        default=1,
        help=f"seeds, each its own row order, 1 to {MAX_SEEDS} (1)",
    )
    p.add_argument(
        "--first-seed",
        type=bounded_int(0, SEED_MAX),
        default=0,
        help=f"the first seed, 0 to {SEED_MAX} (0)",
    )
    p.add_argument("--in-order", action="store_true", help="keep time order (drift scenarios)")
    p.add_argument("--limit", type=bounded_int(1), help="only the first N rows (1 or more)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed rows")
    p.add_argument("--out", help="write summary.json, steps.csv and plots here")
    p.add_argument(
        "--csv-every",
        type=bounded_int(0),
        default=0,
        help="steps.csv stride in steps (default 0: rows/1000; past the last step: its row)",
    )
    p.add_argument("--no-plots", action="store_true", help="no PNG plots in --out")
    p.add_argument("--no-skyline", action="store_true", help="skip the full-information skyline")
    p.add_argument("--via", help="replay through a running service, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--warm-start",
        type=_fraction,
        default=0.0,
        metavar="FRACTION",
        help="train the learners on this first fraction of each seed's rows (full feedback), "
        "then replay the rest; prefix a policy with cold: to replay it untrained",
    )
    p.add_argument(
        "--add-arm",
        type=_arrival,
        action="append",
        metavar="ARM@STEP",
        help="the arm joins the deployment at this step (0-based) and is ineligible before it; "
        "repeatable",
    )
    p.set_defaults(func=simulate)


def _arrival(text: str) -> tuple[str, int]:
    arm, sep, step = text.rpartition("@")
    if not sep or not arm or not step.isdigit():
        raise argparse.ArgumentTypeError(f"ARM@STEP is needed, e.g. llama3-70b@4000; got {text!r}")
    return arm, int(step)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fraction in [0, 1) is needed, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a fraction in [0, 1) is needed, got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
