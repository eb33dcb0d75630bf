"""The request contract of the routing endpoints, written once for every door.

``POST /choose`` and ``POST /reward`` are answered by ``answer``: the API key, the content type,
the body's schema (strict types, bounds, finite numbers), the call into the router, the error
table and the timing. The FastAPI routes and the fast door (``door.RoutingDoor``) differ only in
how they bring the body here; ``read_body`` bounds its size and how long it may take to arrive.
The pydantic models below are the schema both use and the one ``/docs`` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from starlette.types import Message, Receive

from bandit_router.errors import (
    DETAIL_CHARS,
    ECHO_CHARS,
    RouterError,
    StoreUnavailable,
    UnknownEvent,
    echo,
    shorten,
)
from bandit_router.http.security import API_KEYS, KeyGroup, given_key, key_matches, require_key
from bandit_router.inputs import (
    MAX_ARMS,
    MAX_FEATURE_KEY_CHARS,
    MAX_FEATURE_NUMBER,
    MAX_FEATURE_VALUE_CHARS,
)
from bandit_router.rewards import MAX_COST_USD, MAX_LATENCY_MS, RewardParts
from bandit_router.service.deployments import Routers
from bandit_router.service.router import Router, result_fields
from bandit_router.settings import ArmSpec

log = logging.getLogger("bandit_router")

EVENT_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
EVENT_ID_MAX_CHARS = 128
EventId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=EVENT_ID_MAX_CHARS, pattern=EVENT_ID_PATTERN),
]
# The bounds of app facts and arm subsets, shared with the files the CLI reads (``inputs``).
FeatureKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_FEATURE_KEY_CHARS)]
ArmName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# What the schema shows of a feature's value (``ChooseRequest._flat`` checks it, with messages
# naming the key): a string, a bounded finite number or a boolean.
FEATURE_VALUE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "maxLength": MAX_FEATURE_VALUE_CHARS},
        {"type": "number", "minimum": -MAX_FEATURE_NUMBER, "maximum": MAX_FEATURE_NUMBER},
        {"type": "boolean"},
    ]
}
FeatureValue = Annotated[Any, WithJsonSchema(FEATURE_VALUE_SCHEMA)]
EXAMPLE_EVENT_ID = "1392b69a83784a91b0a2d03365a8cca9"
UNEXPECTED = "internal error; the service log has the details"
JSON_TYPES = (b"application/json",)

# Every request body: unknown fields refused, no coercion ("840" is not a number, true is not
# 1), no NaN or Infinity.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _surrogate_free(text: str, field: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field} holds a lone surrogate (not valid Unicode)") from None
    return text


Body = TypeVar("Body", bound=BaseModel)


class ChooseRequest(BaseModel):
    model_config = _STRICT

    query: str = Field(min_length=1, description="the user's query text", examples=["What is 2+2?"])
    features: dict[FeatureKey, FeatureValue] | None = Field(
        default=None,
        description="app-known facts: a flat object of strings, numbers and booleans "
        f"(numbers finite, at most {MAX_FEATURE_NUMBER:g} in magnitude; strings at most "
        f"{MAX_FEATURE_VALUE_CHARS} characters)",
        examples=[{"task": "qa", "tier": "pro", "lang": "en"}],
    )
    arms: list[ArmName] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ARMS,
        description="the arms eligible for this request (default: every configured arm)",
        examples=[["7b", "14b"]],
    )
    event_id: EventId | None = Field(
        default=None,
        description="your id for this decision; the same id with the same arms returns the same "
        "decision, with other arms 409 (default: a new random id)",
        examples=["req-2026-11-23-0001"],
    )
    deployment: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None,
        description="the deployment (router) that decides, one of BANDIT_DEPLOYMENTS_FILE's; "
        "default: `default`. A named deployment's event ids start with `NAME:`",
        examples=["support"],
    )

    @field_validator("query")
    @classmethod
    def _query_text(cls, query: str) -> str:
        return _surrogate_free(query, "query")

    @field_validator("features")
    @classmethod
    def _flat(cls, features: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, value in (features or {}).items():
            _surrogate_free(key, "a features key")
            kind = type(value)
            if kind is str:
                _surrogate_free(value, f"features.{key}")
                if len(value) > MAX_FEATURE_VALUE_CHARS:
                    raise ValueError(
                        f"features.{key} is {len(value)} characters; the limit is "
                        f"{MAX_FEATURE_VALUE_CHARS}"
                    )
            elif kind is int or kind is float:
                if not -MAX_FEATURE_NUMBER <= value <= MAX_FEATURE_NUMBER:  # NaN fails too
                    raise ValueError(
                        f"features.{key} must be a finite number of at most "
                        f"{MAX_FEATURE_NUMBER:g} in magnitude"
                    )
            elif kind is not bool:
                raise ValueError(
                    f"features.{key} must be a string, number or boolean, got {_json_kind(value)}"
                )
        return features


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", type(None): "null"}.get(
        type(value), type(value).__name__
    )


class RewardRequest(BaseModel):
    model_config = _STRICT

    event_id: EventId = Field(
        description="the event_id /choose answered with", examples=[EXAMPLE_EVENT_ID]
    )
    latency_ms: float | None = Field(
        default=None,
        ge=0,
        le=MAX_LATENCY_MS,
        description="the model's latency, ms (at most a day)",
        examples=[840],
    )
    accuracy: float | None = Field(
        default=None, ge=0, le=1, description="how correct the answer was, 0..1", examples=[1.0]
    )
    rating: float | None = Field(
        default=None, ge=1, le=5, description="user rating, 1..5 stars", examples=[4]
    )
    cost_usd: float | None = Field(
        default=None,
        ge=0,
        le=MAX_COST_USD,
        description=f"what the call cost, USD (at most {MAX_COST_USD:g})",
        examples=[0.0004],
    )
    reward: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="a final reward in 0..1 computed by the app; used as is when sent",
        examples=[0.8],
    )
    final: bool = Field(
        default=False,
        description="no more parts will come: learn the event now with the parts it has, "
        "instead of waiting for the missing weighted parts or the window's end",
        examples=[False],
    )

    @model_validator(mode="after")
    def _some_part(self) -> RewardRequest:
        parts = (self.latency_ms, self.accuracy, self.rating, self.cost_usd, self.reward)
        if all(v is None for v in parts) and not self.final:
            raise ValueError(
                "send at least one reward part: latency_ms, accuracy, rating, cost_usd or "
                "reward (or final: true to close the event with the parts it has)"
            )
        return self

    def parts(self) -> RewardParts:
        return RewardParts(self.accuracy, self.rating, self.latency_ms, self.cost_usd, self.reward)


class ChooseResponse(BaseModel):
    event_id: str = Field(
        description="the decision's id: send it back with the reward", examples=[EXAMPLE_EVENT_ID]
    )
    arm: str = Field(description="the model to call", examples=["7b"])
    probability: float = Field(
        description="the probability the chosen arm had (its propensity)", examples=[0.9]
    )
    probabilities: dict[str, float] = Field(
        description="the probability of every eligible arm",
        examples=[{"4b": 0.05, "7b": 0.9, "14b": 0.05}],
    )
    policy: str = Field(description="the policy spec that decided", examples=["egreedy"])
    model_version: int = Field(
        description="events learned by the model that decided", examples=[1200]
    )
    degraded: bool = Field(
        default=False,
        description="true when Redis was unreachable: the decision is buffered in this process",
        examples=[False],
    )


class RewardResponse(BaseModel):
    event_id: str = Field(description="the rewarded event", examples=[EXAMPLE_EVENT_ID])
    arm: str = Field(description="the arm the event had chosen", examples=["7b"])
    status: str = Field(
        description="`final`: the reward is logged for learning; "
        "`pending`: waiting for more parts or for the reward window to close",
        examples=["final"],
    )
    reward: float | None = Field(
        description="the combined reward in 0..1, once final", examples=[0.866]
    )
    parts: dict[str, float] = Field(
        description="every part received for the event so far",
        examples=[{"accuracy": 1.0, "rating": 4.0, "latency_ms": 840.0}],
    )
    duplicates: list[str] = Field(
        default_factory=list,
        description="parts sent again: ignored, the first value stands",
        examples=[["rating"]],
    )
    model_version: int = Field(
        description="events learned by the model that answered", examples=[1201]
    )


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str = Field(
        min_length=1,
        description="the policy spec to switch to, `name[:param=value...]`",
        examples=["squarecb:gamma_scale=30"],
    )


class VersionResponse(BaseModel):
    model_version: int = Field(description="events learned by the model", examples=[1200])


class PolicyResponse(VersionResponse):
    policy: str = Field(description="the policy spec in force", examples=["egreedy"])


class ErrorResponse(BaseModel):
    detail: str = Field(
        description="what was wrong, naming the field and the allowed values",
        examples=["unknown arm '70b'; valid: 4b, 7b, 14b"],
    )
    field: str | None = Field(
        default=None, description="the field at fault, when one is", examples=["arms"]
    )


class HealthResponse(BaseModel):
    status: str = Field(description="`ok`, or `unavailable` (HTTP 503)", examples=["ok"])
    redis: str = Field(description="`ok`, or what went wrong reaching Redis", examples=["ok"])
    model_version: int | None = Field(
        default=None, description="rewards learned by the served model", examples=[1200]
    )
    learner: bool | None = Field(
        default=None,
        description="whether this process holds the `default` deployment's learner lease",
        examples=[True],
    )


class ArmsResponse(BaseModel):
    arms: list[ArmSpec] = Field(
        description="the configured arms (BANDIT_ARMS), in order",
        examples=[[{"name": "7b", "params_b": 7, "usd_per_mtok": 0.2}]],
    )


# The error table: every failure a routing call can meet, as (status, JSON body).


class BadBody(RouterError):
    """The body is not JSON, or not a JSON object."""

    status_code = 400
    field = "body"


class TooLarge(RouterError):
    status_code = 413
    field = "body"

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over the limit of {limit} bytes (BANDIT_MAX_BODY_BYTES)")


class BodyTimeout(RouterError):
    status_code = 408
    field = "body"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"request body not received within {seconds:g} s (BANDIT_BODY_TIMEOUT_S); "
            "the connection is closed"
        )


class UnsupportedType(RouterError):
    status_code = 415
    field = "content-type"

    def __init__(self, given: str | None) -> None:
        got = "no content-type header" if given is None else echo(given)
        super().__init__(f"content-type must be application/json, got {got}")


ERRORS_SAID = 10  # the validation errors one answer lists (a body can hold a thousand)
FIELD_CHARS = 4 * ECHO_CHARS  # of an error's field: a path of a few names, each cut to ECHO_CHARS


def _field(loc: Iterable[int | str]) -> str:
    """A field's path; a part over ``ECHO_CHARS`` (a client's field name) cut."""
    return ".".join(shorten(str(p), ECHO_CHARS) for p in loc if p != "body") or "body"


def encoding_fault(raw: bytes) -> str | None:
    """Why a body the parser refused is not UTF-8 JSON, when that is why: the parser's words
    ("expected value at line 1 column 1" for a byte order mark, "invalid unicode code point" for
    Latin-1) point at a character the client cannot see."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return "it starts with a byte order mark (U+FEFF): send UTF-8 without one"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return (
            f"byte {e.start} is not UTF-8 (a JSON body is UTF-8, whatever charset its "
            "content-type names)"
        )
    return None


