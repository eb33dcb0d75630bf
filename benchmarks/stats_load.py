"""/choose latency while unauthenticated clients hammer /stats with the largest window.

Starts a redis-server of its own, logs ``--events`` joined events into it (in process, through
the router), starts ``bandit-router serve`` (one worker) on loopback, then measures /choose from
one sequential client for ``--seconds``: alone, and beside ``--hammers`` processes each calling
``GET /stats?window=20000`` in a loop. ``--code DIR`` serves the package found in DIR instead
(an older checkout, for a before/after comparison on the same data).

    .venv/bin/python -m benchmarks.stats_load --seconds 15
    .venv/bin/python -m benchmarks.stats_load --seconds 15 --code /tmp/wt-base
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.servers import CHOOSE_BODY, service
from tests.conftest import RedisProcess, _free_port

PREFIX = "stats-load"
QUERIES = [
    "Write a Python function that merges two sorted lists",
    "What is the capital of Australia?",
    "Explain step by step why the sky is blue, and compare it with sunsets on Mars",
]


async def _fill(redis_url: str, events: int) -> None:
    """Log ``events`` joined events through the real router (choose, then a three-part reward)."""
    from bandit_router.rewards import RewardParts
    from bandit_router.service.router import Router
    from bandit_router.settings import Settings
    from bandit_router.store.repository import open_store

    settings = Settings(redis_url=redis_url, key_prefix=PREFIX, seed=1)
    async with open_store(settings) as store:
        router = await Router.open(settings, store)
        for i in range(events):
            query = f"{QUERIES[i % 3]} (case {i})"
            d = await router.choose(query, {"task": ("code", "qa", "reasoning")[i % 3]})
            parts = RewardParts(accuracy=float(i % 2), rating=4.0, latency_ms=300.0 + i % 900)
            await router.reward(d.event_id, parts)
        await router.close()


def _hammer(base: str, window: int, stop_at: float, out: Any) -> None:
    """One /stats client: GET /stats?window=... back to back until ``stop_at``."""
    done, failed = 0, 0
    with httpx.Client(base_url=base, timeout=120) as http:
        while time.time() < stop_at:
            try:
                ok = http.get("/stats", params={"window": window}).status_code == 200
            except httpx.HTTPError:
                ok = False
            done += ok
            failed += not ok
    out.put((done, failed))


def _choose_latencies(base: str, seconds: float) -> list[float]:
    """/choose, one request at a time, for ``seconds``; each request's latency in ms."""
    latencies = []
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=base, timeout=30) as http:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            response = http.post("/choose", content=CHOOSE_BODY, headers=headers)
            latencies.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, response.text
    return latencies


def _summary(latencies: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return {"n": len(latencies), "p50_ms": round(cuts[49], 2), "p99_ms": round(cuts[98], 2)}


def measure(base: str, seconds: float, hammers: int, window: int) -> dict[str, Any]:
    alone = _summary(_choose_latencies(base, seconds))
    queue: Any = multiprocessing.Queue()
    stop_at = time.time() + seconds + 2
    procs = [
        multiprocessing.Process(target=_hammer, args=(base, window, stop_at, queue))
        for _ in range(hammers)
    ]
    for p in procs:
        p.start()
    time.sleep(1.0)  # the hammers are under way
    loaded = _summary(_choose_latencies(base, seconds))
    counts = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    stats_ok = sum(c[0] for c in counts)
    return {
        "choose_alone": alone,
        "choose_with_stats_hammers": loaded,
        "stats_answered": stats_ok,
        "stats_failed": sum(c[1] for c in counts),
        "stats_per_s": round(stats_ok / (seconds + 1), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events logged first")
    parser.add_argument("--seconds", type=float, default=15, help="each measurement's length")
    parser.add_argument("--hammers", type=int, default=4, help="/stats clients")
    parser.add_argument("--window", type=int, default=20_000, help="their ?window=")
    parser.add_argument("--code", help="serve the package of this checkout instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(Path(tmp))
        redis.start()
        try:
            began = time.monotonic()
            asyncio.run(_fill(redis.url, args.events))
            filled_s = time.monotonic() - began
            port = _free_port()
            code = Path(args.code) if args.code else None
            server = service("stats-load", port, redis.url, PREFIX, 1, "auto", code)
            try:
                result = measure(
                    f"http://127.0.0.1:{port}", args.seconds, args.hammers, args.window
                )
            finally:
                server.stop()
        finally:
            redis.kill()
    result.update(events=args.events, fill_s=round(filled_s, 1), code=args.code or "this checkout")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
