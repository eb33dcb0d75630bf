"""The doors: how a request's body reaches the contract.

FastAPI's path for one request (its middleware, routing, dependency solving) costs about as much
CPU as the routing call itself. ``RoutingDoor`` is plain ASGI middleware in front of the app: a
``POST`` to exactly ``/choose`` or ``/reward`` has its body read by ``contract.read_body`` and is
answered by ``contract.answer``, the same contract the FastAPI routes call, in one response.
Everything else (other paths and methods, an app mounted under a root path) goes on to FastAPI,
where ``BodyGuard`` reads every body with the same ``read_body`` before the routes see it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bandit_router.errors import RouterError
from bandit_router.http.contract import (
    ROUTES,
    ClientGone,
    answer,
    error_body,
    failure,
    read_body,
    refuse_declared,
)
from bandit_router.http.gateway import is_gateway_path, openai_error
from bandit_router.http.security import API_KEYS, require_admin, require_key
from bandit_router.settings import Settings

JSON = (b"content-type", b"application/json")
GATEWAY_POST = "/v1/chat/completions"
ADMIN_POSTS = frozenset({"/admin/snapshot", "/admin/reset", "/admin/policy", "/admin/promote"})
BODY_ROUTES = ADMIN_POSTS | {GATEWAY_POST, *ROUTES}  # the routes that read a body: POSTs
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CLOSE = (b"connection", b"close")


class RoutingDoor:
    """ASGI middleware serving the routing calls through ``contract``; the rest goes to ``app``."""

    def __init__(self, app: ASGIApp, settings: Settings, state: State) -> None:
        self.app = app
        self.state = state  # the app's: its routers once the lifespan has started
        self.limit = settings.max_body_bytes
        self.timeout_s = settings.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        routers = getattr(self.state, "routers", None)
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in ROUTES
            or scope.get("root_path")
            or routers is None
        ):
            if scope["type"] == "http" and CONTROL.search(scope["path"]):
                # Starlette's routes match a path with a newline at its end (``$``): a proxy
                # rule for the exact path would not see ``/admin/reset%0A`` as that path. Its
                # body is not read: the connection is closed, not left waiting for one.
                await respond(send, 404, error_body("no such path", "path"), close=True)
                return
            if scope["type"] == "http" and scope["method"] == "HEAD":
                # A GET resource answers HEAD too (RFC 9110), as a monitor probing /healthz asks;
                # FastAPI's routes take GET alone. The server leaves the body out, as its own
                # scope still says HEAD.
                scope = {**scope, "method": "GET"}
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        try:
            refuse_declared(headers, self.limit)  # answered as before: 413 first
            require_key(headers, routers.any_keys, API_KEYS)  # see unkeyed
            raw = await read_body(receive, headers, self.limit, self.timeout_s)
        except ClientGone:
            return
        except RouterError as e:  # no key, too large, or too slow: answer, then close
            status, body = failure(e, routers.default, scope["path"].strip("/"))
            await respond(send, status, body, close=True)
            return
        status, body = await answer(
            scope["path"], routers, headers, raw, scope.get("query_string", b"")
        )
        await respond(send, status, body)


async def respond(send: Send, status: int, body: bytes, close: bool = False) -> None:
    headers = [(b"content-length", b"%d" % len(body)), JSON]
    if close:  # uvicorn closes the connection after a response that says so
        headers.append(CLOSE)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyGuard:
    """ASGI middleware in FastAPI's stack: every body read whole by ``read_body`` (bounded in
    size and time) before the app sees it, so a slow or oversized body is answered the same way
    at either door."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.limit = settings.max_body_bytes
        self.timeout_s = settings.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope["method"] in ("GET", "HEAD", "OPTIONS") and not _declares_body(scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        try:
            refuse_declared(scope["headers"], self.limit)
            unkeyed(scope, self.settings)
            # A body no route reads is still waited for (uvicorn would wait for it after the
            # answer), but not kept: else any path held up to the limit, unkeyed too.
            keep = route_path(scope) in BODY_ROUTES and scope["method"] == "POST"
            raw = await read_body(receive, scope["headers"], self.limit, self.timeout_s, keep)
        except ClientGone:
            return
        except RouterError as e:
            router = getattr(scope["app"].state, "router", None)
            status, body = failure(e, router, scope["path"].strip("/"))
            if is_gateway_path(scope):
                body = openai_error(status, body)
            await respond(send, status, body, close=True)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)


def route_path(scope: Scope) -> str:
    """The request's path as the routes see it: without the root path a proxy mounts it on."""
    path: str = scope["path"]
    root: str = scope.get("root_path") or ""
    return path[len(root) :] if root and path.startswith(root) else path


def unkeyed(scope: Scope, settings: Settings) -> None:
    """The 401 (or 403) a keyed ``POST`` route would answer, raised before its body is read, so
    that a client without a key cannot have the process hold a body (up to
    ``BANDIT_MAX_BODY_BYTES`` for ``BANDIT_BODY_TIMEOUT_S``) on each connection it opens. The
    routes check the key before anything in the body, so the answer is the one they give."""
    if scope["method"] != "POST":
        return
    path = route_path(scope)
    if path in ROUTES or path == GATEWAY_POST:  # a key of any deployment: its own is checked on
        routers = getattr(scope["app"].state, "routers", None)
        require_key(
            scope["headers"], settings.api_keys if routers is None else routers.any_keys, API_KEYS
        )
    elif path in ADMIN_POSTS:
        require_admin(scope["headers"], settings.admin_key)


def _declares_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request has a body coming: one no route of a GET reads is bounded all the same,
    or a client could trickle it to hold the connection (uvicorn waits for it after the answer)."""
    for name, value in headers:
        name = name.lower()
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip().lstrip(b"0"):
            return True
    return False
