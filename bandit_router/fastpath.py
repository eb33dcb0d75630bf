"""The hot path: a plainly valid ``POST /choose`` or ``POST /reward`` answered without FastAPI.

FastAPI's path for one request (its middleware stack, routing, dependency solving, the API-key
header dependencies, pydantic validation of the body, exception handlers) cost more CPU than
features, VW and Redis together. ``FastPath`` reads the body itself, parses it with orjson and
checks it with a validator that accepts a *subset* of what the pydantic models accept, with the
same meaning; then it calls the router as the routes do and answers the same bytes. Anything
else (bad or odd JSON, another content type, a missing or wrong API key, a body over the limit,
a field the validator is unsure of) is handed on, unread, to the FastAPI routes, so every error
answer (422 messages, 401, 413) stays theirs, and so does the OpenAPI schema.

Under ``bandit-router serve``, uvicorn's connections speak ``protocol.HttpProtocol``, which
brings these requests here straight from the HTTP parser; under any other ASGI server the app
(``app.App``) hands every HTTP request to this class first.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bandit_router.errors import RouterError, StoreUnavailable
from bandit_router.rewards import PART_BOUNDS, RewardParts
from bandit_router.router import result_fields
from bandit_router.schemas import EVENT_ID_MAX_CHARS, EVENT_ID_PATTERN, MAX_FEATURE_VALUE_CHARS
from bandit_router.security import key_matches

if TYPE_CHECKING:
    from bandit_router.router import ChooseResult, RewardResult, Router
    from bandit_router.settings import Settings

log = logging.getLogger("bandit_router")

_EVENT_ID = re.compile(EVENT_ID_PATTERN)  # schemas.EventId's; its + asks for one or more
_CHOOSE_FIELDS = frozenset({"query", "features", "arms", "event_id"})
_REWARD_FIELDS = frozenset({"event_id", "final", *PART_BOUNDS})
UNEXPECTED = "internal error; the service log has the details"
_JSON_HEADERS = [(b"content-type", b"application/json")]

Handler = Callable[["Router", dict[str, Any]], Awaitable["ChooseResult | RewardResult | None"]]
Route = tuple[str, Handler]  # the endpoint's name (for metrics and logs) and its handler


def _str(value: Any, longest: int) -> bool:
    return type(value) is str and 0 < len(value) <= longest


def _event_id(value: Any) -> bool:
    return (
        type(value) is str
        and len(value) <= EVENT_ID_MAX_CHARS
        and _EVENT_ID.fullmatch(value) is not None
    )


def _features(value: Any) -> bool:
    if type(value) is not dict:
        return False
    for key, v in value.items():
        if not 0 < len(key) <= 64:
            return False
        kind = type(v)
        if kind is str:
            if len(v) > MAX_FEATURE_VALUE_CHARS:
                return False
        elif kind is not bool and kind is not int and kind is not float:
            return False
    return True


def _arms(value: Any) -> bool:
    return type(value) is list and 0 < len(value) <= 64 and all(_str(a, 64) for a in value)


async def _choose(router: Router, body: dict[str, Any]) -> ChooseResult | None:
    """ChooseRequest's checks, for the bodies they plainly pass; None: let FastAPI judge."""
    if not _CHOOSE_FIELDS.issuperset(body):
        return None
    query = body.get("query")
    features = body.get("features")
    arms = body.get("arms")
    event_id = body.get("event_id")
    if not (
        type(query) is str
        and query
        and (features is None or _features(features))
        and (arms is None or _arms(arms))
        and (event_id is None or _event_id(event_id))
    ):
        return None
    return await router.choose(query, features, arms, event_id)


async def _reward(router: Router, body: dict[str, Any]) -> RewardResult | None:
    """RewardRequest's checks, for the bodies they plainly pass; None: let FastAPI judge."""
    if not _REWARD_FIELDS.issuperset(body):
        return None
    event_id = body.get("event_id")
    final = body.get("final", False)
    if type(event_id) is not str or not _event_id(event_id) or type(final) is not bool:
        return None
    parts: dict[str, float] = {}
    for name, (low, high) in PART_BOUNDS.items():
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int and type(value) is not float:
            return None
        if value < low or (high is not None and value > high):
            return None
        parts[name] = float(value)
    if not parts and not final:
        return None
    return await router.reward(event_id, RewardParts(**parts), final=final)