def validation_failure(errors: Sequence[Any], raw: bytes | None = None) -> RouterError:
    """pydantic's (or FastAPI's) validation errors as one error naming the fields at fault;
    ``raw``, the body, when at hand, for the reason JSON that is not UTF-8 was refused."""
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = str(err.get("msg", "")).removeprefix("Invalid JSON: ")
            if raw is not None:
                reason = encoding_fault(raw) or reason
            return BadBody(f"body is not valid JSON: {reason}")
        if err.get("type") in ("model_type", "model_attributes_type") and not _field(
            err.get("loc", ())
        ).replace("body", ""):
            return BadBody("body must be a JSON object")
    messages = []
    first = None
    for err in errors:
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if "[key]" in loc:  # (..., the object, the key itself, "[key]"): name the object
            loc, msg = loc[: loc.index("[key]") - 1], f"a key: {msg}"
        field = _field(loc)
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        first = first or field
        messages.append(f"{field}: {msg}")
    if len(messages) > ERRORS_SAID:
        messages[ERRORS_SAID:] = [f"and {len(messages) - ERRORS_SAID} more"]
    return RouterError("; ".join(messages), field=first)


def failure(exc: BaseException, router: Router | None, endpoint: str) -> tuple[int, bytes]:
    """The answer to ``exc``: a ``RouterError`` says its own status and field; anything else is
    a 500 whose details go to the log, never to the client. A pydantic ``ValidationError`` is
    a 500 too: the client's bodies are validated where they are read, so one here is ours."""
    if isinstance(exc, StoreUnavailable) and router is not None:
        router.metrics.redis_error(endpoint)
    if isinstance(exc, RouterError):
        return exc.status_code, error_body(exc.message, exc.field)
    log.error("unhandled error on %s", endpoint, exc_info=exc)
    return 500, error_body(UNEXPECTED, None)


