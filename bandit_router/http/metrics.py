"""``GET /metrics``: the router's Prometheus families, with the gauges refreshed at each scrape."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bandit_router.errors import StoreUnavailable
from bandit_router.http.openapi import OPS
from bandit_router.service.challengers import challengers_view
from bandit_router.service.deployments import Routers
from bandit_router.service.router import Router, counter_total


async def _logged_rewards(router: Router) -> int | None:
    """Rewards logged deployment-wide (the stream never forgets a count), None if Redis fails."""
    try:
        counters = await router.store.counters()
    except StoreUnavailable:
        router.metrics.redis_error("counters")
        return None
    return int(counter_total(counters, "rewards:"))


METRICS_EXAMPLE = """# HELP bandit_decisions_total Decisions made, by chosen arm and policy
# TYPE bandit_decisions_total counter
bandit_decisions_total{arm="7b",policy="egreedy"} 42.0
"""


def register_metrics(app: FastAPI, dependencies: Sequence[Any]) -> None:
    """Add ``GET /metrics``."""

    @app.get(
        "/metrics",
        response_class=Response,
        tags=["operations"],
        dependencies=list(dependencies),
        responses=OPS
        | {
            200: {
                "description": "Prometheus text exposition format, version 0.0.4",
                "content": {"text/plain": {"example": METRICS_EXAMPLE}},
            }
        },
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this process (see the README's Metrics section); with several
        deployments every series carries a ``deployment`` label."""
        routers: Routers = request.app.state.routers
        for router in routers.values():
            router.metrics.refresh(router.version, await _logged_rewards(router))
            try:
                router.metrics.challengers(await challengers_view(router.learner))
            except StoreUnavailable:
                router.metrics.redis_error("challengers")
        if len(routers) == 1:
            registry = routers.default.metrics.registry
        else:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(ByDeployment(routers))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class ByDeployment(Collector):
    """Every deployment's metric families as one, each sample labelled with its deployment."""

    def __init__(self, routers: Routers) -> None:
        self.routers = routers

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for name, router in self.routers.items():
            for family in router.metrics.registry.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                merged.samples.extend(
                    s._replace(labels={"deployment": name, **s.labels}) for s in family.samples
                )
        yield from families.values()
