"""Several processes, one model: uvicorn workers under load, a learner killed mid-batch."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import redis

from bandit_router.rewards import RewardParts
from bandit_router.service.router import Router
from bandit_router.settings import Settings
from bandit_router.store.keys import GROUP, KEY_EVENTS, KEY_LEASE, KEY_MODEL
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect
from tests.conftest import (
    SettingsFactory,
    _free_port,
    cli_env,
    cli_process,
    healthy,
    wait_until,
)


def _env(settings: Settings, **extra: Any) -> dict[str, str]:
    return cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix, **extra)


def _counters(settings: Settings) -> dict[str, int]:
    client = redis.Redis.from_url(settings.redis_url or "")
    raw: Any = client.hgetall("{" + settings.key_prefix + "}:stats")
    client.close()
    return {k.decode(): int(float(v)) for k, v in raw.items()}


def _pending(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url or "")
    key = KEY_EVENTS.format(p="{" + settings.key_prefix + "}")
    try:
        return int(client.xpending(key, GROUP)["pending"])
    except redis.ResponseError:
        return 0
    finally:
        client.close()


async def _log_events(settings: Settings, n: int) -> None:
    """n decided and rewarded events in the log, by a process that does not learn."""
    store = Store(connect(settings.redis_url or ""), settings.key_prefix, 600, 100_000)
    router = await Router.open(settings.model_copy(update={"learn_in_workers": False}), store)
    for i in range(n):
        d = await router.choose(f"query number {i}")
        await router.reward(d.event_id, RewardParts(reward=(i % 3) / 2))
    await store.close()


def test_learner_killed_mid_batch_is_replaced_and_nothing_is_lost_or_doubled(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings()
    n = 400
    asyncio.run(_log_events(settings, n))
    slow = _env(settings, publish_s=3600, snapshot_every=10**6, learner_lease_s=1)
    with cli_process(["learn"], slow, tmp_path / "a.log") as first:
        wait_until(lambda: _pending(settings) > 0, 30, "the first learner to read events")
        first.send_signal(signal.SIGKILL)  # read, maybe learned, never published nor acked
        first.wait()
    assert _pending(settings) > 0
    assert _counters(settings).get("events_learned", 0) == 0
    fast = _env(settings, publish_s=0.2, learner_lease_s=1, claim_idle_s=0.5)
    with cli_process(["learn"], fast, tmp_path / "b.log"):
        wait_until(
            lambda: _counters(settings).get("events_learned") == n and _pending(settings) == 0,
            60,
            "the second learner to learn and acknowledge every event",
        )
    assert _counters(settings)["events_learned"] == n  # exactly once: the model's version


def test_a_learner_frozen_past_its_lease_that_wakes_to_a_free_lease_leads_from_the_newer_model(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """SIGSTOP the learner past its lease; a second learner takes over, learns and stops (final
    snapshot, lease released); SIGCONT the first. It finds the lease free and takes it again: it
    must lead from the second's newer snapshot, not go on with the model it froze with (it
    published that over the newer one, and what the second had learned was lost for good)."""
    settings = make_settings()
    env = _env(settings, publish_s=0.2, learner_lease_s=1)
    asyncio.run(_log_events(settings, 100))
    with cli_process(["learn"], env, tmp_path / "a.log") as first:
        wait_until(lambda: _learned(settings) == 100, 60, "the first learner to learn the log")
        first.send_signal(signal.SIGSTOP)  # frozen (a paused VM, a debugger), not dead
        try:
            with cli_process(["learn"], env, tmp_path / "b.log") as second:
                wait_until(lambda: _holder_pid(settings) == second.pid, 60, "the second to lead")
                asyncio.run(_log_events(settings, 100))
                wait_until(lambda: _learned(settings) == 200, 60, "the second learner to learn")
                second.send_signal(signal.SIGTERM)
                assert second.wait(timeout=30) == 0
        finally:
            first.send_signal(signal.SIGCONT)
        asyncio.run(_log_events(settings, 50))
        wait_until(lambda: _caught_up(settings), 60, "a model published up to the log's end")
    assert _learned(settings) == 250  # the second's 100 were lost when the first went on


def _learned(settings: Settings) -> int:
    return _counters(settings).get("events_learned", 0)


def _holder_pid(settings: Settings) -> int | None:
    """The pid in the learner lease's holder name (host:pid:tag), None when free."""
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        holder: Any = client.get(KEY_LEASE.format(p="{" + settings.key_prefix + "}"))
    finally:
        client.close()
    return None if holder is None else int(holder.decode().split(":")[-2])


