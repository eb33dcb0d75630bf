"""Redis Cluster: a deployment's way to the master that owns its slot.

Every key of a deployment carries the same hash tag (its key prefix), so all of them live in one
slot, on one master. The store talks to that master over a plain connection (its scripts, its
MULTI/EXEC transactions and the group commit's pipelined round trips run unchanged there), and
redis-py's cluster client keeps the cluster's topology: which master owns the slot now.

When the master fails, or the slot moves (MOVED, ASK, CLUSTERDOWN, a write to a demoted master),
the call in flight fails as ``StoreUnavailable`` (503: the client retries) and the route is
marked stale; the next call re-reads the topology from the cluster and reconnects to whichever
master owns the slot by then. While a failover is under way that is still the dead master, so
calls keep failing fast until a replica has been promoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    ExecAbortError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("bandit_router")

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
REFRESH_EVERY_S = 0.2  # topology reads at most this often while the slot's master is away
NODE_TIMEOUT_S = 5.0  # a node's reply to a topology read; also the most a call waits for a read
REDIRECTS = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "READONLY")


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def plain_url(url: str) -> str:
    """``redis+cluster://...`` as the ``redis://...`` URL of the same seed node."""
    scheme, sep, rest = url.partition("://")
    return CLUSTER_SCHEMES.get(scheme, scheme) + sep + rest


