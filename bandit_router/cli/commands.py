"""Operators' subcommands of ``bandit-router``: status, snapshot, restore, config.

Thin: each parses its arguments, calls the core (``stats``, ``backup``, ``Settings``) and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from bandit_router.deployments import setting_named, settings_of
from bandit_router.progress import Progress
from bandit_router.settings import Settings, unknown_variables
from bandit_router.store.cluster import redacted_url
from bandit_router.store.repository import open_store

SECRET = re.compile(r"(^|_)(keys?|secrets?|passwords?|tokens?)$")  # api_keys, admin_key...
STATS_WINDOW_MAX = 20_000  # the bound of GET /stats?window=
SEED_MAX = 2**32 - 1  # as BANDIT_SEED: VW takes no seed past 64 bits
# Seeds of one replay run (simulate, the simulations' scripts): each replays every row once per
# policy, so a mistyped count (a million) would run for days; the results used at most 40.
MAX_SEEDS = 1000


def bounded_int(low: int, high: int | None = None) -> Any:
    """An argparse ``type`` for an integer in [low, high]: outside it, argparse exits with 2 and
    a message naming the option and the allowed range, before any work starts."""
    allowed = f"{low} or more" if high is None else f"{low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer ({allowed})") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: {allowed}")
        return value

    return parse


def key_in_env(name: str) -> str:
    """An argparse ``type`` for ``--api-key-env NAME``: the key the variable holds, so it is not
    in the command line (``ps`` shows that to every user); unset or empty, argparse exits with 2:
    a misspelt name is not taken for "no key"."""
    key = os.environ.get(name, "").strip()
    if not key:
        raise argparse.ArgumentTypeError(f"{name} is not set (or empty)")
    return key


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


# status


def deployment_settings(args: argparse.Namespace) -> Settings:
    """The settings of the deployment ``--deployment`` names (``default`` without it)."""
    return settings_of(Settings(), getattr(args, "deployment", None))


def add_deployment(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--deployment",
        help="a deployment of BANDIT_DEPLOYMENTS_FILE (default: `default`, the environment's)",
    )


def _fetch(
    url: str, window: int, api_key: str | None, deployment: str | None = None
) -> dict[str, Any]:
    query = f"window={window}" + (f"&deployment={deployment}" if deployment else "")
    request = urllib.request.Request(f"{url.rstrip('/')}/stats?{query}")
    if api_key:
        request.add_header("X-API-Key", api_key)
    with urllib.request.urlopen(request, timeout=10) as response:
        doc: dict[str, Any] = json.load(response)
    return doc


async def _stats_from_redis(
    settings: Settings, window: int, deployment: str | None = None
) -> dict[str, Any]:
    from bandit_router.features import WordKey
    from bandit_router.service.estimates import BaselineCache
    from bandit_router.service.learner import Learner, load_model
    from bandit_router.service.router import Router
    from bandit_router.service.stats import build_stats

    async with open_store(settings) as store:
        with Progress("replaying the log after the newest snapshot", unit="events") as bar:
            # as a process would
            model = await load_model(store, settings, progress=bar.update, deployment=deployment)
        learner = Learner(settings, store, model)
        # No lease, and no word key: the stats hash no words, and reading makes no secret (a
        # mistyped BANDIT_KEY_PREFIX would otherwise become a deployment).
        router = Router(settings, store, learner, WordKey("status: hashes no words"))
        with Progress(f"estimating baselines over the newest {window} events"):
            return (await build_stats(router, BaselineCache(), window)).model_dump()


def format_status(s: dict[str, Any]) -> str:
    r = s["recent"]
    head = (
        f"policy {s['policy']}   model version {s['model_version']}   decisions {s['decisions']}"
        f"   rewards {s['rewards_accepted']}"
        # The published model's: behind the rewards while a learner is down or catching up,
        # which the model version read from Redis (snapshot plus the log replayed) never is.
        f"   events learned {_cell(s.get('events_learned'))}   window {r['events']} events"
        f"   mean reward {_cell(r['mean_reward'])}   exploration {_cell(r['exploration_rate'])}"
        # What was not learned or not shown: an older service's /stats may lack these (-).
        f"\nskipped with no reward {_cell(s.get('skipped_no_reward'))}"
        f"   unreadable entries {_cell(r.get('unreadable_events'))}"
        f"   values left out {_cell(r.get('dropped_values'))}"
    )
    arms = [
        [name, t["decisions"], t["rewards"], t["mean_reward"], *_recent(r["arms"].get(name))]
        for name, t in s["arms"].items()
    ]
    # An arm of the window not served (removed from BANDIT_ARMS) has no totals: said so.
    arms += [
        [f"{name} (not served)", None, None, None, *_recent(a)]
        for name, a in r["arms"].items()
        if name not in s["arms"]
    ]
    arm_table = table(
        ["arm", "decisions", "rewards", "mean reward", "share", "accuracy", "latency ms", "rating"],
        arms,
    )
    base = [
        [n, e["ips"]["value"], e["snips"]["value"], e["dr"]["value"], _ci(e["snips"])]
        for n, e in r["baselines"]["policies"].items()
    ]
    logged = r["baselines"]["logged"]
    if logged is not None:
        base.insert(0, ["this policy (on-policy)", *[logged["value"]] * 3, _ci(logged)])
    headers = ["policy (off-policy estimates, window)", "IPS", "SNIPS", "DR", "SNIPS 95% CI"]
    base_table = table(headers, base)
    return f"{head}\n\n{arm_table}\n\n{base_table}" + _challengers(s.get("challengers"))


def _challengers(c: dict[str, Any] | None) -> str:
    """The challengers' table and the promotions, when there are any."""
    if not c or not (c["challengers"] or c["promotions"]):
        return ""
    rows = [
        [
            x["policy"],
            x["events"],
            x["snips"]["value"],
            _ci(x["snips"]),
            x["dr"]["value"],
            _ci(x["dr"]),
            x["champion"]["value"],
            "yes" if x["clears"] else "no",
        ]
        for x in c["challengers"]
    ]
    headers = ["challenger", "events", "SNIPS", "95% CI", "DR", "95% CI", "champion", "clears"]
    auto = "on" if c["auto_promote"] else "off"
    out = f"\n\nchampion {c['champion']}   automatic promotion {auto}\n" + table(headers, rows)
    for p in c["promotions"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(p["ts"]))
        out += f"\npromoted {p['to_policy']} over {p['from_policy']} ({p['by']}) at {when} UTC"
    return out


