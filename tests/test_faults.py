"""Redis killed and restarted under the service: degraded choices, 503 rewards, recovery."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bandit_router.errors import StoreUnavailable
from bandit_router.http.app import create_app
from bandit_router.http.process import stoppable_start
from bandit_router.rewards import RewardParts
from bandit_router.service.outage import SAID_EVERY_S, Outage
from bandit_router.service.router import BUFFER_GRACE_S, Router
from bandit_router.settings import Settings
from bandit_router.store.keys import KEY_MODEL, KEY_POLICY
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect
from tests.conftest import (
    ClientFactory,
    RedisProcess,
    SettingsFactory,
    _free_port,
    cli_env,
    cli_process,
    healthy,
    long_log,
    wait_until,
)


def _choose(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/choose", json={"query": "What is 2+2?", **body})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _stat(client: TestClient, name: str) -> Any:
    response = client.get("/stats")
    return response.json()[name] if response.status_code == 200 else None


def _wait(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_redis_down_choose_degrades_reward_503_then_recovers(
    make_client: ClientFactory, redis_process: RedisProcess
) -> None:
    client = make_client(redis_url=redis_process.url)
    before = _choose(client)
    redis_process.kill()

    during = [_choose(client, query=f"q{i}") for i in range(5)]
    assert all(d["degraded"] for d in during)
    assert all(d["arm"] in d["probabilities"] for d in during)
    retry = _choose(client, query="q0", event_id=during[0]["event_id"])
    assert retry["arm"] == during[0]["arm"]  # same id, same (buffered) decision

    reward = client.post("/reward", json={"event_id": during[0]["event_id"], "reward": 1})
    assert reward.status_code == 503
    assert "Redis" in reward.json()["detail"]
    assert client.get("/healthz").status_code == 503
    assert client.get("/livez").json() == {"status": "ok"}  # alive: no reason to restart it
    assert client.get("/stats").status_code == 503

    redis_process.start()  # back, empty: no persistence on this test server
    _wait(lambda: _stat(client, "buffered_decisions") == 0)
    assert client.get("/stats").json()["decisions"] == 5
    for d in during:
        r = client.post("/reward", json={"event_id": d["event_id"], "reward": 0.5})
        assert r.status_code == 200, r.text
    # Stored before the restart, and Redis kept nothing: for BUFFER_GRACE_S after the outage an
    # unknown event may still be another process's buffered decision (503, retry), then 404.
    gone = client.post("/reward", json={"event_id": before["event_id"], "reward": 1})
    assert gone.status_code == 503 and "moments ago" in gone.json()["detail"]
    _after_the_grace(client)
    gone = client.post("/reward", json={"event_id": before["event_id"], "reward": 1})
    assert gone.status_code == 404
    assert not _choose(client)["degraded"]


def test_a_hung_redis_answers_each_choose_degraded_within_the_timeout_of_its_arrival(
    make_client: ClientFactory, redis_process: RedisProcess
) -> None:
    """A Redis that takes connections and answers nothing (SIGSTOP: a paused VM, a partition):
    a /choose made while another's round trip is in flight answered degraded only once that
    round trip timed out and then its own, up to twice the store's timeout after it came. Each
    now answers within about the timeout, and once Redis answers again every decision answered
    degraded is written, and takes its reward."""
    timeout_s = 2.0
    client = make_client(redis_url=f"{redis_process.url}?socket_timeout={timeout_s:g}")
    _choose(client)
    assert redis_process.proc is not None
    took: dict[float, float] = {}
    answers: list[dict[str, Any]] = []

    def choose_at(offset: float, start: float) -> None:
        time.sleep(max(0.0, start + offset - time.monotonic()))
        began = time.monotonic()
        answers.append(_choose(client, query=f"sent at {offset}"))
        took[offset] = time.monotonic() - began

    redis_process.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        threads = [
            threading.Thread(target=choose_at, args=(offset, start)) for offset in (0.0, 0.3, 1.0)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        redis_process.proc.send_signal(signal.SIGCONT)
    assert all(a["degraded"] for a in answers)
    # they took up to 1.85 x the timeout, those made while a round trip was in flight
    assert max(took.values()) < 1.5 * timeout_s, took
    _wait(lambda: _stat(client, "buffered_decisions") == 0)
    for a in answers:
        r = client.post("/reward", json={"event_id": a["event_id"], "reward": 0.5})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("met_by", ["choose", "reward"])
def test_a_reward_for_a_decision_another_process_still_holds_is_503_not_404(
    make_settings: SettingsFactory, redis_process: RedisProcess, met_by: str
) -> None:
    """Two processes: one decides while Redis is down and keeps the decision; Redis comes back,
    and the reward reaches the other before the first has written it. A 404 would tell the
    client to give the reward up (a probe saw up to 14 a run, within 40 ms of Redis's return);
    a 503 has it retry, and the retry finds the decision. The other process may have met the
    outage by a choice or by a reward of its own."""
    settings = make_settings(redis_url=redis_process.url)

    async def scenario() -> None:
        deciding, other = [await _open_router(settings) for _ in range(2)]
        redis_process.kill()
        kept = await deciding.choose("What is 2+2?")
        assert kept.degraded
        if met_by == "choose":
            await other.choose("and 3+3?")  # the other process meets the outage too
        else:
            with pytest.raises(StoreUnavailable):
                await other.reward("an-earlier-event", RewardParts(accuracy=1.0))
        redis_process.start()
        with pytest.raises(StoreUnavailable, match="moments ago"):
            await other.reward(kept.event_id, RewardParts(accuracy=1.0))
        assert await deciding.flush() == 1
        taken = await other.reward(kept.event_id, RewardParts(accuracy=1.0))
        assert taken.status == "pending"
        for router in (deciding, other):
            await router.close()
            await router.store.close()

    asyncio.run(scenario())


async def _open_router(settings: Settings) -> Router:
    store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
    return await Router.open(settings, store)


async def _running(settings: Settings, meanwhile: Callable[[Router], Awaitable[None]]) -> None:
    """A router's background jobs running while ``meanwhile`` does its part, then stopped."""
    router = await _open_router(settings)
    stop = asyncio.Event()
    running = asyncio.create_task(router.run(stop))
    await asyncio.sleep(0.2)
    await meanwhile(router)
    stop.set()
    await running
    await router.close()
    await router.store.close()


def _after_the_grace(client: TestClient) -> None:
    """As if BUFFER_GRACE_S had passed since the process last found Redis down."""
    router: Router = client.app.state.routers.default  # type: ignore[attr-defined]
    router.unavailable_at -= BUFFER_GRACE_S


def test_full_buffer_drops_oldest_and_counts(
    make_client: ClientFactory, redis_process: RedisProcess
) -> None:
    client = make_client(redis_url=redis_process.url, decision_buffer=3)
    redis_process.kill()
    ids = [_choose(client, query=f"q{i}")["event_id"] for i in range(5)]
    redis_process.start()
    _wait(lambda: _stat(client, "buffered_decisions") == 0)
    stats = client.get("/stats").json()
    assert (stats["decisions"], stats["decisions_dropped"]) == (3, 2)
    assert client.post("/reward", json={"event_id": ids[4], "reward": 1}).status_code == 200
    dropped = {"event_id": ids[0], "reward": 1}
    assert client.post("/reward", json=dropped).status_code == 503  # within the grace
    _after_the_grace(client)
    assert client.post("/reward", json=dropped).status_code == 404


def test_a_full_buffer_is_said_once_until_it_is_written(
    make_client: ClientFactory, redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Each /choose past the bound drops a decision (or is a 503): said in the log once, not
    per request, and again in the next outage that fills it."""
    client = make_client(redis_url=redis_process.url, decision_buffer=2)
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        redis_process.kill()
        for i in range(6):
            _choose(client, query=f"q{i}")
        said = [m for m in caplog.messages if "decision buffer is full" in m]
        assert len(said) == 1, caplog.messages
        assert said[0].startswith("the local decision buffer is full (2 decisions, ")
        assert "BANDIT_DECISION_BUFFER 2," in said[0]
        assert "the oldest decisions are dropped (counted in decisions_dropped)" in said[0]
        redis_process.start()
        _wait(lambda: _stat(client, "buffered_decisions") == 0)
        redis_process.kill()
        for i in range(3):
            _choose(client, query=f"again {i}")
    said = [m for m in caplog.messages if "decision buffer is full" in m]
    assert len(said) == 2, caplog.messages


def test_the_buffer_is_bounded_in_bytes_too(
    make_client: ClientFactory, redis_process: RedisProcess
) -> None:
    """Decisions at the feature limits are about 25 KB each: BANDIT_DECISION_BUFFER_BYTES bounds
    what the buffer holds whatever the count allows, oldest dropped first; one larger than the
    bound is a 503 naming it."""
    client = make_client(redis_url=redis_process.url, decision_buffer_bytes=15_000)
    big = {f"k{i}": "v" * 256 for i in range(40)}  # about 11 KB as JSON
    redis_process.kill()
    for i in range(5):
        _choose(client, query=f"q{i}", features=big)
    router: Router = client.app.state.routers.default  # type: ignore[attr-defined]
    assert 0 < router.buffered_bytes <= 15_000
    assert router.buffer_dropped == 4  # one fits
    huge = {f"k{i}": "v" * 256 for i in range(64)}  # about 17 KB: more than the bound alone
    refused = client.post("/choose", json={"query": "q", "features": huge})
    assert refused.status_code == 503
    assert "BANDIT_DECISION_BUFFER_BYTES" in refused.json()["detail"]
    redis_process.start()
    _wait(lambda: _stat(client, "buffered_decisions") == 0)
    stats = client.get("/stats").json()
    assert (stats["decisions"], stats["decisions_dropped"]) == (1, 4)


def test_full_buffer_can_reject_instead(
    make_client: ClientFactory, redis_process: RedisProcess
) -> None:
    client = make_client(redis_url=redis_process.url, decision_buffer=1, buffer_overflow="reject")
    redis_process.kill()
    assert _choose(client)["degraded"]
    full = client.post("/choose", json={"query": "one more"})
    assert full.status_code == 503
    assert "buffer is full" in full.json()["detail"]


def test_a_process_started_during_an_outage_waits_for_redis(
    make_settings: SettingsFactory, redis_process: RedisProcess
) -> None:
    """uvicorn replaces a dead worker at once; if Redis is down then, the new worker must wait
    for it: a failed start-up makes uvicorn stop every worker (seen in make soak)."""
    redis_process.kill()
    back = threading.Timer(1.5, redis_process.start)
    back.start()
    try:
        with TestClient(create_app(make_settings(redis_url=redis_process.url))) as client:
            assert _choose(client)["degraded"] is False
    finally:
        back.join()


def test_start_up_gives_up_after_the_wait(
    make_settings: SettingsFactory, redis_process: RedisProcess
) -> None:
    """The error a start-up that gave up fails with names the wait it gave up after: it said
    only "Connection refused", as though nothing had been waited for."""
    redis_process.kill()
    app = create_app(make_settings(redis_url=redis_process.url, startup_wait_s=0.5))
    began = time.monotonic()
    with pytest.raises(StoreUnavailable) as gave_up, TestClient(app):
        pass
    assert time.monotonic() - began < 10
    said = str(gave_up.value)
    assert "given up after BANDIT_STARTUP_WAIT_S, 0.5 s" in said
    assert "Error 111 connecting to" in said  # and why


def test_a_start_up_failure_the_service_cannot_explain_keeps_its_traceback(
    make_settings: SettingsFactory, redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A start-up the service explains is said in a line (test_transport's serve test); one it
    cannot (a bug) keeps Starlette's traceback, which is all there is to go on."""

    @asynccontextmanager
    async def broken(app: FastAPI) -> AsyncIterator[None]:
        raise KeyError("a bug")
        yield

    app = create_app(make_settings(redis_url=redis_process.url))
    app.router.lifespan_context = broken
    server = uvicorn.Server(uvicorn.Config(app, port=0, log_config=None))
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):  # a start-up failed
        asyncio.run(server.serve())
    assert "Traceback" in caplog.text and "KeyError: 'a bug'" in caplog.text
    assert "cannot start" not in caplog.text


def test_an_outage_is_said_once_a_minute_with_what_was_not_said(
    make_settings: SettingsFactory, redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Every background job fails every period while Redis is down (the learner each second):
    the log says it at once, then at most every ``SAID_EVERY_S`` with the failures between,
    and its end; an outage after that end is said at once."""
    settings = make_settings(redis_url=redis_process.url, model_refresh_s=0.05, sweep_s=0.05)

    async def outages(router: Router) -> None:
        redis_process.kill()
        await router.choose("What is 2+2?")  # degraded: the flush fails each second too
        await asyncio.sleep(2.5)
        redis_process.start()
        await asyncio.sleep(1.0)
        redis_process.kill()  # a second outage, within the minute: said at once all the same
        await asyncio.sleep(1.0)

    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        asyncio.run(_running(settings, outages))
    said = [r.getMessage() for r in caplog.records if "Redis" in r.getMessage()]
    assert len(said) == 3, said
    assert all(" waiting for Redis: " in said[i] for i in (0, 2)), said
    assert said[1].startswith("Redis reachable again, ") and "failures not said: " in said[1]


def test_an_outage_said_again_counts_each_job_s_failures(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    outage = Outage(clock=lambda: now[0])
    error = StoreUnavailable("Connection refused")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        outage.failed("learner", error)
        for _ in range(3):
            now[0] += 1
            outage.failed("learner", error)
            outage.failed("sweep", error)
        now[0] = SAID_EVERY_S + 0.5
        outage.failed("refresh", error)
        outage.failed("refresh", error)
    assert [r.getMessage() for r in caplog.records] == [
        f"learner waiting for Redis: {error}",
        f"refresh waiting for Redis: {error} (failures not said in the last 60 s: learner 3, "
        "sweep 3)",
    ]


def test_the_end_of_an_outage_is_said_and_a_flapping_redis_is_a_few_lines_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    outage = Outage(clock=lambda: now[0])
    error = StoreUnavailable("Connection refused")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        outage.reached("sweep")  # no outage said: nothing to say
        outage.failed("sweep", error)
        now[0] = 5.0
        outage.failed("learner", error)
        outage.reached("sweep")  # the learner still fails: not over
        outage.reached("learner")
        outage.reached("learner")
        now[0] = 6.0
        outage.failed("sweep", error)  # said at once: the log said Redis was back
        while now[0] < 2 * SAID_EVERY_S - 1:  # then Redis comes and goes every half second
            now[0] += 0.5
            outage.reached("sweep")
            now[0] += 0.5
            outage.failed("sweep", error)
        now[0] = 2 * SAID_EVERY_S + 30
        outage.reached("sweep")
    said = [r.getMessage() for r in caplog.records]
    assert said[:3] == [
        f"sweep waiting for Redis: {error}",
        "Redis reachable again, 5 s after it was said not to be (failures not said: learner 1)",
        f"sweep waiting for Redis: {error}",
    ]
    assert len(said) <= 7, said  # at most a down and a back a minute (and the first ones)
    assert said[-1].startswith("Redis reachable again, ")


def test_an_end_said_late_says_how_long_the_outage_lasted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second outage within the minute of the first one's end is said over when next due; the
    line said "56 s after" of an outage of 6 s (the probe of the limits' item)."""
    now = [0.0]
    outage = Outage(clock=lambda: now[0])
    error = StoreUnavailable("Connection refused")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        outage.failed("sweep", error)
        now[0] = 2.0
        outage.reached("sweep")  # said at once
        now[0] = 4.0
        outage.failed("sweep", error)  # said at once: the log said Redis was back
        now[0] = 10.0
        outage.reached("sweep")  # back after 6 s, not said: one such line a minute
        while now[0] < 62:
            now[0] += 1
            outage.reached("sweep")
    said = [r.getMessage() for r in caplog.records]
    assert said[-1] == (
        "Redis reachable again, 6 s after it was said not to be (52 s ago: one such line a "
        "minute at most)"
    ), said


@pytest.mark.parametrize(("workers", "signum"), [(1, signal.SIGTERM), (2, signal.SIGINT)])
def test_a_signal_stops_a_start_that_waits_for_redis(
    make_settings: SettingsFactory,
    redis_process: RedisProcess,
    tmp_path: Path,
    workers: int,
    signum: signal.Signals,
) -> None:
    """uvicorn only takes note of a signal until start-up ends: a process waiting for Redis
    (BANDIT_STARTUP_WAIT_S, a minute here) stopped only once the wait was over."""
    settings = make_settings(redis_url=redis_process.url)
    redis_process.kill()
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix, startup_wait_s=60)
    log = tmp_path / "serve.log"
    serve = ["serve", "--port", str(_free_port()), "--workers", str(workers)]
    with cli_process(serve, env, log) as service:
        wait_until(lambda: "waiting for Redis to start" in log.read_text(), 30, "the wait")
        began = time.monotonic()
        service.send_signal(signum)
        service.wait(timeout=50)  # well within the minute the wait would take
    assert time.monotonic() - began < 50
    # with workers, uvicorn's supervisor passes the stop on to them as SIGTERM
    said = "SIGTERM" if workers > 1 else signum.name
    assert (
        f"{said} while starting (waiting for Redis, or loading the model): stopped"
        in log.read_text()
    )


def test_a_signal_stops_a_start_that_replays_a_long_log(
    make_settings: SettingsFactory, redis_process: RedisProcess, tmp_path: Path
) -> None:
    """A `serve` starting on a long log it replays (no snapshot yet) stopped on a SIGTERM only
    once the replay was over, about 9 s per 60,000 events, past a supervisor's grace: on
    Python 3.11 the cancel of the start was lost in redis-py's send of the next page. The
    replay stops at the next event; nothing was published, so the next learner replays it."""
    settings = make_settings(redis_url=redis_process.url)
    long_log(settings, 60_000)
    r = redis.Redis.from_url(redis_process.url)
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix)
    log = tmp_path / "serve.log"
    try:

        def replaying() -> bool:  # a connection's last command: the replay's page reads
            return any(c.get("cmd") == "xrange" for c in r.client_list())

        with cli_process(["serve", "--port", str(_free_port())], env, log) as service:
            wait_until(replaying, 60, "the replay")
            began = time.monotonic()
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=60)
            took = time.monotonic() - began
        said = log.read_text()
        assert "SIGTERM while starting (waiting for Redis, or loading the model): stopped" in said
        assert "logged events replayed" not in said, said  # stopped in the replay
        assert took < 5, (took, said)
        assert r.hget(KEY_MODEL.format(p="{" + settings.key_prefix + "}"), "version") is None
    finally:
        r.close()