def node_url(url: str, host: str, port: int) -> str:
    """``url`` (its scheme, credentials, database and options) pointed at ``host:port``."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def seed_nodes(url: str) -> tuple[str, list[ClusterNode]]:
    """A cluster URL may name several nodes (``redis+cluster://h1:7000,h2:7000``), any of which
    a starting process reads the topology from: ``url`` naming its first, and the others.
    ``ValueError`` for a node that is no ``host[:port]``."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    first, *others = hosts.split(",")
    nodes = []
    for each in others:
        node = urlsplit(f"//{each}")
        if not node.hostname:
            raise ValueError(f"{each!r} is no host[:port]")
        nodes.append(ClusterNode(node.hostname, node.port or 6379))
    named = urlunsplit(
        (parts.scheme, userinfo + at + first, parts.path, parts.query, parts.fragment)
    )
    return named, nodes


def redacted_url(url: str) -> str:
    """``url`` as a message or ``config`` shows it: its password (``user:PASSWORD@``, or the
    ``password`` option redis-py also reads from the query) replaced by ``****``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # no URL urlsplit reads (a bad IPv6 address): none of it shown
        return url.partition("://")[0] + "://****"
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    netloc = f"{user}:****@{host}" if at and colon and password else parts.netloc
    options = [
        f"{name}=****" if unquote(name) == "password" and value else f"{name}{eq}{value}"
        for name, eq, value in (pair.partition("=") for pair in parts.query.split("&"))
    ]
    query = "?" + "&".join(options) if parts.query else ""
    fragment = "#" + parts.fragment if parts.fragment else ""
    # Not urlunsplit: it writes unix:///path as unix:/path.
    return f"{parts.scheme}://{netloc}{parts.path}{query}{fragment}"


def redirected(error: ResponseError) -> bool:
    """Whether Redis refused the call because the slot is not served here (now)."""
    if isinstance(error, AskError | TryAgainError | ReadOnlyError | ClusterDownError):
        return True
    text = str(error)
    if isinstance(error, ExecAbortError) or text.startswith(REDIRECTS):
        return any(word in text for word in REDIRECTS)
    return False


def out_of_reach(error: RedisClusterException) -> bool:
    """Whether redis-py's cluster client failed to read the topology because no node answered
    (or none serves the slot yet), not because the URL names no cluster. redis-py raises a
    ``RedisClusterException``, which is no ``RedisError``, from the connection error of the
    last node it tried."""
    if isinstance(error, SlotNotCoveredError):
        return True
    cause = error.__cause__ or error.__context__
    down = (RedisConnectionError, RedisTimeoutError, OSError)
    return isinstance(cause, down) and not isinstance(
        cause, AuthenticationError | AuthorizationError
    )


class NotACluster(ValueError):
    """The URL names a Redis that is no Redis Cluster node (a settings error: said, not retried)."""


class SlotRoute:
    """Which master serves the slot of ``hash_tag``, kept by redis-py's cluster client; ``bind``
    gets a client for the new master when it changes and returns the old one to close."""

    def __init__(
        self,
        url: str,
        hash_tag: str,
        connect: Callable[[str], aioredis.Redis],
        bind: Callable[[aioredis.Redis], Awaitable[aioredis.Redis]] | None = None,
    ) -> None:
        self.slot = key_slot(hash_tag.encode())
        try:
            self.url, others = seed_nodes(plain_url(url))
            self.cluster = RedisCluster.from_url(
                self.url,
                startup_nodes=others,
                socket_connect_timeout=2,
                socket_timeout=NODE_TIMEOUT_S,
            )
        except (RedisClusterException, ValueError) as e:  # "Unix domain socket is not supported"
            where = redacted_url(plain_url(url))
            raise NotACluster(f"{where} cannot name a Redis Cluster node: {e}") from e
        self._connect = connect
        self.bind = bind
        self.master: str | None = None  # host:port of the master in use
        self.stale = False
        self._reading: asyncio.Future[None] | None = None  # the topology read in flight
        self._refreshed = 0.0  # monotonic time of the last topology read
        self._unreadable = False  # the last read failed, said in the log (once an outage)

    async def locate(self, refresh: bool = False) -> str:
        """The URL of the master that owns the slot; ``refresh`` reads the topology again."""
        if refresh:
            await self.cluster.nodes_manager.initialize()
        else:
            await self.cluster.initialize()
        self._refreshed = time.monotonic()
        node = self.cluster.nodes_manager.get_node_from_slot(self.slot)
        self.master = f"{node.host}:{node.port}"
        return node_url(self.url, node.host, int(node.port))

    async def open(self) -> aioredis.Redis:
        """A client for the slot's master now; ``ValueError`` when the URL is no cluster's, a
        ``ConnectionError`` when no node answers yet (a starting process waits for it)."""
        try:
            return self._connect(await self.locate())
        except RedisClusterException as e:  # "Cluster mode is not enabled on this node", say
            if out_of_reach(e):
                raise RedisConnectionError(str(e)) from e
            raise NotACluster(
                f"{redacted_url(self.url)} is not a Redis Cluster node (BANDIT_REDIS_CLUSTER, or a "
                f"redis+cluster:// URL, says it is): {e}"
            ) from e

    def lost(self) -> None:
        """The master failed or the slot moved: find it again before the next call."""
        self.stale = True

    async def follow(self) -> None:
        """Re-read the topology (at most every ``REFRESH_EVERY_S``) and move to the slot's
        master if it changed. A failure here leaves the route stale; the call goes on to meet
        the same failure and answer 503. One read at a time, which the calls meanwhile share,
        each waiting for it at most ``NODE_TIMEOUT_S``, then failing as a Redis that does not
        reply (``RedisTimeoutError``): the read tries node after node, and nodes that take a
        connection and answer nothing (a network cut that drops packets) hold it that long
        each; it goes on alone."""
        reading = self._reading
        if reading is None or reading.done():
            if not self.stale or time.monotonic() - self._refreshed < REFRESH_EVERY_S:
                return
            reading = self._reading = asyncio.ensure_future(self._read())
        try:
            async with asyncio.timeout(NODE_TIMEOUT_S):
                await asyncio.shield(reading)
        except TimeoutError:
            raise RedisTimeoutError(
                f"no Redis Cluster node replied to the topology read in {NODE_TIMEOUT_S:g} s"
            ) from None

    async def _read(self) -> None:
        """``follow``'s read of the topology, and the move to the slot's new master."""
        before = self.master
        self._refreshed = time.monotonic()  # a read that fails too: no read at every call
        try:
            url = await self.locate(refresh=True)
        except (RedisError, RedisClusterException, OSError) as e:
            # No node answers (the cluster is out of reach: an outage), or none serves the
            # slot yet: redis-py says so with a RedisClusterException, which reached the
            # caller as itself (a 500, a /choose not answered degraded) before.
            if not self._unreadable:
                log.warning("Redis Cluster topology unreadable: %s", e)
            self._unreadable = True
            return
        self._unreadable = False
        self.stale = False
        if self.master != before and self.bind is not None:
            log.warning("slot %d moved from %s to %s", self.slot, before, self.master)
            old = await self.bind(self._connect(url))
            await old.aclose()

    async def aclose(self) -> None:
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        await self.cluster.aclose()
