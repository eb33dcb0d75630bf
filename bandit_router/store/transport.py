"""The Redis connection: the group commit and how outages are reported."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection as Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript as Script
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    WatchError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from bandit_router.errors import StoreUnavailable
from bandit_router.store.cluster import SlotRoute, redirected

log = logging.getLogger("bandit_router")
P = ParamSpec("P")


T = TypeVar("T")


DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def unavailable(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn Redis connection failures into ``StoreUnavailable`` (HTTP 503)."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        # On Redis Cluster a store has a route to its slot's master (``cluster.SlotRoute``):
        # followed again once a failure or a redirection marked it stale.
        route = getattr(args[0], "route", None) if args else None
        try:
            if route is not None and route.stale:
                await route.follow()
            return await fn(*args, **kwargs)
        except DOWN as e:
            if route is not None:
                route.lost()
            raise down(e) from e
        except ResponseError as e:
            refused = slot_moving(route, e) or refusal(e, getattr(args[0], "_p", ""))
            if refused is None:
                raise
            raise refused from e

    return wrapper


def down(error: BaseException) -> StoreUnavailable:
    """A connection's failure as ``StoreUnavailable``. A Redis that refuses the credentials
    is named as such: its own words (``HELLO must be called with the client already
    authenticated`` when the URL gives no password) do not say what to change."""
    if isinstance(error, AuthenticationError):
        return StoreUnavailable(
            f"Redis refuses the credentials of BANDIT_REDIS_URL (redis://[USER]:PASSWORD@HOST:"
            f"PORT/DB), a password missing or wrong: {error}",
            refused=True,
        )
    tls = tls_refusal(error)
    if tls is not None:
        return StoreUnavailable(f"{tls}: {error}", refused=True)
    return StoreUnavailable(str(error) or type(error).__name__)


def tls_refusal(error: BaseException | None) -> str | None:
    """What to change when ``error`` is a TLS handshake that failed for a certificate, which no
    retry mends: this side does not trust Redis's, or Redis does not take this client's. None
    for any other error (a reset connection may be a client certificate missing too, but is
    also a Redis restarting: it is waited for)."""
    while error is not None and not isinstance(error, ssl.SSLError):
        error = error.__cause__ or error.__context__
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            "this client does not trust Redis's TLS certificate: name the CA that signed it in "
            "BANDIT_REDIS_URL (rediss://...?ssl_ca_certs=/path/ca.pem, a managed service's CA "
            "bundle); a host name the certificate does not list: connect by one it lists, or add "
            "ssl_check_hostname=false; ssl_cert_reqs=none verifies nothing"
        )
    if isinstance(error, ssl.SSLError) and "ALERT" in str(error):
        return (
            "Redis refuses this client's TLS certificate, or its lack of one (tls-auth-clients): "
            "name one its CA signed in BANDIT_REDIS_URL (rediss://...?ssl_certfile=/path/"
            "client.crt&ssl_keyfile=/path/client.key)"
        )
    return None


def refusal(error: ResponseError, keys: str = "") -> StoreUnavailable | None:
    """``error`` as ``StoreUnavailable`` when Redis is up but refuses the call: its writes when
    out of memory (maxmemory under the ``noeviction`` policy), unable to persist to disk, short
    of the replicas its ``min-replicas-to-write`` asks, or a read-only replica; a command an ACL
    denies the service's user; every call while another client's script runs too long. None for
    any other error. Redis refuses a script's writes before its first one, and a busy Redis the
    whole call, so nothing of the call was kept; an ACL is checked command by command, and one
    that denies a command midway in a script leaves what the script wrote before it. ``keys``:
    the hash tag of the deployment's keys (``{bandit}``), named when the ACL denies one."""
    text = str(error)
    where, found, said = text.partition(": -")  # Redis 6 puts where in a script before it
    if found and where.startswith(("Error running script", "@user_script")):
        text = said
    text = text.split(" script: ")[0]  # Redis 7's: where in the script, not for the client
    denied = text.find("The user executing the script can't")  # an ACL, in either form
    text = text[denied:] if denied >= 0 else text
    database = text.startswith(DATABASE_REFUSED)
    acl = isinstance(error, NoPermissionError) or text.startswith("NOPERM") or denied >= 0
    if isinstance(error, OutOfMemoryError) or text.startswith("OOM"):
        why = "writes: it is out of memory (maxmemory): free some, or raise maxmemory"
    elif isinstance(error, ReadOnlyError) or text.startswith("READONLY"):
        why = "writes: it is a read-only replica: BANDIT_REDIS_URL must name the master"
    elif text.startswith("MISCONF"):
        why = f"writes: it cannot write to its disk ({text.split('. ')[0]}; see its log)"
    elif text.startswith("NOREPLICAS"):
        why = "writes: it has fewer replicas than its min-replicas-to-write"
    elif text.startswith("BUSY "):
        why = "every call while a script runs too long (another client's: SCRIPT KILL ends it)"
    elif database:  # at connection, SELECT of the URL's /DB
        why = (
            f"the database BANDIT_REDIS_URL names (its /DB): {text} (a Redis has as many as "
            "its `databases`; Redis Cluster and some managed services have database 0 only)"
        )
    elif text.startswith("EXEC without MULTI"):  # the ACL denied the MULTI before it
        why = (
            "the service's user a command: MULTI, which the service's transactions start with "
            "(grant +multi +exec +watch +unwatch +discard; see README, Security and limits)"
        )
    elif acl and "access" in text:  # a key, not a command
        where = f": the deployment's keys are {keys}:*, grant them (~{keys}:*)" if keys else ""
        why = f"the service's user a key: {text}{where} (see README, Security and limits)"
    elif acl:
        why = f"the service's user a command: {text} (see README, Security and limits)"
    else:
        return None
    return StoreUnavailable(f"Redis refuses {why}", refused=True)


