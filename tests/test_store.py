from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar, cast
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import ResponseError, WatchError

from bandit_router.errors import AlreadyRewarded, StoreUnavailable, UnknownEvent, WindowClosed
from bandit_router.features import extract
from bandit_router.store.cluster import node_url
from bandit_router.store.keys import GROUP, KEY_EVENTS, KEY_LEASE, KEY_PROBE
from bandit_router.store.records import Event, Parts, Snapshot, stream_id_key
from bandit_router.store.repository import LEASE_RENEWED, LEASE_TAKEN, Store
from bandit_router.store.transport import GroupCommit, Watched, connect, read_replies
from tests.conftest import (
    SERVER_URL,
    RedisProcess,
    SettingsFactory,
    all_events,
    keep_busy,
    readable,
)
from tests.far import Far

T = TypeVar("T")


def _with_option(url: str, option: str) -> str:
    """``url`` with the query option ``option`` (``name=value``) added."""
    return url + ("&" if "?" in url else "?") + option


async def _listed(name: str) -> list[dict[str, str]]:
    """The test server's clients named ``name``, once a closed one had a moment to leave."""
    probe = connect(SERVER_URL)
    try:
        deadline = time.monotonic() + 5
        while True:
            listed = [c for c in await probe.client_list() if c.get("name") == name]
            if not listed or time.monotonic() > deadline:
                return listed
            await asyncio.sleep(0.05)
    finally:
        await probe.aclose()


def _run(
    make_settings: SettingsFactory,
    body: Callable[[Store], Awaitable[None]],
    protocol: int | None = None,
) -> None:
    """``body`` on a store of its own; ``protocol``: the client speaks RESP2 or RESP3."""

    async def main() -> None:
        s = make_settings()
        url = s.redis_url or ""
        if protocol is not None:
            url = _with_option(url, f"protocol={protocol}")
        store = Store(connect(url), s.key_prefix, 60, 1000)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def _decision(event_id: str, arm: str = "7b") -> dict[str, object]:
    """A decision as the router stores it."""
    others = [a for a in ("4b", "7b", "14b") if a != arm]
    return {
        "event_id": event_id,
        "features": extract("a question").to_json(),
        "arms": [arm, *others],
        "arm": arm,
        "probability": 0.9,
        "probabilities": {arm: 0.9, **dict.fromkeys(others, 0.05)},
        "policy": "egreedy",
        "model_version": 0,
        "ts": time.time(),
    }


def _reward(value: float) -> dict[str, object]:
    return {"parts": {"reward": value}, "reward": value, "ts": time.time()}


def test_decision_is_stored_once(make_settings: SettingsFactory) -> None:
    async def body(store: Store) -> None:
        assert await store.save_decision("e1", _decision("e1", "4b")) is None
        again = await store.save_decision("e1", _decision("e1", "14b"))
        assert again is not None and again["arm"] == "4b"
        assert (await store.counters())["decisions:4b"] == 1
        assert await store.redis.ttl(store.key("{p}:decision:{event_id}", "e1")) > 60

    _run(make_settings, body)


def test_parts_merge_and_duplicates_are_reported(make_settings: SettingsFactory) -> None:
    async def body(store: Store) -> None:
        await store.save_decision("e1", _decision("e1"))
        first = await store.add_parts("e1", {"latency_ms": 100.0})
        assert (first.parts, first.duplicates) == ({"latency_ms": 100.0}, [])
        # The parts are kept as long as the decision (past the window), the tracking set for good.
        assert 600 < await store.redis.ttl(store.key("{p}:parts:{event_id}", "e1")) <= 660
        assert await store.redis.ttl(store.key("{p}:pending")) == -1
        second = await store.add_parts("e1", {"latency_ms": 999.0, "accuracy": 1.0})
        assert second.parts == {"latency_ms": 100.0, "accuracy": 1.0}  # the first value stands
        assert second.duplicates == ["latency_ms"]
        assert await store.due(time.time() + 61) == ["e1"]  # the window is tracked
        with pytest.raises(UnknownEvent):
            await store.add_parts(uuid.uuid4().hex, {"accuracy": 1.0})
        with pytest.raises(UnknownEvent):  # through ADD_FINAL
            await store.add_parts(uuid.uuid4().hex, {"reward": 1.0}, final=_reward(1.0))

    _run(make_settings, body)


def test_an_event_logged_untracked_never_counts_skipped_below_zero(
    make_settings: SettingsFactory,
) -> None:
    """An event no longer tracked that is logged takes back one skip (UNSKIP_LUA): with none
    counted (the counters reset, or the tracking lost otherwise), the count stays at 0."""

    async def body(store: Store) -> None:
        await store.save_decision("e1", _decision("e1"))
        await store.redis.zrem(store.key("{p}:pending"), "e1")
        await store.redis.hset(store.key("{p}:stats"), "skipped_no_reward", 0)
        parts = await store.add_parts("e1", {"reward": 0.5}, final=_reward(0.5))
        assert parts.logged is not None
        assert (await store.counters())["skipped_no_reward"] == 0
        assert 600 < await store.redis.ttl(store.key("{p}:done:{event_id}", "e1")) <= 660
        counters = await store.counters()
        assert (counters["rewards:7b"], counters["reward_sum:7b"]) == (1, 0.5)
        # Parts sent again with a final: the first values stand, so nothing is logged from these.
        await store.save_decision("e2", _decision("e2"))
        await store.add_parts("e2", {"reward": 0.5})
        again = await store.add_parts("e2", {"reward": 0.9}, final=_reward(0.9))
        assert (again.logged, again.duplicates, again.parts) == (None, ["reward"], {"reward": 0.5})

    _run(make_settings, body)


