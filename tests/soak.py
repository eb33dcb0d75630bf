"""Soak run with faults (``make soak``): traffic for a few minutes while things break.

Starts its own redis-server (append-only, fsync always) on a free loopback port and
``bandit-router serve --workers 2`` on another, whose workers compete for the learner lease. A
client on loopback sends choose/reward pairs and retries a reward until Redis takes it, as a
real app would. Every ``--fault-every`` seconds, in turn: Redis is killed and restarted, the
worker holding the learner lease is killed (uvicorn replaces it and the other worker takes the
lease), or Redis is killed and a worker killed while it is down (the decisions it buffered are in
its journal, which another worker writes once Redis is back). At the end it prints requests
served, rewards stored, rewards learned and the difference, which must be 0, and rewards refused
as unknown, which must be 0 too; it exits 1 otherwise.

    python -m tests.soak --minutes 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import redis

from tests.conftest import RedisProcess, _free_port, cli_env, cli_process, wait_until

PREFIX = "soak"


@dataclass
class Tally:
    served: int = 0  # 2xx responses
    stored: int = 0  # rewards acknowledged (2xx, or 409 on a retry: stored by an earlier try)
    degraded: int = 0
    lost_decisions: int = 0  # rewards refused with 404: a decision Redis never got
    faults: int = 0


async def _reward(client: httpx.AsyncClient, event_id: str, tally: Tally, stop: float) -> None:
    tried = False
    while time.monotonic() < stop + 60:
        try:
            r = await client.post("/reward", json={"event_id": event_id, "reward": 0.5})
        except httpx.HTTPError:
            r = None
        if r is not None and r.status_code == 200:
            tally.served += 1
            tally.stored += 1
            return
        if r is not None and r.status_code == 409 and tried:
            tally.stored += 1
            return
        if r is not None and r.status_code == 404:
            tally.lost_decisions += 1
            return
        tried = r is not None
        await asyncio.sleep(0.2)


async def _client(base: str, tally: Tally, stop: float, n: int) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        i = 0
        while time.monotonic() < stop:
            i += 1
            try:
                d = await client.post("/choose", json={"query": f"soak {n} {i % 97}"})
            except httpx.HTTPError:
                await asyncio.sleep(0.2)
                continue
            if d.status_code != 200:
                await asyncio.sleep(0.2)
                continue
            tally.served += 1
            tally.degraded += d.json()["degraded"]
            await _reward(client, d.json()["event_id"], tally, stop)


async def _faults(server: RedisProcess, tally: Tally, stop: float, every: float) -> None:
    turn = 0
    while time.monotonic() + every < stop:
        await asyncio.sleep(every)
        turn += 1
        tally.faults += 1
        await fault(server, turn)


def service_env(redis_url: str, data_dir: str, **settings: Any) -> dict[str, str]:
    """The soaked service's environment: quick leases, claims and publishes, so that the faults'
    hand-overs show within a short run; ``settings`` on top."""
    return cli_env(
        redis_url=redis_url,
        key_prefix=PREFIX,
        data_dir=data_dir,
        publish_s=0.5,
        learner_lease_s=2,
        claim_idle_s=2,
        model_refresh_s=1,
        **settings,
    )


async def fault(server: RedisProcess, turn: int) -> None:
    """The ``turn``-th fault of the rotation: the learner's worker killed, or Redis down for 3 s;
    every third turn a worker is killed meanwhile, with the decisions it buffered: its journal
    keeps them for the others (BANDIT_BUFFER_DIR)."""
    if turn % 3 == 2:
        pid = _learner_pid(server.url)
        print(f"[fault] learner worker {pid} killed (turn {turn})", file=sys.stderr)
        if pid:
            os.kill(pid, signal.SIGKILL)
        return
    pid = _learner_pid(server.url) if turn % 3 == 0 else None
    print(f"[fault] redis-server killed for 3 s (turn {turn})", file=sys.stderr)
    server.kill()
    await asyncio.sleep(1.5)
    if pid:
        print(f"[fault] worker {pid} killed while Redis is down (turn {turn})", file=sys.stderr)
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(1.5)
    await asyncio.to_thread(server.start)


def _learner_pid(url: str) -> int | None:
    """The pid in the learner lease's holder name (host:pid:tag); /healthz does not say it."""
    client = redis.Redis.from_url(url)
    try:
        holder: Any = client.get("{" + PREFIX + "}:learner")
    except redis.RedisError:
        return None
    finally:
        client.close()
    return int(holder.decode().split(":")[-2]) if holder else None


def _learned(url: str) -> tuple[int, int]:
    client = redis.Redis.from_url(url)
    stats: Any = client.hgetall("{" + PREFIX + "}:stats")
    accepted = sum(int(v) for k, v in stats.items() if k.startswith(b"rewards:"))
    client.close()
    return accepted, int(stats.get(b"events_learned", 0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--fault-every", type=float, default=30.0, help="seconds between faults")
    parser.add_argument(
        "--mixed", action="store_true", help="the mixed traffic of tests.soak_mixed"
    )
    parser.add_argument("--gateway", type=int, default=4, help="--mixed: SDK clients")
    parser.add_argument("--sample-every", type=float, default=60.0, help="--mixed: seconds")
    parser.add_argument("--samples", help="--mixed: a file for the samples (JSON lines)")
    parser.add_argument("--keep-log", help="--mixed: a file to copy the service's log to")
    parser.add_argument("--redis-server", help="--mixed: a redis-server binary (default: embedded)")
    parser.add_argument("--faults", choices=["all", "redis"], default="all", help="--mixed")
    parser.add_argument("--reward-wait-s", type=int, default=60, help="--mixed")
    parser.add_argument("--stream-maxlen", type=int, default=20_000, help="--mixed")
    args = parser.parse_args()
    if args.mixed:
        from tests.soak_mixed import run_mixed

        return run_mixed(args)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp), args=["--appendonly", "yes", "--appendfsync", "always"])
        server.start()
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        env = service_env(server.url, tmp)
        tally = Tally()
        serve = ["serve", "--port", str(port), "--workers", "2"]
        try:
            with cli_process(serve, env, Path(tmp) / "serve.log"):
                wait_until(lambda: _up(base), 60, "the service to start")
                stop = time.monotonic() + args.minutes * 60

                async def run() -> None:
                    clients = [_client(base, tally, stop, n) for n in range(args.clients)]
                    await asyncio.gather(_faults(server, tally, stop, args.fault_every), *clients)

                asyncio.run(run())
                wait_until(lambda: _settled(server.url), 120, "the learner to learn every reward")
                accepted, learned = _learned(server.url)
        finally:  # also when the run fails: the server it restarted must not outlive it
            server.kill()
    print(f"requests served     {tally.served}")
    print(f"faults injected     {tally.faults}")
    print(f"degraded choices    {tally.degraded}")
    print(f"decisions lost      {tally.lost_decisions} (rewards refused as unknown)")
    print(f"rewards stored      {tally.stored} (client-acknowledged; Redis counts {accepted})")
    print(f"rewards learned     {learned}")
    print(f"difference          {tally.stored - learned}")
    return 0 if tally.stored == learned == accepted and not tally.lost_decisions else 1


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _settled(url: str) -> bool:
    accepted, learned = _learned(url)
    return accepted == learned


if __name__ == "__main__":
    sys.exit(main())