# Redis's answers to the SELECT of a database it does not have: a retry never mends them.
DATABASE_REFUSED = ("DB index is out of range", "SELECT is not allowed in cluster mode")


def slot_moving(route: SlotRoute | None, error: ResponseError) -> StoreUnavailable | None:
    """On Redis Cluster, ``error`` as ``StoreUnavailable`` when it says the slot is not served
    here (now), with the route marked stale; None for any other error."""
    if route is None or not redirected(error):
        return None
    route.lost()
    said = str(error)
    if isinstance(error, AskError | MovedError):  # redis-py keeps only "slot host:port"
        said = f"{'MOVED' if isinstance(error, MovedError) else 'ASK'} {said}"  # a subclass
    return StoreUnavailable(f"the deployment's slot is moving: {said}")


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
            # a Redis that refused the credentials, or a command to them, is up, and will again
            cause = e.__cause__
            refused = isinstance(
                cause, AuthenticationError | AuthorizationError | NoPermissionError
            ) or (
                e.refused
                and (tls_refusal(cause) is not None or str(cause).startswith(DATABASE_REFUSED))
            )
            if refused:
                raise
            if time.monotonic() + delay > deadline:  # said with the wait given up after
                raise StoreUnavailable(
                    f"{e.detail} (given up after BANDIT_STARTUP_WAIT_S, {seconds:g} s)",
                    refused=e.refused,
                ) from e
            log.warning("waiting for Redis to start: %s", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class GroupCommit:
    """Redis calls sent together: the calls made while a round trip is in flight share the next
    one (one pipeline, one connection, one write, one read), whichever script or command they
    are, so a /choose's decision, a /reward's parts and the learner's read of the log travel
    together. Redis runs a pipeline's calls in the order they were made.

    Each caller still waits for its own reply, so nothing is acknowledged before Redis has it;
    under load a round trip carries many requests' calls at the cost of about one. A caller
    waits at most the timeout from when it made the call, whether behind the batch in flight or
    for its own (else, with a Redis that stopped answering, a call made just after a batch went
    out would wait for that batch's timeout, then its own). A batch keeps its own timeout,
    whether its callers still wait or not.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        # (the script; its arguments; the caller's future; whether
        # the call may log an event; whether its reply waits for ``wait``'s replicas; whether
        # the caller gets that as well, with the reply)
        self._queue: list[tuple[Script, list[Any], asyncio.Future[Any], bool, bool, bool]] = []
        # A script call (its script and EVALSHA arguments) sent last in every batch with a call
        # that may log an event, and what takes its reply before the callers get theirs: the
        # leading learner's read of the log. It is told whether ``wait``'s replicas confirmed
        # the batch (always, without ``wait``); the last callable, that the batch failed: Redis
        # may have run the read all the same, its events delivered and their reply lost.
        self.follow: (
            tuple[Script, list[Any], Callable[[Any, bool], None], Callable[[], None]] | None
        ) = None
        self._flusher: asyncio.Task[None] | None = None
        self._made = 0  # calls made so far
        self._taken = 0  # of which the flusher took this many (sent, or out of time)
        self._conn: Connection | None = None  # the group commit's own, kept between batches
        self._loaded: set[str] = set()  # scripts loaded since that connection was made
        # WAIT for this many replicas, this many ms, after every batch with a script call (the
        # writes) or a confirmed command: their callers get ``StoreUnavailable`` when fewer
        # replicas confirm in time.
        self.wait: tuple[int, int] | None = None

    async def retarget(self, client: aioredis.Redis) -> None:
        """Send the next batches through ``client`` (the slot's new master)."""
        self._client = client
        await self._drop()

    async def call(
        self, script: Script, keys: list[Any], args: list[Any], logs: bool = False
    ) -> Any:
        """EVALSHA of ``script``; loaded again if Redis lost its script cache. ``logs``: the
        script may log an event, so ``follow`` goes in the same batch, after it."""
        return await self._enqueue(script, evalsha(script, keys, args), logs, True)

    async def confirmed_call(
        self, script: Script, keys: list[Any], args: list[Any]
    ) -> tuple[Any, bool]:
        """``call``, its raw reply with whether the replicas of ``wait`` confirmed its batch in
        time (always, without ``wait``), instead of a failure when they did not. For a script
        that writes, they then have everything the master ran before it."""
        call = evalsha(script, keys, args)
        reply: tuple[Any, bool] = await self._enqueue(script, call, False, True, True)
        return reply

    async def _enqueue(
        self,
        script: Script,
        args: list[Any],
        logs: bool,
        confirmed: bool,
        told: bool = False,
    ) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._made += 1
        self._queue.append((script, args, future, logs, confirmed, told))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        deadline = loop.time() + self._timeout_s()  # the caller's own: its batch keeps its own
        expiry = loop.call_at(deadline, self._expire, future, self._made)
        try:
            return await future
        finally:
            expiry.cancel()

    def _expire(self, future: asyncio.Future[Any], made: int) -> None:
        """The caller of the ``made``-th call is out of time: it fails now. A call still queued
        is never sent (the flusher leaves it out); one whose batch went out may still run in
        Redis, as after that batch's own timeout."""
        if future.done():
            return
        timeout_s = self._timeout_s()
        if made > self._taken:
            future.set_exception(
                RedisTimeoutError(
                    f"no reply from Redis in {timeout_s} s to the round trip before this call's "
                    "(this call was not sent)"
                )
            )
        else:
            future.set_exception(RedisTimeoutError(f"no reply from Redis in {timeout_s} s"))

    def _timeout_s(self) -> float:
        """The timeout of a round trip, and of a caller's wait: the client's socket timeout."""
        timeout_s = self._client.connection_pool.connection_kwargs.get("socket_timeout")
        return float(timeout_s or DEFAULT_TIMEOUT_S)

    async def _flush(self) -> None:
        while self._queue:
            taken, self._queue = self._queue, []
            self._taken = self._made
            # Those out of time are left out, never sent; a cancelled caller's call goes out (a
            # gateway request whose client left records the latency of its decision after it).
            batch = [call for call in taken if call[2].cancelled() or not call[2].done()]
            if not batch:
                continue
            calls: list[tuple[Script | None, list[Any]]] = [(s, a) for s, a, *_ in batch]
            follow = self.follow if any(logs for _, _, _, logs, _, _ in batch) else None
            if follow is not None:
                calls.append((follow[0], follow[1]))
            wait = self.wait if self.wait and any(c for _, _, _, _, c, _ in batch) else None
            if wait is not None:
                calls.append((None, ["WAIT", *wait]))
            try:
                replies = await self._send(calls)
            except asyncio.CancelledError:  # shutting down: no waiter is left hanging
                for _, _, future, *_ in batch + self._queue:
                    future.cancel()
                raise
            except Exception as e:  # every waiter in the batch gets the failure
                if follow is not None:
                    try:
                        follow[3]()
                    except Exception:  # the callers must still get their failure
                        log.exception("the read of the log after a batch failed")
                for _, _, future, *_ in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            unreplicated = None
            if wait is not None:
                confirmed = replies.pop()
                if isinstance(confirmed, Exception) or int(confirmed) < wait[0]:
                    unreplicated = StoreUnavailable(
                        f"the write reached {confirmed} of {wait[0]} replicas in {wait[1]} ms "
                        "(BANDIT_REDIS_WAIT_REPLICAS); retry"
                    )
            if follow is not None:
                reply = replies.pop()
                try:
                    if not isinstance(reply, Exception):  # NOGROUP: the learner's step sees it
                        follow[2](reply, unreplicated is None)
                except Exception:  # the callers' replies must still reach them
                    log.exception("the read of the log after a batch failed")
            for (_, _, future, _, confirm, told), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if told and not isinstance(reply, Exception):
                    future.set_result((reply, unreplicated is None))
                elif unreplicated is not None and confirm:
                    future.set_exception(unreplicated)
                elif isinstance(reply, Exception):
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
            # The batch's WAIT answered before these ran: they get one of their own, whose
            # answer (covering every write of the connection) replaces it.
            self._loaded.clear()
            resend = [calls[i][1] for i in missing]
            waited = calls[-1][0] is None and calls[-1][1][0] == "WAIT"
            again = await self._round_trip([*resend, calls[-1][1]] if waited else resend, scripts)
            if waited:
                replies[-1] = again.pop()
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _round_trip(self, commands: list[list[Any]], scripts: list[Script]) -> list[Any]:
        """Every command in one write, then their raw replies in order, an error reply as its
        ``ResponseError`` in its place.

        redis-py's pipeline does the same with a pool checkout per batch, a Python packer, a
        timeout context per reply, a task per write and response callbacks. Here the group
        commit keeps a connection of its own (one flush runs at a time), made like the pool's
        but with no per-write timeout (``send_packed_command`` then writes at once instead of in
        a task of its own); hiredis packs, one timeout covers the batch, and the replies are the
        raw ones (EVALSHA has no callback to lose; ``read_new`` reads XREADGROUP's). Any failure
        drops the connection; as with the client's own retry, a connection found dead before any
        reply came back (a Redis restart) is replaced once.
        """
        data = b"".join([pack_command(tuple(args)) for args in commands])
        for attempt in (1, 2):
            # the client's now: a retarget during the first attempt sends the second to the new
            # master (a connection made from the old one's would be kept, and meet MOVED for ever)
            pool = self._client.connection_pool
            timeout_s = self._timeout_s()
            if self._conn is None:
                kwargs = {**pool.connection_kwargs, "socket_timeout": None}
                self._conn = pool.connection_class(**kwargs)
                self._loaded.clear()  # it may be a restarted server: an empty script cache
            conn = self._conn
            # Scripts new to this connection are loaded in the same write, before the batch (a
            # NOSCRIPT would reorder it), and on this connection: one from the client's pool
            # could still be connecting when a retarget closes that client, and stay open.
            loads = [s for s in scripts if s.sha not in self._loaded]
            loading: list[list[Any]] = [["SCRIPT", "LOAD", s.script] for s in loads]
            replies: list[Any] = []
            heard = False  # a reply came back: the server had the write, it is not sent again
            try:
                async with asyncio.timeout(timeout_s):
                    await conn.send_packed_command(
                        b"".join([pack_command(tuple(args)) for args in loading]) + data,
                        check_health=False,
                    )
                    for script in loads:  # an error reply raises: the connection is dropped
                        await conn.read_response(timeout=math.inf)
                        heard = True
                        self._loaded.add(script.sha)
                    await read_replies(conn, len(commands), replies, timeout=math.inf)
                return replies
            except TimeoutError as e:  # asyncio.timeout's: the connection is out of step now
                # Before the OSError below, of which it is a subclass: caught there, a batch Redis
                # was still running (slower than the timeout, not dead) was sent again, and ran
                # twice (a final reward answered 409 by its own first run, parts reported as
                # duplicates, a read of the log delivered and never seen).
                await self._drop()
                raise RedisTimeoutError(f"no reply from Redis in {timeout_s} s") from e
            except (RedisConnectionError, OSError):
                await self._drop()
                if heard or replies or attempt == 2:
                    raise
            except BaseException:
                await self._drop()
                raise
            finally:
                # Dropped meanwhile (a ``retarget``): redis-py reconnects a disconnected
                # connection on its next send, so this one may be open again, and nothing keeps
                # it any more.
                if conn is not self._conn:
                    await conn.disconnect(nowait=True)
        raise AssertionError("unreachable")

    async def _drop(self) -> None:
        """Close the kept connection; the next batch makes another."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def close(self) -> None:
        """Let the calls already made finish, then give the connection back."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):  # each caller got its failure
                await self._flusher
        if self._conn is not None:
            await self._conn.disconnect()
            self._conn = None


DEFAULT_TIMEOUT_S = 5.0


class Watched:
    """An optimistic transaction in two round trips: WATCH and the reads that decide it in one
    write, then MULTI, the writes and EXEC in another, on a connection of ``client``'s pool.
    redis-py's pipeline sends each command after WATCH on its own, a round trip each (a
    publish took five). Each reply comes back raw, an error reply as its ``ResponseError`` in
    its place; ``execute`` raises ``WatchError`` when a watched key changed, or when the
    connection failed while watching (as redis-py's pipeline does: the caller looks again)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pool = client.connection_pool
        self._conn: Connection | None = None
        self._watching = False

    async def __aenter__(self) -> Watched:
        self._conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        return self

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        assert conn is not None
        try:
            if self._watching:  # left before EXEC (a check failed): the next user starts clean
                await conn.send_command("UNWATCH")
                await conn.read_response()
        except BaseException:  # the watch ends with the connection; the caller's error stands
            await conn.disconnect()
        finally:
            await self._pool.release(conn)

    async def read(self, keys: list[str], commands: list[list[Any]]) -> list[Any]:
        """WATCH ``keys``, then ``commands``' replies, all in one round trip. A pooled
        connection found dead before any reply came (a Redis restart) is replaced once."""
        for attempt in (1, 2):
            replies: list[Any] = []
            try:
                await self._round_trip([["WATCH", *keys], *commands], replies)
                break
            except (RedisConnectionError, OSError):
                await self._drop()
                if replies or attempt == 2:
                    raise
            except BaseException:
                await self._drop()
                raise
        if isinstance(replies[0], Exception):
            raise replies[0]
        self._watching = True
        return replies[1:]

    async def execute(self, commands: list[list[Any]]) -> list[Any]:
        """MULTI, ``commands``, EXEC in one round trip: their replies (errors in place)."""
        replies: list[Any] = []
        try:
            await self._round_trip([["MULTI"], *commands, ["EXEC"]], replies)
        except DOWN as e:
            await self._drop()
            raise WatchError("the connection failed while watching") from e
        except BaseException:
            await self._drop()
            raise
        self._watching = False  # EXEC ends the watch, whatever it answered
        for reply in replies[:-1]:  # +OK and QUEUED; an error is a command Redis refused
            if isinstance(reply, Exception):
                raise reply
        if replies[-1] is None:
            raise WatchError("a watched key changed")
        if isinstance(replies[-1], Exception):  # EXECABORT
            raise replies[-1]
        return list(replies[-1])

    async def _round_trip(self, commands: list[list[Any]], replies: list[Any]) -> None:
        conn = self._conn
        assert conn is not None
        await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        await read_replies(conn, len(commands), replies)

    async def _drop(self) -> None:
        """Close the connection (out of step, or dead): Redis forgets its watch with it."""
        self._watching = False
        if self._conn is not None:
            await self._conn.disconnect()


async def read_replies(
    conn: Connection, count: int, replies: list[Any], timeout: float | None = None
) -> None:
    """The next ``count`` replies of ``conn``, raw, appended to ``replies`` in order, an error
    reply as its ``ResponseError`` in its place: a pipelined round trip's (``GroupCommit``,
    ``Watched``). When reading fails, ``replies`` holds those that came back before (Redis had
    the write: it is not sent again). ``timeout``: each read's (None: the connection's own)."""
    for _ in range(count):
        try:
            replies.append(await conn.read_response(timeout=timeout))
        except ResponseError as e:
            replies.append(e)


def evalsha(script: Script, keys: list[Any], args: list[Any]) -> list[Any]:
    """The EVALSHA command of ``script`` on ``keys`` with ``args``."""
    return ["EVALSHA", script.sha, len(keys), *keys, *args]


class _Pool(aioredis.BlockingConnectionPool):
    """A pool that stays closed. redis-py's has no closed state: a connection still connecting
    or in use when the pool closes (a call on the old master's client while ``SlotRoute.follow``
    closes it) connects anyway and is kept, open, in the closed pool. This one disconnects every
    connection given back after it closed."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()

    async def release(self, connection: Connection) -> None:
        await super().release(connection)
        if self.closed:
            await connection.disconnect()


def connect(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client for ``url`` (redis://, rediss://, unix://) that waits for a free connection."""
    pool = _Pool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_connect_timeout=2,
        socket_timeout=DEFAULT_TIMEOUT_S,
        # A pooled connection that died with a Redis restart is replaced, not reported as down.
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=1),
        retry_on_error=[RedisConnectionError],
        # Neither CLIENT SETINFO nor CLIENT MAINT_NOTIFICATIONS (Redis Enterprise's) on each new
        # connection: a managed Redis's user may not run CLIENT (README's minimal ACL does not
        # grant it); redis-py ignored the refusals, which filled Redis's ACL LOG (32 entries in
        # a test's minute), a round trip each.
        driver_info=None,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: closing the client closes it