def test_a_part_never_shortens_the_keep_time_of_its_decision(
    make_settings: SettingsFactory,
) -> None:
    """A decision kept longer (made under a longer wait) than a part tracking it again would
    keep it: the part leaves its expiry as it was (PARTS_LUA's hold)."""

    async def main() -> None:
        s = make_settings()
        long = Store(connect(s.redis_url or ""), s.key_prefix, 700, 1000)  # kept 1400 s
        short = Store(connect(s.redis_url or ""), s.key_prefix, 60, 1000)  # would keep 660 s
        try:
            await long.save_decision("e1", _decision("e1"))
            await long.redis.zrem(long.key("{p}:pending"), "e1")  # let go, as a sweep does
            await short.add_parts("e1", {"accuracy": 1.0})
            assert await short.redis.zscore(short.key("{p}:pending"), "e1")  # tracked again
            assert await long.redis.ttl(long.key("{p}:decision:{event_id}", "e1")) > 1300
        finally:
            await long.close()
            await short.close()

    asyncio.run(main())


@pytest.mark.parametrize("final", [False, True])
def test_parts_are_taken_up_to_the_window_s_end_included(
    make_settings: SettingsFactory, final: bool
) -> None:
    async def body(store: Store) -> None:
        decision = _decision("e1")
        await store.save_decision("e1", decision)
        end = cast(float, decision["ts"]) + 60
        reward = _reward(0.5) if final else None
        with pytest.raises(WindowClosed):
            await store.add_parts("e1", {"reward": 0.5}, reward, end + 1e-3)
        taken = await store.add_parts("e1", {"reward": 0.5}, reward, end)
        assert taken.parts == {"reward": 0.5} and (taken.logged is not None) == final

    _run(make_settings, body)


def test_finalize_logs_once(make_settings: SettingsFactory) -> None:
    async def body(store: Store) -> None:
        await store.save_decision("e1", _decision("e1"))
        await store.add_parts("e1", {"reward": 0.5})
        assert await store.finalize("e1", seen=2, reward=_reward(0.5)) is None  # parts changed
        stream_id = await store.finalize("e1", seen=1, reward=_reward(0.5))
        assert stream_id is not None
        assert not await store.redis.exists(store.key("{p}:parts:{event_id}", "e1"))  # logged
        # The done marker refuses a second reward as long as the decision could be kept.
        assert 600 < await store.redis.ttl(store.key("{p}:done:{event_id}", "e1")) <= 660
        with pytest.raises(AlreadyRewarded):
            await store.finalize("e1", seen=1, reward=_reward(0.5))
        with pytest.raises(AlreadyRewarded):
            await store.add_parts("e1", {"rating": 5.0})
        events = await all_events(store.events())
        assert [(e.stream_id, e.decision["event_id"], e.reward["reward"]) for e in events] == [
            (stream_id, "e1", 0.5)
        ]
        assert await store.due(time.time() + 61) == []
        counters = await store.counters()
        assert (counters["rewards:7b"], counters["reward_sum:7b"]) == (1, 0.5)

    _run(make_settings, body)


def test_finalize_of_a_logged_event_stops_tracking_it(make_settings: SettingsFactory) -> None:
    """A logged event tracked again (its id chosen again after its decision expired): FINALIZE
    answers the marker and takes the id off the pending set, so no sweep finds it."""

    async def body(store: Store) -> None:
        await store.save_decision("e1", _decision("e1"))
        await store.add_parts("e1", {"reward": 0.5}, final=_reward(0.5))
        pending = store.key("{p}:pending")
        await store.redis.zadd(pending, {"e1": time.time(), "e2": time.time()})
        with pytest.raises(AlreadyRewarded):
            await store.finalize("e1", seen=1, reward=_reward(0.5))
        assert await store.redis.zrange(pending, 0, -1) == [b"e2"]

    _run(make_settings, body)


def test_drop_pending_counts_only_an_event_it_stops_tracking(
    make_settings: SettingsFactory,
) -> None:
    async def body(store: Store) -> None:
        await store.save_decision("e1", _decision("e1"))
        assert await store.drop_pending("e1") is True
        assert await store.drop_pending("e1") is False  # settled meanwhile: not counted again
        assert (await store.counters())["skipped_no_reward"] == 1
        assert await store.due(time.time() + 61) == []

    _run(make_settings, body)


