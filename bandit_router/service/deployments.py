"""Many routers in one service: a ``Router`` per deployment, each on its own store.

Each deployment has its own keys (its own hash tag, so its own Redis Cluster slot), learner
lease, snapshots, counters and metrics; nothing one deployment does reaches another's keys. A
``/choose`` names its deployment (none: ``default``); a named deployment's event ids start with
``NAME:``, so ``/reward`` finds the deployment from the event id alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from bandit_router.deployments import (
    DEFAULT,
    NAME_PATTERN,
    Deployment,
    deployment_of_event,
    load_deployments,
)
from bandit_router.errors import RouterError, StoreUnavailable, UnknownEvent, echo
from bandit_router.features import AppValue
from bandit_router.service.descriptors import DescriptorWatch
from bandit_router.service.learner import wait_or_stop
from bandit_router.service.router import ChooseResult, Router, new_event_id
from bandit_router.settings import Settings
from bandit_router.store.repository import open_store
from bandit_router.store.transport import when_available

log = logging.getLogger("bandit_router")
MAX_EVENT_ID_CHARS = 128  # what /reward accepts (http.contract.EVENT_ID_MAX_CHARS)


class UnknownDeployment(RouterError):
    status_code = 422
    field = "deployment"

    def __init__(self, name: str, valid: Sequence[str]) -> None:
        super().__init__(f"unknown deployment {echo(name)}; valid: {', '.join(valid)}")


class Routers(Mapping[str, Router]):
    """The service's routers by deployment name; ``default`` first."""

    def __init__(self, deployments: Mapping[str, Deployment], routers: Mapping[str, Router]):
        self.deployments = dict(deployments)
        self._routers = dict(routers)
        self.default = self._routers[DEFAULT]
        self._named = frozenset(n for n in self._routers if n != DEFAULT)
        self._names = {id(router): name for name, router in self._routers.items()}
        # A key check before the body is read: open if any deployment needs no key, else any
        # deployment's key passes it (the deployment's own check follows).
        keyed = [r.settings.api_keys for r in self._routers.values()]
        self.any_keys: list[str] = (
            [] if not all(keyed) else sorted({k for keys in keyed for k in keys})
        )

    def __getitem__(self, name: str) -> Router:
        return self._routers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._routers)

    def __len__(self) -> int:
        return len(self._routers)

    def named(self, name: str | None) -> Router:
        """The router of deployment ``name`` (None: ``default``); 422 naming the valid ones."""
        router = self._routers.get(name or DEFAULT)
        if router is None:
            raise UnknownDeployment(str(name), list(self._routers))
        return router

    def holders(self, event_id: str) -> list[Router]:
        """The routers that may hold an event id: its deployment's, then ``default``'s when the id
        names another deployment (``default`` stored it before a deployment of that name was
        added)."""
        owner = deployment_of_event(event_id, self._named)
        return [self._routers[owner]] + ([self._routers[DEFAULT]] if owner != DEFAULT else [])

    def unknown(self, event_id: str) -> UnknownEvent:
        """What a 404 for ``event_id`` says: that its ``NAME:`` is a deployment's mark (one
        taken out of the deployments file since its decision, say) when this service serves no
        deployment of that name."""
        head, sep, _ = event_id.partition(":")
        if not sep or head in self._routers or not NAME_PATTERN.match(head):
            return UnknownEvent(event_id)
        return UnknownEvent(
            event_id,
            f"; if {head + ':'!r} marks it as an event of deployment {head!r}, this service "
            f"does not serve that deployment (valid: {', '.join(self._routers)}): its decisions "
            "stay in its keys in Redis until their windows end, to be rewarded once it is "
            "served again (BANDIT_DEPLOYMENTS_FILE)",
        )

    def event_id(self, name: str, given: str | None) -> str | None:
        """The id deployment ``name`` stores a decision under (None: ``default`` makes one)."""
        if given is None:
            return None if name == DEFAULT else f"{name}:{new_event_id()}"
        owner = deployment_of_event(given, self._named)
        if name == DEFAULT and owner != DEFAULT:
            raise RouterError(
                f"event_id {given!r} starts with {owner + ':'!r}, which marks events of "
                f"deployment {owner!r}; choose another id, or send deployment: {owner!r}",
                field="event_id",
            )
        stored = self.deployments[name].event_id(given)
        if len(stored) > MAX_EVENT_ID_CHARS:
            raise RouterError(
                f"event_id is {len(given)} characters; with the deployment's prefix "
                f"{name + ':'!r} the limit is {MAX_EVENT_ID_CHARS - len(name) - 1}",
                field="event_id",
            )
        return stored

    async def choose(
        self,
        router: Router,
        query: str,
        features: Mapping[str, AppValue] | None = None,
        arms: Sequence[str] | None = None,
        event_id: str | None = None,
    ) -> ChooseResult:
        name = self.name_of(router)
        return await router.choose(query, features, arms, self.event_id(name, event_id))

    def name_of(self, router: Router) -> str:
        return self._names[id(router)]

    async def run(self, stop: asyncio.Event) -> None:
        """Every deployment's background work (learner, sweep, refresh, buffer), and the
        process's watch on its open files."""
        await asyncio.gather(
            *(router.run(stop) for router in self._routers.values()),
            _watch_descriptors(stop),
            self._watch_eviction(stop),
        )

    async def _watch_eviction(self, stop: asyncio.Event) -> None:
        """Ask again, each sweep period, whether Redis may evict keys: its policy can change
        after the start (see ``Store.warn_if_evicting``). One Redis serves every deployment."""
        store, every = self.default.store, self.default.settings.sweep_s
        while not stop.is_set():
            await wait_or_stop(stop, every)
            try:
                await store.warn_if_evicting()
            except StoreUnavailable:  # an outage: the other jobs say it
                pass
            except Exception:  # must not end the other jobs: said, and asked again
                log.exception("the check of Redis's eviction policy failed")


async def _watch_descriptors(stop: asyncio.Event) -> None:
    watch = DescriptorWatch()
    while not stop.is_set():
        try:
            await watch.check()
        except Exception:  # a watch that fails must not end the others: said, and tried again
            log.exception("the open files check failed")
        await wait_or_stop(stop, 1.0)


@asynccontextmanager
async def open_routers(
    settings: Settings, stopping: asyncio.Event | None = None
) -> AsyncIterator[Routers]:
    """A router per deployment of ``settings`` (the environment's ``default`` plus
    ``BANDIT_DEPLOYMENTS_FILE``'s), each on a store of its own; closed in reverse order.
    ``stopping``: set when the process is to stop (``Router.open``)."""
    deployments = load_deployments(settings)
    async with AsyncExitStack() as stack:
        routers: dict[str, Router] = {}
        for name, deployment in deployments.items():
            # each router's background jobs and learner say whose lines they are
            where = f"deployment {name}: " if len(deployments) > 1 else ""
            routers[name] = await _open_one(stack, deployment, where, stopping)
        # one Redis serves every deployment (BANDIT_REDIS_URL is the process's): asked once
        default = routers[DEFAULT].store
        await when_available(default.warn_if_evicting, settings.startup_wait_s)
        yield Routers(deployments, routers)


async def _open_one(
    stack: AsyncExitStack, deployment: Deployment, where: str, stopping: asyncio.Event | None
) -> Router:
    settings = deployment.settings
    store = await stack.enter_async_context(open_store(settings))
    router = await when_available(
        lambda: Router.open(settings, store, where, deployment.name, stopping),
        settings.startup_wait_s,
    )
    stack.push_async_callback(router.close)
    return router
