"""The reward window: a part is taken until ``ts + BANDIT_REWARD_WAIT_S``, refused (404) after.

The decision itself is kept longer (so the sweep can still close its window after an outage),
which is why the rule is checked against the window, not the key's expiry.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
from fastapi.testclient import TestClient

from bandit_router.errors import AlreadyRewarded, InvalidReward, WindowClosed
from bandit_router.features import extract
from bandit_router.http.app import create_app
from bandit_router.rewards import RewardParts
from bandit_router.service.router import Router
from bandit_router.store.keys import KEY_DECISION, KEY_PENDING
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect
from tests.conftest import ClientFactory, SettingsFactory, readable

WAIT_S = 60


def _decision(event_id: str, ts: float) -> dict[str, object]:
    return {
        "event_id": event_id,
        "features": extract("a question").to_json(),
        "arms": ["4b", "7b"],
        "arm": "7b",
        "probability": 0.5,
        "probabilities": {"4b": 0.5, "7b": 0.5},
        "policy": "egreedy",
        "model_version": 0,
        "ts": ts,
    }


def test_the_window_boundary_in_both_scripts(make_settings: SettingsFactory) -> None:
    settings = make_settings()

    async def scenario() -> None:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, WAIT_S, 10_000)
        ts = time.time()
        end = ts + WAIT_S
        try:
            for final in (None, {"parts": {"reward": 1.0}, "reward": 1.0, "ts": ts}):
                event_id = f"e-{final is not None}"
                await store.save_decision(event_id, _decision(event_id, ts))
                with pytest.raises(WindowClosed) as closed:
                    await store.add_parts(event_id, {"reward": 1.0}, final, now=end + 0.01)
                assert closed.value.status_code == 404 and closed.value.field == "event_id"
                assert closed.value.closed_at == pytest.approx(end)
                assert f"closed at {time.strftime('%Y-%m-%dT', time.gmtime(end))}" in str(
                    closed.value
                )
                assert f"({WAIT_S} s after its decision, BANDIT_REWARD_WAIT_S)" in str(closed.value)
                assert await store.parts_of(event_id) == {}  # nothing was kept
                got = await store.add_parts(event_id, {"reward": 1.0}, final, now=end - 0.01)
                assert (got.logged is not None) == (final is not None)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_window_end_a_404_names_is_the_exact_one(make_settings: SettingsFactory) -> None:
    """The window's end comes back from the script as text: Lua's ``tostring`` kept 14
    significant digits, a tenth of a millisecond of a time, so a window that closed at
    :00.99996 was said to close at :01.000, after the part it refused. Now the end as stored."""
    settings = make_settings()

    async def scenario() -> None:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, WAIT_S, 10_000)
        end = float(int(time.time())) + 0.99996 - 1
        try:
            await store.save_decision("e", _decision("e", end - WAIT_S))
            with pytest.raises(WindowClosed) as closed:
                await store.add_parts("e", {"reward": 1.0}, now=end + 0.00002)
            assert closed.value.closed_at == end
            said = time.strftime("%H:%M:%S", time.gmtime(end)) + ".999"
            assert f"closed at {time.strftime('%Y-%m-%d', time.gmtime(end))}T{said}" in str(
                closed.value
            )
        finally:
            await store.close()

    asyncio.run(scenario())


def _late_answer(client: TestClient, body: dict[str, object]) -> dict[str, object]:
    response = client.post("/reward", json=body)
    assert response.status_code == 404, response.text
    answer: dict[str, object] = response.json()
    assert answer["field"] == "event_id"
    assert "reward window" in str(answer["detail"]) and "closed at" in str(answer["detail"])
    return answer


def test_a_part_after_the_window_is_404_and_not_learned(make_client: ClientFactory) -> None:
    # A sweep only at start: the late parts meet a window that closed but is not settled yet.
    client = make_client(reward_wait_s=1, sweep_s=500, policy="egreedy")
    early = client.post("/choose", json={"query": "what is a cat?"}).json()
    silent = client.post("/choose", json={"query": "what is a dog?"}).json()
    decided = time.time()
    answer = client.post("/reward", json={"event_id": early["event_id"], "latency_ms": 300})
    assert answer.status_code == 200 and answer.json()["status"] == "pending"
    time.sleep(max(0.0, decided + 1.3 - time.time()))

    _late_answer(client, {"event_id": early["event_id"], "accuracy": 1})  # a single part
    _late_answer(client, {"event_id": early["event_id"], "accuracy": 1, "final": True})
    _late_answer(client, {"event_id": silent["event_id"], "reward": 1})  # final by itself
    _late_answer(client, {"event_id": silent["event_id"], "final": True})
    body = {"event_id": silent["event_id"], "accuracy": 1, "rating": 5, "latency_ms": 10}
    _late_answer(client, body)  # every weighted part at once
    stats = client.get("/stats").json()
    assert stats["rewards_accepted"] == 0 and stats["model_version"] == 0


@pytest.mark.parametrize("final", [False, True])
def test_a_reward_in_time_that_reaches_redis_after_the_sweep_is_not_also_counted_skipped(
    make_settings: SettingsFactory, final: bool
) -> None:
    """A part the receiving process took before the window closed (its clock said so) can reach
    Redis just after a sweep let that window go for having no part, counting it in
    ``skipped_no_reward``. The part is kept and the next sweep learns it (a reward final by
    itself, a direct ``reward`` or every weighted part, is logged at once): the event was then
    counted both skipped and rewarded (decisions 1, rewards 1, skipped 1). The skip is undone
    when the reward brings the event back."""
    settings = make_settings(reward_wait_s=WAIT_S)

    async def scenario() -> None:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, WAIT_S, 10_000)
        router = await Router.open(settings, store)
        try:
            d = await router.choose("a question")
            decided = await store.decision(d.event_id)
            assert decided is not None
            end = decided["ts"] + WAIT_S
            assert await router.sweep(now=end + 0.01) == 0  # no part yet: let go, skipped
            assert (await router.stats())["skipped_no_reward"] == 1
            if final:
                whole = {"parts": {"reward": 1.0}, "reward": 1.0, "ts": end, "default": False}
                got = await store.add_parts(d.event_id, {"reward": 1.0}, whole, now=end - 0.01)
                assert got.logged is not None  # taken: it came in time, and is all its parts
            else:
                got = await store.add_parts(d.event_id, {"accuracy": 1.0}, now=end - 0.01)
                assert got.parts == {"accuracy": 1.0}  # taken: it came in time
                assert await router.sweep(now=end + 0.02) == 1  # and learned
            stats = await router.stats()
            counted = (stats["decisions"], stats["rewards_accepted"], stats["skipped_no_reward"])
            assert counted == (1, 1, 0)
        finally:
            await router.close()
            await store.close()

    asyncio.run(scenario())


def test_an_event_id_chosen_again_after_its_decision_expired_is_refused(
    make_settings: SettingsFactory,
) -> None:
    """An id rewarded, whose decision expired before its done marker did (the marker is set at
    the reward, later), chosen again: it got a new decision whose every reward was 409, tracked
    for its window, and learned with the default reward once the marker expired. Now the
    /choose itself is the 409, naming the id, and nothing is stored or tracked."""
    settings = make_settings(reward_wait_s=WAIT_S, default_reward=0.5)

    async def scenario() -> None:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, WAIT_S, 10_000)
        router = await Router.open(settings, store)
        try:
            d = await router.choose("a question", event_id="reused")
            await router.reward(d.event_id, RewardParts(accuracy=1.0), final=True)
            await store.redis.delete(store.key(KEY_DECISION, "reused"))  # expired
            with pytest.raises(AlreadyRewarded) as refused:
                await router.choose("another question", event_id="reused")
            assert (refused.value.status_code, refused.value.field) == (409, "event_id")
            assert "new event_id" in refused.value.message
            assert await store.redis.get(store.key(KEY_DECISION, "reused")) is None
            end = time.time() + WAIT_S + 1
            await router.sweep(now=end)
            assert await store.due(end) == []
            assert (await router.stats())["rewards_accepted"] == 1
        finally:
            await router.close()
            await store.close()

    asyncio.run(scenario())


def test_a_window_raised_across_a_restart_keeps_the_decision_it_reopens(
    make_settings: SettingsFactory,
) -> None:
    """An event the sweep let go with no part, then sent a part within a window raised across a
    restart, is tracked again until the new end; its decision was still kept only as long as the
    setting at the decision said (at least 600 s less than the new end here), so the sweep at
    the new end found it gone: the part, answered 200, was not learned, and the event counted
    neither rewarded nor skipped. The part now keeps the decision until the new setting's keep
    time."""
    before = make_settings(reward_wait_s=1, sweep_s=0.2, policy="egreedy")
    with TestClient(create_app(before)) as client:
        event_id = client.post("/choose", json={"query": "what is a cat?"}).json()["event_id"]
        deadline = time.time() + 10
        while client.get("/stats").json()["skipped_no_reward"] != 1:
            assert time.time() < deadline, "the sweep did not let the window go"
            time.sleep(0.1)
    after = before.model_copy(update={"reward_wait_s": 700})
    with TestClient(create_app(after)) as client:
        answer = client.post("/reward", json={"event_id": event_id, "accuracy": 1})
        assert answer.status_code == 200 and answer.json()["status"] == "pending"
        assert client.get("/stats").json()["skipped_no_reward"] == 0
    plain = redis.Redis.from_url(after.redis_url or "")
    decision = KEY_DECISION.format(p="{" + after.key_prefix + "}", event_id=event_id)
    try:
        decided = json.loads(plain.get(decision) or b"")
        window_end = plain.zscore(KEY_PENDING.format(p="{" + after.key_prefix + "}"), event_id)
        assert window_end is not None and window_end == pytest.approx(decided["ts"] + 700)
        kept_until = time.time() + plain.pttl(decision) / 1000
        assert kept_until > window_end  # the sweep at the window's end finds it
        # as a decision made now is kept, no longer
        assert decided["ts"] + 700 + 700 - 1 <= kept_until <= decided["ts"] + 700 + 700 + 1
    finally:
        plain.close()


@pytest.mark.parametrize("default_reward", [None, 0.5])
def test_a_window_swept_after_its_decision_expired_is_counted_skipped_once(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture, default_reward: float | None
) -> None:
    """No sweep ran from a window's end until its decision expired (every process stopped
    longer than the keep time): the event cannot be learned. With no part and no default
    reward it was counted skipped; with a part (its hash outlives the decision), or a default
    reward, the window was let go with a warning per event and counted nowhere, so decisions no
    longer added up to rewards plus skipped, and an outage's thousands of windows were as many
    log lines. Now each is counted skipped, and a sweep says them in one line."""
    settings = make_settings(reward_wait_s=WAIT_S, default_reward=default_reward)

    async def scenario() -> None:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, WAIT_S, 10_000)
        router = await Router.open(settings, store)
        try:
            ids = [(await router.choose(f"question {i}")).event_id for i in range(3)]
            await router.reward(ids[0], RewardParts(latency_ms=100.0))
            for event_id in ids:
                await store.redis.delete(store.key(KEY_DECISION, event_id))  # expired
            end = time.time() + WAIT_S + 1
            with caplog.at_level("WARNING", logger="bandit_router"):
                assert await router.sweep(now=end) == 0
                assert await router.sweep(now=end + 1) == 0  # nothing left to count again
            assert await store.due(end + 1) == []
            stats = await router.stats()
            counted = (stats["decisions"], stats["rewards_accepted"], stats["skipped_no_reward"])
            assert counted == (3, 0, 3)
            said = [r.getMessage() for r in caplog.records if "expired" in r.getMessage()]
            # one line, of the windows it could not learn (with no default reward, those with a
            # part: the others are let go with nothing to learn before their decisions are read)
            assert len(said) == 1, said
            assert said[0].startswith(f"{1 if default_reward is None else 3} events not learned")
        finally:
            await router.close()
            await store.close()

    asyncio.run(scenario())


def test_windows_two_sweeps_find_expired_at_once_are_said_once(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes sweep the same ended windows at once, whose decisions expired: each window
    is counted skipped once, and said by the sweep that let it go, not by both."""
    settings = make_settings(reward_wait_s=WAIT_S, default_reward=0.5)

    async def scenario() -> None:
        stores = [
            Store(connect(settings.redis_url or ""), settings.key_prefix, WAIT_S, 10_000)
            for _ in range(2)
        ]
        routers = [await Router.open(settings, store) for store in stores]
        try:
            ids = [(await routers[0].choose(f"question {i}")).event_id for i in range(3)]
            for event_id in ids:
                await stores[0].redis.delete(stores[0].key(KEY_DECISION, event_id))  # expired
            end = time.time() + WAIT_S + 1
            with caplog.at_level("WARNING", logger="bandit_router"):
                assert await asyncio.gather(*(r.sweep(now=end) for r in routers)) == [0, 0]
            said = [r.getMessage() for r in caplog.records if "expired" in r.getMessage()]
            assert sum(int(line.split()[0]) for line in said) == 3, said
            assert (await routers[0].stats())["skipped_no_reward"] == 3
        finally:
            for router, store in zip(routers, stores, strict=True):
                await router.close()
                await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("default_reward", [None, 0.5])