def test_writes_survive_a_lost_script_cache(make_settings: SettingsFactory, redis_url: str) -> None:
    """After a Redis restart its script cache is empty: calls sent together, of several scripts,
    some cached and some not, each run exactly once."""
    if redis_url == SERVER_URL:
        pytest.skip("SCRIPT FLUSH would touch the shared server's other users")

    async def body(store: Store) -> None:
        await store.save_decision("e0", _decision("e0"))  # the decision script is cached
        await store.redis.script_flush()
        await store.save_decision("e1", _decision("e1"))  # a lone call reloads it
        decisions = [store.save_decision(f"d{i}", _decision(f"d{i}", "4b")) for i in range(5)]
        finals = [store.add_parts(e, {"accuracy": 1.0}, _reward(1.0)) for e in ("e0", "e1")]
        # One batch: calls of a cached script and of one the flush removed.
        got = await asyncio.gather(asyncio.gather(*decisions), asyncio.gather(*finals))
        assert got[0] == [None] * 5
        assert [p.logged is not None for p in got[1]] == [True, True]
        counters = await store.counters()
        assert counters["decisions:4b"] == 5 and counters["rewards:7b"] == 2
        assert await store.redis.xlen(store.key("{p}:events")) == 2

    _run(make_settings, body)


def test_events_page_through_long_logs(make_settings: SettingsFactory) -> None:
    async def body(store: Store) -> None:
        for i in range(25):
            await store.save_decision(f"e{i}", _decision(f"e{i}"))
            await store.add_parts(f"e{i}", {"reward": 0.1})
            await store.finalize(f"e{i}", 1, _reward(0.1))
        ids = [e.decision["event_id"] for e in await all_events(store.events(batch=10))]
        assert ids == [f"e{i}" for i in range(25)]
        last = await store.last_stream_id()
        assert [e async for e in store.events(after=last)] == []

    _run(make_settings, body)


def test_consumer_group_and_claims(make_settings: SettingsFactory) -> None:
    async def body(store: Store) -> None:
        await store.ensure_group()
        await store.ensure_group()  # idempotent
        for i in range(3):
            await store.save_decision(f"e{i}", _decision(f"e{i}"))
            await store.add_parts(f"e{i}", {"reward": 0.1})
            await store.finalize(f"e{i}", 1, _reward(0.1))
        assert await store.read_new("dead", 10) == ([], True)  # not without the lease
        assert await store.hold_lease("dead", 10)
        read, confirmed = await store.read_new("dead", 10)
        assert confirmed  # no BANDIT_REDIS_WAIT_REPLICAS
        assert len(read) == 3
        await store.release_lease("dead")
        assert await store.hold_lease("other", 10)
        assert await store.read_new("other", 10) == ([], True)  # delivered once to the group
        claimed = await store.claim_stale("other", idle_ms=0, count=10)
        assert [(e.stream_id, theirs) for e, theirs in claimed] == [
            (e.stream_id, True) for e in read
        ]
        assert [e for e, _ in claimed] == read  # the events, as the dead learner read them
        again = await store.claim_stale("other", idle_ms=0, count=10)  # its own now
        assert [(e.stream_id, theirs) for e, theirs in again] == [
            (e.stream_id, False) for e in read
        ]
        acks = [e.stream_id for e in read]
        assert await store.publish(Snapshot("egreedy", 3, read[-1].stream_id, b"m"), acks)
        assert await store.claim_stale("third", idle_ms=0, count=10) == []
        assert (await store.counters())["events_learned"] == 3

    _run(make_settings, body)


def test_a_publish_for_a_holder_needs_the_lease(make_settings: SettingsFactory) -> None:
    async def body(store: Store) -> None:
        first = Snapshot("egreedy", 1, "1-0", b"one")
        assert not await store.publish(first, [], holder="a")  # nobody holds it
        assert await store.load_snapshot() is None
        assert await store.hold_lease("a", 10)
        assert await store.publish(first, [], holder="a")
        await store.release_lease("a")
        assert await store.hold_lease("b", 10)
        assert not await store.publish(Snapshot("egreedy", 2, "2-0", b"two"), [], holder="a")
        assert await store.load_snapshot() == first  # b's lease: a wrote nothing
        # No holder: restore's publish, whose caller took the lease itself.
        assert await store.publish(Snapshot("egreedy", 3, "3-0", b"three"), [])

    _run(make_settings, body)


def test_a_holder_never_publishes_a_model_behind_the_stored_one(
    make_settings: SettingsFactory,
) -> None:
    """The lease alone does not fence a learner that froze past it and took it again when it
    was free: its model may be older than the one published meanwhile. A holder's model whose
    watermark is behind the stored one's is refused, nothing written (its acknowledgements
    included); the same watermark (a promotion) or a later one (a reset: version 0) is not."""

    async def body(store: Store) -> None:
        assert await store.hold_lease("a", 10)
        newer = Snapshot("egreedy", 50, "50-0", b"newer")
        assert await store.publish(newer, [], holder="a")
        assert not await store.publish(Snapshot("egreedy", 30, "30-0", b"older"), [], holder="a")
        assert not await store.publish(Snapshot("egreedy", 90, "49-9", b"older"), [], holder="a")
        assert await store.load_snapshot() == newer
        promoted = Snapshot("linucb", 50, "50-0", b"promoted")
        assert await store.publish(promoted, [], holder="a")
        reset = Snapshot("egreedy", 0, "60-0", b"reset")
        assert await store.publish(reset, [], holder="a")
        assert await store.load_snapshot() == reset
        # No holder: restore's publish, which may go back to a backup of this log.
        assert await store.publish(Snapshot("egreedy", 30, "30-0", b"backup"), [])

    _run(make_settings, body)