def _ci(interval: dict[str, Any]) -> str:
    low, high = interval["low"], interval["high"]
    return "-" if low is None or high is None else f"{low:.3f}..{high:.3f}"


def _recent(a: dict[str, Any] | None) -> list[Any]:
    if a is None:
        return [None] * 4
    return [a["share"], a["accuracy"], a["latency_ms"], a["rating"]]


def _refusal(e: urllib.error.HTTPError) -> str:
    """What the service said of its refusal (its ``detail``: which key, which parameter), and
    for a key it wants the option that sends one."""
    try:
        detail = json.loads(e.read()).get("detail")
    except (OSError, ValueError, AttributeError):  # no body, not JSON, not an object
        detail = None
    said = f": {detail}" if isinstance(detail, str) else ""
    return said + ("; pass the key with --api-key-env (or --api-key)" if e.code == 401 else "")


def status(args: argparse.Namespace) -> int:
    """Show what GET /stats says, as tables: from a running service (--url) or from Redis."""
    if args.url:
        try:
            doc = _fetch(args.url, args.window, args.api_key_env or args.api_key, args.deployment)
            if not isinstance(doc, dict):
                raise TypeError(f"a JSON {type(doc).__name__}")
            text = json.dumps(doc, indent=2) if args.json else format_status(doc)
        except urllib.error.HTTPError as e:
            print(
                f"bandit-router status: cannot read {args.url}/stats: {e}{_refusal(e)}",
                file=sys.stderr,
            )
            return 1
        except (urllib.error.URLError, OSError, ValueError) as e:
            print(f"bandit-router status: cannot read {args.url}/stats: {e}", file=sys.stderr)
            return 1
        except (KeyError, TypeError, AttributeError) as e:  # another service's JSON, say
            print(
                f"bandit-router status: {args.url}/stats answered no /stats document "
                f"({type(e).__name__}: {e})",
                file=sys.stderr,
            )
            return 1
    else:
        doc = asyncio.run(
            _stats_from_redis(deployment_settings(args), args.window, args.deployment)
        )
        text = json.dumps(doc, indent=2) if args.json else format_status(doc)
    print(text)
    return 0


