"""``bandit-router serve`` as users run it: a real uvicorn on loopback, the embedded Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import httpx2 as httpx
import pytest
import redis

from bandit_router.cli.main import main
from bandit_router.store.embedded import EmbeddedRedis, socket_path
from bandit_router.store.keys import KEY_LEASE, KEY_MODEL, KEY_POLICY
from tests.conftest import (
    ClientFactory,
    RedisProcess,
    SettingsFactory,
    _free_port,
    _server_answers,
    cli_env,
    cli_process,
    healthy,
    long_log,
    rewarded_traffic,
    served,
    wait_until,
)


def _env(data_dir: Path) -> dict[str, str]:
    return cli_env(data_dir=data_dir, policy="linucb", seed=1)


def test_serve_learns_and_survives_a_restart(tmp_path: Path) -> None:
    env, log = _env(tmp_path / "data"), tmp_path / "serve.log"
    with served(env, log) as base, httpx.Client(base_url=base) as http:
        for i in range(40):
            d = http.post("/choose", json={"query": f"hello {i}"}).json()
            reward = 1.0 if d["arm"] == "14b" else 0.0
            r = http.post("/reward", json={"event_id": d["event_id"], "reward": reward})
            assert r.status_code == 200
        version = http.get("/healthz").json()["model_version"]
        assert version == 40
    with served(env, log) as base, httpx.Client(base_url=base) as http:
        assert http.get("/healthz").json()["model_version"] == version
        assert http.get("/stats").json()["rewards_accepted"] == 40


def test_bad_settings_stop_start_up_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANDIT_POLICY", "egredy")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "BANDIT_POLICY" in err
    assert "unknown policy 'egredy'; valid: egreedy, squarecb" in err


def test_a_crashed_service_comes_back_with_everything_it_learned(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(snapshot_every=30)
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix, learner_lease_s=1)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    serve = ["serve", "--port", str(port)]
    with cli_process(serve, env, tmp_path / "a.log") as first:
        wait_until(lambda: healthy(base), 30, "the service to start")
        with httpx.Client(base_url=base) as http:
            for i in range(100):
                d = http.post("/choose", json={"query": f"q{i}"}).json()
                http.post("/reward", json={"event_id": d["event_id"], "reward": 1.0})
        first.send_signal(signal.SIGKILL)  # no final snapshot: the last one is at 90
        first.wait()
    with cli_process(serve, env, tmp_path / "b.log"):
        wait_until(lambda: healthy(base), 30, "the service to restart")
        health = httpx.get(f"{base}/healthz").json()
        assert health["model_version"] == 100  # snapshot at 90 plus the 10 logged after it
        wait_until(lambda: httpx.get(f"{base}/healthz").json()["learner"], 10, "the lease")


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("BANDIT_POLICY", "squarecb:gamma_scale=-1", "gamma_scale must be in (0, 10000], got -1.0"),
        ("BANDIT_POLICY", "squarecb:l2=2", "l2 must be in [0, 1), got 2.0"),
        ("BANDIT_CHALLENGERS", "linucb:alpha=-2", "alpha must be in [0, 100], got -2.0"),
        ("BANDIT_VW_ARGS", "--nonsense_flag", "'--nonsense_flag' is not an allowed VW option"),
    ],
)
def test_a_policy_value_out_of_range_stops_start_up_naming_it(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: str,
    value: str,
    expected: str,
) -> None:
    monkeypatch.setenv(env, value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert env in err


def test_simulate_names_a_policy_value_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    slice_ = Path(__file__).resolve().parents[1] / "examples" / "mmlu_pro_llama2_slice.jsonl"
    assert main(["simulate", str(slice_), "--policies", "squarecb:gamma_scale=-1"]) == 2
    assert (
        "simulate: policy squarecb: parameter gamma_scale must be in (0, 10000], got -1.0"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_stops_serve_and_its_embedded_redis(tmp_path: Path, signum: int) -> None:
    """What a process manager sends: the service stops gracefully and stops the embedded Redis
    it started (uvicorn raises SIGTERM again after its shutdown; by default that killed the
    process before the Redis was stopped, and the server was left running). SIGHUP (a closed
    terminal, ``kill -HUP``) stops it the same way: by default it killed a one-worker `serve` at
    once, its requests in flight cut and its embedded Redis left running, owned by no one."""
    data = tmp_path / "data"
    redis_url = f"unix://{socket_path(str(data))}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with cli_process(["serve", "--port", str(port)], _env(data), tmp_path / "serve.log") as p:
            wait_until(lambda: healthy(base), 60, "the service to answer /healthz")
            assert _server_answers(redis_url)
            p.send_signal(signum)
            assert p.wait(timeout=30) == 128 + signal.SIGTERM
        assert not _server_answers(redis_url)
    finally:  # a failure above must not leave the server running
        if _server_answers(redis_url):
            redis.Redis.from_url(redis_url).shutdown(nosave=True)


def test_an_empty_redis_url_starts_the_embedded_redis_once_as_unset(tmp_path: Path) -> None:
    """``BANDIT_REDIS_URL=`` (a compose file's empty variable) is unset, as README says. `serve`
    took it for a URL and started no embedded Redis, so with --workers 2 each worker started its
    own on the same data folder and socket: a probe's rewards got 404 for 41 of 60 decisions,
    stored in the other server, and one server was left running after serve stopped."""
    data = tmp_path / "data"
    env, log = {**_env(data), "BANDIT_REDIS_URL": ""}, tmp_path / "serve.log"
    redis_url = f"unix://{socket_path(str(data))}"
    try:
        with served(env, log, "--workers", "2") as base:
            assert "embedded Redis in" in log.read_text()
            for i in range(30):
                with httpx.Client(base_url=base) as one:  # a connection each: either worker
                    d = one.post("/choose", json={"query": f"hello {i}"}).json()
                with httpx.Client(base_url=base) as other:
                    r = other.post("/reward", json={"event_id": d["event_id"], "reward": 0.5})
                assert r.status_code == 200, r.text
        assert not _server_answers(redis_url)
    finally:  # a failure above must not leave a server running
        if _server_answers(redis_url):
            redis.Redis.from_url(redis_url).shutdown(nosave=True)


def test_a_stopping_embedded_redis_leaves_the_next_one_running(tmp_path: Path) -> None:
    """Ctrl-C, then `make run` (or `restore`, then `make run`) at once: the server the next
    process starts on the same socket keeps running. The stopping process sent SHUTDOWN with
    redis-py's retries, so it reconnected for about 4 s after its server hung up and stopped
    the next one too (its service then answered 503)."""
    data = str(tmp_path / "data")
    first = EmbeddedRedis(data)
    url = first.url
    stopping = threading.Thread(target=first.close)
    stopping.start()
    wait_until(lambda: not os.path.exists(first.socket), 30, "the first server to stop")
    with EmbeddedRedis(data) as second:
        assert second.owner
        stopping.join(timeout=30)
        assert _server_answers(url)


def test_the_embedded_redis_log_does_not_grow_with_its_saves(tmp_path: Path) -> None:
    """The embedded Redis saves its RDB every minute under steady traffic and rewrites its AOF as
    it grows; its log in the data folder is never rotated, so the lines it wrote at each (four or
    five a save, a dozen a rewrite) grew it for as long as the service ran."""
    data = tmp_path / "data"
    log = data / "redis.log"
    with EmbeddedRedis(str(data)) as server:
        client = redis.Redis.from_url(server.url)
        try:

            def idle() -> bool:
                info = client.info("persistence")
                busy = ("rdb_bgsave", "aof_rewrite")
                return (
                    not any(info[f"{b}_in_progress"] for b in busy)
                    and not info["aof_rewrite_scheduled"]
                )

            wait_until(idle, 30, "the embedded Redis to finish its start-up writes")
            before = log.read_text()
            for i in range(10):
                client.set(f"key{i}", "value")
                client.bgsave() if i % 2 else client.bgrewriteaof()
                wait_until(idle, 30, "a save of the embedded Redis")
            assert log.read_text()[len(before) :] == ""  # nothing said of them
        finally:
            client.close()


def test_sigterm_stops_learn_while_it_waits_for_redis(tmp_path: Path) -> None:
    """A learner started before its Redis waits for it (BANDIT_STARTUP_WAIT_S). A SIGTERM
    meanwhile stops it at once and cleanly, not when the wait runs out (then with a traceback
    and exit 1), by which time a process manager would have killed it."""
    env = cli_env(redis_url=f"redis://127.0.0.1:{_free_port()}/0", startup_wait_s=300)
    log = tmp_path / "learn.log"
    with cli_process(["learn"], env, log) as p:
        wait_until(lambda: "waiting for Redis" in log.read_text(), 60, "the learner to wait")
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0
    said = log.read_text()
    assert "Traceback" not in said
    assert "learner stopped while it started (waiting for Redis" in said


def test_sighup_stops_learn_as_sigterm_does(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """A closed terminal (SIGHUP) stops `learn` cleanly: its model published, its lease released
    for the next learner at once. SIGHUP's default action killed it, the lease held until it
    lapsed and what it had learned since its last snapshot relearned by the next."""
    settings = make_settings()
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix)
    lease = KEY_LEASE.format(p="{" + settings.key_prefix + "}")
    client = redis.Redis.from_url(settings.redis_url or "")
    log = tmp_path / "learn.log"
    try:
        with cli_process(["learn"], env, log) as p:
            wait_until(lambda: "leads at model version" in log.read_text(), 60, "the lease")
            assert client.get(lease) is not None
            p.send_signal(signal.SIGHUP)
            assert p.wait(timeout=60) == 0
        assert "learner stopped at model version 0" in log.read_text()
        assert client.get(lease) is None
    finally:
        client.close()


def _says(log: Path, words: str) -> bool:
    return words in log.read_text()


def test_learn_says_its_version_only_when_published(
    make_settings: SettingsFactory, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A `learn` whose final publish is refused (its lease taken by another learner) printed
    `learner stopped at model version N` all the same: N was not the version in Redis. It says
    the model was not published; one that publishes names the version Redis holds."""
    settings = make_settings(learn_in_workers=False)
    rewarded_traffic(make_client(settings), 20)
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix, learner_lease_s=60)
    p = "{" + settings.key_prefix + "}"
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        for stolen in (True, False):
            log = tmp_path / f"learn-{stolen}.log"
            with cli_process(["learn"], env, log) as proc:
                wait_until(partial(_says, log, "leads at model version"), 60, "the lease")
                if stolen:  # another learner's now, as after a stall past the lease
                    client.set(KEY_LEASE.format(p=p), "another", px=60_000)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=60) == 0
            said, stored = log.read_text(), client.hget(KEY_MODEL.format(p=p), "version")
            if stolen:
                assert stored is None, stored
                assert "stopped at model version" not in said, said
                assert "learner stopped without publishing its model (version 20)" in said, said
                client.delete(KEY_LEASE.format(p=p))
            else:
                assert stored == b"20"
                assert "learner stopped at model version 20" in said, said
    finally:
        client.close()


