"""The HTTP edge: FastAPI routes, a few lines each, over the router."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bandit_router.embedded import EmbeddedRedis
from bandit_router.errors import NotLearner, RouterError, StoreUnavailable
from bandit_router.policies import build_policy, parse_policy_spec
from bandit_router.rewards import RewardParts
from bandit_router.router import ChooseResult, RewardResult, Router
from bandit_router.schemas import (
    ChooseRequest,
    ChooseResponse,
    ErrorResponse,
    PolicyRequest,
    RewardRequest,
    RewardResponse,
)
from bandit_router.security import BodyLimit, require_admin_key, require_api_key
from bandit_router.settings import Settings
from bandit_router.store import Store, connect

log = logging.getLogger("bandit_router")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "missing or wrong API key",
        403: "admin endpoints disabled",
        404: "unknown or expired event_id",
        409: "the event was already rewarded",
        413: "request body too large",
        422: "invalid input; the message names the field and the allowed values",
        503: "Redis unavailable; retry",
    }.items()
}


async def get_router(request: Request) -> Router:  # async: a plain def runs in a thread
    router: Router = request.app.state.router
    return router


RouterDep = Annotated[Router, Depends(get_router)]


def _fields(result: ChooseResult | RewardResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in result.__slots__}


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
    return _error(500, "internal error; the service log has the details")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; Redis, the policy and the model are set up in the lifespan."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            url = settings.redis_url
            if url is None:
                url = stack.enter_context(EmbeddedRedis(settings.data_dir)).url
            store = Store(
                connect(url), settings.key_prefix, settings.reward_wait_s, settings.stream_maxlen
            )
            stack.push_async_callback(store.close)
            router = await Router.open(settings, store)
            app.state.router = router
            stop = asyncio.Event()
            background = asyncio.create_task(router.run(stop))
            try:
                yield
            finally:
                stop.set()
                await background
                await router.close()

    app = FastAPI(
        title="bandit-router",
        summary="Learns which LLM size should answer each query.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_exception_handler(RouterError, _on_router_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)

    # /choose and /reward answer with bytes made from the result's own fields: the response
    # models document them, and FastAPI's second validation and encoding pass is skipped.
    # Without API keys configured the key check is left out rather than run to find nothing:
    # FastAPI resolves a dependency and its two header sub-dependencies on every request.
    keyed = [Depends(require_api_key)] if settings.api_keys else []

    @app.post("/choose", responses=ERRORS, dependencies=keyed, response_model=ChooseResponse)
    async def choose(body: ChooseRequest, router: RouterDep) -> Response:
        """Pick the arm (model) for one query."""
        result = await router.choose(body.query, body.features, body.arms, body.event_id)
        return _json(_fields(result))

    @app.post("/reward", responses=ERRORS, dependencies=keyed, response_model=RewardResponse)
    async def reward(body: RewardRequest, router: RouterDep) -> Response:
        """Report how the chosen model did, all parts at once or in several calls.

        The event is learned once: when every weighted part has arrived (or a direct `reward`),
        or when its reward window closes, with the parts present.
        """
        parts = RewardParts.from_mapping(body.model_dump(exclude={"event_id"}))
        result = await router.reward(body.event_id, parts)
        return _json(_fields(result))

    @app.get("/healthz")
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

    @app.get("/arms")
    async def arms(router: RouterDep) -> dict[str, list[dict[str, Any]]]:
        """The configured arms and their features."""
        return {"arms": [asdict(a) for a in router.arms]}

    @app.get("/stats", responses=ERRORS)
    async def stats(router: RouterDep) -> dict[str, Any]:
        """Per-arm decisions, rewards and mean reward (deployment-wide, from Redis)."""
        return await router.stats()

    admin = [Depends(require_admin_key)]

    @app.post("/admin/snapshot", responses=ERRORS, dependencies=admin)
    async def admin_snapshot(router: RouterDep) -> dict[str, Any]:
        """Publish the learner's model to Redis now."""
        if not router.learner.leading:
            raise NotLearner()
        return {"model_version": await router.learner.publish()}

    @app.post("/admin/reset", responses=ERRORS, dependencies=admin)
    async def admin_reset(router: RouterDep) -> dict[str, Any]:
        """Forget what was learned: a fresh model, learning from the next event on."""
        if not router.learner.leading:
            raise NotLearner()
        return {"model_version": await router.learner.reset()}

    @app.post("/admin/policy", responses=ERRORS, dependencies=admin)
    async def admin_policy(body: PolicyRequest, router: RouterDep) -> dict[str, Any]:
        """Switch the policy; the learner relearns the new one from the whole log."""
        try:
            spec = parse_policy_spec(body.policy)
            build_policy(spec, router.settings)  # bad parameters fail here, not in the learner
        except ValueError as e:
            raise RouterError(str(e), field="policy") from e
        await router.store.set_policy_override(str(spec))
        if router.learner.leading:
            await router.learner.switch(spec)
        return {"policy": str(spec), "model_version": router.version}

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from the environment."""
    return create_app(Settings())
