"""The HTTP edge: FastAPI routes, a few lines each, over the router."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from bandit_router.dashboard import register_dashboard
from bandit_router.docs import register_docs
from bandit_router.errors import NotLearner, RouterError, StoreUnavailable
from bandit_router.estimates import BaselineCache
from bandit_router.fastpath import UNEXPECTED, FastPath
from bandit_router.metrics import register_metrics
from bandit_router.openapi import ADMIN, ADMIN_BODY, CHOOSE, DESCRIPTION, HEALTH, READ, REWARD, TAGS
from bandit_router.policies import build_policy, parse_policy_spec
from bandit_router.rewards import RewardParts
from bandit_router.router import Router, result_fields
from bandit_router.schemas import (
    ArmsResponse,
    ChooseRequest,
    ChooseResponse,
    HealthResponse,
    PolicyRequest,
    PolicyResponse,
    RewardRequest,
    RewardResponse,
    VersionResponse,
)
from bandit_router.security import BodyLimit, require_admin_key, require_api_key
from bandit_router.settings import Settings
from bandit_router.stats import StatsResponse, build_stats
from bandit_router.store import open_store, when_available

log = logging.getLogger("bandit_router")


async def get_router(request: Request) -> Router:  # async: a plain def runs in a thread
    router: Router = request.app.state.router
    return router


RouterDep = Annotated[Router, Depends(get_router)]


def _json(payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


def _error(status: int, detail: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code=status)


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def _on_router_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RouterError)
    return _error(exc.status_code, exc.message, exc.field)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    messages = []
    first_field = None
    for err in exc.errors():
        field = _field(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        if err.get("type") == "json_invalid":
            field = "body"
            msg = f"not valid JSON ({err.get('ctx', {}).get('error', 'unparseable')})"
        first_field = first_field or field
        messages.append(f"{field}: {msg}")
    return _error(422, "; ".join(messages), first_field)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    field = "body" if exc.status_code == 413 else None
    return _error(exc.status_code, str(exc.detail), field)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _error(500, UNEXPECTED)


class App(FastAPI):
    """FastAPI, with the plainly valid ``POST /choose`` and ``/reward`` answered by ``FastPath``
    before FastAPI's own middleware stack (its five layers cost ~30 us a request); every other
    request, and every one ``FastPath`` declines, goes through FastAPI as usual."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_path = FastPath(partial(FastAPI.__call__, self), settings, self.state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.fast_path(scope, receive, send)


def _freeze_startup_objects() -> None:
    """Keep what start-up built out of the garbage collector's full collections.

    Modules, FastAPI's routes and schemas and the model make about 80k objects that live as long
    as the process. A full collection walked them all, 35-45 ms with the event loop stopped
    on this shared machine, about every second under load: the long tail of /choose's latency.
    Frozen, a full collection walks only what was made since.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; Redis, the policy and the model are set up in the lifespan."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_store(settings) as store:
            router = await when_available(
                lambda: Router.open(settings, store), settings.startup_wait_s
            )
            app.state.router = router
            stop = asyncio.Event()
            background = asyncio.create_task(router.run(stop))
            _freeze_startup_objects()
            try:
                yield
            finally:
                gc.unfreeze()
                stop.set()
                await background
                await router.close()

    app = App(
        settings,
        title="bandit-router",
        summary="Learns which LLM size should answer each query.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served from local assets by register_docs: the default needs a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_exception_handler(RouterError, _on_router_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
    register_metrics(app)
    register_docs(app)
    register_dashboard(app)

    # /choose and /reward answer with bytes made from the result's own fields: the response
    # models document them, and FastAPI's second validation and encoding pass is skipped.
    keyed = [Depends(require_api_key)]  # also without keys: the OpenAPI spec documents them
    baseline_cache = BaselineCache()  # the dashboard's off-policy estimates, per process

    @app.post(
        "/choose",
        responses=CHOOSE,
        dependencies=keyed,
        tags=["routing"],
        response_model=ChooseResponse,
    )
    async def choose(body: ChooseRequest, router: RouterDep) -> Response:
        """Pick the arm (model) for one query."""
        result = await router.choose(body.query, body.features, body.arms, body.event_id)
        return _json(result_fields(result))

    @app.post(
        "/reward",
        responses=REWARD,
        dependencies=keyed,
        tags=["routing"],
        response_model=RewardResponse,
    )
    async def reward(body: RewardRequest, router: RouterDep) -> Response:
        """Report how the chosen model did, all parts at once or in several calls.

        The event is learned once: when every weighted part has arrived (or a direct `reward`),
        or when its reward window closes, with the parts present.
        """
        parts = RewardParts.from_mapping(body.model_dump(exclude={"event_id", "final"}))
        result = await router.reward(body.event_id, parts, final=body.final)
        return _json(result_fields(result))

    @app.get("/healthz", response_model=HealthResponse, responses=HEALTH, tags=["operations"])
    async def healthz(router: RouterDep) -> JSONResponse:
        """Liveness and the Redis connection."""
        try:
            await router.store.ping()
        except StoreUnavailable as e:
            return JSONResponse({"status": "unavailable", "redis": e.message}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "redis": "ok",
                "model_version": router.version,
                "learner": router.learner.leading,
                "pid": os.getpid(),
            }
        )

    @app.get("/arms", tags=["operations"])
    async def arms(router: RouterDep) -> ArmsResponse:
        """The configured arms and their features."""
        return ArmsResponse(arms=router.settings.arms)

    @app.get("/stats", responses=READ, tags=["operations"])
    async def stats(
        router: RouterDep,
        window: Annotated[
            int, Query(ge=0, le=20_000, description="newest events to analyse", examples=[1000])
        ] = 1000,
        buckets: Annotated[
            int, Query(ge=1, le=200, description="time buckets of the series", examples=[30])
        ] = 30,
    ) -> StatsResponse:
        """Totals per arm, the settings, and what the newest logged events say (the dashboard's
        data): traffic share, reward parts, exploration, and off-policy estimates of baselines."""
        return await build_stats(router, baseline_cache, window, buckets)

    admin = [Depends(require_admin_key)]

    @app.post("/admin/snapshot", responses=ADMIN, dependencies=admin, tags=["admin"])
    async def admin_snapshot(router: RouterDep) -> VersionResponse:
        """Publish the learner's model to Redis now."""
        if not router.learner.leading:
            raise NotLearner()
        return VersionResponse(model_version=await router.learner.publish())

    @app.post("/admin/reset", responses=ADMIN, dependencies=admin, tags=["admin"])
    async def admin_reset(router: RouterDep) -> VersionResponse:
        """Forget what was learned: a fresh model, learning from the next event on."""
        if not router.learner.leading:
            raise NotLearner()
        return VersionResponse(model_version=await router.learner.reset())

    @app.post("/admin/policy", responses=ADMIN_BODY, dependencies=admin, tags=["admin"])
    async def admin_policy(body: PolicyRequest, router: RouterDep) -> PolicyResponse:
        """Switch the policy; the learner relearns the new one from the whole log."""
        try:
            spec = parse_policy_spec(body.policy)
            build_policy(spec, router.settings)  # bad parameters fail here, not in the learner
        except ValueError as e:
            raise RouterError(str(e), field="policy") from e
        await router.store.set_policy_override(str(spec))
        if router.learner.leading:
            await router.learner.switch(spec)
        return PolicyResponse(policy=str(spec), model_version=router.version)

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from the environment."""
    return create_app(Settings())