LONG_LOG = 60_000  # events: a learner replays them in about 5 to 9 s here


def test_sigterm_stops_learn_while_it_takes_over_a_long_log(
    redis_process: RedisProcess, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A `learn` taking the lease over a long log it had not learned (another learner led, and
    died without publishing) replayed all of it before it stopped on a SIGTERM: about 9 s per
    60,000 events, past a supervisor's grace, then killed with the lease held. It stops at the
    next event, publishes what it learned and releases the lease; the next learner learns the
    rest, each event once (the versions count the events learned)."""
    settings = make_settings(redis_url=redis_process.url)
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix, learner_lease_s=3)
    p = "{" + settings.key_prefix + "}"
    lease, model = KEY_LEASE.format(p=p), KEY_MODEL.format(p=p)
    r = redis.Redis.from_url(settings.redis_url or "")
    try:
        r.set(lease, "another", px=120_000)  # another learner leads
        first = tmp_path / "first.log"
        with cli_process(["learn"], env, first) as proc:
            wait_until(partial(_says, first, "another learner holds the lease"), 60, "the wait")
            long_log(settings, LONG_LOG)  # learned by the other, which dies unpublished
            r.delete(lease)
            wait_until(lambda: r.get(lease) is not None, 30, "the take-over")
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            took = time.monotonic() - began
        said = first.read_text()
        version = int(r.hget(model, "version") or -1)
        assert 0 <= version < LONG_LOG, said  # stopped in the replay, what it learned published
        assert f"learner stopped at model version {version}" in said, said
        assert r.get(lease) is None  # released for the next learner
        assert took < 5, (took, said)
        said = _next_learner(env, tmp_path / "second.log")
        rest = f"at model version {LONG_LOG} ({LONG_LOG - version} logged events replayed)"
        assert rest in said, said
        assert f"learner stopped at model version {LONG_LOG}" in said, said
    finally:
        r.close()


def _next_learner(env: dict[str, str], log: Path) -> str:
    """What a `learn` says from its start until it leads and is stopped (SIGTERM, exit 0)."""
    with cli_process(["learn"], env, log) as proc:
        wait_until(partial(_says, log, "leads at model version"), 120, "the next learner")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    return log.read_text()


def test_sigterm_stops_learn_while_it_relearns_a_long_log_for_a_switch(
    redis_process: RedisProcess, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A `learn` that follows a policy switch (``POST /admin/policy`` to a process that does
    not lead stores it; the learner relearns the whole log at its next renewal) stops on a
    SIGTERM at the next event and switches nothing: the old model, complete, is published and
    serves on, the lease is released, and the switch stays stored, so the next learner makes
    it, relearning the whole log."""
    settings = make_settings(redis_url=redis_process.url)
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix, learner_lease_s=3)
    p = "{" + settings.key_prefix + "}"
    lease, model, override = KEY_LEASE.format(p=p), KEY_MODEL.format(p=p), KEY_POLICY.format(p=p)
    r = redis.Redis.from_url(settings.redis_url or "")
    try:
        long_log(settings, LONG_LOG)
        first = tmp_path / "first.log"
        with cli_process(["learn"], env, first) as proc:
            wait_until(lambda: r.hget(model, "version") == str(LONG_LOG).encode(), 120, "a model")
            r.set(override, "cover")  # POST /admin/policy to a process that does not lead
            switching = partial(_says, first, "switching policy squarecb -> cover")
            wait_until(switching, 30, "the switch")
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            took = time.monotonic() - began
        said = first.read_text()
        assert took < 5, (took, said)
        assert "its switch to policy cover stopped after relearning" in said, said
        assert r.hmget(model, "policy", "version") == [b"squarecb", str(LONG_LOG).encode()]
        assert f"learner stopped at model version {LONG_LOG}" in said, said
        assert r.get(override) == b"cover"  # still the policy in force
        assert r.get(lease) is None  # released for the next learner
        said = _next_learner(env, tmp_path / "second.log")
        assert "snapshot is of policy squarecb, not cover: learning from the whole log" in said
        assert f"policy cover at model version {LONG_LOG} ({LONG_LOG} logged" in said, said
        assert r.hmget(model, "policy", "version") == [b"cover", str(LONG_LOG).encode()]
    finally:
        r.close()