def _caught_up(settings: Settings) -> bool:
    """Whether the published model's watermark is the newest event of the log."""
    client = redis.Redis.from_url(settings.redis_url or "")
    p = "{" + settings.key_prefix + "}"
    try:
        watermark: Any = client.hget(KEY_MODEL.format(p=p), "stream_id")
        newest: Any = client.xrevrange(KEY_EVENTS.format(p=p), count=1)
    finally:
        client.close()
    return watermark is not None and bool(newest) and watermark == newest[0][0]


async def _drive(base: str, pairs: int, concurrency: int) -> dict[str, int]:
    """Concurrent choose/reward pairs; returns the status counts."""
    counts: dict[str, int] = {"ok": 0, "5xx": 0, "other": 0}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(pairs):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            d = await client.post("/choose", json={"query": f"load query {i % 50}"})
            if d.status_code != 200:
                counts["5xx" if d.status_code >= 500 else "other"] += 1
                continue
            r = await client.post("/reward", json={"event_id": d.json()["event_id"], "reward": 1})
            key = "ok" if r.status_code == 200 else "5xx" if r.status_code >= 500 else "other"
            counts[key] += 1

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        await asyncio.wait_for(
            asyncio.gather(*(worker(client) for _ in range(concurrency))), timeout=240
        )
    return counts


def test_two_workers_and_a_learner_under_concurrent_load(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings()
    port = _free_port()
    common = {"publish_s": 0.2, "model_refresh_s": 0.2, "learner_lease_s": 2}
    serve_env = _env(settings, learn_in_workers="false", **common)
    base = f"http://127.0.0.1:{port}"
    with (
        cli_process(
            ["serve", "--port", str(port), "--workers", "2"], serve_env, tmp_path / "s.log"
        ) as service,
        cli_process(["learn"], _env(settings, **common), tmp_path / "l.log"),
    ):
        wait_until(lambda: healthy(base), 60, "the service to start")
        pairs = 2000
        counts = asyncio.run(_drive(base, pairs, concurrency=32))
        assert counts == {"ok": pairs, "5xx": 0, "other": 0}
        wait_until(
            lambda: _counters(settings).get("events_learned") == pairs,
            60,
            "the learner to learn every accepted reward",
        )
        stats = httpx.get(f"{base}/stats").json()
        assert stats["rewards_accepted"] == stats["events_learned"] == pairs
        assert _stream_length(settings) == pairs
        wait_until(lambda: _versions(base) == {pairs}, 30, "both workers to load the model")
        assert len(_children(service.pid)) == 2  # both workers alive: each sample hit one
    # Each spawned worker says its info lines, with their time and level (its logging was never
    # configured: they were dropped, and its warnings printed bare).
    said = (tmp_path / "s.log").read_text()
    assert said.count("INFO bandit_router: policy squarecb at model version") == 2


def test_a_worker_killed_mid_traffic_is_replaced_and_no_acknowledged_reward_is_lost_or_doubled(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """SIGKILL one of two uvicorn workers under concurrent traffic (the learner apart): uvicorn
    starts another; a request in flight on the dead one fails with a broken connection, never a
    2xx for a write that did not happen; every reward acknowledged (a 200, or a 409 on a retry:
    an earlier try was stored) is logged once and learned once, and nothing else is logged."""
    settings = make_settings()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    common = {"publish_s": 0.2, "model_refresh_s": 0.2, "learner_lease_s": 2}
    serve = ["serve", "--port", str(port), "--workers", "2"]
    with (
        cli_process(
            serve, _env(settings, learn_in_workers="false", **common), tmp_path / "s.log"
        ) as service,
        cli_process(["learn"], _env(settings, **common), tmp_path / "l.log"),
    ):
        wait_until(lambda: healthy(base) and len(_children(service.pid)) == 2, 60, "2 workers")
        victim = int(_children(service.pid)[0])
        acknowledged = asyncio.run(_drive_and_kill(base, 600, victim))
        wait_until(
            lambda: len(_children(service.pid)) == 2 and str(victim) not in _children(service.pid),
            60,
            "uvicorn to replace the killed worker",
        )
        logged = _logged_ids(settings)
        assert len(logged) == len(set(logged))  # each once
        assert set(logged) == acknowledged
        wait_until(
            lambda: _learned(settings) == len(logged),
            60,
            "the learner to learn every logged reward",
        )
        assert healthy(base)


async def _drive_and_kill(base: str, pairs: int, victim: int) -> set[str]:
    """``pairs`` choose/reward pairs over 16 connections, SIGKILL ``victim`` a third of the way;
    a reward is retried after a broken connection or a 503. The ids acknowledged."""
    acknowledged: set[str] = set()
    started = 0

    async def pair(client: httpx.AsyncClient, i: int) -> None:
        try:
            d = await client.post("/choose", json={"query": f"load query {i % 50}"})
        except httpx.TransportError:
            return  # decided or not: no reward is sent for it
        assert d.status_code == 200, d.text
        event_id, retried = d.json()["event_id"], False
        for _ in range(100):
            try:
                r = await client.post("/reward", json={"event_id": event_id, "reward": 1})
            except httpx.TransportError:
                retried = True
                await asyncio.sleep(0.1)
                continue
            if r.status_code == 200 or (r.status_code == 409 and retried):
                acknowledged.add(event_id)
                return
            assert r.status_code == 503, r.text
            retried = True
            await asyncio.sleep(0.1)
        raise AssertionError(f"reward for {event_id} never stored")

    async def worker() -> None:
        nonlocal started
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            while started < pairs:
                started += 1
                if started == pairs // 3:
                    os.kill(victim, signal.SIGKILL)
                await pair(client, started)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(16))), timeout=120)
    return acknowledged