# snapshot / restore


def summary_out(written: Path) -> TextIO:
    """Where to say what was written: stdout, unless the file written is stdout itself
    (`snapshot /dev/stdout > model.json`), where the summary would end up in the file."""
    try:
        here = os.path.samestat(os.stat(written), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):  # no such file, or a stdout with no descriptor
        here = False
    return sys.stderr if here else sys.stdout


def snapshot(args: argparse.Namespace) -> int:
    """Write the model (the newest snapshot plus every logged event after it) to a file."""
    from bandit_router.service.backup import dump

    settings = deployment_settings(args)
    path = Path(args.file)
    if not path.parent.is_dir():  # said before the log is replayed, not after
        print(f"bandit-router snapshot: no directory {path.parent} for {path}", file=sys.stderr)
        return 1
    if path.is_dir():
        print(f"bandit-router snapshot: {path} is a directory; give a file name", file=sys.stderr)
        return 1

    async def run() -> dict[str, Any]:
        async with open_store(settings) as store:
            with Progress("replaying the log after the newest snapshot", unit="events") as bar:
                return await dump(store, settings, path, bar.update, args.deployment)

    try:
        doc = asyncio.run(run())
    except OSError as e:  # cannot write the file (a permission, a full disk)
        print(f"bandit-router snapshot: cannot write {path}: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.file}: policy {doc['policy']}, model version {doc['model_version']}, "
        f"watermark {doc['stream_id']}",
        file=summary_out(path),
    )
    return 0


def restore(args: argparse.Namespace) -> int:
    """Publish a snapshot file as the deployment's model; services pick it up at their next
    start (followers within BANDIT_MODEL_REFRESH_S)."""
    from bandit_router.service.backup import SnapshotFileError, load, read

    settings = deployment_settings(args)
    try:
        snap, words, learned, prefix = read(Path(args.file), settings)
    except SnapshotFileError as e:
        print(f"bandit-router restore: {e}", file=sys.stderr)
        return 1

    async def run() -> int:
        holder = f"restore:{os.getpid()}"
        async with open_store(settings) as store:
            held_by_learner = not await store.hold_lease(holder, 60)
            if held_by_learner and not args.force:
                print(
                    "bandit-router restore: a learner holds the lease (a running service or "
                    "`learn`): stop it first, or pass --force",
                    file=sys.stderr,
                )
                return 1
            try:
                done = await load(store, settings, snap, words, prefix)
            finally:
                await store.release_lease(holder)
        where = "this log: events after it are learned" if done.same_log else "another log"
        print(f"restored {args.file}: policy {snap.policy}, model version {snap.version} ({where})")
        if held_by_learner:  # forced: the restored model lasts only until that learner publishes
            print(
                "bandit-router restore: a learner holds the lease: it goes on with its own model "
                "and publishes it over this one (at its next publish, or when it stops); "
                "to serve this one, stop every service and `learn`, then restore again",
                file=sys.stderr,
            )
        if done.policy_override:
            print(f"policy {snap.policy} set as the deployment's policy (as /admin/policy would)")
        if done.same_words is None:
            print(
                "the file does not say which word key the model learned its word features under "
                "(a model trained on an exported log: they carry over into the deployment that "
                "logged it, and only there; see Warm start)"
            )
        elif not done.same_words:
            print(
                "the model learned its word features under another word key: here words hash "
                "to other features, which are learned afresh (the same BANDIT_HASH_KEY in both "
                "deployments carries them over; see Privacy)"
            )
        served = [a.name for a in settings.arms]
        if learned and set(learned) != set(served):
            cold = [a for a in served if a not in learned]
            gone = [a for a in learned if a not in served]
            print(
                f"the model learned the arms {', '.join(learned)}; this deployment serves "
                f"{', '.join(served)}"
                + (f": {', '.join(cold)} start cold, as added arms do" if cold else "")
                + (
                    f"; {', '.join(gone)} are not served "
                    f"({setting_named(args.deployment, 'BANDIT_ARMS', 'arms')})"
                    if gone
                    else ""
                )
            )
        return 0

    return asyncio.run(run())