def test_snapshot_round_trip_keeps_bytes(make_settings: SettingsFactory) -> None:
    async def body(store: Store) -> None:
        assert await store.load_snapshot() is None
        assert await store.snapshot_head() is None
        blob = bytes(range(256)) * 10
        await store.publish(Snapshot("egreedy", 42, "1-0", blob), [])
        assert await store.load_snapshot() == Snapshot("egreedy", 42, "1-0", blob)
        assert await store.snapshot_head() == ("egreedy", 42, "1-0")

    _run(make_settings, body)


def test_lease_is_exclusive_until_released(make_settings: SettingsFactory) -> None:
    async def body(store: Store) -> None:
        assert await store.hold_lease("a", 5) == LEASE_TAKEN
        assert await store.hold_lease("a", 5) == LEASE_RENEWED
        assert not await store.hold_lease("b", 5)
        await store.release_lease("b")  # not b's: no effect
        assert not await store.hold_lease("b", 5)
        await store.release_lease("a")
        assert await store.hold_lease("b", 0.2) == LEASE_TAKEN
        await asyncio.sleep(0.3)  # b froze or died: its lease lapses
        assert await store.hold_lease("a", 5) == LEASE_TAKEN
        await store.release_lease("a")
        assert await store.hold_lease("b", 5) == LEASE_TAKEN  # b woke: its lease had lapsed

    _run(make_settings, body)


def test_a_read_is_for_the_lease_holder_only(make_settings: SettingsFactory) -> None:
    """READ_NEW reads for the lease's holder only; a hash there is no lease held, not a script
    error (it checks the key's type)."""

    async def body(store: Store) -> None:
        await store.ensure_group()
        await store.redis.hset(store.key(KEY_LEASE), "by", "hand")
        assert (await store.read_new("me", 10))[0] == []
        await store.redis.delete(store.key(KEY_LEASE))
        await store.redis.set(store.key(KEY_LEASE), "another")
        assert (await store.read_new("me", 10))[0] == []  # held by another

    _run(make_settings, body)


def test_prune_consumers_says_how_many_it_deleted(make_settings: SettingsFactory) -> None:
    async def body(store: Store) -> None:
        await store.ensure_group()
        for name in ("a", "b", "c"):
            await store.redis.xgroup_createconsumer(store.key(KEY_EVENTS), GROUP, name)
        assert await store.prune_consumers(keep="a") == 2
        assert await store.prune_consumers(keep="a") == 0
        found = await store.redis.xinfo_consumers(store.key(KEY_EVENTS), GROUP)
        assert [c["name"] for c in found] in (["a"], [b"a"])

    _run(make_settings, body)


def test_ping_writes_nothing(make_settings: SettingsFactory) -> None:
    """/healthz's probe is a write Redis refuses as any other, yet it makes no key (else one
    would stay in every deployment's prefix, of no use)."""

    async def body(store: Store) -> None:
        assert await store.ping()
        assert await store.ping()
        assert not await store.redis.exists(store.key(KEY_PROBE))

    _run(make_settings, body)


def test_stream_ids_order_numerically() -> None:
    assert stream_id_key("0-0") < stream_id_key("9-5") < stream_id_key("10-0")


def test_unreachable_redis_is_store_unavailable() -> None:
    async def run() -> None:
        store = Store(connect("redis://127.0.0.1:1/0"), "x", 60, 1000)
        with pytest.raises(StoreUnavailable, match="retry later"):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.save_decision("e", _decision("e"))
        await store.close()

    asyncio.run(run())


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_read_batched_with_writes_sees_them_in_either_protocol(
    make_settings: SettingsFactory, protocol: int
) -> None:
    """The learner's read of the log shares the group commit with the writes: Redis runs it
    after the writes sent before it, in one round trip, and its raw reply (a map in RESP3, a
    list in RESP2) reads the same."""

    async def body(store: Store) -> None:
        await store.ensure_group()
        assert await store.hold_lease("me", 10)  # only the learner's lease holder reads
        for i in range(4):
            await store.save_decision(f"e{i}", _decision(f"e{i}"))
        writes = [
            store.add_parts(f"e{i}", {"reward": 0.25 * i}, _reward(0.25 * i)) for i in range(4)
        ]
        # all made before the first round trip starts: one batch, the read last
        *done, read = await asyncio.gather(*writes, store.read_new("me", 10))
        logged = cast(list[Parts], done)
        events = cast(tuple[list[Event], bool], read)[0]
        assert [e.decision["event_id"] for e in events] == ["e0", "e1", "e2", "e3"]
        assert [e.stream_id for e in events] == [p.logged for p in logged]
        assert [e.reward["reward"] for e in events] == [0.0, 0.25, 0.5, 0.75]
        assert await store.read_new("me", 10) == ([], True)

    _run(make_settings, body, protocol)