def test_a_signal_stops_a_switch_that_relearns_a_long_log(
    make_settings: SettingsFactory, redis_process: RedisProcess, tmp_path: Path
) -> None:
    """`POST /admin/policy` to the learner's process relearns the whole log in the request; a
    SIGTERM then stopped `serve` only once the relearning was over (uvicorn waits for the
    requests in flight, up to BANDIT_SHUTDOWN_TIMEOUT_S; then it cancels them): about 5 s per
    60,000 events here, 8 s under load. It stops at the next event and switches nothing: the
    admin is told (503) that the switch is stored, the old model, complete, is published, and
    the next process makes the switch, relearning the whole log."""
    settings = make_settings(redis_url=redis_process.url)
    long_log(settings, 60_000)
    r = redis.Redis.from_url(redis_process.url)
    p = "{" + settings.key_prefix + "}"
    model, override = KEY_MODEL.format(p=p), KEY_POLICY.format(p=p)
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix, admin_key="adm")
    log, port = tmp_path / "serve.log", _free_port()
    base = f"http://127.0.0.1:{port}"
    answers: list[httpx.Response] = []
    try:

        def relearning() -> bool:  # a connection's last command: the relearning's page reads
            return r.get(override) is not None and any(
                c.get("cmd") == "xrange" for c in r.client_list()
            )

        with cli_process(["serve", "--port", str(port)], env, log) as service:
            wait_until(lambda: healthy(base), 120, "the service")
            switch = threading.Thread(
                target=lambda: answers.append(
                    httpx.post(
                        f"{base}/admin/policy",
                        json={"policy": "cover"},
                        headers={"X-API-Key": "adm"},
                        timeout=60,
                    )
                )
            )
            switch.start()
            wait_until(relearning, 30, "the relearning")
            began = time.monotonic()
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=60)
            took = time.monotonic() - began
            switch.join(timeout=10)
        said = log.read_text()
        assert took < 5, (took, said)
        assert "its switch to policy cover stopped after relearning" in said, said
        assert answers and answers[0].status_code == 503, said
        assert "the switch is stored, and the next learner to lead makes it" in answers[0].text
        assert r.hmget(model, "policy", "version") == [b"squarecb", b"60000"]
        assert r.get(override) == b"cover"
        with cli_process(["serve", "--port", str(port)], env, log) as service:
            wait_until(lambda: healthy(base), 120, "the next start")
            stats = httpx.get(f"{base}/stats").json()
            assert (stats["policy"], stats["model_version"]) == ("cover", 60_000)
    finally:
        r.close()


