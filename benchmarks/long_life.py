"""A long life compressed (README, A long life): a million choose and reward pairs and more,
and what Redis, the learner and the commands do as the log grows.

``fill`` drives pairs through the real router in process (the settings from the environment,
``BANDIT_LEARN_IN_WORKERS=false``: run ``bandit-router learn`` apart), its background jobs
running (the model refresh, the sweep), ``--concurrency`` loops sharing its round trips. The
reward is planted (``benchmarks.inproc.truth``), its contexts swapped from pair ``--drift-at``
on; a JSON line per ``--block`` pairs says the rate, the mean reward and the best arm's share.
``watch`` prints a JSON line every ``--every`` seconds: Redis's memory and keys, the log's length
and memory, the consumer group, the model's and the challengers' bytes, the promotion records,
and the memory of the process whose pid is in ``--pid-file`` (the learner).

    export BANDIT_REDIS_URL=redis://127.0.0.1:7460/0 BANDIT_LEARN_IN_WORKERS=false \\
        BANDIT_REWARD_WAIT_S=60 BANDIT_CHALLENGERS=egreedy,linucb BANDIT_AUTO_PROMOTE=true
    .venv/bin/bandit-router learn & echo $! > learn.pid
    .venv/bin/python -m benchmarks.long_life watch --pid-file learn.pid > watch.jsonl &
    .venv/bin/python -m benchmarks.long_life fill --pairs 10000
    .venv/bin/python -m benchmarks.long_life fill --first 10000 --pairs 100000  # and so on

At each size, time ``learn`` (SIGTERM it and start it again, up to its ``leads at`` line),
``serve`` (up to a 200 from ``/healthz``), ``status``, ``snapshot FILE``, ``export --out FILE``
and ``evaluate FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ARM_NAMES = ("4b", "7b", "14b")


def _truth(big: bool, arm: str, swapped: bool) -> float:
    """``inproc.truth``'s planted reward, its contexts swapped after the drift."""
    big = big != swapped
    return {"4b": 0.3 if big else 0.9, "7b": 0.6, "14b": 0.9 if big else 0.4}[arm]


async def fill(args: argparse.Namespace) -> None:
    from bandit_router.features import extract
    from bandit_router.rewards import RewardParts
    from bandit_router.service.router import Router
    from bandit_router.settings import Settings
    from bandit_router.store.repository import open_store
    from benchmarks.inproc import queries

    settings = Settings()
    asked = queries(5000, seed=7)
    big = [any(extract(q, f).stat(t) for t in ("reasoning", "math", "code")) for q, f in asked]
    async with open_store(settings) as store:
        router = await Router.open(settings, store)
        stop = asyncio.Event()
        jobs = asyncio.ensure_future(router.run(stop))
        next_pair, end = args.first, args.first + args.pairs
        block: dict[str, float] = {"n": 0, "reward": 0.0, "best": 0, "errors": 0}
        began = last = time.perf_counter()

        async def loop() -> None:
            nonlocal next_pair, last
            while next_pair < end:
                k, next_pair = next_pair, next_pair + 1
                query, features = asked[k % len(asked)]
                swapped = k >= args.drift_at
                try:
                    chosen = await router.choose(query, features)
                    reward = _truth(big[k % len(asked)], chosen.arm, swapped)
                    best = max(ARM_NAMES, key=lambda a: _truth(big[k % len(asked)], a, swapped))
                    await router.reward(chosen.event_id, RewardParts(reward=reward))
                    block["n"] += 1
                    block["reward"] += reward
                    block["best"] += chosen.arm == best
                except Exception as e:  # counted, and the loop goes on: a long run says all
                    block["errors"] += 1
                    print(f"pair {k}: {e!r}", file=sys.stderr)
                if block["n"] >= args.block:
                    now = time.perf_counter()
                    line = {
                        "pairs": k + 1,
                        "s": round(now - began, 1),
                        "per_s": round(block["n"] / (now - last)),
                        "mean_reward": round(block["reward"] / block["n"], 4),
                        "best_share": round(block["best"] / block["n"], 4),
                        "errors": block["errors"],
                        "model_version": router.version,
                        "swapped": swapped,
                    }
                    print(json.dumps(line), flush=True)
                    block.update(n=0, reward=0.0, best=0, errors=0)
                    last = now

        await asyncio.gather(*(loop() for _ in range(args.concurrency)))
        stop.set()
        await jobs
        await router.close()


def _rss_mb(pid_file: Path | None) -> int | None:
    if pid_file is None:
        return None
    try:
        status = Path(f"/proc/{pid_file.read_text().strip()}/status").read_text()
    except OSError:
        return None
    return next((int(s.split()[1]) // 1024 for s in status.splitlines() if "VmRSS" in s), None)


def watch(args: argparse.Namespace) -> None:
    import redis

    from bandit_router.settings import Settings

    settings = Settings()
    r = redis.Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0")
    p = "{" + settings.key_prefix + "}"
    began = time.monotonic()
    while True:
        memory: Any = r.info("memory")
        keyspace: Any = r.info("keyspace")
        db: dict[str, int] = next(iter(keyspace.values()), {})
        model: Any = r.hgetall(f"{p}:model")
        challengers: Any = r.hgetall(f"{p}:challengers")
        groups: Any = r.xinfo_groups(f"{p}:events") if r.exists(f"{p}:events") else []
        line = {
            "s": round(time.monotonic() - began),
            "used_mb": memory["used_memory"] >> 20,
            "keys": db.get("keys", 0),
            "keys_with_ttl": db.get("expires", 0),
            "log_entries": r.xlen(f"{p}:events"),
            "log_mb": (r.memory_usage(f"{p}:events") or 0) >> 20,
            "group": [{k: g[k] for k in ("consumers", "pending", "lag") if k in g} for g in groups],
            "model_version": int(model.get(b"version", 0)),
            "model_bytes": sum(map(len, model.values())),
            "challengers_bytes": sum(map(len, challengers.values())),
            "promotions": r.llen(f"{p}:promotions"),
            "learner_rss_mb": _rss_mb(args.pid_file),
        }
        print(json.dumps(line), flush=True)
        time.sleep(args.every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fill", help="choose and reward pairs through the router in process")
    f.add_argument("--pairs", type=int, default=1_000_000)
    f.add_argument("--first", type=int, default=0, help="number of the first pair (resuming)")
    f.add_argument("--drift-at", type=int, default=600_000, help="pair the rewards swap at")
    f.add_argument("--concurrency", type=int, default=32)
    f.add_argument("--block", type=int, default=10_000, help="pairs a line")
    w = sub.add_parser("watch", help="a JSON line of what grows, every --every seconds")
    w.add_argument("--every", type=float, default=20.0)
    w.add_argument("--pid-file", type=Path, default=None, help="the learner's pid")
    args = parser.parse_args()
    if args.command == "fill":
        import uvloop

        uvloop.run(fill(args))
    else:
        watch(args)


if __name__ == "__main__":
    main()
