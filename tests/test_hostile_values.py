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

import pytest
import redis

from bandit_router.service.router import Router
from bandit_router.settings import Settings
from bandit_router.store.keys import KEY_DECISION, KEY_DONE, KEY_EVENTS, KEY_PENDING, KEY_STATS
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect
from tests.conftest import ClientFactory, SettingsFactory

ARMS = ("4b", "7b", "14b")


def _key(settings: Settings, template: str, event_id: str = "") -> str:
    return template.format(p="{" + settings.key_prefix + "}", event_id=event_id)


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url or "")


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
