"""Access: API keys for the routing endpoints, an admin key for /admin, and the body-size cap."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bandit_router.errors import RouterError

_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token")


class Unauthorized(RouterError):
    status_code = 401


class Forbidden(RouterError):
    status_code = 403


def key_matches(given: str | None, keys: Sequence[str]) -> bool:
    if given is None:
        return False
    # Compare against every key, in constant time per key, so timing tells nothing.
    found = False
    for key in keys:
        found |= secrets.compare_digest(given.encode(), key.encode())
    return found


def _given(header: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    return header if header is not None else (bearer.credentials if bearer else None)


# Both are ``async``: FastAPI runs a plain ``def`` dependency in a worker thread, a thread hop
# that cost more than the whole feature extraction on every request.
async def require_api_key(
    request: Request,
    header: Annotated[str | None, Depends(_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When BANDIT_API_KEYS is set, /choose and /reward need one of them."""
    keys = request.app.state.settings.api_keys
    if keys and not key_matches(_given(header, bearer), keys):
        raise Unauthorized(
            "missing or wrong API key: send X-API-Key or Authorization: Bearer <key>",
            field="X-API-Key",
        )


async def require_admin_key(
    request: Request,
    header: Annotated[str | None, Depends(_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admin endpoints need BANDIT_ADMIN_KEY; without it configured they are disabled."""
    admin = request.app.state.settings.admin_key
    if not admin:
        raise Forbidden("admin endpoints are disabled: set BANDIT_ADMIN_KEY to enable them")
    if not key_matches(_given(header, bearer), [admin]):
        raise Unauthorized(
            "missing or wrong admin key: send X-API-Key or Authorization: Bearer <key>",
            field="X-API-Key",
        )


class BodyLimit:
    """ASGI middleware: answer 413 to a body over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps({"detail": too_large_message(self.limit), "field": "body"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised while the body streams in; an HTTPException, so FastAPI passes it through as is."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int) -> str:
    return f"request body over the limit of {limit} bytes (BANDIT_MAX_BODY_BYTES)"
