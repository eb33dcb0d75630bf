"""Values in Redis the service never writes never break the reward path or the sweep.

An operator, a bug or a partial restore may leave anything under the service's keys: a counter
that is not a number, a decision record that is not one, a reward part that is not a number, a
pending id that is not text. Here such values go straight into Redis (the test's prefix on both
Redis setups), then the service is driven through HTTP, or the router's sweep is run: each value
costs at most its own event, with a warning, and every other event goes on as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import pytest
import redis

from bandit_router.cli.main import main
from bandit_router.errors import StoreDamaged, UnreadableEvent
from bandit_router.rewards import RewardParts
from bandit_router.service.router import Router
from bandit_router.settings import Settings
from bandit_router.store.keys import (
    KEY_CHALLENGERS,
    KEY_DECISION,
    KEY_DONE,
    KEY_EVENTS,
    KEY_LEASE,
    KEY_MODEL,
    KEY_PARTS,
    KEY_PENDING,
    KEY_POLICY,
    KEY_PROMOTIONS,
    KEY_STATS,
    KEY_WORD_SECRET,
)
from bandit_router.store.records import MAX_TS
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect
from tests.conftest import (
    ClientFactory,
    SettingsFactory,
    readable,
    rewarded_traffic,
    use_settings,
)

ARMS = ("4b", "7b", "14b")


def _key(settings: Settings, template: str, event_id: str = "") -> str:
    return template.format(p="{" + settings.key_prefix + "}", event_id=event_id)


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url or "")


def _each_a_409(
    client: Any,
    caplog: pytest.LogCaptureFixture,
    calls: list[tuple[str, dict[str, Any]]],
    bad: str,
    detail: str,
) -> None:
    """Each call answers 409 naming ``event_id`` with ``detail``, said in the log once a call."""
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        for path, body in calls:
            response = client.post(path, json=body)
            assert response.status_code == 409, (path, body, response.text)
            error = response.json()
            assert error["field"] == "event_id"
            assert detail in error["detail"]
    said = [m for m in caplog.messages if bad in m]
    assert len(said) == len(calls), said  # once a call


async def _open(settings: Settings) -> Router:
    store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
    return await Router.open(settings, store)


async def _close(router: Router) -> None:
    await router.close()
    await router.store.close()


# Counters that are not numbers -----------------------------------------------------------

BROKEN_COUNTERS: dict[str, str] = {
    **{f"decisions:{arm}": "abc" for arm in ARMS},
    **{f"rewards:{arm}": "12.5" for arm in ARMS},  # not an integer: HINCRBY refuses it
    **{f"reward_sum:{arm}": "not a float" for arm in ARMS},
    "skipped_no_reward": "abc",
    "decisions_dropped": "abc",
}


def _break_counters(r: redis.Redis, settings: Settings) -> None:
    for name, value in BROKEN_COUNTERS.items():
        r.hset(_key(settings, KEY_STATS), name, value)


def test_counters_that_are_not_numbers_stop_neither_a_decision_nor_a_reward(
    make_settings: SettingsFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The decision is stored and tracked, the reward logged and learned, /stats and /metrics
    answer; the counters are left as they were, each said once in the log."""
    settings = make_settings()
    client = make_client(settings)
    r = _redis(settings)
    _break_counters(r, settings)

    decision = client.post("/choose", json={"query": "what is a cat?"})
    assert decision.status_code == 200, decision.text
    event_id = decision.json()["event_id"]
    assert r.exists(_key(settings, KEY_DECISION, event_id))
    assert r.zscore(_key(settings, KEY_PENDING), event_id) is not None  # its window is tracked

    reward = client.post("/reward", json={"event_id": event_id, "reward": 0.75})
    assert reward.status_code == 200, reward.text
    assert reward.json()["status"] == "final"
    assert r.exists(_key(settings, KEY_DONE, event_id))
    assert r.xlen(_key(settings, KEY_EVENTS)) == 1
    assert r.zscore(_key(settings, KEY_PENDING), event_id) is None
    assert client.get("/healthz").json()["model_version"] == 1  # learned

    stored: dict[bytes, bytes] = r.hgetall(_key(settings, KEY_STATS))  # type: ignore[assignment]
    assert {k: stored[k.encode()].decode() for k in BROKEN_COUNTERS} == BROKEN_COUNTERS
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        for _ in range(2):
            stats = client.get("/stats")
            assert stats.status_code == 200, stats.text
            assert stats.json()["decisions"] == 0  # the broken counters are left out
            assert client.get("/metrics").status_code == 200
    said = [m for m in caplog.messages if "decisions:4b" in m and "is not a number" in m]
    assert len(said) == 1, caplog.messages
    r.close()


