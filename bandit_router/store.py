"""Store: everything that must outlive a process, in Redis, under one key prefix.

Decisions wait for their reward under a TTL; a reward atomically marks its event as learned and
appends the joined event to a stream, the training log; the newest model snapshot and the counters
sit beside them. Every key shares one hash tag, so the Lua scripts also run on Redis Cluster.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bandit_router.errors import AlreadyRewarded, StoreUnavailable, UnknownEvent

# Key layout; {p} is the key prefix wrapped as a hash tag.
KEY_DECISION = "{p}:decision:{event_id}"  # JSON decision record, TTL = reward wait window
KEY_DONE = "{p}:done:{event_id}"  # marker: this event's reward was accepted
KEY_EVENTS = "{p}:events"  # stream of joined events (decision + reward): the training log
KEY_MODEL = "{p}:model"  # hash: policy, version, stream_id, data, ts
KEY_STATS = "{p}:stats"  # hash of counters: decisions:<arm>, rewards:<arm>, reward_sum:<arm>

# Store a decision unless one exists under that id; return the existing one if so.
_SAVE_DECISION = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('HINCRBY', KEYS[2], 'decisions:' .. ARGV[3], 1)
  return false
end
return redis.call('GET', KEYS[1])
"""

# Accept a reward once: 0 = unknown event, 1 = already rewarded, 2 = accepted and logged.
_ADD_REWARD = """
local d = redis.call('GET', KEYS[1])
if not d then return {0} end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return {1} end
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'd', d, 'r', ARGV[1])
local arm = cjson.decode(d)['arm']
redis.call('HINCRBY', KEYS[4], 'rewards:' .. arm, 1)
redis.call('HINCRBYFLOAT', KEYS[4], 'reward_sum:' .. arm, ARGV[4])
return {2, d, id}
"""

P = ParamSpec("P")
T = TypeVar("T")


def _unavailable(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn Redis connection failures into ``StoreUnavailable`` (HTTP 503)."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise StoreUnavailable(str(e) or type(e).__name__) from e

    return wrapper


@dataclass(frozen=True, slots=True)
class Event:
    """A joined event from the training log: the decision and the reward it got."""

    stream_id: str
    decision: dict[str, Any]
    reward: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Snapshot:
    policy: str
    version: int
    stream_id: str
    data: bytes


def connect(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client for ``url`` (redis://, rediss://, unix://) that waits for a free connection."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5, socket_connect_timeout=2, socket_timeout=5
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: closing the client closes it


class Store:
    """The service's state in Redis."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, reward_wait_s: int, stream_maxlen: int
    ) -> None:
        self.redis = client
        self._p = "{" + prefix + "}"
        self.reward_wait_s = reward_wait_s
        self.stream_maxlen = stream_maxlen
        self._save_decision = client.register_script(_SAVE_DECISION)
        self._add_reward = client.register_script(_ADD_REWARD)

    def key(self, template: str, event_id: str = "") -> str:
        return template.format(p=self._p, event_id=event_id)

    @_unavailable
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    @_unavailable
    async def save_decision(self, event_id: str, record: dict[str, Any]) -> dict[str, Any] | None:
        """Store a decision; if one exists under ``event_id`` already, return that one instead."""
        existing = await self._save_decision(
            keys=[self.key(KEY_DECISION, event_id), self.key(KEY_STATS)],
            args=[json.dumps(record, separators=(",", ":")), self.reward_wait_s, record["arm"]],
        )
        return json.loads(existing) if existing else None

    @_unavailable
    async def add_reward(
        self, event_id: str, reward: dict[str, Any], value: float
    ) -> tuple[dict[str, Any], str]:
        """Accept the reward of ``event_id`` once and log the joined event; return the decision."""
        result = await self._add_reward(
            keys=[
                self.key(KEY_DECISION, event_id),
                self.key(KEY_DONE, event_id),
                self.key(KEY_EVENTS),
                self.key(KEY_STATS),
            ],
            args=[
                json.dumps(reward, separators=(",", ":")),
                self.reward_wait_s,
                self.stream_maxlen,
                value,
            ],
        )
        if result[0] == 0:
            raise UnknownEvent(event_id)
        if result[0] == 1:
            raise AlreadyRewarded(event_id)
        return json.loads(result[1]), result[2].decode()

    @_unavailable
    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self.redis.hset(
            self.key(KEY_MODEL),
            mapping={
                "policy": snapshot.policy,
                "version": snapshot.version,
                "stream_id": snapshot.stream_id,
                "data": snapshot.data,
            },
        )

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

    async def events(self, after: str = "0-0", batch: int = 1000) -> AsyncIterator[Event]:
        """The joined events logged after stream id ``after``, oldest first."""
        start = f"({after}" if after != "0-0" else "-"
        while True:
            try:
                rows = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    await self.redis.xrange(self.key(KEY_EVENTS), min=start, count=batch),
                )
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                raise StoreUnavailable(str(e)) from e
            for stream_id, fields in rows:
                sid = stream_id.decode()
                yield Event(sid, json.loads(fields[b"d"]), json.loads(fields[b"r"]))
            if len(rows) < batch:
                return
            start = f"({rows[-1][0].decode()}"

    @_unavailable
    async def recent_events(self, count: int) -> list[Event]:
        """The newest ``count`` joined events of the training log, oldest first."""
        rows = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await self.redis.xrevrange(self.key(KEY_EVENTS), count=count),
        )
        return [
            Event(sid.decode(), json.loads(f[b"d"]), json.loads(f[b"r"])) for sid, f in rows[::-1]
        ]

    @_unavailable
    async def counters(self) -> dict[str, float]:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.key(KEY_STATS)))
        return {k.decode(): float(v) for k, v in raw.items()}

    @_unavailable
    async def stream_length(self) -> int:
        return int(await self.redis.xlen(self.key(KEY_EVENTS)))

    @_unavailable
    async def clear(self) -> None:
        """Delete every key under this prefix (tests and admin reset)."""
        async for key in self.redis.scan_iter(match=f"{self._p}:*", count=1000):
            await self.redis.delete(key)

    async def close(self) -> None:
        with contextlib.suppress(RedisError):
            await self.redis.aclose()