def error_body(detail: str, field: str | None) -> bytes:
    """Every error's JSON. The message is cut here too, whatever built it: an answer never
    repeats more than ``DETAIL_CHARS`` characters of what a client sent."""
    named = None if field is None else shorten(field, FIELD_CHARS)
    return orjson.dumps({"detail": shorten(detail, DETAIL_CHARS), "field": named})


# The routing calls.


def opens(routers: Routers, router: Router, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """With several deployments, the request's key must be one of its deployment's."""
    keys = router.settings.api_keys
    return len(routers) == 1 or not keys or key_matches(given_key(headers), keys)


def require_deployment_key(
    routers: Routers, router: Router, headers: Sequence[tuple[bytes, bytes]]
) -> None:
    """401 naming the deployment unless the request's key opens it."""
    if not opens(routers, router, headers):
        name = routers.name_of(router)
        require_key(headers, router.settings.api_keys, KeyGroup(f"deployment {name!r}", "API key"))


def _body(model: type[Body], raw: bytes) -> Body:
    """The request's body as ``model``; its errors the client's 422 (or 400)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise validation_failure(e.errors(), raw) from None


def query_deployments(query: bytes) -> list[str]:
    """The values of ``?deployment=`` in a query string, as Starlette reads them for the other
    endpoints."""
    pairs = urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    return [value for name, value in pairs if name == "deployment"]


def _agreed(named: Sequence[str], body: str | None) -> str | None:
    """The deployment a ``/choose`` names, in its body or its ``?deployment=`` (the one the
    other endpoints read): 422 when they name different ones."""
    names = list(dict.fromkeys([*named, *([] if body is None else [body])]))
    if len(names) > 1:
        raise RouterError(
            f"the request names deployments {', '.join(map(echo, names))} (body `deployment` "
            "and ?deployment=): name one",
            field="deployment",
        )
    return names[0] if names else None


async def _choose(
    routers: Routers,
    headers: Sequence[tuple[bytes, bytes]],
    raw: bytes,
    named: Sequence[str],
    found: list[Router],
) -> dict[str, Any]:
    body = _body(ChooseRequest, raw)
    router = found[0] = routers.named(_agreed(named, body.deployment))
    require_deployment_key(routers, router, headers)
    result = await routers.choose(router, body.query, body.features, body.arms, body.event_id)
    return result_fields(result)


async def _reward(
    routers: Routers,
    headers: Sequence[tuple[bytes, bytes]],
    raw: bytes,
    named: Sequence[str],
    found: list[Router],
) -> dict[str, Any]:
    body = _body(RewardRequest, raw)
    # The id's deployment first, then default (an id it stored before that deployment existed).
    holders = routers.holders(body.event_id)
    for name in named:  # the event id names the deployment; a ?deployment= must agree with it
        if routers.named(name) not in holders:
            owner = routers.name_of(holders[0])
            raise RouterError(
                f"?deployment={echo(name)}, but event {echo(body.event_id)} is one of deployment "
                f"{owner!r} (the event id names its deployment: ?deployment= is not needed)",
                field="deployment",
            )
    *earlier, last = [r for r in holders if opens(routers, r, headers)] or holders[:1]
    for router in earlier:
        found[0] = router
        with contextlib.suppress(UnknownEvent):
            return result_fields(await router.reward(body.event_id, body.parts(), final=body.final))
    found[0] = last
    require_deployment_key(routers, last, headers)
    try:
        return result_fields(await last.reward(body.event_id, body.parts(), final=body.final))
    except UnknownEvent as e:
        raise routers.unknown(body.event_id) from e


# (the deployments, the request's headers, its body, its ?deployment= values, where the call
# puts the router it found)
Call = Callable[
    [Routers, Sequence[tuple[bytes, bytes]], bytes, Sequence[str], list[Router]],
    Awaitable[dict[str, Any]],
]
ROUTES: dict[str, tuple[str, Call]] = {
    "/choose": ("choose", _choose),
    "/reward": ("reward", _reward),
}


def check_content_type(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """``UnsupportedType`` unless the request says, once, that its body is JSON. A missing type
    is refused too: a web page can send a cross-site POST without one and without asking
    first (a no-cors fetch of a Blob), which would let any page write to an open deployment."""
    given = [value for name, value in headers if name.lower() == b"content-type"]
    if len(given) != 1:
        raise UnsupportedType(b", ".join(given).decode("latin-1") if given else None)
    if given[0].split(b";", 1)[0].strip().lower() not in JSON_TYPES:
        raise UnsupportedType(given[0].decode("latin-1"))


async def answer(
    path: str,
    routers: Routers,
    headers: Sequence[tuple[bytes, bytes]],
    raw: bytes,
    query: bytes = b"",
) -> tuple[int, bytes]:
    """The status and JSON body of a ``POST`` to a routing ``path`` (a key of ``ROUTES``) with
    the query string ``query``, for the deployment the body or the query names (``/choose``) or
    its event id belongs to (``/reward``)."""
    endpoint, call = ROUTES[path]
    start = time.perf_counter()
    found = [routers.default]  # the deployment's router once the body names it
    try:
        require_key(headers, routers.any_keys, API_KEYS)
        check_content_type(headers)
        named = query_deployments(query) if query else []
        status, body = 200, orjson.dumps(await call(routers, headers, raw, named, found))
    except Exception as e:
        status, body = failure(e, found[0], endpoint)
    router = found[0]
    router.metrics.series(router.metrics.request_seconds, endpoint).observe(
        time.perf_counter() - start
    )
    return status, body


def refuse_declared(headers: Iterable[tuple[bytes, bytes]], limit: int) -> None:
    """``TooLarge`` when a request's content-length declares more than ``limit`` bytes."""
    for name, value in headers:
        if name.lower() == b"content-length" and value.isdigit() and int(value[:19]) > limit:
            raise TooLarge(limit)


async def read_body(
    receive: Receive,
    headers: Iterable[tuple[bytes, bytes]],
    limit: int,
    timeout_s: float,
    keep: bool = True,
) -> bytes:
    """A request's whole body: ``TooLarge`` past ``limit`` bytes (at once when its declared
    content-length is), ``BodyTimeout`` when it has not all arrived within ``timeout_s`` seconds
    (a client that declared more than it sends). ``keep`` false: read the same way, but let go
    as it arrives (a body no route reads), and answer empty."""
    refuse_declared(headers, limit)
    chunks: list[bytes] = []
    size = 0
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        left = deadline - asyncio.get_running_loop().time()
        try:
            message: Message = await asyncio.wait_for(receive(), max(left, 0.0))
        except TimeoutError:
            raise BodyTimeout(timeout_s) from None
        if message["type"] != "http.request":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge(limit)
        if keep:
            chunks.append(chunk)
        if not message.get("more_body", False):
            if not chunks:
                return b""
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""