def test_the_sweep_and_the_buffer_count_nothing_into_a_counter_that_is_not_a_number(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The sweep lets silent windows go (in its batch script, and one at a time), and a flush
    counts the decisions its buffer dropped: a broken counter fails none of them."""
    settings = make_settings(reward_wait_s=60)
    r = _redis(settings)
    _break_counters(r, settings)

    async def scenario() -> None:
        router = await _open(settings)
        silent = [await router.choose(f"question {i}") for i in range(2)]
        await router.store.drop_pending(silent[0].event_id)
        assert await router.sweep(now=time.time() + 61) == 0
        assert await router.store.due(time.time() + 61) == []  # every window let go
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            await router.store.count("decisions_dropped", 3)
        assert "counter decisions_dropped not counted" in caplog.text
        await _close(router)

    asyncio.run(scenario())
    assert r.hget(_key(settings, KEY_STATS), "skipped_no_reward") == b"abc"
    r.close()


def test_counters_too_big_to_count_are_left_out_not_summed_to_infinity(
    make_settings: SettingsFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Counters of 1e308 are finite, but /stats and /metrics sum every arm's: the sum was
    infinite, and its int() a 500 on every read until an operator deleted them."""
    settings = make_settings()
    client = make_client(settings)
    rewarded_traffic(client, 3)
    r = _redis(settings)
    huge = {f"{name}:{arm}": "1e308" for name in ("decisions", "rewards") for arm in ARMS}
    r.hset(_key(settings, KEY_STATS), mapping=huge)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        stats = client.get("/stats")
        assert stats.status_code == 200, stats.text
        assert stats.json()["decisions"] == stats.json()["rewards_accepted"] == 0
        metrics = client.get("/metrics")
        assert metrics.status_code == 200, metrics.text
    said = [m for m in caplog.messages if "decisions:4b" in m and "is not a number" in m]
    assert len(said) == 1, caplog.messages
    r.close()


# Decision records that do not read -------------------------------------------------------


def _record(**fields: Any) -> bytes:
    return orjson.dumps({"event_id": "x", "probability": 1.0, **fields})


# (the record stored, what the answer says of it)
UNREADABLE_DECISIONS: list[tuple[bytes, str]] = [
    (b"{oops", "not a JSON object"),
    (b"", "not a JSON object"),
    (b"[1, 2]", "not a JSON object"),
    (b"[1]", "not a JSON object"),  # cjson's table has [1] but no [2]
    (b'"a string"', "not a JSON object"),
    (b"null", "not a JSON object"),
    (_record(arm="7b"), "ts is not a time"),
    (_record(ts="yesterday", arm="7b"), "ts is not a time"),
    (_record(ts=True, arm="7b"), "ts is not a time"),
    (_record(ts=-1e300, arm="7b"), "ts is not a time"),  # its window's end is no date
    (_record(ts=-0.5, arm="7b"), "ts is not a time"),  # before 0, however little
    (_record(ts=1e300, arm="7b"), "ts is not a time"),  # a window that would never close
    (b'{"ts": NaN, "arm": "7b"}', "ts is not a time"),
    (_record(ts=time.time()), "arm is not a string"),
    (_record(ts=time.time(), arm=7), "arm is not a string"),
    (_record(ts=time.time(), arm=["7b"]), "arm is not a string"),
]


def _store_by_hand(r: redis.Redis, settings: Settings, event_id: str, raw: bytes) -> None:
    """``raw`` as the decision of ``event_id``, its window tracked as the service tracks one."""
    r.set(_key(settings, KEY_DECISION, event_id), raw, ex=600)
    r.zadd(_key(settings, KEY_PENDING), {event_id: time.time() + settings.reward_wait_s})


@pytest.mark.parametrize(("raw", "problem"), UNREADABLE_DECISIONS)
def test_a_decision_that_does_not_read_is_a_409_naming_the_event_and_nothing_else_breaks(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    problem: str,
) -> None:
    settings = make_settings()
    client = make_client(settings)
    r = _redis(settings)
    good = client.post("/choose", json={"query": "what is a cat?"}).json()["event_id"]
    bad = f"by-hand-{time.monotonic_ns()}"
    _store_by_hand(r, settings, bad, raw)

    calls: list[tuple[str, dict[str, Any]]] = [
        ("/reward", {"event_id": bad, "reward": 0.5}),  # final by itself: logged at once
        ("/reward", {"event_id": bad, "accuracy": 1}),  # kept until the other parts come
        ("/reward", {"event_id": bad, "accuracy": 1, "final": True}),
        ("/choose", {"query": "what is a cat?", "event_id": bad}),  # the same id again
    ]
    _each_a_409(
        client,
        caplog,
        calls,
        bad,
        f"decision stored for event_id {bad!r} is unreadable ({problem})",
    )
    assert not r.exists(_key(settings, KEY_PARTS, bad), _key(settings, KEY_DONE, bad))
    assert r.xlen(_key(settings, KEY_EVENTS)) == 0

    done = client.post("/reward", json={"event_id": good, "reward": 1.0})
    assert done.status_code == 200 and done.json()["status"] == "final", done.text
    assert client.get("/stats").status_code == 200
    assert client.get("/healthz").json()["model_version"] == 1
    r.close()


@pytest.mark.parametrize("ts", [0.0, MAX_TS])
def test_a_decision_at_either_end_of_time_reads(
    make_settings: SettingsFactory, make_client: ClientFactory, ts: float
) -> None:
    """ts 0 and MAX_TS are times (records.read_decision and DECISION_LUA take both ends): their
    parts are refused as late (a 404) or kept, never called unreadable."""
    settings = make_settings()
    client = make_client(settings)
    r = _redis(settings)
    _store_by_hand(r, settings, "edge", _record(ts=ts, arm="7b"))
    response = client.post("/reward", json={"event_id": "edge", "accuracy": 1})
    if ts == 0.0:
        assert response.status_code == 404, response.text
        assert "closed at 1970-01-01T01:00:00.000+00:00" in response.json()["detail"]
    else:
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "pending"
    r.close()


# (what is changed in a whole stored decision, what a repeated /choose says of it)
THIN_DECISIONS: list[tuple[dict[str, Any], str]] = [
    ({"arms": None}, "decision: arms is not a non-empty list of names"),
    ({"features.s": [0.0] * 9 + ["many"]}, "decision: features.s is not a list of 10 numbers"),
    ({"features.s": [0.0] * 9 + [None]}, "decision: features.s is not a list of 10 numbers"),
    ({"features.n": [1.0]}, "decision: features.n or features.c is not an object"),
    ({"policy": 5}, "decision: policy is not a string or model_version not an integer"),
    ({"model_version": 1.5}, "decision: policy is not a string or model_version not an"),
]


@pytest.mark.parametrize(("change", "said"), THIN_DECISIONS)
def test_a_repeated_choose_answers_only_a_whole_stored_decision(
    make_settings: SettingsFactory, make_client: ClientFactory, change: dict[str, Any], said: str
) -> None:
    """A record the reward path can read (a time, an arm) but not all a repeated /choose
    answers: a 409 naming the field rather than a 500."""
    settings = make_settings()
    client = make_client(settings)
    r = _redis(settings)
    whole = client.post("/choose", json={"query": "what is a cat?"}).json()["event_id"]
    raw = r.get(_key(settings, KEY_DECISION, whole))
    assert raw is not None
    record = orjson.loads(raw)
    for path, value in change.items():
        *parents, last = path.split(".")
        target = record
        for parent in parents:
            target = target[parent]
        target[last] = value
    _store_by_hand(r, settings, "thin", orjson.dumps(record))
    response = client.post("/choose", json={"query": "what is a cat?", "event_id": "thin"})
    assert response.status_code == 409, response.text
    assert said in response.json()["detail"]
    r.close()


@pytest.mark.parametrize("default", [None, 0.25])
@pytest.mark.parametrize("own_weights", [False, True])
def test_the_sweep_lets_the_window_of_a_decision_that_does_not_read_go(
    make_settings: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
    default: float | None,
    own_weights: bool,
) -> None:
    """Among ended windows, some of decisions that do not read (with a part, and without): the
    sweep learns the others, lets these go with a warning each and counts them skipped; the next
    sweep finds nothing left. A record the scripts can read but the log's readers cannot (no
    features) is logged, and the learner moves past it."""
    arms: list[dict[str, Any]] = [{"name": name} for name in ARMS]
    if own_weights:  # gateway arms: the sweep reads each event's own weights from its decision
        upstream = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
        arms = [{**arm, "upstream": upstream} for arm in arms]
    settings = make_settings(reward_wait_s=60, default_reward=default, arms=arms)
    r = _redis(settings)

    async def scenario() -> None:
        router = await _open(settings)
        with_part = await router.choose("one")
        silent = await router.choose("two")
        await router.reward(with_part.event_id, RewardParts(accuracy=1.0))
        for i, (raw, _) in enumerate(UNREADABLE_DECISIONS):
            _store_by_hand(r, settings, f"bad-{i}", raw)
            if i % 2:
                r.hset(_key(settings, KEY_PARTS, f"bad-{i}"), "accuracy", "1.0")
        thin = _record(ts=time.time(), arm="7b", event_id="thin")
        _store_by_hand(r, settings, "thin", thin)
        r.hset(_key(settings, KEY_PARTS, "thin"), "accuracy", "1.0")

        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            closed = await router.sweep(now=time.time() + 61)
        assert closed == (2 if default is None else 3)  # with_part, thin; and silent's default
        assert await router.store.due(time.time() + 61) == []
        assert await router.sweep(now=time.time() + 61) == 0
        said = [m for m in caplog.messages if "is unreadable" in m]
        with_parts = sum(1 for i in range(len(UNREADABLE_DECISIONS)) if i % 2)
        assert len(said) == (with_parts if default is None else len(UNREADABLE_DECISIONS))
        skipped = len(UNREADABLE_DECISIONS) + (1 if default is None else 0)
        assert (await router.store.counters())["skipped_no_reward"] == skipped

        await router.learner.step()
        logged = [e async for e in router.store.events()]
        assert sorted(type(e).__name__ for e in logged) == sorted(
            ["Event", "Unreadable"] + (["Event"] if default is not None else [])
        )
        assert router.version == closed - 1  # every readable event learned, thin passed over
        assert silent.event_id  # chosen, never rewarded
        await _close(router)

    asyncio.run(scenario())
    r.close()


@pytest.mark.parametrize(
    "marker",
    [
        b"1",  # an older version's done marker, before it kept the reward
        b"{oops",
        b'{"reward": 0.5, "parts": {"speed": 1.0}, "ts": 1.0, "default": false}',
        b'{"reward": 0.5, "parts": {"accuracy": "1"}, "ts": 1.0, "default": false}',
        b'{"reward": "high", "parts": {}, "ts": 1.0, "default": false}',
    ],
)
def test_a_done_marker_that_holds_no_reward_the_service_writes_is_not_read(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch, marker: bytes
) -> None:
    """An event marked done meanwhile (another process, an older version, a hand): its
    marker's reward is not read unless it is one the service writes. The final /reward that
    met it answers its own reward and parts; the sweep closes the other windows and finds
    nothing left after."""
    settings = make_settings(reward_wait_s=60)
    r = _redis(settings)

    async def scenario() -> None:
        router = await _open(settings)
        marked, other, raced = [await router.choose(q) for q in ("one", "two", "three")]
        for event in (marked, other, raced):
            await router.reward(event.event_id, RewardParts(accuracy=1.0))
        finalize = router.store.finalize

        async def marked_first(event_id: str, *args: Any) -> Any:  # as another process would
            r.set(_key(settings, KEY_DONE, event_id), marker)
            return await finalize(event_id, *args)

        monkeypatch.setattr(router.store, "finalize", marked_first)
        got = await router.reward(raced.event_id, RewardParts(latency_ms=100.0), final=True)
        assert (got.status, got.parts) == ("final", {"accuracy": 1.0, "latency_ms": 100.0})
        assert got.reward is not None and 0 < got.reward <= 1
        monkeypatch.setattr(router.store, "finalize", finalize)
        r.set(_key(settings, KEY_DONE, marked.event_id), marker)
        await router.sweep(now=time.time() + 61)
        assert await router.store.due(time.time() + 61) == []
        await router.learner.step()
        logged = [e async for e in router.store.events()]
        assert [getattr(e, "decision", {}).get("event_id") for e in logged] == [other.event_id]
        await _close(router)

    asyncio.run(scenario())
    r.close()


def test_a_buffered_decision_whose_id_holds_one_that_does_not_read_is_let_go(
    make_settings: SettingsFactory,
) -> None:
    """The buffer keeps decisions Redis missed; writing one finds its id taken by a record that
    does not read: it is let go as for any record under its id, and the flush goes on."""
    settings = make_settings()
    r = _redis(settings)
    _store_by_hand(r, settings, "taken", b"{oops")

    async def scenario() -> None:
        router = await _open(settings)
        decided = await router.choose("one")
        raw = r.get(_key(settings, KEY_DECISION, decided.event_id))
        assert isinstance(raw, bytes)
        for event_id in ("taken", "free"):
            router._keep({**orjson.loads(raw), "event_id": event_id})
        assert await router.flush() == 2
        assert not router._buffer
        assert r.get(_key(settings, KEY_DECISION, "taken")) == b"{oops"
        assert r.exists(_key(settings, KEY_DECISION, "free"))
        await _close(router)

    asyncio.run(scenario())
    r.close()


# Reward parts and pending ids that are not what the service writes -----------------------

# Fields of a parts hash no reward can use: none is a part.
NOT_PARTS: dict[bytes, bytes] = {
    b"latency_ms": b"abc",
    b"rating": b"nan",
    b"cost_usd": b"inf",
    b"accuracy": b"7",  # beyond its bounds
    b"nonsense": b"1",
    b"\xff\xfe": b"1",
}


def _write_parts(r: redis.Redis, settings: Settings, event_id: str, **good: float) -> None:
    key = _key(settings, KEY_PARTS, event_id)
    for name, value in NOT_PARTS.items():
        r.hset(key, name, value)
    for part, number in good.items():
        r.hset(key, part, number)


def test_a_reward_ignores_and_deletes_what_its_parts_hash_holds_that_is_no_part(
    make_settings: SettingsFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    client = make_client(settings)
    r = _redis(settings)
    event_id = client.post("/choose", json={"query": "what is a cat?"}).json()["event_id"]
    _write_parts(r, settings, event_id)
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        response = client.post("/reward", json={"event_id": event_id, "reward": 0.5})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "final"
    assert response.json()["reward"] == 0.5
    assert response.json()["parts"] == {"reward": 0.5}
    assert "reward parts that are not parts deleted" in caplog.text
    assert client.get("/healthz").json()["model_version"] == 1
    r.close()


def test_the_sweep_learns_the_parts_and_drops_what_is_not_one(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Ended windows whose parts hashes hold fields no reward can use, and a pending id that is
    not text: the sweep learns the parts there are, lets the rest go, and the next finds none."""
    settings = make_settings(reward_wait_s=60)
    r = _redis(settings)

    async def scenario() -> None:
        router = await _open(settings)
        with_part = await router.choose("one")
        only_junk = await router.choose("two")
        _write_parts(r, settings, with_part.event_id, accuracy=1.0)
        _write_parts(r, settings, only_junk.event_id)
        r.zadd(_key(settings, KEY_PENDING), {b"\xff\xfe not text": time.time()})
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            assert await router.sweep(now=time.time() + 61) == 1
        assert "pending ids that are not text dropped" in caplog.text
        assert await router.store.due(time.time() + 61) == []
        assert (await router.store.counters())["skipped_no_reward"] == 1  # only_junk
        await router.learner.step()
        logged = [e async for e in router.store.events()]
        assert [(e.decision["event_id"], e.reward["parts"]) for e in readable(logged)] == [
            (with_part.event_id, {"accuracy": 1.0})
        ]
        await _close(router)

    asyncio.run(scenario())
    r.close()


# Keys of the wrong type ------------------------------------------------------------------


def _put(r: redis.Redis, key: str, kind: str) -> None:
    """A key of Redis type ``kind`` under ``key``, in place of whatever was there."""
    r.delete(key)
    if kind == "string":
        r.set(key, "by hand")
    elif kind == "not UTF-8":
        r.set(key, b"\xff\xfe by hand")
    elif kind == "hash":
        r.hset(key, "by", "hand")
    elif kind == "list":
        r.rpush(key, "by hand")
    else:
        raise AssertionError(kind)


# (the event's key, the type written there, what the answer calls it, the type it should be)
EVENT_MISFITS: list[tuple[str, str, str, str]] = [
    (KEY_DECISION, "hash", "decision", "string"),
    (KEY_DECISION, "list", "decision", "string"),
    (KEY_PARTS, "string", "record of reward parts", "hash"),
    (KEY_PARTS, "list", "record of reward parts", "hash"),
    (KEY_DONE, "hash", "final-reward marker", "string"),
]


@pytest.mark.parametrize(("template", "kind", "what", "expected"), EVENT_MISFITS)
def test_an_event_key_of_the_wrong_type_is_a_409_naming_the_event_and_nothing_else_breaks(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    template: str,
    kind: str,
    what: str,
    expected: str,
) -> None:
    """/reward (each script) and, for the decision, a repeated /choose: a 409 naming the event
    and the type, said once a call; nothing is written for it; other events go on."""
    settings = make_settings()
    client = make_client(settings)
    r = _redis(settings)
    good = client.post("/choose", json={"query": "what is a cat?"}).json()["event_id"]
    bad = f"by-hand-{time.monotonic_ns()}"
    again: dict[str, object] = {"query": "what is a cat?", "event_id": bad}
    if template == KEY_DECISION:
        r.zadd(_key(settings, KEY_PENDING), {bad: time.time() + settings.reward_wait_s})
    else:
        assert client.post("/choose", json=again).status_code == 200
    _put(r, _key(settings, template, bad), kind)
    before = {t: r.type(_key(settings, t, bad)) for t in (KEY_DECISION, KEY_PARTS, KEY_DONE)}

    calls = [
        ("/reward", {"event_id": bad, "reward": 0.5}),  # final by itself: logged at once
        ("/reward", {"event_id": bad, "accuracy": 1}),
        ("/reward", {"event_id": bad, "latency_ms": 100}),  # kept until the other parts come
        ("/reward", {"event_id": bad, "accuracy": 1, "final": True}),
    ]
    if template == KEY_DECISION:
        calls.append(("/choose", again))  # the same id again
    _each_a_409(
        client,
        caplog,
        calls,
        bad,
        f"the {what} stored for event_id {bad!r} is unreadable (its Redis key holds a "
        f"{kind}, not a {expected})",
    )
    assert not any(record.exc_info for record in caplog.records)
    after = {t: r.type(_key(settings, t, bad)) for t in (KEY_DECISION, KEY_PARTS, KEY_DONE)}
    assert after == before  # nothing written
    assert r.xlen(_key(settings, KEY_EVENTS)) == 0
    if template != KEY_DECISION:  # the decision reads: a repeated /choose answers it
        assert client.post("/choose", json=again).json()["event_id"] == bad

    done = client.post("/reward", json={"event_id": good, "reward": 1.0})
    assert done.status_code == 200 and done.json()["status"] == "final", done.text
    assert client.get("/stats").status_code == 200
    assert client.get("/healthz").json()["model_version"] == 1
    r.close()


def test_a_marker_of_the_wrong_type_under_an_id_without_decision_is_named_on_choose(
    make_settings: SettingsFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """No decision, and a final-reward marker that is a hash: /choose with that id names the
    marker's type (SAVE_DECISION checks it before it reads the marker), not "already
    rewarded", and writes nothing."""
    settings = make_settings()
    client = make_client(settings)
    r = _redis(settings)
    bad = f"by-hand-{time.monotonic_ns()}"
    _put(r, _key(settings, KEY_DONE, bad), "hash")
    _each_a_409(
        client,
        caplog,
        [("/choose", {"query": "what is a cat?", "event_id": bad})],
        bad,
        f"the final-reward marker stored for event_id {bad!r} is unreadable (its Redis key "
        "holds a hash, not a string)",
    )
    assert r.type(_key(settings, KEY_DECISION, bad)) == b"none"
    assert r.zscore(_key(settings, KEY_PENDING), bad) is None
    r.close()


@pytest.mark.parametrize("default", [None, 0.25])
def test_the_sweep_lets_the_window_of_an_event_key_of_the_wrong_type_go(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture, default: float | None
) -> None:
    """Ended windows with a part, each with one key of the wrong type: the sweep learns the good
    one, lets each bad one go with a warning naming it, counted skipped; the next finds none."""
    settings = make_settings(reward_wait_s=60, default_reward=default)
    r = _redis(settings)

    async def scenario() -> None:
        router = await _open(settings)
        good = await router.choose("one")
        await router.reward(good.event_id, RewardParts(accuracy=1.0))
        bad = [f"bad-{i}" for i in range(len(EVENT_MISFITS))]
        for event_id, (template, kind, _, _) in zip(bad, EVENT_MISFITS, strict=True):
            if template == KEY_DECISION:
                _store_by_hand(r, settings, event_id, b"")
            else:
                await router.choose("two", event_id=event_id)
            r.hset(_key(settings, KEY_PARTS, event_id), "accuracy", "1.0")
            _put(r, _key(settings, template, event_id), kind)
        with pytest.raises(UnreadableEvent, match="its Redis key holds a hash, not a string"):
            await router.store.decision(bad[0])  # a read of its own, for the event's weights

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            assert await router.sweep(now=time.time() + 61) == 1
        for event_id in bad:
            said = [m for m in caplog.messages if repr(event_id) in m]
            assert len(said) == 1 and "its Redis key holds a" in said[0], caplog.messages
        assert await router.store.due(time.time() + 61) == []
        assert await router.sweep(now=time.time() + 61) == 0
        assert (await router.store.counters())["skipped_no_reward"] == len(bad)
        await router.learner.step()
        logged = [e async for e in router.store.events()]
        assert [e.decision["event_id"] for e in readable(logged)] == [good.event_id]
        await _close(router)

    asyncio.run(scenario())
    r.close()


def _damage_said(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    return [m for m in caplog.messages if f"Redis key {key!r} holds a" in m]


def test_a_pending_set_of_the_wrong_type_is_a_503_naming_it_until_an_operator_deletes_it(
    make_settings: SettingsFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the pending set no window can be tracked: /choose and /reward answer 503 naming
    the key and what to do, writing nothing; the log says so once; deleting it mends all."""
    settings = make_settings()
    client = make_client(settings)
    r = _redis(settings)
    event_id = client.post("/choose", json={"query": "what is a cat?"}).json()["event_id"]
    pending = _key(settings, KEY_PENDING)
    _put(r, pending, "string")

    calls = [
        ("/choose", {"query": "what is a cat?", "event_id": "fresh"}),
        ("/choose", {"query": "what is a cat?"}),
        ("/reward", {"event_id": event_id, "accuracy": 1}),
        ("/reward", {"event_id": event_id, "reward": 1}),
    ]
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        for path, body in calls:
            response = client.post(path, json=body)
            assert response.status_code == 503, (path, response.text)
            detail = response.json()["detail"]
            assert f"Redis key {pending!r} holds a string, not the zset" in detail
            assert f"until an operator deletes it (DEL {pending})" in detail
    assert len(_damage_said(caplog, pending)) == 1, caplog.messages
    assert not any(record.exc_info for record in caplog.records)
    assert not r.exists(_key(settings, KEY_DECISION, "fresh"))
    assert not r.exists(_key(settings, KEY_PARTS, event_id), _key(settings, KEY_DONE, event_id))
    assert r.xlen(_key(settings, KEY_EVENTS)) == 0

    r.delete(pending)
    assert client.post("/reward", json={"event_id": event_id, "reward": 1}).status_code == 200
    assert client.post("/choose", json={"query": "what is a cat?"}).status_code == 200
    r.close()


def test_the_sweep_stops_on_a_pending_set_of_the_wrong_type_without_a_traceback(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(reward_wait_s=60)
    r = _redis(settings)
    pending = _key(settings, KEY_PENDING)

    async def scenario() -> None:
        router = await _open(settings)
        await router.choose("one")
        _put(r, pending, "hash")
        with pytest.raises(StoreDamaged, match="holds a hash, not the zset"):
            await router.sweep(now=time.time() + 61)
        stop = asyncio.Event()
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            background = asyncio.create_task(router._every(stop, 0.01, "sweep", router.sweep))
            await asyncio.sleep(0.2)  # a dozen sweeps
            stop.set()
            await background
        assert not any(record.exc_info for record in caplog.records), caplog.messages
        r.delete(pending)
        await _close(router)

    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        asyncio.run(scenario())
    assert len(_damage_said(caplog, pending)) == 1, caplog.messages
    r.close()


def test_a_sweep_that_meets_a_log_of_the_wrong_type_stops_and_leaves_its_windows(
    make_settings: SettingsFactory,
) -> None:
    """The sweep closes a window by logging its event: a log of the wrong type stops the sweep
    (its caller says so, as for any damaged key), and the window is left for the next sweep,
    which learns it once the key is deleted."""
    settings = make_settings(reward_wait_s=60)
    r = _redis(settings)
    events = _key(settings, KEY_EVENTS)

    async def scenario() -> None:
        router = await _open(settings)
        d = await router.choose("one")
        await router.reward(d.event_id, RewardParts(accuracy=1.0))  # pending: rating missing
        _put(r, events, "hash")
        with pytest.raises(StoreDamaged, match="holds a hash, not the stream"):
            await router.sweep(now=time.time() + 61)
        r.delete(events)
        assert await router.sweep(now=time.time() + 61) == 1
        await _close(router)

    asyncio.run(scenario())
    r.close()


def test_a_log_of_the_wrong_type_stops_the_rewards_not_the_service(
    make_settings: SettingsFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The events stream is a hash: the service starts, decides, and answers each reward a 503
    naming the key, with nothing written (no done marker: the reward can come again); /stats
    says the same. Said once in the log. Deleted, rewards are logged and learned again."""
    settings = make_settings()
    r = _redis(settings)
    events = _key(settings, KEY_EVENTS)
    _put(r, events, "hash")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        client = make_client(settings)
        event_id = client.post("/choose", json={"query": "what is a cat?"}).json()["event_id"]
        for _ in range(2):
            response = client.post("/reward", json={"event_id": event_id, "reward": 1})
            assert response.status_code == 503, response.text
            assert f"Redis key {events!r} holds a hash, not the stream" in response.json()["detail"]
        stats = client.get("/stats")
        assert stats.status_code == 503 and events in stats.json()["detail"], stats.text
        assert client.get("/metrics").status_code == 200
        time.sleep(1.5)  # the learner tries again meanwhile
    assert len(_damage_said(caplog, events)) == 1, caplog.messages
    assert not any(record.exc_info for record in caplog.records), caplog.messages
    assert not r.exists(_key(settings, KEY_DONE, event_id), _key(settings, KEY_PARTS, event_id))

    r.delete(events)
    response = client.post("/reward", json={"event_id": event_id, "reward": 1})
    assert response.status_code == 200 and response.json()["status"] == "final", response.text
    _learned_soon(client, 1)
    r.close()


def _learned_soon(client: Any, version: int) -> None:
    deadline = time.monotonic() + 10
    while client.get("/healthz").json()["model_version"] < version:
        assert time.monotonic() < deadline, "not learned"
        time.sleep(0.1)


def test_a_lease_of_the_wrong_type_stops_the_learning_not_the_service(
    make_settings: SettingsFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """No process can hold the learner's lease: the service starts, decisions and rewards are
    stored and logged, the log says why nothing is learned, once; deleted, the log is learned."""
    settings = make_settings()
    r = _redis(settings)
    lease = _key(settings, KEY_LEASE)
    _put(r, lease, "hash")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        client = make_client(settings)
        event_id = client.post("/choose", json={"query": "what is a cat?"}).json()["event_id"]
        response = client.post("/reward", json={"event_id": event_id, "reward": 1})
        assert response.status_code == 200 and response.json()["status"] == "final"
        time.sleep(1.5)  # the learner tries again meanwhile
        assert client.get("/healthz").json()["learner"] is False
    said = _damage_said(caplog, lease)
    assert len(said) == 1 and "no process can learn" in said[0], caplog.messages
    assert not any(record.exc_info for record in caplog.records), caplog.messages
    assert r.xlen(_key(settings, KEY_EVENTS)) == 1

    r.delete(lease)
    _learned_soon(client, 1)
    r.close()


def test_a_stats_key_of_the_wrong_type_stops_nothing_but_the_counters(
    make_settings: SettingsFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The counters are statistics: decisions, rewards, learning and publishing go on; /stats
    and /metrics answer without them; the log says so once."""
    settings = make_settings(admin_key="admin-secret")
    r = _redis(settings)
    stats_key = _key(settings, KEY_STATS)
    _put(r, stats_key, "string")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        client = make_client(settings)
        event_id = client.post("/choose", json={"query": "what is a cat?"}).json()["event_id"]
        response = client.post("/reward", json={"event_id": event_id, "reward": 1})
        assert response.status_code == 200 and response.json()["status"] == "final"
        assert client.get("/healthz").json()["model_version"] == 1
        published = client.post("/admin/snapshot", headers={"X-API-Key": "admin-secret"})
        assert published.json() == {"model_version": 1}, published.text
        for _ in range(2):
            stats = client.get("/stats")
            assert stats.status_code == 200, stats.text
            assert stats.json()["decisions"] == 0
            assert client.get("/metrics").status_code == 200
    said = _damage_said(caplog, stats_key)
    assert len(said) == 1 and "the counters are neither kept nor shown" in said[0], said
    assert not any(record.exc_info for record in caplog.records), caplog.messages
    assert r.get(stats_key) == b"by hand"
    r.close()


ADMIN = {"X-API-Key": "admin-secret"}


@pytest.mark.parametrize(
    ("template", "kind"),
    [
        (KEY_POLICY, "hash"),
        (KEY_POLICY, "list"),
        (KEY_POLICY, "not UTF-8"),
        (KEY_CHALLENGERS, "string"),
        (KEY_PROMOTIONS, "string"),
        (KEY_PROMOTIONS, "hash"),
    ],
)
def test_a_key_the_service_does_without_of_the_wrong_type_is_read_as_absent(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    template: str,
    kind: str,
) -> None:
    """The policy override, the challengers' state and the promotions' record: read as none,
    as an unreadable value of the right type is; said once in the log (a warning naming the
    key, and the DEL that mends it). The service starts, serves, learns, publishes and
    promotes; /stats, /metrics and the CLI's status answer."""
    settings = make_settings(
        admin_key="admin-secret", policy="random", challengers="linucb", promote_min_events=10
    )
    r = _redis(settings)
    key = _key(settings, template)
    _put(r, key, kind)
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        client = make_client(settings)
        rewarded_traffic(client, 20)
        assert client.get("/healthz").json()["model_version"] == 20
        for window in (5, 6):  # two documents: /stats reuses one for BANDIT_STATS_CACHE_S
            stats = client.get("/stats", params={"window": window})
            assert stats.status_code == 200, stats.text
            assert stats.json()["policy"] == "random"  # BANDIT_POLICY: no override read
            assert client.get("/metrics").status_code == 200
        published = client.post("/admin/snapshot", headers=ADMIN)
        assert published.json() == {"model_version": 20}, published.text
        promoted = client.post("/admin/promote", json={"policy": "linucb"}, headers=ADMIN)
        assert promoted.status_code == 200, promoted.text
        stats = client.get("/stats", params={"window": 7})
        assert stats.status_code == 200, stats.text
    said = _damage_said(caplog, key)
    assert len(said) == 1 and f"DEL {key}" in said[0], caplog.messages
    assert all(rec.levelno == logging.WARNING for rec in caplog.records if key in rec.message)
    assert not any(record.exc_info for record in caplog.records), caplog.messages
    promotions = stats.json()["challengers"]["promotions"]
    if template == KEY_PROMOTIONS:  # the promotion is made; its record cannot be kept
        assert promotions == [] and r.type(key) == kind.encode()
    elif kind == "not UTF-8":
        assert [p["to_policy"] for p in promotions] == ["linucb"]
        assert r.get(key) == b"linucb"
    else:  # the learner's writes replace the key: the promotion's override, its snapshot
        assert [p["to_policy"] for p in promotions] == ["linucb"]
        assert r.type(key) == (b"string" if template == KEY_POLICY else b"hash")
    assert client.post("/choose", json={"query": "what is a cat?"}).json()["policy"] == "linucb"
    if template != KEY_POLICY:  # (mended by the promotion)
        _put(r, key, kind)
    use_settings(monkeypatch, settings)
    assert main(["status"]) == 0  # a process of its own: said once more, in its log
    r.close()


def test_a_model_key_of_the_wrong_type_is_no_snapshot_and_refuses_publishing(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The service starts from the whole log, decides, takes and learns rewards; no publish
    writes anything (a due one is put off: the /reward that made it due is a 200), an admin's is
    a 503 naming the key; said once. The CLI's status and snapshot work from the log. Deleted,
    the model is published."""
    settings = make_settings(admin_key="admin-secret", snapshot_every=1)
    r = _redis(settings)
    model = _key(settings, KEY_MODEL)
    _put(r, model, "string")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        client = make_client(settings)
        rewarded_traffic(client, 3)  # each due to be published
        assert client.get("/healthz").json()["model_version"] == 3
        for _ in range(2):
            refused = client.post("/admin/snapshot", headers=ADMIN)
            assert refused.status_code == 503, refused.text
            detail = refused.json()["detail"]
            assert f"Redis key {model!r} holds a string, not the hash" in detail
            assert "none is published" in detail and f"DEL {model}" in detail
        assert client.get("/stats").status_code == 200
        assert client.get("/metrics").status_code == 200
    said = _damage_said(caplog, model)
    assert len(said) == 1 and "no snapshot is read" in said[0], caplog.messages
    assert not any(record.exc_info for record in caplog.records), caplog.messages
    assert r.get(model) == b"by hand"
    pending: Any = r.xpending(_key(settings, KEY_EVENTS), "learners")
    assert pending["pending"] == 3  # not acknowledged: no snapshot has them
    use_settings(monkeypatch, settings)
    assert main(["status"]) == 0
    assert main(["snapshot", str(tmp_path / "model.json")]) == 0  # from the whole log

    r.delete(model)
    published = client.post("/admin/snapshot", headers=ADMIN)
    assert published.json() == {"model_version": 3}, published.text
    assert r.hget(model, "version") == b"3"
    assert r.xpending(_key(settings, KEY_EVENTS), "learners")["pending"] == 0
    r.close()


def test_a_publish_a_model_key_of_the_wrong_type_refuses_is_put_off_for_publish_s(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reward that made a publish due tried it again, a refused transaction each: a
    refused publish is put off for BANDIT_PUBLISH_S, then tried again."""
    settings = make_settings(snapshot_every=1, publish_s=0.5)
    publish, tried = Store.publish, [0]

    async def counted(store: Store, *args: Any, **kwargs: Any) -> Any:
        tried[0] += 1
        return await publish(store, *args, **kwargs)

    monkeypatch.setattr(Store, "publish", counted)
    r = _redis(settings)
    model = _key(settings, KEY_MODEL)
    _put(r, model, "string")

    async def scenario() -> None:
        router = await _open(settings)
        tried[0] = 0
        for i in range(3):  # each due to be published
            d = await router.choose(f"question {i}")
            await router.reward(d.event_id, RewardParts(reward=1.0))
        assert router.version == 3 and tried[0] == 1
        r.delete(model)
        await asyncio.sleep(0.6)  # past publish_s
        d = await router.choose("after the fix")
        await router.reward(d.event_id, RewardParts(reward=1.0))
        assert tried[0] == 2 and r.hget(model, "version") == b"4"
        await _close(router)

    asyncio.run(scenario())
    r.close()


@pytest.mark.parametrize(("template", "kind"), [(KEY_MODEL, "string"), (KEY_EVENTS, "hash")])
def test_restore_into_a_key_of_the_wrong_type_names_it_and_writes_nothing(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
    template: str,
    kind: str,
) -> None:
    """A file of another policy than the deployment's: its policy is set with the model, in one
    transaction, so a refused restore leaves no switch behind; the CLI says why, no traceback."""
    source, target = make_settings(policy="egreedy"), make_settings()  # before BANDIT_* is set
    rewarded_traffic(make_client(source), 3)
    use_settings(monkeypatch, source)
    file = tmp_path / "model.json"
    assert main(["snapshot", str(file)]) == 0
    r = _redis(target)
    _put(r, _key(target, template), kind)
    use_settings(monkeypatch, target)
    capsys.readouterr()
    assert main(["restore", str(file)]) == 1
    err = capsys.readouterr().err
    assert f"Redis key {_key(target, template)!r} holds a {kind}" in err and "Traceback" not in err
    assert r.get(_key(target, KEY_POLICY)) is None
    r.delete(_key(target, template))
    assert main(["restore", str(file)]) == 0
    assert r.get(_key(target, KEY_POLICY)) == b"egreedy"
    r.close()


@pytest.mark.parametrize(
    ("kind", "value", "found"),
    [
        ("hash", None, "a hash, not the string"),
        ("list", None, "a list, not the string"),
        ("string", b"", "a string that is empty or not UTF-8, not the secret text"),
        ("string", b"\xff\xfe", "a string that is empty or not UTF-8, not the secret text"),
    ],
)
def test_a_word_secret_that_does_not_read_stops_the_start_naming_it_and_the_fix(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
    kind: str,
    value: bytes | None,
    found: str,
) -> None:
    """No word can be hashed, and a new secret would change every word feature silently: the
    start fails with the key, the DEL and what it costs, and the secret is left as it is. The
    CLI says the same, without a traceback. BANDIT_HASH_KEY does without it."""
    settings = make_settings()
    r = _redis(settings)
    secret = _key(settings, KEY_WORD_SECRET)
    if value is None:
        _put(r, secret, kind)
    else:
        r.set(secret, value)
    before = r.dump(secret)
    with pytest.raises(StoreDamaged) as failed:
        make_client(settings)
    message = str(failed.value)
    assert f"Redis key {secret!r} holds {found}" in message
    assert f"DEL {secret}" in message and "learns its word features afresh" in message
    assert r.dump(secret) == before
    use_settings(monkeypatch, settings)
    capsys.readouterr()
    assert main(["snapshot", str(tmp_path / "model.json")]) == 1
    assert f"bandit-router snapshot: Redis key {secret!r}" in capsys.readouterr().err

    client = make_client(settings.model_copy(update={"hash_key": "the operator's"}))
    assert client.post("/choose", json={"query": "what is a cat?"}).status_code == 200
    r.delete(secret)
    client = make_client(settings)
    assert client.post("/choose", json={"query": "what is a cat?"}).status_code == 200
    assert r.type(secret) == b"string"
    r.close()
