"""Writes that wait for a replica (BANDIT_REDIS_WAIT_REPLICAS) on a plain master with one replica:
the learner learns only what a replica confirmed, so a failover cannot leave the model counting
an event the log no longer has."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from tests.conftest import ClientFactory, RedisProcess, SettingsFactory, wait_until


def _replicated(master: RedisProcess) -> bool:
    client = redis.Redis.from_url(master.url)
    try:
        info = client.info("replication")
    finally:
        client.close()
    replica: dict[str, int] = info.get("slave0") or {}
    return bool(replica.get("offset") == info["master_repl_offset"])


@pytest.fixture
def master_and_replica(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A master and its replica, the replica's process in the second place."""
    (tmp_path / "m").mkdir()
    (tmp_path / "r").mkdir()
    main = RedisProcess(tmp_path / "m")
    main.start()
    replica = RedisProcess(tmp_path / "r", args=["--replicaof", "127.0.0.1", str(main.port)])
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