@pytest.mark.parametrize("protocol", [2, 3])
def test_follow_reads_after_the_writes_that_log_in_their_round_trip(
    make_settings: SettingsFactory, protocol: int
) -> None:
    """With ``follow_log``, a round trip carrying a call that may log an event also reads the
    new events, after those writes: they reach ``take`` before the writers get their replies.
    A round trip without such a call reads nothing."""

    async def body(store: Store) -> None:
        taken: list[list[str]] = []
        await store.ensure_group()
        assert await store.hold_lease("me", 10)  # only the learner's lease holder reads
        store.follow_log("me", 10, lambda events, _: taken.append([e.stream_id for e in events]))
        for i in range(4):
            await store.save_decision(f"e{i}", _decision(f"e{i}"))
        assert taken == []  # decisions log nothing: no read
        writes = [
            store.add_parts(f"e{i}", {"reward": 0.25 * i}, _reward(0.25 * i)) for i in range(3)
        ]
        done = cast(list[Parts], await asyncio.gather(*writes))  # one round trip
        assert taken == [[p.logged for p in done]]
        assert await store.read_new("me", 10) == ([], True)  # delivered already, to "me"
        store.follow_log(None, 10, lambda events, _: taken.append([]))
        await store.add_parts("e3", {"reward": 1.0}, _reward(1.0))
        assert len(taken) == 1  # not followed any more
        again, _ = await store.read_new("me", 10)
        assert [e.decision["event_id"] for e in readable(again)] == ["e3"]

    _run(make_settings, body, protocol)


async def _retarget_mid_batch(
    calls: GroupCommit, call: Awaitable[T], new: Redis
) -> tuple[asyncio.Task[T], AbstractConnection | None]:
    """``call`` started, then ``calls`` retargeted to ``new`` once the batch made its connection,
    while that connects (before the batch is sent): the call's task, and the connection dropped."""
    task = asyncio.ensure_future(call)
    while calls._conn is None:
        await asyncio.sleep(0)
    dropped = calls._conn
    await calls.retarget(new)
    return task, dropped


def test_a_connection_dropped_during_a_batch_is_not_left_open() -> None:
    """A retarget (the slot's master moved) while a batch is on its way drops the group commit's
    connection; redis-py reconnects it to send the batch, and nothing would close it after.
    The batch still gets its replies, and the connection is closed once they are in."""

    async def run() -> None:
        old, new = connect(SERVER_URL), connect(SERVER_URL)
        calls = GroupCommit(old)
        token = uuid.uuid4().hex
        script = old.register_script(f"return '{token}'")  # loaded in the batch's write
        call, dropped = await _retarget_mid_batch(calls, calls.call(script, [], []), new)
        assert dropped is not None
        assert await call == token.encode() and not dropped.is_connected
        ping = new.register_script("return redis.call('PING')")
        assert await calls.call(ping, [], []) == b"PONG"  # the next batch goes through ``new``
        await calls.close()
        await old.aclose()
        await new.aclose()

    asyncio.run(run())


def test_a_batch_retried_after_a_retarget_goes_to_the_new_master() -> None:
    """The old master is gone (nothing listens on its port): a batch whose first attempt meets
    that, with a retarget in between, is sent again through the new client, and the group
    commit keeps no connection to the old one (it would meet MOVED there for ever)."""

    async def run() -> None:
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        old, new = connect(f"redis://127.0.0.1:{dead}/0"), connect(SERVER_URL)
        calls = GroupCommit(old)
        ping = new.register_script("return redis.call('PING')")
        call, _ = await _retarget_mid_batch(calls, calls.call(ping, [], []), new)
        assert await call == b"PONG"
        kept = calls._conn
        assert isinstance(kept, Connection)
        assert kept.port == new.connection_pool.connection_kwargs["port"] != dead
        await calls.close()
        await old.aclose()
        await new.aclose()

    asyncio.run(run())


def test_a_script_loaded_while_the_master_moves_leaves_no_connection_of_the_old_client() -> None:
    """The group commit loads a new script on its own connection, not through the client's pool:
    a pooled connection still connecting when the old master's client is closed (what
    ``SlotRoute.follow`` does after a retarget) would connect afterwards and stay open."""

    async def run() -> None:
        name = f"old-{uuid.uuid4().hex[:8]}"
        old, new = connect(_with_option(SERVER_URL, f"client_name={name}")), connect(SERVER_URL)
        calls = GroupCommit(old)
        token = uuid.uuid4().hex
        script = old.register_script(f"return '{token}'")
        call, _ = await _retarget_mid_batch(calls, calls.call(script, [], []), new)
        await old.aclose()  # as the route closes the old master's client
        assert await call == token.encode()
        await calls.close()
        await new.aclose()
        assert await _listed(name) == []

    asyncio.run(run())