def test_a_signal_before_the_wait_for_redis_stops_it_too(caplog: pytest.LogCaptureFixture) -> None:
    """A signal that comes while the app is imported, uvicorn's handler in place and not ours
    yet, was noted by uvicorn alone: a worker spawned just before its supervisor passed a stop
    on waited out BANDIT_STARTUP_WAIT_S. This pins the server's ``should_exit``, which the
    block reads through uvicorn's handler."""
    before = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # should uvicorn raise it

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        signal.raise_signal(signal.SIGTERM)  # uvicorn's handler only takes note of it
        with stoppable_start():
            await asyncio.sleep(60)
        yield

    config = uvicorn.Config(FastAPI(lifespan=lifespan), port=0, log_config=None)
    server = uvicorn.Server(config)
    began = time.monotonic()
    try:
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):  # a start-up failed
            asyncio.run(server.serve())
    finally:
        signal.signal(signal.SIGTERM, before)
    assert time.monotonic() - began < 30
    assert not server.started
    said = "a signal while starting (waiting for Redis, or loading the model): stopped"
    assert said in caplog.text


def test_a_signal_as_start_up_ends_cancels_nothing_after_it() -> None:
    """A signal whose cancel is scheduled just before the start-up block ends must not cancel
    the lifespan later, at its next wait: uvicorn's handler (which ran) stops it as usual."""
    noted: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: noted.append(signum))

    async def main() -> None:
        with stoppable_start():
            signal.raise_signal(signal.SIGTERM)  # handled now, the cancel queued on the loop
        await asyncio.sleep(0.05)  # the queued cancel runs here

    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, before)
    assert noted == [signal.SIGTERM]  # the handler in place still ran


def test_a_redis_that_refuses_writes_is_not_said_reachable_again_while_it_does(
    make_settings: SettingsFactory, redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that refuses writes answers reads: the sweep's passed while the flush and the
    learner failed on, and the log said Redis was reachable again at once. Its end is said when
    every job that failed has succeeded since."""
    settings = make_settings(redis_url=redis_process.url, model_refresh_s=0.05, sweep_s=0.05)
    r = redis.Redis.from_url(redis_process.url)
    said: list[str] = []

    async def refusing(router: Router) -> None:
        r.config_set("min-replicas-to-write", 1)
        await router.choose("What is 2+2?")  # degraded: the flush fails each second
        await asyncio.sleep(2.5)
        said.extend(m for m in caplog.messages if "Redis" in m)
        r.config_set("min-replicas-to-write", 0)
        await asyncio.sleep(1.5)

    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        asyncio.run(_running(settings, refusing))
    assert said and all(" waiting for Redis: " in m for m in said), said
    after = [m for m in caplog.messages if "Redis" in m][len(said) :]
    assert len(after) == 1 and after[0].startswith("Redis reachable again, "), after
