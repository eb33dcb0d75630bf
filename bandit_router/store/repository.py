"""Store: everything that must outlive a process, in Redis."""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, RedisError, ResponseError, WatchError

from bandit_router.errors import (
    AlreadyRewarded,
    RouterError,
    StoreDamaged,
    StoreUnavailable,
    SwitchArrived,
    UnknownEvent,
    UnreadableDecision,
    UnreadableEvent,
    WindowClosed,
)
from bandit_router.store.clock import RedisClock, elapsed
from bandit_router.store.cluster import SlotRoute, is_cluster_url, redirected
from bandit_router.store.embedded import EmbeddedRedis

if TYPE_CHECKING:
    from bandit_router.settings import Settings
from bandit_router.store.keys import (
    EVENT_KEYS,
    GROUP,
    KEY_CHALLENGERS,
    KEY_DECISION,
    KEY_DONE,
    KEY_EVENTS,
    KEY_LEASE,
    KEY_MODEL,
    KEY_PARTS,
    KEY_PENDING,
    KEY_POLICY,
    KEY_PROBE,
    KEY_PROMOTIONS,
    KEY_STATS,
    KEY_TYPES,
    KEY_WORD_SECRET,
)
from bandit_router.store.records import (
    MAX_INT64,
    Entry,
    Logged,
    Parts,
    Snapshot,
    decode_entries,
    decode_parts,
    dumps,
    is_stream_id,
    read_choice,
    read_decision,
    read_logged_reward,
    stream_id_key,
    to_event,
    to_events,
)
from bandit_router.store.scripts import (
    ADD_FINAL,
    ADD_PARTS,
    COUNT,
    DROP_PENDING,
    FINALIZE,
    LEASE,
    PROBE,
    PRUNE_CONSUMERS,
    READ_NEW,
    RELEASE,
    SAVE_DECISION,
    SKIP_SILENT,
)
from bandit_router.store.transport import (
    DOWN,
    GroupCommit,
    Watched,
    connect,
    down,
    evalsha,
    refusal,
    slot_moving,
    unavailable,
    when_available,
)

log = logging.getLogger("bandit_router")
T = TypeVar("T")
KEPT_PROMOTIONS = 1000  # promotion records kept, newest
KEPT_SAID = 10_000  # unreadable values remembered as said (first_time), then forgotten
LEASE_RENEWED, LEASE_TAKEN = 1, 2  # what hold_lease found: held already, or free
CLOCK_SAID_S = 1.0  # a host's clock off Redis's by more is said in the log (Store.read_clock)
RECENT_CHUNK = 1000  # log entries read at a time for /stats: a few hundred kB a reply
# Bytes of log entries read for /stats at most: 20,000 events of 2 kB fit. Requests can log
# 50 kB events (a long query kept, 64 long features): 20,000 of those are 1 GB to read, and
# 2.3 GB of memory while decoded.
RECENT_MAX_BYTES = 64 * 2**20
RECENT_FIRST = 100  # entries of the first read, before their size is known
# What a counter can hold (HINCRBY's int64): one beyond it, written by hand, is left out, else
# the per-arm counters of 1e308 summed to infinity for /stats and /metrics.
MAX_COUNTER = 2.0**63
# The keys of the scripts' KEYS, in order: a script's {6, key index, type} names one of them.
SAVE_KEYS = (KEY_DECISION, KEY_STATS, KEY_PENDING, KEY_DONE)
REWARD_KEYS = (KEY_DECISION, KEY_DONE, KEY_PARTS, KEY_PENDING, KEY_EVENTS, KEY_STATS)
# What an event's key of another type is, for the client's 409.
EVENT_RECORDS = {
    KEY_DECISION: "decision",
    KEY_DONE: "final-reward marker",
    KEY_PARTS: "record of reward parts",
}
# What a deployment's key of another type stops, for the client's 503 and the log.
STOPS = {
    KEY_PENDING: "no decision can be stored and no reward taken",
    KEY_EVENTS: "no reward can be logged, and nothing is learned",
    KEY_LEASE: "no process can learn",
    KEY_STATS: "the counters are neither kept nor shown in /stats and /metrics",
    KEY_MODEL: "no snapshot is read (a process that starts learns the whole log) and none is "
    "published",
    KEY_POLICY: "an admin's policy switch is not read (BANDIT_POLICY is served; POST "
    "/admin/policy writes it anew)",
    KEY_WORD_SECRET: "query words cannot be hashed, so no process on this prefix starts",
    KEY_CHALLENGERS: "the challengers' stored models and scores are not read (they start afresh "
    "and the learner's next snapshot replaces them)",
    KEY_PROMOTIONS: "the record of promotions is neither read nor added to",
}
# Keys the service does without (read as absent): said in the log as a warning, not an error.
SPARED = {KEY_STATS, KEY_POLICY, KEY_CHALLENGERS, KEY_PROMOTIONS}
# What deleting the word secret costs, said with its fault: it keys every word feature learned.
SECRET_CAVEAT = (
    "a new secret is then made, and the model learns its word features afresh (no word of the "
    "log hashes alike any more): to keep them, SET it back to the old secret if you have it, or "
    "put that in BANDIT_HASH_KEY, which is used instead of it"
)


class _Raise(Enum):
    """``Store._typed`` without a value to read a key of another type as: its error is raised."""

    RAISE = 0