# config


def masked(name: str, value: Any) -> Any:
    """``value`` with secrets replaced: keys, passwords, tokens, and a URL's password."""
    if value in (None, "", []):
        return value
    if SECRET.search(name):
        return ["****"] * len(value) if isinstance(value, list) else "****"
    if isinstance(value, str) and "://" in value:
        return redacted_url(value)
    return value


def effective_config(settings: Settings) -> list[dict[str, Any]]:
    """Every setting: its variable, value (secrets masked) and whether the environment set it."""
    dumped = settings.model_dump(mode="json")
    return [
        {
            "variable": f"BANDIT_{name.upper()}",
            "value": masked(name, dumped[name]),
            "source": "env" if name in settings.model_fields_set else "default",
        }
        for name in type(settings).model_fields
    ]


def config(args: argparse.Namespace) -> int:
    """Print the effective settings (BANDIT_* variables over the defaults), secrets masked."""
    rows = effective_config(Settings())
    for line in unknown_variables(os.environ):
        print(f"bandit-router config: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps({r["variable"]: r["value"] for r in rows}, indent=2))
        return 0
    text = [[r["variable"], _flat(r["value"]), r["source"]] for r in rows]
    print(table(["variable", "value", "source"], text))
    return 0


def _flat(value: Any) -> str:
    """A setting's value in a cell; ``(unset)`` where an empty one means something else (an
    unset BANDIT_BUFFER_DIR is BANDIT_DATA_DIR/buffer, an empty one memory only)."""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return "(unset)" if value is None else str(value)


def add_commands(sub: Any) -> None:
    """Add status, snapshot, restore and config to the ``bandit-router`` subparsers."""
    p = sub.add_parser("status", help="what /stats says, as tables", description=status.__doc__)
    p.add_argument(
        "--url",
        help="a running service's base URL, e.g. http://127.0.0.1:8000 "
        "(default: read Redis with the BANDIT_* settings)",
    )
    p.add_argument(
        "--window",
        type=bounded_int(0, STATS_WINDOW_MAX),
        default=1000,
        help=f"newest events to analyse, 0 to {STATS_WINDOW_MAX} (1000)",
    )
    key = p.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key-env",
        type=key_in_env,
        metavar="NAME",
        help="send with --url the key this environment variable holds, when the service needs one",
    )
    key.add_argument("--api-key", help="the same, the key itself (visible to `ps`)")
    p.add_argument("--json", action="store_true", help="print the /stats document as JSON")
    add_deployment(p)
    p.set_defaults(func=status)
    p = sub.add_parser("snapshot", help="save the model to a file", description=snapshot.__doc__)
    p.add_argument("file", help="the snapshot file to write (JSON)")
    add_deployment(p)
    p.set_defaults(func=snapshot)
    p = sub.add_parser("restore", help="load the model from a file", description=restore.__doc__)
    p.add_argument("file", help="a file written by `bandit-router snapshot`")
    p.add_argument(
        "--force",
        action="store_true",
        help="restore even while a learner holds the lease (a learner that is running publishes "
        "its own model over it)",
    )
    add_deployment(p)
    p.set_defaults(func=restore)
    p = sub.add_parser("config", help="the effective settings", description=config.__doc__)
    p.add_argument("--json", action="store_true", help="print as JSON instead of a table")
    p.set_defaults(func=config)
