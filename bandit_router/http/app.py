"""The HTTP edge: the app, its routes a few lines each over the router, and the fast door."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Mapping, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from bandit_router.errors import ECHO_CHARS, NotLearner, RouterError, StoreUnavailable, shorten
from bandit_router.http.contract import (
    ArmsResponse,
    ChooseRequest,
    ChooseResponse,
    HealthResponse,
    PolicyRequest,
    PolicyResponse,
    RewardRequest,
    RewardResponse,
    VersionResponse,
    answer,
    check_content_type,
    error_body,
    failure,
    validation_failure,
)
from bandit_router.http.dashboard import register_dashboard
from bandit_router.http.docs import register_docs
from bandit_router.http.door import BodyGuard, RoutingDoor
from bandit_router.http.gateway import Gateways, is_gateway_path, openai_error, register_gateway
from bandit_router.http.metrics import register_metrics
from bandit_router.http.openapi import (
    ADMIN,
    ADMIN_BODY,
    CHOOSE,
    DEPLOYMENT_ERRORS,
    DESCRIPTION,
    HEALTH,
    READ,
    REWARD,
    TAGS,
    deployment_parameter,
    name_deployments,
    open_where_unkeyed,
)
from bandit_router.http.process import (
    StartStopped,
    configure_logging,
    stop_noted,
    stop_with_supervisor,
    stoppable_start,
)
from bandit_router.http.security import (
    ADMIN_SCHEMES,
    BASIC_CHALLENGE,
    SCHEMES,
    Unauthorized,
    require_admin_key,
    require_ops_key,
)
from bandit_router.policies.registry import build_policy, check_arms, parse_policy_spec
from bandit_router.service.challengers import PromotionView
from bandit_router.service.deployments import Routers, open_routers
from bandit_router.service.router import Router
from bandit_router.service.stats import StatsCache, StatsResponse
from bandit_router.service.upstream import Upstreams
from bandit_router.settings import Settings

log = logging.getLogger("bandit_router")


async def get_router(request: Request) -> Router:  # async: a plain def runs in a thread
    """The router of the deployment ``?deployment=`` names; ``default`` without it."""
    routers: Routers = request.app.state.routers
    router = routers.named(request.query_params.get("deployment"))
    request.state.router = router  # whose metrics count the request's failure (_on_error)
    return router


RouterDep = Annotated[Router, Depends(get_router)]
DEPLOYMENT = Query(
    description="the deployment (BANDIT_DEPLOYMENTS_FILE); default: `default`",
    examples=["support"],
)


async def _on_error(request: Request, exc: Exception) -> Response:
    """Every error FastAPI's routes meet, through the contract's one table."""
    if isinstance(exc, RequestValidationError):
        exc = validation_failure(exc.errors())
    elif isinstance(exc, StarletteHTTPException):
        path = shorten(request.url.path, 2 * ECHO_CHARS)
        headers = exc.headers or {}
        if exc.status_code == 405:
            allowed = headers.get("Allow", "GET")  # static files' says none
            if allowed == "GET":  # a GET route answers HEAD too (RoutingDoor)
                allowed = "GET, HEAD"
            headers = {**headers, "Allow": allowed}
        detail, field = _routing_miss(exc, request.method, path, headers)
        body = error_body(detail, field)
        if is_gateway_path(request.scope):  # the OpenAI SDK's call to a path not served here
            served = "the gateway serves POST /v1/chat/completions and GET /v1/models"
            detail = f"{exc.detail}: {request.method} {path}; {served}"
            body = openai_error(exc.status_code, error_body(detail, field))
        return Response(
            body,
            status_code=exc.status_code,
            headers=headers,
            media_type="application/json",
        )
    # the deployment the request named, once resolved; else default's
    router = getattr(request.state, "router", None) or getattr(request.app.state, "router", None)
    status, body = failure(exc, router, request.url.path.strip("/") or "/")
    basic = isinstance(exc, Unauthorized) and exc.basic  # else a browser would ask in vain
    headers = {"www-authenticate": BASIC_CHALLENGE} if basic else {}
    if isinstance(exc, RouterError) and exc.retry_after_s is not None:
        headers["retry-after"] = str(exc.retry_after_s)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _routing_miss(
    exc: StarletteHTTPException, method: str, path: str, headers: Mapping[str, str]
) -> tuple[str, str | None]:
    """The message and field of Starlette's 404 and 405, which said only "Not Found" and
    "Method Not Allowed": what was asked, and what is served instead."""
    if exc.status_code == 404:
        return f"no such path: {path} (paths are exact; /openapi.json lists them)", "path"
    if exc.status_code == 405:
        return f"{path} takes {headers['Allow']}, not {shorten(method, ECHO_CHARS)}", "method"
    return str(exc.detail), None


def _body_doc(model: type[BaseModel], deployment: str | None = None) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its raw body itself, and its
    ``?deployment=`` (described as ``deployment``) when the route reads that itself too."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    doc: dict[str, Any] = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}
    }
    if deployment is not None:
        doc["parameters"] = [deployment_parameter(deployment)]
    return doc


class DeploymentView(BaseModel):
    name: str = Field(description="the deployment's name", examples=["support"])
    key_prefix: str = Field(description="its Redis key prefix (hash tag)", examples=["bandit:x"])
    policy: str = Field(description="the policy it serves", examples=["squarecb"])
    arms: list[str] = Field(description="its arms", examples=[["4b", "7b"]])


class DeploymentsResponse(BaseModel):
    deployments: list[DeploymentView] = Field(
        description="every deployment, `default` first",
        examples=[
            [
                {
                    "name": "default",
                    "key_prefix": "bandit",
                    "policy": "squarecb",
                    "arms": ["4b", "7b", "14b"],
                }
            ]
        ],
    )


class App(FastAPI):
    """FastAPI behind the fast door (``RoutingDoor``): a ``POST /choose`` or ``/reward`` is
    answered there, through the same contract as the routes below; the rest goes to FastAPI."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.door = RoutingDoor(partial(FastAPI.__call__, self), settings, self.state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            send = partial(self._said_in_a_line, send)
        await self.door(scope, receive, send)

    async def _said_in_a_line(self, send: Send, message: MutableMapping[str, Any]) -> None:
        """A start-up that failed for a reason the service names (Redis refusing the
        credentials, a TLS certificate not trusted, a key of another type): its message in a
        line, not the traceback Starlette sends, which uvicorn logs (60 lines that bury it)."""
        failure = getattr(self.state, "start_failure", None)
        if message["type"] == "lifespan.startup.failed" and failure is not None:
            message = {**message, "message": failure}
        await send(message)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's schema, plus the request models the routing routes validate themselves."""
        if self.openapi_schema is None:
            schema = super().openapi()  # kept by FastAPI as self.openapi_schema
            template = "#/components/schemas/{model}"
            schema["components"]["schemas"].update(
                {m.__name__: m.model_json_schema(ref_template=template) for m in REQUESTS}
            )
            routers: Routers | None = getattr(self.state, "routers", None)
            if routers is not None:  # served: the document says which groups take no key
                api_keys = any(router.settings.api_keys for router in routers.values())
                open_where_unkeyed(schema, api_keys, bool(self.state.settings.ops_keys))
                name_deployments(schema, list(routers))
            return schema
        return self.openapi_schema


