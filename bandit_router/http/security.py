"""Access: which key a request carries, and which keys each group of endpoints needs.

A key travels as ``X-API-Key``, as a bearer token (``Authorization: Bearer``, what OpenAI-style
clients send), or as the password of HTTP Basic auth (what a browser prompts for, so the
dashboard can sit behind a key). Keys are compared in constant time, against every key.

The admin key is not taken from Basic auth: a browser that has Basic credentials for the service
sends them with any request to it, a cross-site one included, and ``/admin/reset`` and
``/admin/snapshot`` take no body whose content type could refuse it (as ``/choose`` refuses
one not JSON): any web page the operator opened could have reset the model.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.security import APIKeyHeader, HTTPBasic, HTTPBearer
from starlette.requests import HTTPConnection

from bandit_router.errors import RouterError


class _BasicPassword(HTTPBasic):
    """HTTP Basic auth, documented only: ``given_key`` reads its password. FastAPI's own would
    answer a 401 of its own for credentials that are not ASCII base64, keys set or not."""

    async def __call__(self, request: HTTPConnection) -> None:
        return None


# Read by FastAPI only to document the schemes in the OpenAPI spec; ``given_key`` reads them.
# The admin key is not taken as a Basic password (module docstring): its routes list two.
ADMIN_SCHEMES: list[Callable[..., Any]] = [
    APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key"),
    HTTPBearer(auto_error=False, description="an API key as a bearer token"),
]
SCHEMES: list[Callable[..., Any]] = [
    *ADMIN_SCHEMES,
    _BasicPassword(
        scheme_name="HTTPBasic",
        auto_error=False,
        description="an API key as the password of HTTP Basic auth (any user name); "
        "not the admin key",
    ),
]


@dataclass(frozen=True, slots=True)
class KeyGroup:
    """The endpoints one setting guards: its name, what the key is called in messages."""

    setting: str
    what: str
    basic: bool = True  # taken as a Basic password too (what a browser resends by itself)


API_KEYS = KeyGroup("BANDIT_API_KEYS", "API key")
ADMIN_KEY = KeyGroup("BANDIT_ADMIN_KEY", "admin key", basic=False)  # module docstring
OPS_KEYS = KeyGroup("BANDIT_OPS_KEYS", "operator key")
BASIC_CHALLENGE = 'Basic realm="bandit-router", charset="UTF-8"'  # a browser asks for the key


class Unauthorized(RouterError):
    status_code = 401
    field = "X-API-Key"

    def __init__(self, message: str, basic: bool = True) -> None:
        super().__init__(message)
        self.basic = basic  # a Basic password would be taken: a browser may be asked for one


class Forbidden(RouterError):
    status_code = 403
    field = "X-API-Key"  # what an enabled endpoint would read; the message says what to set


def key_matches(given: str | None, keys: Sequence[str]) -> bool:
    if given is None:
        return False
    found = False
    for key in keys:  # every key, so timing tells nothing of which one nearly matched
        found |= secrets.compare_digest(given.encode(), key.encode())
    return found


def given_key(headers: Iterable[tuple[bytes, bytes]], basic: bool = True) -> str | None:
    """The key a request carries: X-API-Key, else a bearer token, else (``basic``) a Basic
    password."""
    header = authorization = None
    for name, value in headers:
        if name == b"x-api-key" and header is None:
            header = value
        elif name == b"authorization" and authorization is None:
            authorization = value
    if header:  # an empty one (a proxy's template with its variable unset) is none
        return header.decode("latin-1")
    if authorization is None:
        return None
    scheme, _, credentials = authorization.decode("latin-1").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and basic:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except ValueError:  # not base64 (binascii.Error), not ASCII at all, or not UTF-8
            return None
        return decoded.partition(":")[2] or None
    return None


def require_key(
    headers: Iterable[tuple[bytes, bytes]], keys: Sequence[str], group: KeyGroup
) -> None:
    """Nothing when no keys are set or the request carries one of them; else 401."""
    if keys and not key_matches(given_key(headers, group.basic), keys):
        ways = (
            "X-API-Key, Authorization: Bearer <key>, or Basic auth with the key as password"
            if group.basic
            else "X-API-Key or Authorization: Bearer <key>"
        )
        raise Unauthorized(
            f"missing or wrong {group.what}: send {ways} ({group.setting})", group.basic
        )


async def require_admin_key(request: Request) -> None:
    """Admin endpoints need BANDIT_ADMIN_KEY; without it configured they are disabled."""
    require_admin(request.headers.raw, request.app.state.settings.admin_key)


def require_admin(headers: Iterable[tuple[bytes, bytes]], admin: str | None) -> None:
    """Nothing when ``headers`` carry the admin key ``admin``; else 401, or 403 when unset."""
    if not admin:
        raise Forbidden("admin endpoints are disabled: set BANDIT_ADMIN_KEY to enable them")
    require_key(headers, [admin], ADMIN_KEY)


async def require_ops_key(request: Request) -> None:
    """``/stats``, ``/metrics``, the dashboard and ``/deployments`` need one of BANDIT_OPS_KEYS when
    it is set."""
    require_key(request.headers.raw, request.app.state.settings.ops_keys, OPS_KEYS)