class FastPath:
    """Serves the plainly valid routing calls; hands everything else on to ``app``.

    Two doors lead here: ``__call__``, as the outermost ASGI layer, and ``protocol.HttpProtocol``,
    which asks ``route`` once a request's headers are in and ``answer`` once its body is.
    """

    def __init__(self, app: ASGIApp, settings: Settings, state: State) -> None:
        self.app = app
        self.state = state  # the app's: its router once the lifespan has started
        self.limit = settings.max_body_bytes
        self.keys = settings.api_keys
        self.handlers: dict[str, Route] = {
            "/choose": ("choose", _choose),
            "/reward": ("reward", _reward),
        }
        self._by_url = {path.encode(): route for path, route in self.handlers.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.handlers.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        raw = None
        if self.ready() and self._plain(scope["headers"]):
            raw = await self._body(receive, received)
        answer = None if raw is None else await self.answer(route, raw)
        if answer is None:  # not ours to judge: FastAPI sees the request as it came
            await self.app(scope, _replay(received, receive), send)
            return
        status, body = answer
        headers = [(b"content-length", b"%d" % len(body)), *_JSON_HEADERS]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def ready(self) -> bool:
        return getattr(self.state, "router", None) is not None

    def route(self, url: bytes, headers: list[tuple[bytes, bytes]]) -> Route | None:
        """The route of a ``POST`` to ``url`` (the raw request target) with these headers, if
        its body is ours to judge; None: FastAPI's."""
        route = self._by_url.get(url)
        if route is None or not self.ready() or not self._plain(headers):
            return None
        return route

    async def answer(self, route: Route, raw: bytes) -> tuple[int, bytes] | None:
        """The status and JSON body the route would answer; None: declined, FastAPI judges."""
        router: Router = self.state.router
        endpoint, handler = route
        start = time.perf_counter()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        try:
            result = await handler(router, body) if type(body) is dict else None
            if result is None:
                return None
            status, payload = 200, result_fields(result)
        except StoreUnavailable as e:  # as metrics._on_store_unavailable
            router.metrics.redis_error(endpoint)
            status, payload = e.status_code, {"detail": e.message, "field": e.field}
        except RouterError as e:  # as app._on_router_error
            status, payload = e.status_code, {"detail": e.message, "field": e.field}
        except Exception:  # as app._on_unexpected: no traceback reaches the client
            log.exception("unhandled error on POST /%s", endpoint)
            status, payload = 500, {"detail": UNEXPECTED, "field": None}
        # timed as metrics._Timing times the requests FastAPI answers
        router.metrics.series(router.metrics.request_seconds, endpoint).observe(
            time.perf_counter() - start
        )
        return status, orjson.dumps(payload)

    def _plain(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """JSON, within the declared size limit, and with a valid API key when keys are set."""
        content_type = length = api_key = authorization = None
        for name, value in headers:
            if name == b"content-type":
                content_type = content_type or value
            elif name == b"content-length":
                length = length or value
            elif name == b"x-api-key":
                api_key = api_key or value
            elif name == b"authorization":
                authorization = authorization or value
        if content_type not in (b"application/json", b"application/json; charset=utf-8"):
            return False
        if length is None or not length.isdigit() or int(length) > self.limit:
            return False
        return not self.keys or self._key_matches(api_key, authorization)

    def _key_matches(self, api_key: bytes | None, authorization: bytes | None) -> bool:
        """What ``security.require_api_key`` accepts: X-API-Key, else a bearer token."""
        given = api_key.decode("latin-1") if api_key else None  # Starlette decodes latin-1
        if given is None and authorization:
            scheme, _, credentials = authorization.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                given = credentials.strip()
        return key_matches(given, self.keys)

    async def _body(self, receive: Receive, received: list[Message]) -> bytes | None:
        """The whole body; None if it grows over the limit or never ends."""
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                return None
            size += len(message.get("body", b""))
            if size > self.limit:
                return None
            if not message.get("more_body", False):
                break
        chunks = [m.get("body", b"") for m in received]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(received: list[Message], receive: Receive) -> Receive:
    """``receive`` with the messages read already given back first, in order."""
    pending = list(received)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