REQUESTS = (ChooseRequest, RewardRequest, PolicyRequest)


async def _routing_call(path: str, request: Request) -> Response:
    routers: Routers = request.app.state.routers
    raw = await request.body()
    query = request.scope.get("query_string", b"")
    status, body = await answer(path, routers, request.headers.raw, raw, query)
    return Response(body, status_code=status, media_type="application/json")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; Redis, the policy and the model are set up in the lifespan."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            try:
                # the wait for Redis (up to BANDIT_STARTUP_WAIT_S), and the replay of the log
                with stoppable_start() as stopping:
                    routers = await stack.enter_async_context(open_routers(settings, stopping))
            except (RouterError, StartStopped) as e:  # said by App in a line, no traceback
                app.state.start_failure = f"bandit-router serve cannot start: {e}"
                raise
            except asyncio.CancelledError:  # a signal (a sibling worker's failure stops this one)
                app.state.start_failure = "bandit-router serve: start-up stopped by a signal"
                raise
            app.state.routers = routers
            app.state.router = routers.default
            # a gateway per deployment, on the process's one pool of upstream calls
            upstreams = Upstreams(settings)
            stack.push_async_callback(upstreams.close)
            app.state.gateways = Gateways(routers, upstreams)
            stop = asyncio.Event()
            background = asyncio.create_task(routers.run(stop))
            try:
                with stop_noted(stopping):  # before uvicorn has waited for the requests
                    yield
            finally:
                stop.set()
                await background

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
        # /choose/ is a 404, not a 307 to /choose: its Location is built from the client's Host
        # (and a proxy's X-Forwarded-Proto), so it may point at plain http or another host, and
        # a client that follows it sends its key along.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.add_middleware(BodyGuard, settings=settings)
    for kind in (RouterError, StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(kind, _on_error)
    keyed = [Security(scheme) for scheme in SCHEMES]  # read only to document the schemes
    ops = [*keyed, Depends(require_ops_key)]
    register_metrics(app, ops)
    register_docs(app)
    register_dashboard(app, ops)

    # The routing calls, for the requests the fast door leaves to FastAPI (an app mounted under
    # a root path, say): the raw body goes to the same contract, which checks the key.
    # /stats documents of every deployment, bounded per process (see StatsCache).
    stats_cache = StatsCache(settings.stats_cache_s)

    @app.post(
        "/choose",
        responses=CHOOSE,
        dependencies=keyed,
        tags=["routing"],
        response_model=ChooseResponse,
        openapi_extra=_body_doc(
            ChooseRequest, "the deployment, as the body's `deployment` (both: the same one)"
        ),
    )
    async def choose(request: Request) -> Response:
        """Pick the arm (model) for one query."""
        return await _routing_call("/choose", request)

    @app.post(
        "/reward",
        responses=REWARD,
        dependencies=keyed,
        tags=["routing"],
        response_model=RewardResponse,
        openapi_extra=_body_doc(
            RewardRequest, "not needed (the event id names it); when sent, the event's deployment"
        ),
    )
    async def reward(request: Request) -> Response:
        """Report how the chosen model did, all parts at once or in several calls.

        The event is learned once: when every weighted part has arrived (or a direct `reward`),
        or when its reward window closes, with the parts present.
        """
        return await _routing_call("/reward", request)

    @app.get("/livez", tags=["operations"])
    async def livez() -> dict[str, str]:
        """Liveness alone: the process answers, whether Redis does or not. For a liveness
        probe; `/healthz`, which needs Redis, is for readiness: restarting a process because
        Redis is down would only stop its degraded answers."""
        return {"status": "ok"}

    @app.get("/healthz", response_model=HealthResponse, responses=HEALTH, tags=["operations"])
    async def healthz(request: Request) -> JSONResponse:
        """Readiness: the process answers and reaches Redis (of every deployment)."""
        routers: Routers = request.app.state.routers
        router = routers.default
        # every deployment's Redis at once: the answer takes one round trip, not one each
        pings = [each.store.ping() for each in routers.values()]
        found = await asyncio.gather(*pings, return_exceptions=True)
        for name, result in zip(routers, found, strict=True):
            if isinstance(result, StoreUnavailable):
                where = "" if len(routers) == 1 else f"deployment {name}: "
                return JSONResponse(
                    {"status": "unavailable", "redis": where + result.message}, status_code=503
                )
            if isinstance(result, BaseException):
                raise result
        return JSONResponse(
            {
                "status": "ok",
                "redis": "ok",
                "model_version": router.version,
                "learner": router.learner.leading,
            }
        )

    @app.get("/arms", responses=DEPLOYMENT_ERRORS, tags=["operations"])
    async def arms(
        router: RouterDep, deployment: Annotated[str | None, DEPLOYMENT] = None
    ) -> ArmsResponse:
        """The configured arms and their features."""
        return ArmsResponse(arms=router.settings.arms)

    @app.get(
        "/stats",
        response_model=StatsResponse,
        responses=READ,
        tags=["operations"],
        dependencies=ops,
    )
    async def stats(
        router: RouterDep,
        window: Annotated[
            int, Query(ge=0, le=20_000, description="newest events to analyse", examples=[1000])
        ] = 1000,
        buckets: Annotated[
            int, Query(ge=1, le=200, description="time buckets of the series", examples=[30])
        ] = 30,
        deployment: Annotated[str | None, DEPLOYMENT] = None,
    ) -> Response:
        """Totals per arm, the settings, and what the newest logged events say (the dashboard's
        data): traffic share, reward parts, exploration, and off-policy estimates of baselines."""
        body = await stats_cache.get_json(router, window, buckets)  # serialised once a document
        return Response(body, media_type="application/json")

    @app.get("/deployments", responses=READ, tags=["operations"], dependencies=ops)
    async def deployments(request: Request) -> DeploymentsResponse:
        """The deployments this service serves (`default` first), each with its policy."""
        routers: Routers = request.app.state.routers
        return DeploymentsResponse(
            deployments=[
                DeploymentView(
                    name=name,
                    key_prefix=router.settings.key_prefix,
                    policy=str(router.model.spec),
                    arms=[a.name for a in router.arms],
                )
                for name, router in routers.items()
            ]
        )

    register_gateway(app, keyed)  # /v1/chat/completions, /v1/models

    admin = [*(Security(scheme) for scheme in ADMIN_SCHEMES), Depends(require_admin_key)]

    @app.post(
        "/admin/snapshot", responses=ADMIN | DEPLOYMENT_ERRORS, dependencies=admin, tags=["admin"]
    )
    async def admin_snapshot(
        router: RouterDep, deployment: Annotated[str | None, DEPLOYMENT] = None
    ) -> VersionResponse:
        """Publish the learner's model to Redis now."""
        if not router.learner.leading:
            raise _not_learner(router, "publish")
        return VersionResponse(model_version=await router.learner.publish())

    @app.post(
        "/admin/reset", responses=ADMIN | DEPLOYMENT_ERRORS, dependencies=admin, tags=["admin"]
    )
    async def admin_reset(
        router: RouterDep, deployment: Annotated[str | None, DEPLOYMENT] = None
    ) -> VersionResponse:
        """Forget what was learned: a fresh model, learning from the next event on."""
        if not router.learner.leading:
            raise _not_learner(router, "reset the model")
        return VersionResponse(model_version=await router.learner.reset())

    @app.post(
        "/admin/policy",
        responses=ADMIN_BODY,
        dependencies=admin,
        tags=["admin"],
        openapi_extra=_body_doc(PolicyRequest),
    )
    async def admin_policy(
        request: Request,
        router: RouterDep,
        deployment: Annotated[str | None, DEPLOYMENT] = None,
    ) -> PolicyResponse:
        """Switch the policy; the learner relearns the new one from the whole log."""
        body = await _policy_body(request)
        try:
            spec = parse_policy_spec(body.policy)
            check_arms(spec, router.settings)  # first: it names the valid arms
            build_policy(spec, router.settings)  # bad parameters fail here, not in the learner
        except ValueError as e:
            raise RouterError(str(e), field="policy") from e
        if router.learner.leading:
            await router.learner.switch(spec, store=True)
        else:  # the learner's process switches when it next renews its lease
            await router.store.set_policy_override(str(spec))
        return PolicyResponse(policy=str(spec), model_version=router.version)

    @app.post(
        "/admin/promote",
        responses=ADMIN_BODY,
        dependencies=admin,
        tags=["admin"],
        openapi_extra=_body_doc(PolicyRequest),
    )
    async def admin_promote(
        request: Request,
        router: RouterDep,
        deployment: Annotated[str | None, DEPLOYMENT] = None,
    ) -> PromotionView:
        """Promote a running challenger now: its trained model serves, the champion becomes a
        challenger; the promotion is recorded. Asked of the learner's process."""
        body = await _policy_body(request)
        if not router.learner.leading:
            raise _not_learner(router, "promote a challenger")
        try:
            record = await router.learner.promote(body.policy)
        except ValueError as e:
            raise RouterError(str(e), field="policy") from e
        return PromotionView.model_validate(record)

    return app


def _not_learner(router: Router, asked: str) -> NotLearner:
    """The 409 of an admin request that only the learner's process can do."""
    return NotLearner.asked(asked, apart=not router.settings.learn_in_workers)


async def _policy_body(request: Request) -> PolicyRequest:
    """An admin route's body, read as the routing calls read theirs: JSON declared once, parsed
    strictly (a lone surrogate or nesting too deep: 400 with the line and column), validated.
    Its errors are ``RouterError``s: an exception of another kind reaches FastAPI's handler of
    last resort, which answers it and then raises it again to uvicorn, which logs it as a crash
    with its traceback and closes the connection."""
    check_content_type(request.headers.raw)
    raw = await request.body()
    try:
        return PolicyRequest.model_validate_json(raw)
    except ValidationError as e:
        raise validation_failure(e.errors(), raw) from None


def app_from_env() -> FastAPI:
    """The process entry of ``bandit-router serve`` (``uvicorn --factory``): settings from the
    environment. It owns its process, so it also moves what import and set-up made (modules,
    routes, schemas: tens of thousands of objects that live as long as the process) out of the
    garbage collector's full collections, which otherwise walk them all with the loop stopped."""
    settings = Settings()
    configure_logging(settings.log_level)  # a spawned worker's: see there
    app = create_app(settings)
    gc.collect()
    gc.freeze()
    stop_with_supervisor()
    return app
