"""``GET /metrics``: the router's Prometheus families, with the gauges refreshed at each scrape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bandit_router.errors import StoreUnavailable
from bandit_router.http.openapi import OPS
from bandit_router.service.challengers import challengers_view
from bandit_router.service.router import Router


async def _logged_rewards(router: Router) -> int | None:
    """Rewards logged deployment-wide (the stream never forgets a count), None if Redis fails."""
    try:
        counters = await router.store.counters()
    except StoreUnavailable:
        router.metrics.redis_error("counters")
        return None
    return int(sum(v for k, v in counters.items() if k.startswith("rewards:")))


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
        """Prometheus metrics of this process (see the README's Metrics section)."""
        router: Router = request.app.state.router
        router.metrics.refresh(router.version, await _logged_rewards(router))
        try:
            router.metrics.challengers(await challengers_view(router.learner))
        except StoreUnavailable:
            router.metrics.redis_error("challengers")
        return Response(generate_latest(router.metrics.registry), media_type=CONTENT_TYPE_LATEST)