def _logged_ids(settings: Settings) -> list[str]:
    """The event id of every entry of the training log."""
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        rows: Any = client.xrange(KEY_EVENTS.format(p="{" + settings.key_prefix + "}"))
    finally:
        client.close()
    return [orjson.loads(fields[b"d"])["event_id"] for _, fields in rows]


def _health_samples(base: str, n: int = 40) -> list[dict[str, Any]]:
    # A new connection per request, so the kernel spreads them over both workers.
    return [httpx.get(f"{base}/healthz", timeout=5).json() for _ in range(n)]


def _versions(base: str) -> set[int]:
    return {h["model_version"] for h in _health_samples(base)}


def _children(pid: int) -> list[str]:
    """The live worker processes uvicorn spawned from ``pid``, from /proc (multiprocessing's
    resource tracker is a child too)."""
    found: list[str] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += (task / "children").read_text().split()
    return [c for c in found if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _stream_length(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        return int(client.xlen(KEY_EVENTS.format(p="{" + settings.key_prefix + "}")))
    finally:
        client.close()


def _gone(pid: str) -> bool:
    """Whether process ``pid`` has exited (a zombie no one reaps yet counts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_workers_stop_when_serve_is_killed(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """``serve`` SIGKILLed (no graceful stop of its own): the kernel sends each worker SIGTERM
    (``PR_SET_PDEATHSIG``), so they stop as on a SIGTERM instead of serving on, orphaned, and
    holding the port."""
    settings = make_settings()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    serve = ["serve", "--port", str(port), "--workers", "2"]
    with cli_process(serve, _env(settings), tmp_path / "s.log") as service:
        wait_until(lambda: healthy(base) and len(_children(service.pid)) == 2, 60, "2 workers")
        workers = _children(service.pid)
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=20)
        wait_until(lambda: all(_gone(w) for w in workers), 60, "the workers to stop")
        assert not healthy(base)