@pytest.mark.parametrize("level", ["info", "warning"])
def test_the_log_level_sets_the_services_own_lines(tmp_path: Path, level: str) -> None:
    """BANDIT_LOG_LEVEL=warning left the service's info lines (a learner taking the lease) in
    the log: it set uvicorn's level only."""
    log = tmp_path / "serve.log"
    env = cli_env(data_dir=tmp_path / "data", policy="linucb", seed=1, log_level=level)
    with served(env, log) as base:
        assert httpx.post(f"{base}/choose", json={"query": "hello"}).status_code == 200
    said = log.read_text(errors="replace")
    assert ("INFO bandit_router: learner" in said) == (level == "info"), said[-2000:]


def test_a_command_on_a_folder_with_no_data_says_where_it_looked(tmp_path: Path) -> None:
    """`status` run from another folder than `serve`'s (BANDIT_DATA_DIR defaults to ./data)
    started an empty embedded Redis there and reported zeros, with no word of where it had
    looked. Once the folder holds data, nothing is said."""
    status = [sys.executable, "-m", "bandit_router.cli", "status"]
    env = cli_env()  # no BANDIT_DATA_DIR: ./data of the working directory
    done = subprocess.run(status, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (
        f"the embedded Redis in {tmp_path / 'data'} held no data: started empty "
        "(BANDIT_DATA_DIR is relative to the working directory; "
        "`serve` prints its folder as it starts)"
    ) in done.stderr
    done = subprocess.run(status, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # the first saved its (empty) data as it stopped
    assert "held no data" not in done.stderr
