"""Writes that wait for a replica (BANDIT_REDIS_WAIT_REPLICAS) on a plain master with one replica:
the learner learns only what a replica confirmed, so a failover cannot leave the model counting
an event the log no longer has."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from bandit_router.errors import StoreUnavailable
from bandit_router.rewards import RewardParts
from tests.conftest import (
    ClientFactory,
    RedisProcess,
    SettingsFactory,
    count_steps,
    wait_until,
)
from tests.test_router import _open, _serve


def _replicated(master: RedisProcess) -> bool:
    client = redis.Redis.from_url(master.url)
    try:
        info = client.info("replication")
    finally:
        client.close()
    replica: dict[str, object] = info.get("slave0") or {}
    in_sync = replica.get("state") == "online"  # offset 0 matches a new master's while it syncs
    return in_sync and replica.get("offset") == info["master_repl_offset"]


@pytest.fixture
def master_and_replica(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A master and its replica, the replica's process in the second place."""
    yield from _master_and_replica(tmp_path, None)


@pytest.fixture
def master_and_replica_7(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """The same with the machine's Redis 7, whose WAIT counts only the connection's writes
    (Redis 6.2's counts whatever any client wrote before the connection's last command)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on the PATH")
    yield from _master_and_replica(tmp_path, binary)


def _master_and_replica(
    tmp_path: Path, binary: str | None
) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    (tmp_path / "m").mkdir()
    (tmp_path / "r").mkdir()
    # Redis 7 syncs its replicas without a disk, 5 s after they ask by default: at once here
    main = RedisProcess(tmp_path / "m", binary, args=["--repl-diskless-sync-delay", "0"])
    main.start()
    args = ["--replicaof", "127.0.0.1", str(main.port)]
    replica = RedisProcess(tmp_path / "r", binary, args=args)
    replica.start()
    try:
        wait_until(lambda: _replicated(main), 30, "the replica in sync")
        yield main, replica
    finally:
        if replica.proc is not None:
            replica.proc.send_signal(signal.SIGCONT)
        replica.kill()
        main.kill()


def _learned(client: TestClient) -> int:
    return int(client.get("/stats").json()["model_version"])


def _next_event_learned_with_the_first(learner: TestClient) -> None:
    """A second event, rewarded through the learner's process: it and the first one (held back
    while no replica had it) are learned, each once."""
    second = learner.post("/choose", json={"query": "hello again"}).json()
    r = learner.post("/reward", json={"event_id": second["event_id"], "reward": 0})
    assert r.status_code == 200, r.text
    wait_until(lambda: _learned(learner) >= 2, 10, "both events learned")
    time.sleep(0.5)
    assert _learned(learner) == 2


def test_an_event_no_replica_confirmed_is_learned_once_a_replica_has_it(
    master_and_replica: tuple[RedisProcess, RedisProcess], make_client: ClientFactory
) -> None:
    main, replica = master_and_replica
    client = make_client(redis_url=main.url, redis_wait_replicas=1, redis_wait_timeout_ms=200)
    first = client.post("/choose", json={"query": "hello"}).json()
    assert replica.proc is not None
    replica.proc.send_signal(signal.SIGSTOP)  # the replica lags: it confirms nothing
    try:
        r = client.post("/reward", json={"event_id": first["event_id"], "reward": 1})
        assert r.status_code == 503, r.text
        assert "replicas" in r.json()["detail"]
        # The master logged the event; a failover now would lose it, so it is not learned yet.
        for _ in range(3):  # neither by the read after the batch nor by the learner's steps
            assert _learned(client) == 0
            time.sleep(0.3)
    finally:
        replica.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: _replicated(main), 30, "the replica caught up")
    # The client retries the reward it got 503 for; the event is in the log once and is learned
    # once, now that a replica has it, with the next event.
    client.post("/reward", json={"event_id": first["event_id"], "reward": 1})
    _next_event_learned_with_the_first(client)


def test_what_the_learner_read_while_no_replica_confirmed_is_learned_once_one_does(
    master_and_replica: tuple[RedisProcess, RedisProcess],
    make_settings: SettingsFactory,
    make_client: ClientFactory,
) -> None:
    """An event logged by another process reaches the learner by its own read of the log, not
    by the read that follows its writes; that read's WAIT fails while the replica lags, and
    the event must still be learned once the replica has it, once."""
    main, replica = master_and_replica
    settings = make_settings(redis_url=main.url, redis_wait_replicas=1, redis_wait_timeout_ms=200)
    clients = [make_client(settings) for _ in range(2)]  # two processes of one deployment
    wait_until(lambda: any(c.get("/healthz").json()["learner"] for c in clients), 10, "a learner")
    learner, other = sorted(clients, key=lambda c: not c.get("/healthz").json()["learner"])
    first = other.post("/choose", json={"query": "hello"}).json()
    assert replica.proc is not None
    replica.proc.send_signal(signal.SIGSTOP)
    try:
        r = other.post("/reward", json={"event_id": first["event_id"], "reward": 1})
        assert r.status_code == 503, r.text
        time.sleep(1.0)  # the learner's steps read it, unconfirmed
        assert _learned(learner) == 0
    finally:
        replica.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: _replicated(main), 30, "the replica caught up")
    _next_event_learned_with_the_first(learner)


def test_once_a_replica_confirms_again_rewards_are_learned_in_their_own_round_trips(
    master_and_replica: tuple[RedisProcess, RedisProcess],
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While reads are unconfirmed the learner learns the log up to what a replica has, a step
    at a time; once a read is confirmed again it learns each reward's event from the reward's
    own round trip, with no step of its own."""
    main, replica = master_and_replica
    settings = make_settings(
        redis_url=main.url,
        redis_wait_replicas=1,
        redis_wait_timeout_ms=200,
        snapshot_every=1000,
        publish_s=3600,
    )
    steps = count_steps(monkeypatch)

    async def scenario() -> None:
        router = await _open(settings)
        router.store.wait_for_replicas(1, 200)  # as open_store sets it from the settings
        first = await router.choose("hello")
        assert replica.proc is not None
        replica.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable):
                await router.reward(first.event_id, RewardParts(reward=1.0))
            assert router.version == 0
        finally:
            replica.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: _replicated(main), 30, "the replica caught up")
        await router.learner.lead()  # as the learner's loop does
        await router.learner.step()
        assert router.version == 1
        steps[0] = 0
        await _serve(router, ["again"], 0.0)
        assert router.version == 2 and steps[0] == 0
        await router.close()
        await router.store.close()

    asyncio.run(scenario())


