from __future__ import annotations

import asyncio
import uuid

import pytest

from bandit_router.errors import AlreadyRewarded, StoreUnavailable, UnknownEvent
from bandit_router.store import Snapshot, Store, connect
from tests.conftest import SettingsFactory


def _store(make_settings: SettingsFactory, **kw: int) -> Store:
    s = make_settings()
    return Store(connect(s.redis_url or ""), s.key_prefix, kw.get("ttl", 60), 1000)


def _decision(event_id: str, arm: str = "7b") -> dict[str, object]:
    return {"event_id": event_id, "arm": arm, "probability": 0.9, "features": {"s": []}}


def test_decision_is_stored_once(make_settings: SettingsFactory) -> None:
    async def run() -> None:
        store = _store(make_settings)
        assert await store.save_decision("e1", _decision("e1", "4b")) is None
        again = await store.save_decision("e1", _decision("e1", "14b"))
        assert again is not None and again["arm"] == "4b"
        assert (await store.counters())["decisions:4b"] == 1
        assert await store.redis.ttl(store.key("{p}:decision:{event_id}", "e1")) > 0
        await store.close()

    asyncio.run(run())


def test_reward_accepted_once_and_logged(make_settings: SettingsFactory) -> None:
    async def run() -> None:
        store = _store(make_settings)
        await store.save_decision("e1", _decision("e1"))
        decision, stream_id = await store.add_reward("e1", {"reward": 0.5}, 0.5)
        assert decision["arm"] == "7b"
        with pytest.raises(AlreadyRewarded):
            await store.add_reward("e1", {"reward": 0.5}, 0.5)
        with pytest.raises(UnknownEvent):
            await store.add_reward(uuid.uuid4().hex, {"reward": 0.5}, 0.5)
        events = [e async for e in store.events()]
        assert [(e.stream_id, e.decision["event_id"], e.reward) for e in events] == [
            (stream_id, "e1", {"reward": 0.5})
        ]
        assert [e async for e in store.events(after=stream_id)] == []
        counters = await store.counters()
        assert (counters["rewards:7b"], counters["reward_sum:7b"]) == (1, 0.5)
        await store.close()

    asyncio.run(run())


def test_events_page_through_long_logs(make_settings: SettingsFactory) -> None:
    async def run() -> None:
        store = _store(make_settings)
        for i in range(25):
            await store.save_decision(f"e{i}", _decision(f"e{i}"))
            await store.add_reward(f"e{i}", {"reward": 0.1}, 0.1)
        ids = [e.decision["event_id"] async for e in store.events(batch=10)]
        assert ids == [f"e{i}" for i in range(25)]
        await store.close()

    asyncio.run(run())


def test_snapshot_round_trip_keeps_bytes(make_settings: SettingsFactory) -> None:
    async def run() -> None:
        store = _store(make_settings)
        assert await store.load_snapshot() is None
        blob = bytes(range(256)) * 10
        await store.save_snapshot(Snapshot("egreedy", 42, "1-0", blob))
        assert await store.load_snapshot() == Snapshot("egreedy", 42, "1-0", blob)
        await store.close()

    asyncio.run(run())


def test_unreachable_redis_is_store_unavailable() -> None:
    async def run() -> None:
        store = Store(connect("redis://127.0.0.1:1/0"), "x", 60, 1000)
        with pytest.raises(StoreUnavailable, match="retry later"):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.save_decision("e", _decision("e"))
        await store.close()

    asyncio.run(run())