@contextlib.asynccontextmanager
async def _gated_proxy(gate: asyncio.Event, accepted: asyncio.Event) -> AsyncIterator[int]:
    """A TCP proxy to the test server (its port) that holds each connection until ``gate`` is
    set, so a client's connection stays in its handshake; ``accepted`` is set when one arrives."""
    target = urlsplit(SERVER_URL)
    handlers: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(cast("asyncio.Task[None]", asyncio.current_task()))
        accepted.set()
        await gate.wait()
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


def test_a_call_connecting_when_its_client_closes_leaves_no_connection_open() -> None:
    """A client closed while a call on it is still connecting (what ``SlotRoute.follow`` does to
    the old master's client while other calls run): the call ends, and its connection is closed
    with it rather than kept in the closed client's pool."""

    async def run() -> None:
        gate, accepted = asyncio.Event(), asyncio.Event()
        name = f"closing-{uuid.uuid4().hex[:8]}"
        async with _gated_proxy(gate, accepted) as port:
            url = _with_option(node_url(SERVER_URL, "127.0.0.1", port), f"client_name={name}")
            client = connect(url)
            call = asyncio.ensure_future(client.ping())
            await accepted.wait()
            await client.aclose()
            gate.set()
            await asyncio.gather(call, return_exceptions=True)
            assert await _listed(name) == []

    asyncio.run(run())