class Store:
    """The service's state in Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        reward_wait_s: int,
        stream_maxlen: int,
        route: SlotRoute | None = None,
    ) -> None:
        self.redis = client
        self.route = route  # on Redis Cluster: the way to the master of this prefix's slot
        if route is not None:
            route.bind = self._bind
        self._p = "{" + prefix + "}"
        self._keys: dict[str, str] = {}
        self.reward_wait_s = reward_wait_s
        # Decisions outlive their window, so the sweep can still close it after an outage.
        self.ttl_s = reward_wait_s + max(reward_wait_s, 600)
        self.stream_maxlen = stream_maxlen
        # The clock of every time compared across processes (decisions, windows, the sweep)
        self.clock = RedisClock()
        self._clock_said = 0.0  # how far the host's clock was off Redis's when last said
        self._time_denied = False  # the ACL refused TIME: said once
        self._calls = GroupCommit(client)
        self._register(client)
        self._said: set[int] = set()  # the values ``first_time`` met
        self._damaged: set[str] = set()  # deployment keys of another type, said in the log once
        self._evicting: str | None = None  # the evicting policy last said (warn_if_evicting)
        # Redis held (or took) a model of this deployment since this store opened: one found
        # gone later was lost (a FLUSHALL, a restart without persistence), not never published.
        self.model_seen = False
        # The policy override as this store last read or wrote it: what a loss took with it.
        self.override_seen: str | None = None

    def _register(self, client: aioredis.Redis) -> None:
        self._save_decision = client.register_script(SAVE_DECISION)
        self._add_final = client.register_script(ADD_FINAL)
        self._add_parts = client.register_script(ADD_PARTS)
        self._finalize = client.register_script(FINALIZE)
        self._skip_silent = client.register_script(SKIP_SILENT)
        self._drop_pending = client.register_script(DROP_PENDING)
        self._count = client.register_script(COUNT)
        self._probe = client.register_script(PROBE)
        self._lease = client.register_script(LEASE)
        self._release = client.register_script(RELEASE)
        self._prune_consumers = client.register_script(PRUNE_CONSUMERS)
        self._read_new = client.register_script(READ_NEW)

    async def _bind(self, client: aioredis.Redis) -> aioredis.Redis:
        """Talk to Redis through ``client`` from now on (the slot's new master); the old client,
        for the caller to close."""
        old, self.redis = self.redis, client
        self._register(client)
        await self._calls.retarget(client)
        return old

    def wait_for_replicas(self, replicas: int, timeout_ms: int) -> None:
        """Acknowledge no write (a decision, a reward part) before ``replicas`` replicas have it;
        0: acknowledge once the master has it."""
        self._calls.wait = (replicas, timeout_ms) if replicas else None

    def key(self, template: str, event_id: str = "") -> str:
        if not event_id:  # the deployment's fixed keys: formatted once
            found = self._keys.get(template)
            if found is None:
                found = self._keys[template] = template.format(p=self._p, event_id="")
            return found
        return template.format(p=self._p, event_id=event_id)

    @unavailable
    async def read_clock(self) -> float:
        """Read Redis's clock (``TIME``) into ``clock``; Redis's time now. A user the ACL
        denies TIME keeps the clock as it was (the host's, unless read before), said once: the
        sweep, which reads it first, must not stop for it (it closed no window at all)."""
        sent = elapsed()
        try:
            seconds, micros = await self.redis.time()
        except NoPermissionError as e:
            if not self._time_denied:
                log.warning(
                    "Redis refuses the service's user TIME (%s): reward windows are read on "
                    "this host's clock, which every process must then keep in step; grant "
                    "+time (see README, Security and limits)",
                    e,
                )
            self._time_denied = True
            return self.clock.now()
        self.clock.reading(seconds + micros / 1e6, sent, elapsed())
        self._say_clock()
        return self.clock.now()

    def _say_clock(self) -> None:
        """Say in the log when this host's clock is off Redis's by more than ``CLOCK_SAID_S``,
        and again when that changes by as much (a step, or back in step): nothing the service
        compares depends on it, but the times of the log's lines and of what is only shown do."""
        off = self.clock.host_off()
        if abs(off - self._clock_said) <= CLOCK_SAID_S:
            return
        if abs(off) > CLOCK_SAID_S:
            log.warning(
                "this host's clock is %.1f s %s Redis's: reward windows are read on Redis's "
                "clock, so they are as other hosts read them, but this process's log lines, "
                "promotion records and snapshot files carry the host's time",
                abs(off),
                "ahead of" if off > 0 else "behind",
            )
            self._clock_said = off
        else:
            log.info("this host's clock is within %g s of Redis's again", CLOCK_SAID_S)
            self._clock_said = 0.0

    @unavailable
    async def ping(self) -> bool:
        """Whether Redis answers and takes the service's writes, which a PING does not tell:
        the PROBE script. A slot on its way to another node of a cluster is no fault of Redis:
        answered, it is up."""
        try:
            await self._probe(keys=[self.key(KEY_PROBE)])
        except ResponseError as e:
            if self.route is None or not redirected(e):
                raise
        return True

    @unavailable
    async def warn_if_evicting(self) -> None:
        """Say in the log when Redis may evict this service's keys: a maxmemory with a policy
        other than ``noeviction`` lets Redis delete a decision waiting for its reward, reward
        parts, logged events not yet learned or the word secret, and nobody is told. Asked at
        start and then periodically (a CONFIG SET, a failover to a Redis configured otherwise):
        said once for each such policy in a row. Nothing is said when Redis will not tell (an
        ACL without INFO)."""
        try:
            memory: dict[str, Any] = await self.redis.info("memory")
        except ResponseError:
            return
        policy = memory.get("maxmemory_policy", "noeviction")
        if not memory.get("maxmemory") or policy == "noeviction":
            self._evicting = None
        elif policy != self._evicting:
            self._evicting = policy
            log.warning(
                "Redis may evict this service's keys when full (maxmemory-policy %s): rewards "
                "are then lost without an error; set maxmemory-policy noeviction (writes are "
                "then refused when full, and the service answers 503 until there is room)",
                policy,
            )

    # Decisions and rewards

    @unavailable
    async def save_decision(self, event_id: str, record: dict[str, Any]) -> dict[str, Any] | None:
        """Store a decision; if one exists under ``event_id`` already, return that one instead
        (``UnreadableDecision`` when it is not one the service wrote, or not a string;
        ``StoreDamaged``, nothing written, when the pending set is not a sorted set). An id
        whose decision expired after it was learned is ``AlreadyRewarded``, nothing written.

        The event is tracked until its reward window closes, when the sweep settles it.
        """
        deadline = record["ts"] + self.reward_wait_s
        keys = [self.key(template, event_id) for template in SAVE_KEYS]
        args = [dumps(record), self.ttl_s, record["arm"], deadline, event_id]
        existing = await self._calls.call(self._save_decision, keys, args)
        if existing == [7]:
            raise AlreadyRewarded(event_id, spent=True)
        if isinstance(existing, list):
            raise self._misfit(event_id, SAVE_KEYS, existing)
        return None if existing is None else _read(read_choice, event_id, existing)

    @unavailable
    async def add_parts(
        self,
        event_id: str,
        parts: dict[str, float],
        final: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> Parts:
        """Keep reward parts for ``event_id``; a part already there is kept as it was.

        Parts that come after the decision's reward window closed (at ``ts + reward_wait_s``,
        by ``now``, by default Redis's clock as ``clock`` reads it) are refused: ``WindowClosed``;
        parts for a stored decision that does not read, too: ``UnreadableDecision``. A key of
        another Redis type than the service writes: ``UnreadableEvent`` for the event's own
        (decision, done marker, parts), ``StoreDamaged`` for the deployment's; nothing is
        written then.

        With ``final`` (the reward these parts make by themselves), the event is also logged
        with it, as ``finalize`` does, when these parts turn out to be all its parts; then
        ``Parts.logged`` is the stream id.
        """
        flat = [item for pair in parts.items() for item in pair]
        keys = self._reward_keys(event_id)
        now = self.clock.now() if now is None else now
        args = [self.ttl_s, self.reward_wait_s, event_id, repr(now)]
        if final is None:
            result = await self._calls.call(self._add_parts, keys, [*args, *flat])
        else:
            args += [self.stream_maxlen, dumps(final).decode(), final["reward"], *flat]
            result = await self._calls.call(self._add_final, keys, args, logs=True)
        if result[0] == 0:
            raise UnknownEvent(event_id)
        if result[0] == 1:
            raise AlreadyRewarded(event_id)
        if result[0] == 4:
            raise WindowClosed(event_id, float(result[1]), self.reward_wait_s)
        if result[0] == 5:
            raise _unreadable(event_id, result[1].decode())
        if result[0] == 6:
            raise self._misfit(event_id, REWARD_KEYS, result)
        decision = _read(read_decision, event_id, result[1])
        if result[0] == 3:
            return Parts(decision, dict(parts), [], result[2].decode())
        pairs = result[2]
        merged = await self._parts(event_id, dict(zip(pairs[::2], pairs[1::2], strict=True)))
        return Parts(decision, merged, [d.decode() for d in result[3]])

    def _reward_keys(self, event_id: str) -> list[str]:
        """The keys the reward scripts (ADD_PARTS, ADD_FINAL, FINALIZE) take, in their order."""
        return [
            self.key(KEY_DECISION, event_id),
            self.key(KEY_DONE, event_id),
            self.key(KEY_PARTS, event_id),
            self.key(KEY_PENDING),
            self.key(KEY_EVENTS),
            self.key(KEY_STATS),
        ]

    @unavailable
    async def finalize(self, event_id: str, seen: int, reward: dict[str, Any]) -> str | None:
        """Log the event with its final ``reward`` once; ``None`` if its parts changed since.

        Raises ``AlreadyRewarded`` if another call finalized it first (with the reward that call
        logged, when the done marker holds it), ``UnknownEvent`` if gone,
        ``UnreadableDecision`` if its stored decision does not read.
        """
        keys = self._reward_keys(event_id)
        args = [self.ttl_s, self.stream_maxlen, event_id, seen, dumps(reward), reward["reward"]]
        result = await self._calls.call(self._finalize, keys, args, logs=True)
        if result[0] == 0:
            raise UnknownEvent(event_id)
        if result[0] == 1:
            raise AlreadyRewarded(event_id, read_logged_reward(result[1]))
        if result[0] == 5:
            raise _unreadable(event_id, result[1].decode())
        if result[0] == 6:
            raise self._misfit(event_id, REWARD_KEYS, result)
        return None if result[0] == 3 else str(result[1].decode())

    @unavailable
    async def due(self, now: float, limit: int = 500) -> list[str]:
        """Events whose reward window closed at or before ``now``. An id that is not UTF-8
        (written by hand: the service's are text) is no event: it stops being tracked, logged."""
        key = self.key(KEY_PENDING)
        read = self.redis.zrangebyscore(key, "-inf", now, 0, limit)
        ids: Any = await self._typed(KEY_PENDING, read)
        found, others = [], []
        for raw in ids:
            try:
                found.append(raw.decode())
            except UnicodeDecodeError:
                others.append(raw)
        if others:
            log.warning("pending ids that are not text dropped: %s", _shown(others))
            await self.redis.zrem(key, *others)
        return found

    @unavailable
    async def skip_silent(self, event_ids: list[str]) -> list[str]:
        """Stop tracking the events among ``event_ids`` that have no reward part, counted as
        ``skipped_no_reward``, in one round trip; the ids of the others, which have parts."""
        if not event_ids:
            return []
        keys = [self.key(KEY_PENDING), self.key(KEY_STATS)]
        keys += [self.key(KEY_PARTS, event_id) for event_id in event_ids]
        silent = self._skip_silent(keys=keys, args=event_ids)
        # EXISTS takes any type: only the pending set can be at fault
        kept: list[bytes] = await self._typed(KEY_PENDING, silent)
        return [event_id.decode() for event_id in kept]

    @unavailable
    async def drop_pending(self, event_id: str) -> bool:
        """Stop tracking an event whose window closed with nothing to learn, counted as skipped
        unless something settled it meanwhile (a final logged it, another sweep dropped it);
        whether it was counted here."""
        keys = [self.key(KEY_PENDING), self.key(KEY_STATS)]
        return bool(await self._typed(KEY_PENDING, self._drop_pending(keys=keys, args=[event_id])))

    @unavailable
    async def decision(self, event_id: str) -> dict[str, Any] | None:
        """The decision record of ``event_id`` (None: gone); ``UnreadableDecision`` if it does
        not read."""
        read = self.redis.get(self.key(KEY_DECISION, event_id))
        raw = cast(bytes | None, await self._typed(KEY_DECISION, read, event_id))
        return None if raw is None else _read(read_decision, event_id, raw)

    @unavailable
    async def decisions_of_many(self, event_ids: list[str]) -> list[dict[str, Any] | None]:
        """The decision record of each of ``event_ids``, in one round trip: ``None`` where gone,
        or where it does not read, or is not a string (MGET's nil: ``finalize`` then says so)."""
        if not event_ids:
            return []
        raws = await self.redis.mget([self.key(KEY_DECISION, e) for e in event_ids])
        return [_readable(cast(bytes | None, raw)) for raw in raws]

    @unavailable
    async def parts_of(self, event_id: str) -> dict[str, float]:
        """The parts of ``event_id``; ``UnreadableEvent`` if its parts key is not a hash."""
        read = self.redis.hgetall(self.key(KEY_PARTS, event_id))
        raw = cast(dict[bytes, bytes], await self._typed(KEY_PARTS, read, event_id))
        return await self._parts(event_id, raw)

    @unavailable
    async def parts_of_many(self, event_ids: list[str]) -> list[dict[str, float] | None]:
        """``parts_of`` each of ``event_ids``, in one round trip; None (said in the log) for an
        event whose parts key is not a hash: that costs its event only."""
        if not event_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.hgetall(self.key(KEY_PARTS, event_id))
            raws: list[dict[bytes, bytes] | Exception] = await pipe.execute(raise_on_error=False)
        found: list[dict[str, float] | None] = []
        for event_id, raw in zip(event_ids, raws, strict=True):
            if isinstance(raw, ResponseError):
                await self._mistyped(raw, KEY_PARTS, event_id)  # said in the log
                found.append(None)
            elif isinstance(raw, Exception):
                raise raw
            else:
                found.append(await self._parts(event_id, raw))
        return found

    async def _parts(self, event_id: str, raw: dict[bytes, bytes]) -> dict[str, float]:
        """The parts in ``raw``, the parts hash of ``event_id`` as read. Its fields that are not
        a part (written by hand) are deleted, logged: a reward cannot use them, and ``finalize``
        counts the hash's fields to see whether a part came meanwhile."""
        parts, others = decode_parts(raw)
        if others:
            shown = _shown([(name, raw[name]) for name in others])
            log.warning("event %s: reward parts that are not parts deleted: %s", event_id, shown)
            await self.redis.hdel(self.key(KEY_PARTS, event_id), *others)
        return parts

    # The training log and the learner

    async def events(
        self, after: str = "0-0", until: str = "+", batch: int = 1000
    ) -> AsyncIterator[Logged]:
        """The joined events logged after stream id ``after`` (and up to ``until``), oldest
        first; an entry that is not a usable event comes as ``Unreadable``."""
        start = f"({after}" if after != "0-0" else "-"
        if self.route is not None and self.route.stale:
            try:
                await self.route.follow()
            except DOWN as e:  # as the reads' below
                raise StoreUnavailable(str(e)) from e
        key = self.key(KEY_EVENTS)
        while True:
            read = self.redis.xrange(key, min=start, max=until, count=batch)
            # an async generator: ``unavailable`` cannot wrap it, so its mapping is here
            try:
                rows = cast(list[Entry], await self._typed(KEY_EVENTS, read))
            except DOWN as e:
                if self.route is not None:
                    self.route.lost()
                raise StoreUnavailable(str(e)) from e
            except ResponseError as e:
                refused = slot_moving(self.route, e) or refusal(e, self._p)  # as ``unavailable``
                if refused is None:
                    raise
                raise refused from e
            for stream_id, fields in rows:
                yield to_event(stream_id, fields)
            if len(rows) < batch:
                return
            start = f"({rows[-1][0].decode()}"

    @unavailable
    async def logged(self, stream_id: str) -> bool:
        """Whether the log holds the entry ``stream_id``."""
        read = self.redis.xrange(self.key(KEY_EVENTS), min=stream_id, max=stream_id)
        return bool(await self._typed(KEY_EVENTS, read))

    @unavailable
    async def first_stream_id(self) -> str:
        """The oldest entry the log holds ("0-0": none)."""
        read = self.redis.xrange(self.key(KEY_EVENTS), count=1)
        rows: Any = await self._typed(KEY_EVENTS, read)
        return str(rows[0][0].decode()) if rows else "0-0"

    @unavailable
    async def last_stream_id(self) -> str:
        read = self.redis.xrevrange(self.key(KEY_EVENTS), count=1)
        rows: Any = await self._typed(KEY_EVENTS, read)
        return str(rows[0][0].decode()) if rows else "0-0"

    @unavailable
    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.key(KEY_EVENTS), GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" in str(e):  # it exists already
                return
            if refusal(e) and await self._group_exists():  # refused, and not needed
                return
            raise await self._mistyped(e, KEY_EVENTS) from None

    async def prune_consumers(self, keep: str = "") -> int:
        """Delete the learners' names from the group but ``keep``'s, those with nothing pending
        (``scripts.PRUNE_CONSUMERS``); how many. Housekeeping: a failure is ignored (0)."""
        try:
            args = [GROUP, keep]
            return int(await self._prune_consumers(keys=[self.key(KEY_EVENTS)], args=args))
        except (RedisError, OSError):
            return 0

    async def _group_exists(self) -> bool:
        try:
            groups: Any = await self.redis.xinfo_groups(self.key(KEY_EVENTS))
        except ResponseError:  # no such key, or one of another type
            return False
        return any(g["name"] == GROUP.encode() for g in groups)

    @unavailable
    async def read_new(self, consumer: str, count: int) -> tuple[list[Logged], bool]:
        """Events never delivered to the group before, now delivered to ``consumer``, and
        whether the replicas of BANDIT_REDIS_WAIT_REPLICAS confirmed the read (always true
        without it): they then have every event it returns, and every event delivered before.
        None while ``consumer`` does not hold the learner's lease (``scripts.READ_NEW``)."""
        try:
            # Through the group commit: the read shares a round trip with the writes of the
            # requests in flight, and Redis runs it after those sent before it.
            reply, confirmed = await self._typed(
                KEY_EVENTS,
                self._calls.confirmed_call(self._read_new, *self._read_new_call(consumer, count)),
            )
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self.ensure_group()  # Redis lost its data (a restart without persistence)
            return [], True
        return to_events(reply), confirmed

    def follow_log(
        self,
        consumer: str | None,
        count: int,
        take: Callable[[list[Logged], bool], None],
        lost: Callable[[], None] = lambda: None,
    ) -> None:
        """From now on, every round trip that may log an event also reads, after those writes,
        up to ``count`` events never delivered before, for ``consumer``; ``take`` gets them before
        the callers in that round trip get their replies, and whether the replicas of
        BANDIT_REDIS_WAIT_REPLICAS confirmed them (always true without it). ``lost`` is called
        instead when the round trip fails: Redis may have run the read (a reply slower than the
        timeout, a connection lost after the write), its events delivered to ``consumer`` and
        never to be delivered again. ``consumer`` None: no more reads."""
        if consumer is None:
            self._calls.follow = None
            return
        read = evalsha(self._read_new, *self._read_new_call(consumer, count))
        self._calls.follow = (
            self._read_new,
            read,
            lambda reply, confirmed: take(to_events(reply), confirmed),
            lost,
        )

    def _read_new_call(self, consumer: str, count: int) -> tuple[list[Any], list[Any]]:
        """The keys and arguments of ``scripts.READ_NEW``: up to ``count`` events never
        delivered to the group, for ``consumer``, while it holds the learner's lease."""
        return [self.key(KEY_LEASE), self.key(KEY_EVENTS)], [consumer, GROUP, count]

    @unavailable
    async def claim_stale(
        self, consumer: str, idle_ms: int, count: int
    ) -> list[tuple[Logged, bool]]:
        """Take over up to ``count`` events read and not acknowledged for ``idle_ms``: those of
        another learner (it died, or stalled past its lease) and any of ``consumer``'s own; each
        with whether another learner had read it."""
        key = self.key(KEY_EVENTS)
        read = self.redis.xpending_range(key, GROUP, "-", "+", count, idle=idle_ms)
        try:
            pending: Any = await self._typed(KEY_EVENTS, read)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            return []
        if not pending:
            return []
        mine = consumer.encode()
        theirs = {p["message_id"] for p in pending if p["consumer"] != mine}
        ids = [p["message_id"] for p in pending]
        claimed: Any = await self.redis.xclaim(key, GROUP, consumer, idle_ms, ids)
        found = [(sid, fields) for sid, fields in claimed if sid is not None]
        if len(found) < len(ids):  # trimmed from the log, or claimed by another meanwhile
            await self._forget_trimmed(ids, {sid for sid, _ in found})
        return [(to_event(sid, fields), sid in theirs) for sid, fields in found]

    async def _forget_trimmed(self, ids: list[bytes], found: set[bytes]) -> None:
        """Acknowledge the pending events among ``ids`` (those not in ``found``) that are no
        longer in the log: the trim (BANDIT_STREAM_MAXLEN) removed them before a learner learned
        them, said in the log. Redis 6 answers XCLAIM with nil for each and keeps it pending for
        ever, so every claim met it again and failed (learning stopped for good); Redis 7 leaves
        them out and forgets them itself. An id that is still in the log (another learner
        claimed it meanwhile) stays pending."""
        key = self.key(KEY_EVENTS)
        others = [sid for sid in ids if sid not in found]
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in others:
                pipe.xrange(key, min=sid, max=sid)
            rows = await pipe.execute()
        gone = [sid for sid, row in zip(others, rows, strict=True) if not row]
        if gone:
            await self.redis.xack(key, GROUP, *gone)
            log.warning(
                "%d logged events were trimmed from the log (BANDIT_STREAM_MAXLEN) before a "
                "learner learned them, among them %s: they are not learned",
                len(gone),
                gone[0].decode(errors="replace"),
            )

    @unavailable
    async def publish(
        self,
        snapshot: Snapshot,
        acks: Sequence[str],
        challengers: Mapping[str, bytes] | None = None,
        promotion: Mapping[str, Any] | None = None,
        holder: str | None = None,
        override: str | None = None,
        decided_under: str | None = None,
    ) -> bool:
        """Save the model and acknowledge the events it has learned, atomically; with
        ``challengers``, their state replaces the stored one in the same transaction; with
        ``promotion`` (a record whose ``to`` is the snapshot's policy), the record is added and
        the policy set as an admin's switch would; with ``override``, that policy is set so
        (a restored file's). With ``holder``, only while ``holder`` holds the learner's lease
        and the stored model's watermark is not past the snapshot's, both checked in the same
        transaction: False (nothing written) when either fails.

        A promotion is made only while the policy override is still ``decided_under`` (what
        ``policy_override`` read when the promotion was decided), checked in the same
        transaction: else an admin switched meanwhile, and the switch wins: ``SwitchArrived``,
        nothing written."""
        for _ in range(3):
            try:
                return await self._publish(
                    snapshot, acks, challengers, promotion, holder, override, decided_under
                )
            except WatchError:
                continue  # a watched key was written meanwhile: look again
        raise StoreUnavailable("the learner's lease or the policy kept changing at publishing")

    async def _publish(
        self,
        snapshot: Snapshot,
        acks: Sequence[str],
        challengers: Mapping[str, bytes] | None,
        promotion: Mapping[str, Any] | None,
        holder: str | None,
        override: str | None,
        decided_under: str | None,
    ) -> bool:
        queued: list[str] = []  # the key template of each command of the transaction, in order
        watched = [self.key(KEY_LEASE), self.key(KEY_MODEL)]
        if promotion is not None:  # its write of the policy must not undo an admin's switch
            watched.append(self.key(KEY_POLICY))
        async with Watched(self.redis) as tx:
            # Watched: the lease's holder, the model's type and the override, read in the round
            # trip that watches them, hold until EXEC.
            reads: list[list[Any]] = [
                ["GET", self.key(KEY_LEASE)],
                ["TYPE", self.key(KEY_MODEL)],
                ["HGET", self.key(KEY_MODEL), "stream_id"],
            ]
            if promotion is not None:
                reads.append(["GET", self.key(KEY_POLICY)])
            lease, found, stored, *policy = await tx.read(watched, reads)
            if holder is not None and _given(lease) != holder.encode():
                return False
            if promotion is not None:  # a switch since the promotion was decided wins
                override_now = await self._override_of(_read_as(policy[0]))
                if override_now != decided_under:
                    raise SwitchArrived(override_now)
            # A model key of another type: nothing is written (no events acknowledged as saved).
            found = _given(found)
            found = found.decode() if isinstance(found, bytes) else str(found)
            if found not in ("hash", "none"):
                raise self._wrong(KEY_MODEL, found)
            # A learner's model never replaces one that has learned past its watermark. The lease
            # alone is not enough: a learner that froze past it and took it again when it was
            # free could publish, from a step racing its ``lead``, the model it froze with.
            if holder is not None and _behind(snapshot, _given(stored)):
                return False
            writes: list[list[Any]] = []
            if challengers is not None:  # replaced whatever its type: it mends a misfit
                writes.append(["DEL", self.key(KEY_CHALLENGERS)])
                queued.append(KEY_CHALLENGERS)
                if challengers:
                    flat = [x for field, value in challengers.items() for x in (field, value)]
                    writes.append(["HSET", self.key(KEY_CHALLENGERS), *flat])
                    queued.append(KEY_CHALLENGERS)
            if promotion is not None:
                writes += [
                    ["SET", self.key(KEY_POLICY), snapshot.policy],
                    ["RPUSH", self.key(KEY_PROMOTIONS), dumps(promotion)],
                    ["LTRIM", self.key(KEY_PROMOTIONS), -KEPT_PROMOTIONS, -1],
                ]
                queued += [KEY_POLICY, KEY_PROMOTIONS, KEY_PROMOTIONS]
            if override is not None:
                writes.append(["SET", self.key(KEY_POLICY), override])
                queued.append(KEY_POLICY)
            writes += [
                [
                    "HSET",
                    self.key(KEY_MODEL),
                    *("policy", snapshot.policy, "version", snapshot.version),
                    *("stream_id", snapshot.stream_id, "data", snapshot.data),
                ],
                ["HSET", self.key(KEY_STATS), "events_learned", snapshot.version],
            ]
            queued += [KEY_MODEL, KEY_STATS]
            if acks:
                writes.append(["XACK", self.key(KEY_EVENTS), GROUP, *acks])
                queued.append(KEY_EVENTS)
            # Redis runs every command of a transaction, one failing or not: the model is
            # published even if a key it does without (the counter, the promotions' record) is
            # of another type, said once.
            replies = await tx.execute(writes)
        for template, reply in zip(queued, replies, strict=True):
            if not isinstance(reply, Exception):
                continue
            if not isinstance(reply, ResponseError):
                raise reply
            error = await self._mistyped(reply, template)  # said once
            if template not in SPARED:
                raise error
        self.model_seen = True
        if promotion is not None:
            self.override_seen = snapshot.policy
        if override is not None:
            self.override_seen = override
        return True

    @unavailable
    async def load_snapshot(self) -> Snapshot | None:
        """The newest snapshot; None without one, or with one whose fields do not read (written
        by hand: the service then learns the whole log, as for model bytes that do not load); None
        too when the key is not a hash (said in the log once)."""
        read = self.redis.hgetall(self.key(KEY_MODEL))
        raw = cast(dict[bytes, bytes], await self._typed(KEY_MODEL, read, absent={}))
        head = _snapshot_head(raw.get(b"policy"), raw.get(b"version"), raw.get(b"stream_id"))
        if head is None or b"data" not in raw:
            return None
        self.model_seen = True
        return Snapshot(*head, data=raw[b"data"])

    @unavailable
    async def snapshot_head(self) -> tuple[str, int, str] | None:
        """The newest snapshot's policy, version and watermark, without its bytes."""
        read = self.redis.hmget(self.key(KEY_MODEL), ["policy", "version", "stream_id"])
        head: Any = await self._typed(KEY_MODEL, read, absent=[None, None, None])
        found = _snapshot_head(*head)  # None for a key of another type, as load_snapshot
        self.model_seen = self.model_seen or found is not None
        return found

    @unavailable
    async def challenger_state(self) -> dict[str, bytes]:
        """The challengers' state as the learner last published it (empty: none, or a key that
        is not a hash, said in the log once: they start afresh, as from state that does not
        read). A field whose name is not UTF-8 is none the learner wrote: left out (decoded, it
        stopped the learner's take-over, and so the service's start)."""
        read = self.redis.hgetall(self.key(KEY_CHALLENGERS))
        raw = cast(dict[bytes, bytes], await self._typed(KEY_CHALLENGERS, read, absent={}))
        fields = {}
        for name, value in raw.items():
            with contextlib.suppress(UnicodeDecodeError):
                fields[name.decode()] = value
        return fields

    @unavailable
    async def challenger_field(self, name: str) -> bytes | None:
        """One field of that state (the summary that /stats shows, say); None as for none."""
        read = self.redis.hget(self.key(KEY_CHALLENGERS), name)
        return cast(bytes | None, await self._typed(KEY_CHALLENGERS, read, absent=None))

    @unavailable
    async def promotions(self, count: int = KEPT_PROMOTIONS) -> list[dict[str, Any]]:
        """The newest ``count`` promotion records, oldest first; an entry that is not a JSON
        object (written by hand) is left out with a warning, so it cannot break /stats; none when
        the key is not a list (said in the log once)."""
        read = self.redis.lrange(self.key(KEY_PROMOTIONS), -count, -1)
        raw: Any = await self._typed(KEY_PROMOTIONS, read, absent=[])
        records = []
        for item in raw:
            try:
                record = orjson.loads(item)
            except orjson.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            elif self.first_time("promotion", item):
                log.warning("a promotion record is not readable, left out: %.80r", item)
        return records

    def first_time(self, *value: object) -> bool:
        """Whether this store meets ``value`` (an unreadable record, written by hand) for the
        first time: said once in the log, not at every read of /stats or /metrics."""
        key = hash(value)
        if key in self._said:
            return False
        if len(self._said) >= KEPT_SAID:
            self._said.clear()
        self._said.add(key)
        return True

    @unavailable
    async def hold_lease(self, holder: str, ttl_s: float) -> int:
        """Take the learner's lease if free, or renew it if ``holder`` has it: ``LEASE_RENEWED``
        or ``LEASE_TAKEN`` (it was free, ``holder``'s own having lapsed if it held it), 0 (false)
        when another holder has it."""
        held = self._lease(keys=[self.key(KEY_LEASE)], args=[holder, int(ttl_s * 1000)])
        return int(await self._typed(KEY_LEASE, held))

    async def release_lease(self, holder: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=[self.key(KEY_LEASE)], args=[holder])

    @unavailable
    async def policy_override(self) -> str | None:
        """The policy an admin switched to; None without one, or when the key is not a string
        (said in the log once: served as an override that is refused, BANDIT_POLICY)."""
        self.override_seen = await self._override_of(self.redis.get(self.key(KEY_POLICY)))
        return self.override_seen

    async def _override_of(self, read: Awaitable[Any]) -> str | None:
        """``policy_override``, as ``read`` (a GET of the key, or its reply) answers."""
        raw: Any = await self._typed(KEY_POLICY, read, absent=None)
        try:
            return raw.decode() if raw is not None else None
        except UnicodeDecodeError:  # written by hand: read as none, said once
            self._wrong(KEY_POLICY, "string that is not UTF-8", expected="policy spec")
            return None

    @unavailable
    async def set_policy_override(self, spec: str) -> None:
        await self.redis.set(self.key(KEY_POLICY), spec)
        self.override_seen = spec

    @unavailable
    async def word_secret(self) -> str:
        """The deployment's secret for hashing query words, created at random on first use.

        Read, and when absent, SET NX and GET in one transaction: every process on this prefix
        gets the same secret, whichever created it. It has no TTL and ``clear`` is the only code
        that deletes it.

        ``StoreDamaged`` (said in the log once) when the key is not a string, or one that is empty
        or not UTF-8: a new secret would silently change every word feature, so none is made.
        """
        return await self.keep_word_secret(secrets.token_hex(32))

    @unavailable
    async def stored_word_secret(self) -> str | None:
        """The word secret Redis holds, None without one (none is made); ``StoreDamaged`` as
        for ``word_secret``."""
        raw: Any = await self._typed(KEY_WORD_SECRET, self.redis.get(self.key(KEY_WORD_SECRET)))
        return None if raw is None else self._secret_text(raw)

    @unavailable
    async def keep_word_secret(self, secret: str) -> str:
        """The word secret Redis holds, ``secret`` set first if it holds none (SET NX and GET in
        one transaction, only then: a Redis that refuses writes can still be read);
        ``StoreDamaged`` as for ``word_secret``."""
        raw: Any = await self._typed(KEY_WORD_SECRET, self.redis.get(self.key(KEY_WORD_SECRET)))
        if raw is None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(self.key(KEY_WORD_SECRET), secret, nx=True)
                pipe.get(self.key(KEY_WORD_SECRET))
                _, raw = await self._typed(KEY_WORD_SECRET, pipe.execute())
        return self._secret_text(raw)

    def _secret_text(self, raw: Any) -> str:
        try:
            secret = bytes(raw).decode()
        except UnicodeDecodeError:
            secret = ""
        if not secret:
            raise self._wrong(
                KEY_WORD_SECRET, "string that is empty or not UTF-8", expected="secret text"
            )
        return secret

    # Counters and housekeeping

    @unavailable
    async def count(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name``; a counter that is not an integer (written by hand) is
        left as it is, with a warning: it must not fail the work it counts."""
        error: bytes | None = await self._count(keys=[self.key(KEY_STATS)], args=[name, by])
        if not error:
            return
        caught = ResponseError(error.decode(errors="replace"))
        refused = refusal(caught)
        if refused is not None:  # Redis refuses writes (full, say): the counter is fine
            raise refused
        if "WRONGTYPE" in str(caught):
            await self._mistyped(caught, KEY_STATS)  # said once
        else:
            log.warning("counter %s not counted (%s): delete it to restart it", name, caught)

    async def recent_events(self, count: int) -> list[Logged]:
        """The newest ``count`` joined events of the training log, oldest first."""
        return decode_entries(await self.recent_entries(count))

    @unavailable
    async def recent_entries(
        self, count: int, chunk: int = RECENT_CHUNK, max_bytes: int = RECENT_MAX_BYTES
    ) -> list[Entry]:
        """The newest ``count`` entries of the training log, oldest first, not decoded yet
        (``records.decode_entries``: for a big window, in a thread), as many as fit in
        ``max_bytes`` (their fields' lengths). They are read ``chunk`` at a time at most, so
        Redis serves its other clients between the reads of a big window, and fewer when the
        entries read so far say that a chunk would overrun ``max_bytes`` by much."""
        key = self.key(KEY_EVENTS)
        rows: list[Entry] = []
        size = 0
        newest = "+"
        while len(rows) < count and size <= max_bytes:
            # as many as the bytes left hold, at the mean size of the entries read so far
            room = RECENT_FIRST if not rows else (max_bytes - size) * len(rows) // max(size, 1) + 1
            want = min(chunk, count - len(rows), room)
            read = self.redis.xrevrange(key, max=newest, count=want)
            got = cast(list[Entry], await self._typed(KEY_EVENTS, read))
            for entry in got:
                size += sum(len(k) + len(v) for k, v in entry[1].items())
                if size > max_bytes:
                    break
                rows.append(entry)
            if len(got) < want:
                break
            newest = f"({got[-1][0].decode()}"
        rows.reverse()
        return rows

    @unavailable
    async def counters(self) -> dict[str, float]:
        """The counters; a value that is not a finite number within ``MAX_COUNTER`` (written by
        hand) is left out, with a warning the first time this store reads it; all of them when
        the key is not a hash."""
        read = self.redis.hgetall(self.key(KEY_STATS))
        raw = cast(dict[bytes, bytes], await self._typed(KEY_STATS, read, absent={}))
        out: dict[str, float] = {}
        for name, value in map(_counter, raw.items()):
            if value is not None:
                out[name.decode(errors="replace")] = value
            elif self.first_time("counter", name):
                log.warning(
                    "counter %r is not a number a counter holds (%.40r), left out of /stats and "
                    "/metrics: an increment leaves it as it is; delete it (HDEL) to restart it",
                    name.decode(errors="replace"),
                    raw[name],
                )
        return out

    # Keys of another type than the service writes there (see keys.KEY_TYPES)

    async def _typed(
        self,
        template: str,
        read: Awaitable[T],
        event_id: str = "",
        absent: T | _Raise = _Raise.RAISE,
    ) -> T:
        """What ``read``, a command on the key ``template`` (of ``event_id``), answers. When that
        key holds another Redis type: ``absent`` if given (the key read as absent, said in the log
        once), else its error raised (``_wrong``). Any other error is raised as it is."""
        try:
            return await read
        except ResponseError as e:
            error = await self._mistyped(e, template, event_id)
            if isinstance(absent, _Raise):
                raise error from None
            return absent

    def _misfit(self, event_id: str, keys: Sequence[str], reply: list[Any]) -> RouterError:
        """The error of a script's answer {6, key index, type}: ``keys`` are its KEYS' templates."""
        return self._wrong(keys[int(reply[1]) - 1], reply[2].decode(), event_id)

    async def _mistyped(
        self, error: ResponseError, template: str, event_id: str = ""
    ) -> RouterError:
        """``error``, met on the key ``template`` (of ``event_id``), as ``_wrong`` when it is a
        WRONGTYPE; any other error is raised as it is."""
        if "WRONGTYPE" not in str(error):  # Redis 6 puts "Error running script" before it
            raise error
        found: Any = await self.redis.type(self.key(template, event_id))
        return self._wrong(
            template, found.decode() if isinstance(found, bytes) else str(found), event_id
        )

    def _wrong(
        self, template: str, found: str, event_id: str = "", expected: str = ""
    ) -> RouterError:
        """An event's key of type ``found`` (not ``expected``, by default its type): an
        ``UnreadableEvent`` (409), said in the log as the answer of this call. A deployment's:
        ``StoreDamaged`` (503), said in the log once per process and key (an error; a warning for
        the keys the service does without, SPARED)."""
        expected = expected or KEY_TYPES[template]
        if template in EVENT_KEYS:
            problem = f"its Redis key holds a {found}, not a {expected}"
            return _unreadable(event_id, problem, EVENT_RECORDS[template])
        key = self.key(template)
        caveat = SECRET_CAVEAT if template == KEY_WORD_SECRET else ""
        error = StoreDamaged(key, found, expected, STOPS[template], caveat)
        if key not in self._damaged:
            self._damaged.add(key)
            level = logging.WARNING if template in SPARED else logging.ERROR
            log.log(level, "%s", error.message)
        return error

    @unavailable
    async def clear(self) -> None:
        """Delete every key under this prefix (the benchmarks start each figure clean)."""
        async for key in self.redis.scan_iter(match=f"{self._p}:*", count=1000):
            await self.redis.delete(key)

    async def close(self) -> None:
        with contextlib.suppress(RedisError):
            await self._calls.close()
        with contextlib.suppress(RedisError):
            await self.redis.aclose()
        if self.route is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.route.aclose()


def _given(reply: Any) -> Any:
    """A raw reply, an error reply raised as the command's own."""
    if isinstance(reply, Exception):
        raise reply
    return reply


async def _read_as(reply: Any) -> Any:
    """A raw reply as the read that answered it (for ``Store._typed``)."""
    return _given(reply)


def _behind(snapshot: Snapshot, stored: Any) -> bool:
    """Whether ``snapshot``'s watermark is behind ``stored``, the stored model's (one that does
    not read, written by hand, is as none)."""
    try:
        watermark = stored.decode() if isinstance(stored, bytes) else ""
    except UnicodeDecodeError:
        return False
    if not is_stream_id(watermark):
        return False
    return stream_id_key(snapshot.stream_id) < stream_id_key(watermark)


def _snapshot_head(
    policy: bytes | None, version: bytes | None, stream_id: bytes | None
) -> tuple[str, int, str] | None:
    """A snapshot's policy, version and watermark as stored; None when one is missing or does
    not read (logged: only a hand can write such a value there)."""
    if policy is None or version is None or stream_id is None:
        return None
    try:
        number, watermark = int(version), stream_id.decode()
        if not 0 <= number <= MAX_INT64 or not is_stream_id(watermark):
            raise ValueError(f"version {version!r}, stream_id {stream_id!r}")
        return policy.decode(), number, watermark
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("the stored snapshot's fields do not read (%s): treated as none", e)
        return None


def _read(reader: Callable[[bytes], dict[str, Any]], event_id: str, raw: bytes) -> dict[str, Any]:
    """``reader(raw)``, the decision stored for ``event_id``, or ``UnreadableDecision``."""
    try:
        return reader(raw)
    except ValueError as e:
        raise _unreadable(event_id, str(e)) from None


def _readable(raw: bytes | None) -> dict[str, Any] | None:
    try:
        return None if raw is None else read_decision(raw)
    except ValueError:
        return None


def _unreadable(event_id: str, problem: str, what: str = "decision") -> UnreadableEvent:
    """The error for a stored decision (or another record of the event: ``what``) that does not
    read, said in the log (once: only the store raises it, and its callers do not log it again)."""
    error = (
        UnreadableDecision(event_id, problem)
        if what == "decision"
        else UnreadableEvent(event_id, what, problem)
    )
    log.warning("%s", error.message)
    return error


def _shown(values: list[Any]) -> str:
    """``values`` for the log, at most a few hundred characters of them."""
    text = repr(values)
    return text if len(text) <= 300 else f"{text[:300]}... ({len(values)} in all)"


def _counter(item: tuple[bytes, bytes]) -> tuple[bytes, float | None]:
    try:
        value = float(item[1])
    except ValueError:
        return item[0], None
    return item[0], value if math.isfinite(value) and abs(value) <= MAX_COUNTER else None


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """The deployment's store: BANDIT_REDIS_URL, or the embedded Redis in BANDIT_DATA_DIR."""
    with ExitStack() as stack:
        url = settings.redis_url
        if not url:
            embedded = stack.enter_context(EmbeddedRedis(settings.data_dir))
            if embedded.fresh:
                # `status` or `export` run from another folder than `serve` read an empty Redis
                # of their own and reported nothing, with no word of where they had looked.
                log.warning(
                    "the embedded Redis in %s held no data: started empty (BANDIT_DATA_DIR is "
                    "relative to the working directory; `serve` prints its folder as it starts)",
                    embedded.data_dir,
                )
            url = embedded.url
        route = None
        if settings.redis_cluster or is_cluster_url(url):
            route = SlotRoute(url, "{" + settings.key_prefix + "}", connect)
            try:
                client = await when_available(_located(route), settings.startup_wait_s)
            except BaseException:
                await route.aclose()
                raise
        else:
            client = connect(url)
        store = Store(
            client, settings.key_prefix, settings.reward_wait_s, settings.stream_maxlen, route
        )
        store.wait_for_replicas(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
        try:
            yield store
        finally:
            await store.close()


def _located(route: SlotRoute) -> Callable[[], Awaitable[aioredis.Redis]]:
    """Opening a client for the route's master, with a cluster not answering yet reported as
    ``StoreUnavailable`` (so a starting process waits for it)."""

    async def open_() -> aioredis.Redis:
        try:
            return await route.open()
        except (RedisError, OSError) as e:
            raise down(e) from e

    return open_
