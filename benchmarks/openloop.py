"""Open-loop load for ``make bench``: requests sent at fixed times, whatever the server does.

    python -m benchmarks.openloop --port PORT --rate 1500 --seconds 5 [--connections 32]
        [--pids PID,PID]

Request ``i`` is due at ``t0 + i / rate``. At its due time it is written on an idle keep-alive
connection, or, when every connection is waiting for an answer, queued until one is free; either
way its latency is measured from its due time, not from when it was written, so a server that
stalls is charged for every request it held back (no coordinated omission). A closed-loop
generator such as wrk only sends when an answer comes back, so a stall delays the sending too and
the requests that should have waited through it are never measured.

The generator keeps its own CPU small, since it shares the machine with the server: one process
on uvloop, the same six bodies as ``choose.lua`` built into complete requests once, each written
in one call, answers parsed by httptools (the C parser uvicorn uses), the garbage collector off.
Timers on uvloop fire on a millisecond grid, so due requests are also sent whenever an answer
arrives; how late each request left against its due time is reported as ``lag`` (part of its
latency, the same for every server measured).

With ``--pids``, the CPU time (user + system, ``/proc/PID/stat``) those processes used between the
first due time and the last answer is reported per answered request. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import re
import resource
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import httptools
import uvloop

HERE = Path(__file__).resolve().parent
DRAIN_S = 5.0  # how long answers are awaited after the last due time; later ones are errors
now = time.perf_counter  # uvloop's loop.time() is libuv's cached millisecond clock


def bodies() -> list[bytes]:
    """The request bodies of ``choose.lua`` (one source for both generators)."""
    lua = (HERE / "choose.lua").read_text()
    found = [b.replace("\\\\", "\\") for b in re.findall(r"^\s*'(\{.*\})',?\s*$", lua, re.M)]
    for body in found:
        json.loads(body)  # a body the Lua escapes were misread in would not parse
    return [b.encode() for b in found]


def requests(port: int, path: str = "/choose") -> list[bytes]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
    )
    return [head.format(n=len(b)).encode() + b for b in bodies()]


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (fields 14 and 15 of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def _pct(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return math.nan
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p / 100))]


@dataclass
class OpenLoad:
    """One run: what was offered, what came back and when, and what it cost."""

    offered: float  # req/s
    sent: int
    answered: int  # 2xx
    errors: int  # non-2xx, lost connections, no answer within DRAIN_S
    seconds: float  # first due time to last answer
    achieved: float  # 2xx answers / seconds
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    lag_p50_ms: float  # how late requests were written against their due times
    lag_p99_ms: float
    max_queued: int  # most requests waiting at once for a free connection
    server_cpu_s: float
    cpu_us: float  # server CPU per answered request
    client_cpu_us: float  # this generator's own CPU per request sent


class Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.due = 0.0  # the in-flight request's due time; 0 when idle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # counted as lost with its request
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        self.gen.answered(self, self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)

    def send(self, request: bytes, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.transport.write(request)


class Generator:
    def __init__(self, port: int, rate: float, seconds: float, connections: int) -> None:
        self.port = port
        self.requests = requests(port)
        self.interval = 1.0 / rate
        self.total = max(1, round(rate * seconds))
        self.connections = connections
        self.idle: deque[Conn] = deque()  # FIFO: every connection stays in use (keep-alive)
        self.queued: deque[float] = deque()  # due times waiting for a free connection
        self.max_queued = 0
        self.t0 = 0.0
        self.next = 0  # index of the next request to fall due
        self.sent = 0
        self.in_flight = 0
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.errors = 0
        self.last = 0.0
        self.finished = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    async def connect(self) -> None:
        _, conn = await self.loop.create_connection(lambda: Conn(self), "127.0.0.1", self.port)
        self.idle.append(conn)

    def _write(self, conn: Conn, due: float) -> None:
        conn.send(self.requests[self.sent % len(self.requests)], due)
        self.lags.append(now() - due)
        self.sent += 1
        self.in_flight += 1

    def pump(self) -> None:
        """Send (or queue) every request that has fallen due."""
        t = now()
        while self.next < self.total:
            due = self.t0 + self.next * self.interval
            if due > t:
                break
            self.next += 1
            if self.idle:
                self._write(self.idle.popleft(), due)
            else:
                self.queued.append(due)
                self.max_queued = max(self.max_queued, len(self.queued))

    def answered(self, conn: Conn, status: int) -> None:
        t = now()
        self.last = t
        self.in_flight -= 1
        if 200 <= status < 300:
            self.latencies.append(t - conn.due)
        else:
            self.errors += 1
        conn.due = 0.0
        if self.queued:
            self._write(conn, self.queued.popleft())
        else:
            self.idle.append(conn)
        self.pump()
        self._check_done()

    def lost(self, conn: Conn) -> None:
        if conn.due:
            self.errors += 1
            self.in_flight -= 1
            conn.due = 0.0
        elif conn in self.idle:
            self.idle.remove(conn)
        if not self.finished.is_set():  # keep the pool at its size
            task = self.loop.create_task(self.connect())
            task.add_done_callback(lambda t: t.exception())  # a failed reconnect: fewer conns
        self._check_done()

    def _check_done(self) -> None:
        if self.next >= self.total and not self.queued and not self.in_flight:
            self.finished.set()

    def tick(self) -> None:
        """Send what has fallen due, then wake up again at the next due time."""
        self.pump()
        if self.next < self.total:
            wait = self.t0 + self.next * self.interval - now()
            # libuv's timers count whole milliseconds: a shorter wait would spin
            self.loop.call_later(math.ceil(max(wait, 0.0) * 1000) / 1000, self.tick)
        else:
            self._check_done()

    async def run(self, pids: list[int]) -> OpenLoad:
        await asyncio.gather(*(self.connect() for _ in range(self.connections)))
        cpu0, own0 = (cpu_s(pids) if pids else 0.0), _own_cpu_s()
        self.t0 = now()
        self.tick()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), self.total * self.interval + DRAIN_S)
        self.finished.set()
        end = self.last or now()
        cpu1, own1 = (cpu_s(pids) if pids else 0.0), _own_cpu_s()
        unanswered = len(self.queued) + self.in_flight
        lat = sorted(x * 1e3 for x in self.latencies)
        lags = sorted(x * 1e3 for x in self.lags)
        seconds = max(end - self.t0, 1e-9)
        ok = len(lat)
        return OpenLoad(
            offered=1.0 / self.interval,
            sent=self.sent,
            answered=ok,
            errors=self.errors + unanswered,
            seconds=seconds,
            achieved=ok / seconds,
            p50_ms=_pct(lat, 50),
            p90_ms=_pct(lat, 90),
            p99_ms=_pct(lat, 99),
            p999_ms=_pct(lat, 99.9),
            max_ms=lat[-1] if lat else math.nan,
            lag_p50_ms=_pct(lags, 50),
            lag_p99_ms=_pct(lags, 99),
            max_queued=self.max_queued,
            server_cpu_s=cpu1 - cpu0,
            cpu_us=(cpu1 - cpu0) / max(ok, 1) * 1e6,
            client_cpu_us=(own1 - own0) / max(self.sent, 1) * 1e6,
        )


async def measure(
    port: int, rate: float, seconds: float, connections: int, pids: list[int]
) -> OpenLoad:
    return await Generator(port, rate, seconds, connections).run(pids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pids", default="", help="server processes whose CPU is charged")
    args = parser.parse_args()
    pids = [int(p) for p in args.pids.split(",") if p]
    gc.disable()  # a collection would stall the sending, and the run is short
    result = uvloop.run(measure(args.port, args.rate, args.seconds, args.connections, pids))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