def test_a_claim_of_events_trimmed_from_the_log_neither_fails_nor_stays_pending(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead learner's unacknowledged events that the log's trim (BANDIT_STREAM_MAXLEN) removed
    before another learner claimed them: Redis 6 answers XCLAIM with nil for each and keeps it
    pending for ever (Redis 7 leaves it out and forgets it). The claim takes the others, the
    trimmed ones leave the group's pending list, said in the log, and the next claim finds
    nothing of them."""
    caplog.set_level(logging.WARNING, logger="bandit_router")

    async def body(store: Store) -> None:
        await store.ensure_group()
        for i in range(3):
            await store.save_decision(f"e{i}", _decision(f"e{i}"))
            await store.add_parts(f"e{i}", {"reward": 0.1}, _reward(0.1))
        assert await store.hold_lease("dead", 10)
        read, _ = await store.read_new("dead", 10)
        assert len(read) == 3
        await store.release_lease("dead")
        # The log trimmed past the first two while the dead learner's read is pending.
        await store.redis.xtrim(store.key("{p}:events"), maxlen=1, approximate=False)
        assert await store.hold_lease("other", 10)
        claimed = await store.claim_stale("other", idle_ms=0, count=10)
        assert [(e.stream_id, theirs) for e, theirs in claimed] == [(read[2].stream_id, True)]
        pending = await store.redis.xpending(store.key("{p}:events"), "learners")
        assert pending["pending"] == 1  # the trimmed ones are no longer waiting for a learner
        assert "2 logged events were trimmed from the log" in caplog.text
        again = await store.claim_stale("other", idle_ms=0, count=10)
        assert [e.stream_id for e, _ in again] == [read[2].stream_id]

    _run(make_settings, body)


def test_a_round_trip_slower_than_the_timeout_is_not_sent_again(
    make_settings: SettingsFactory,
) -> None:
    """Redis slower than the store's timeout (a long script, a fork, a paused VM) is unavailable
    for the calls of that round trip: StoreUnavailable, the client retries. The round trip was
    sent a second time instead (asyncio's TimeoutError is an OSError, taken for a connection
    found dead), and Redis ran it twice once free: a final reward answered 409 "already has a
    reward" by its own first run, parts reported as duplicates of themselves."""

    async def main() -> None:
        s = make_settings()
        url = s.redis_url or ""
        store = Store(aioredis.Redis.from_url(url, socket_timeout=0.3), s.key_prefix, 60, 1000)
        try:
            for e in ("e1", "e2"):
                await store.save_decision(e, _decision(e))
            busy = keep_busy(url, 0.5)
            with pytest.raises(StoreUnavailable):
                await store.add_parts("e1", {"reward": 0.5}, _reward(0.5))
            busy.join()
            await store.save_decision("e3", _decision("e3"))  # the group commit reconnected
            busy = keep_busy(url, 0.5)
            with pytest.raises(StoreUnavailable):
                await store.add_parts("e2", {"latency_ms": 100.0})
            busy.join()
            # Redis ran each once: the retries find the reward logged, the part stored
            with pytest.raises(AlreadyRewarded):
                await store.add_parts("e1", {"reward": 0.5}, _reward(0.5))
            assert (await store.add_parts("e2", {"latency_ms": 100.0})).duplicates == ["latency_ms"]
            assert await store.redis.xlen(store.key("{p}:events")) == 1
        finally:
            await store.close()

    asyncio.run(main())


def test_a_call_made_behind_a_hung_round_trip_fails_the_timeout_after_it_was_made(
    make_settings: SettingsFactory, redis_process: RedisProcess
) -> None:
    """A Redis that stopped answering (SIGSTOP: it takes connections and reads nothing): a call
    made while a round trip is in flight fails the store's timeout after it was made, not the
    round trip's timeout and then its own (twice the timeout, as it was). Each call that went
    out may have run once Redis answers again, so each retry finds its reward logged, or logs
    it: each reward is logged once."""
    timeout_s = 1.0

    async def main() -> None:
        s = make_settings(redis_url=redis_process.url)
        client = aioredis.Redis.from_url(redis_process.url, socket_timeout=timeout_s)
        store = Store(client, s.key_prefix, 60, 1000)
        assert redis_process.proc is not None
        try:
            for e in ("e1", "e2"):
                await store.save_decision(e, _decision(e))
            redis_process.proc.send_signal(signal.SIGSTOP)
            try:
                sent = asyncio.ensure_future(store.add_parts("e1", {"reward": 0.5}, _reward(0.5)))
                await asyncio.sleep(0.2)
                made = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await store.add_parts("e2", {"reward": 0.5}, _reward(0.5))
                waited = time.monotonic() - made
                with pytest.raises(StoreUnavailable):
                    await sent
            finally:
                redis_process.proc.send_signal(signal.SIGCONT)
            # it was 1.8 s: the round trip's timeout, then its own
            assert waited < 1.5 * timeout_s, f"{waited:.2f} s"
            await asyncio.sleep(0.2)  # what Redis had of the connections, it has run
            for e in ("e1", "e2"):
                with contextlib.suppress(AlreadyRewarded):  # it went out: Redis may have run it
                    await store.add_parts(e, {"reward": 0.5}, _reward(0.5))
            assert await store.redis.xlen(store.key("{p}:events")) == 2  # each logged once
        finally:
            await store.close()

    asyncio.run(main())


def test_a_call_behind_a_slow_round_trip_waits_at_most_the_timeout_from_when_it_was_made(
    make_settings: SettingsFactory,
) -> None:
    """A round trip that answers just within the timeout, and then a Redis that stops answering
    (here the network: a proxy that stops passing data on): a call made while the first was in
    flight goes out in the next, and fails the timeout after it was made, not after it went
    out (the first round trip's wait, then the whole timeout)."""
    timeout_s = 1.0

    async def main() -> None:
        s = make_settings()
        async with Far(SERVER_URL).running() as far:
            client = aioredis.Redis.from_url(far.url(SERVER_URL), socket_timeout=timeout_s)
            store = Store(client, s.key_prefix, 60, 1000)
            try:
                await store.save_decision("e1", _decision("e1"))  # connected, the script loaded
                far.delay_s = 0.35  # 0.7 s round trips
                slow = asyncio.ensure_future(store.save_decision("e2", _decision("e2")))
                await asyncio.sleep(0.1)
                made = time.monotonic()
                behind = asyncio.ensure_future(store.save_decision("e3", _decision("e3")))
                await asyncio.sleep(0.4)  # e2's write is with Redis: the next waits 3 s
                far.delay_s = 3.0  # past the timeout
                assert await slow is None
                with pytest.raises(StoreUnavailable):
                    await behind
                waited = time.monotonic() - made
                # it was 1.6 s: the 0.6 s left of the first round trip, then the timeout
                assert waited < 1.4 * timeout_s, f"{waited:.2f} s"
            finally:
                await store.close()

    asyncio.run(main())


def test_a_call_still_waiting_at_its_timeout_is_never_sent(
    make_settings: SettingsFactory, redis_process: RedisProcess
) -> None:
    """A batch in flight may take longer than one timeout: Redis lost its scripts (SCRIPT
    FLUSH), so the calls that met NOSCRIPT go again, with a timeout of their own. A call made
    meanwhile that gives up before it went out is taken out of the queue: it never runs."""
    timeout_s = 1.0

    async def main() -> None:
        s = make_settings(redis_url=redis_process.url)
        async with Far(redis_process.url).running() as far:
            # the service's client: a new connection sends nothing before the batch
            client = connect(f"{far.url(redis_process.url)}?socket_timeout={timeout_s}")
            store = Store(client, s.key_prefix, 60, 1000)
            try:
                await store.save_decision("e1", _decision("e1"))  # connected, the script loaded
                await store.redis.script_flush()
                far.delay_s = 0.15  # 0.3 s round trips
                again = asyncio.ensure_future(store.save_decision("e2", _decision("e2")))
                # e2 meets NOSCRIPT at 0.3 s and goes again, its reply 2 s away: past the
                # timeout of its second round trip, at 1.3 s
                asyncio.get_running_loop().call_later(0.25, setattr, far, "delay_s", 2.0)
                await asyncio.sleep(0.1)
                behind = asyncio.ensure_future(store.save_decision("e3", _decision("e3")))
                await asyncio.sleep(0.3)
                writes = far.writes  # e2's second round trip among them
                with pytest.raises(StoreUnavailable) as queued:
                    await behind  # its timeout: at 1.1 s
                with pytest.raises(StoreUnavailable):
                    await again
                await asyncio.sleep(0.5)  # e2's batch is over
                assert far.writes == writes  # none after e2's: e3 was not sent
                far.delay_s = 0.0
                await asyncio.sleep(1.5)  # what the proxy held has reached Redis
                decision = "{p}:decision:{event_id}"
                assert await store.redis.exists(store.key(decision, "e2"))  # it went out
                assert not await store.redis.exists(store.key(decision, "e3"))
                assert "this call was not sent" in str(queued.value)
            finally:
                await store.close()

    asyncio.run(main())


def test_a_publish_takes_two_round_trips(make_settings: SettingsFactory) -> None:
    """A publish watches the lease, the model and the policy and reads them in one round trip,
    then writes in a second (MULTI ... EXEC). Each read after WATCH was a round trip of its own:
    five in all, six with a promotion, each a network round trip to a Redis elsewhere, paid by
    the /reward the publish runs in and by the rewards that wait for the learner meanwhile."""

    async def main() -> None:
        s = make_settings()
        async with Far(SERVER_URL).running() as far:
            store = Store(connect(far.url(SERVER_URL)), s.key_prefix, 60, 1000)
            try:
                assert await store.hold_lease("a", 10)
                await store.ensure_group()
                added = await store.redis.xadd(store.key("{p}:events"), {"x": "1"})
                entry = added.decode() if isinstance(added, bytes) else added
                await store.redis.ping()  # every connection the calls use is made
                before = far.writes
                snapshot = Snapshot("egreedy", 1, entry, b"one")
                assert await store.publish(snapshot, [entry], {"meta": b"{}"}, None, "a")
                assert far.writes - before == 2
                promotion = {"to_policy": "linucb", "at": "2026-01-01T00:00:00+00:00"}
                before = far.writes
                promoted = Snapshot("linucb", 1, entry, b"two")
                assert await store.publish(promoted, [], None, promotion, "a")
                assert far.writes - before == 2
                assert await store.load_snapshot() == promoted
                assert await store.policy_override() == "linucb"
                before = far.writes  # a holder without the lease: refused in the first
                assert not await store.publish(promoted, [], None, None, "b")
                assert far.writes - before == 2  # and UNWATCH
                assert await store.hold_lease("a", 10) == LEASE_RENEWED
            finally:
                await store.close()

    asyncio.run(main())


def test_read_replies_reads_a_pipelined_round_trip_an_error_in_its_place() -> None:
    """The reply reading the group commit and ``Watched`` share: each reply raw and in order,
    an error reply as its ``ResponseError`` in its place, the replies after it still read (the
    connection stays in step: the next round trip gets its own replies)."""

    async def main() -> None:
        client = connect(SERVER_URL)
        conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        key = f"test-{uuid.uuid4().hex[:12]}"
        try:
            commands = [["SET", key, "v"], ["LPUSH", key, "x"], ["GET", key], ["DEL", key]]
            await conn.send_packed_command(conn.pack_commands(commands))
            replies: list[object] = []
            await read_replies(conn, len(commands), replies)
            assert replies[0] is True or replies[0] == b"OK", replies
            assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
            assert replies[2:] == [b"v", 1]
            await conn.send_packed_command(conn.pack_commands([["PING"]]))
            after: list[object] = []
            await read_replies(conn, 1, after, timeout=math.inf)
            assert after in ([True], [b"PONG"]), after
        finally:
            await client.connection_pool.release(conn)
            await client.aclose()

    asyncio.run(main())


def test_a_watch_replaces_a_pooled_connection_redis_closed_and_fails_one_cut_while_watching(
    redis_process: RedisProcess,
) -> None:
    """``Watched`` (the publish's transaction) on a pooled connection a Redis restart closed:
    the WATCH round trip is sent again once on a new connection, and succeeds. A connection
    cut between the WATCH and the EXEC: ``WatchError``, which the publish takes as "look again",
    nothing written; the pool serves the next transaction."""

    async def main() -> None:
        client = connect(redis_process.url)
        key = f"test-{uuid.uuid4().hex[:12]}"
        try:
            async with Watched(client) as tx:  # leaves its connection in the pool
                assert await tx.read([key], [["GET", key]]) == [None]
                assert await tx.execute([["SET", key, "1"]]) in ([True], [b"OK"])
            redis_process.kill()
            redis_process.start()  # empty again, and every old connection closed
            async with Watched(client) as tx:
                assert await tx.read([key], [["GET", key]]) == [None]
                killer = Redis.from_url(redis_process.url)
                try:
                    assert await killer.client_kill_filter(_type="normal", skipme=True) >= 1
                finally:
                    await killer.aclose()
                with pytest.raises(WatchError, match="connection failed while watching"):
                    await tx.execute([["SET", key, "2"]])
            assert await client.get(key) is None
            async with Watched(client) as tx:
                assert await tx.read([key], [["GET", key]]) == [None]
                assert await tx.execute([["SET", key, "3"]]) in ([True], [b"OK"])
            assert await client.get(key) == b"3"
        finally:
            await client.aclose()

    asyncio.run(main())