def test_a_write_sent_again_after_script_flush_still_waits_for_a_replica(
    master_and_replica_7: tuple[RedisProcess, RedisProcess],
    make_settings: SettingsFactory,
    make_client: ClientFactory,
) -> None:
    """SCRIPT FLUSH on the live master: the reward's script meets NOSCRIPT, ran nothing, and is
    sent again. The batch's WAIT had answered already (the replica had every earlier write of
    the connection), so the resent write was acknowledged with no replica holding it. Sent
    through the process without the learner lease, whose connection writes nothing else."""
    main, replica = master_and_replica_7
    # long enough for a live replica on a loaded machine: the first reward must be confirmed
    settings = make_settings(redis_url=main.url, redis_wait_replicas=1, redis_wait_timeout_ms=3000)
    clients = [make_client(settings) for _ in range(2)]
    wait_until(lambda: any(c.get("/healthz").json()["learner"] for c in clients), 10, "a learner")
    learner, other = sorted(clients, key=lambda c: not c.get("/healthz").json()["learner"])
    first, second = (other.post("/choose", json={"query": q}).json() for q in ("a", "b"))
    r = other.post("/reward", json={"event_id": first["event_id"], "reward": 1})
    assert r.status_code == 200, r.text  # the scripts a reward runs are loaded now
    wait_until(lambda: _learned(learner) == 1, 10, "the first event learned")
    wait_until(lambda: _replicated(main), 30, "the replica has every write")
    assert replica.proc is not None
    admin = redis.Redis.from_url(main.url)
    replica.proc.send_signal(signal.SIGSTOP)
    try:
        admin.script_flush()
        r = other.post("/reward", json={"event_id": second["event_id"], "reward": 1})
        assert r.status_code == 503, r.text
        assert "replicas" in r.json()["detail"]
    finally:
        replica.proc.send_signal(signal.SIGCONT)
        admin.close()
    wait_until(lambda: _replicated(main), 30, "the replica caught up")
    other.post("/reward", json={"event_id": second["event_id"], "reward": 1})
    wait_until(lambda: _learned(learner) >= 2, 10, "the second event learned")
    time.sleep(0.5)
    assert _learned(learner) == 2