def test_a_window_whose_parts_the_weights_since_do_not_count_learns_the_default_or_is_skipped(
    make_settings: SettingsFactory, default_reward: float | None
) -> None:
    """A part stored under weights that counted it (latency), then a restart with weights that
    do not (accuracy alone): at the window's end nothing it holds makes a reward. It learns
    BANDIT_DEFAULT_REWARD when that is set, marked as the default; else it is skipped and
    counted, as an event with no part. A final before the window's end is refused (422): the
    default is for a window that ended."""
    before = make_settings(
        reward_wait_s=WAIT_S,
        default_reward=default_reward,
        reward_weights="accuracy=0.5,latency=0.5",
    )
    after = before.model_copy(update={"reward_weights": {"accuracy": 1.0}})

    async def scenario() -> None:
        store = Store(connect(before.redis_url or ""), before.key_prefix, WAIT_S, 10_000)
        router = await Router.open(before, store)
        try:
            ids = [(await router.choose(f"question {i}")).event_id for i in range(2)]
            await router.reward(ids[0], RewardParts(latency_ms=100.0))
            # every part its weights count: complete, learned at once
            await router.reward(ids[1], RewardParts(accuracy=1.0, latency_ms=100.0))
        finally:
            await router.close()
        router = await Router.open(after, store)
        try:
            with pytest.raises(InvalidReward, match="no weighted reward part present"):
                await router.reward(ids[0], RewardParts(), final=True)
            end = time.time() + WAIT_S + 1
            assert await router.sweep(now=end) == (0 if default_reward is None else 1)
            assert await store.due(end + 1) == []
            stats = await router.stats()
            assert stats["skipped_no_reward"] == (1 if default_reward is None else 0)
            logged = readable([e async for e in store.events()])
            rewards = {e.decision["event_id"]: e.reward for e in logged}
            # 0.5 x accuracy 1 + 0.5 x latency 100 ms of the 2,000 ms budget
            assert rewards[ids[1]]["reward"] == pytest.approx(0.975)
            assert not rewards[ids[1]]["default"]
            if default_reward is None:
                assert ids[0] not in rewards
            else:
                assert rewards[ids[0]]["reward"] == 0.5 and rewards[ids[0]]["default"]
        finally:
            await router.close()
            await store.close()

    asyncio.run(scenario())
