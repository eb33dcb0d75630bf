"""The gateway: an OpenAI-compatible ``POST /v1/chat/completions`` that chooses the arm, calls
its upstream, measures the call and records what it measured as the event's reward parts.

``model`` equal to ``BANDIT_GATEWAY_MODEL`` lets the router choose among the arms that have an
upstream (from the last user message and the app's features: ``metadata``, or the
``x-bandit-features`` header); a ``model`` naming an arm goes to that arm, recorded as a direct
choice. The answer is the upstream's, streamed through event by event; its ``x-bandit-event-id``
header is the event the app rewards later with ``POST /reward``. An upstream that fails before
its first byte is recorded as a failure of its arm (accuracy 0) and the policy chooses again
among the arms not yet tried, up to ``BANDIT_GATEWAY_RETRIES`` times. A 4xx from the upstream is
the client's error and passes through unchanged. Errors of the gateway itself come from the
contract's table, in OpenAI's shape (``error.message``, ``error.param``) with the contract's
``detail`` and ``field`` beside them.

Each deployment has its gateway (its arms, settings and router: ``Gateways``); a request names
its deployment as ``/choose`` does, or by ``model`` (a named deployment's name lets it choose).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import orjson
import pydantic_core
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from bandit_router.deployments import DEFAULT, setting_named
from bandit_router.errors import ECHO_CHARS, RouterError, echo, shorten
from bandit_router.http.contract import (
    BadBody,
    ChooseRequest,
    check_content_type,
    encoding_fault,
    failure,
    opens,
    require_deployment_key,
)
from bandit_router.http.openapi import (
    CHAT_BODY,
    GATEWAY,
    GATEWAY_MODEL,
    GATEWAY_READ,
    MODEL_PARAMETER,
    MODELS_PARAMETER,
)
from bandit_router.http.security import API_KEYS, require_key
from bandit_router.rewards import MAX_LATENCY_MS, PART_FIELDS, RewardParts
from bandit_router.service.deployments import Routers
from bandit_router.service.router import ChooseResult, Router
from bandit_router.service.upstream import (
    Measured,
    StreamMeter,
    UpstreamFailure,
    Upstreams,
    read_json,
)
from bandit_router.settings import ArmSpec, Settings, check_weights, parse_weights
from bandit_router.throttle import Throttle

log = logging.getLogger("bandit_router")
EVENT_HEADER = "x-bandit-event-id"
ARM_HEADER = "x-bandit-arm"
REQUEST_ID = "x-request-id"
REQUEST_ID_CHARS = 200
PREFERENCE_FEATURE = "preference"  # the app feature that carries a request's preference
# An arm's upstream failures are said at most once in this many seconds, with how many were not
# said: an upstream that is down fails every call, and a line each would flood the log.
FAILURES_SAID_EVERY_S = 10.0
# After [DONE] an upstream's body normally ends at once; waited for this long, so that its
# connection can be reused, never the arm's timeout_s with the client's [DONE] held
END_AFTER_DONE_S = 1.0
# An upstream's error body reaches the client as it came, with its content type; should it be a
# page, a browser opening it on this origin (the dashboard's) runs nothing of it.
PASSED_THROUGH = {
    "x-content-type-options": "nosniff",
    "content-security-policy": "default-src 'none'; sandbox",
}
_KINDS = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}


class ModelNotFound(RouterError):
    status_code = 404
    field = "model"


class Busy(RouterError):
    status_code = 503
    retry_after_s = 1  # a slot frees when any call in flight ends: soon, under load


class BadGateway(RouterError):
    status_code = 502
    field = "model"

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry  # False: the SDK is told not to (x-should-retry), it cannot help


class RateLimited(RouterError):
    """Every arm tried was at its upstream's rate limit: OpenAI's 429, which the SDK raises as
    ``RateLimitError`` and retries after the ``Retry-After`` it carries."""

    status_code = 429
    field = "model"

    def __init__(self, message: str, waits: list[float | None]) -> None:
        super().__init__(message)
        # The gateway can answer once any of them frees: the shortest wait, when each said one
        # (``waits`` empty: no wait known)
        if waits and all(w is not None for w in waits):
            self.retry_after_s = math.ceil(min(w for w in waits if w is not None))


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A chat request as the gateway reads it."""

    body: dict[str, Any]  # the request, without ``metadata``
    query: str  # the last user message's text (``_query_text``)
    features: dict[str, Any]
    features_from: str  # metadata or x-bandit-features: what the router's feature errors name
    stream: bool
    client_usage: bool  # the client asked for the usage chunk itself
    deployment: str | None  # the body's ``deployment`` (as /choose's), taken out of ``body``
    weights: dict[str, float] = field(default_factory=dict)  # set by ``Gateway.weighed``


class Gateway:
    """One deployment's gateway: its arms that have an upstream and its settings in force, on
    the process's one pool of upstream calls (``BANDIT_GATEWAY_MAX_CONCURRENCY`` bounds the
    process, every deployment's calls together)."""

    def __init__(
        self,
        routers: Routers,
        name: str,
        upstreams: Upstreams,
        said: Throttle,
        where: str,
    ) -> None:
        self.routers = routers
        self.router = routers[name]
        self.settings = settings = self.router.settings
        self.name = name
        self.arms: dict[str, ArmSpec] = {a.name: a for a in settings.arms if a.upstream}
        # the models that let the deployment choose: its BANDIT_GATEWAY_MODEL, and a named
        # deployment's name (what a request that names no deployment asks it by)
        named = [name] if name != DEFAULT else []
        self.routing = list(dict.fromkeys([settings.gateway_model, *named]))
        self.upstreams = upstreams
        self.without_usage: set[str] = set()  # arms whose upstream answered with no usage: said
        self._recording: set[asyncio.Task[None]] = set()  # latencies of clients gone (``left``)
        self._said = said  # by what is said (and arm, and deployment): shared by the deployments
        self.where = where  # "deployment NAME: " where a service serves several, for the log
        if self.arms:
            self._say_uncounted()

    def _say_uncounted(self) -> None:
        """Say at the start that the latency and cost the gateway records count in none of its
        reward weights: it records them only for requests whose preference counts them."""
        settings = self.settings
        measured = [part for part in ("latency", "cost") if part in settings.gateway_parts]
        weights = settings.gateway_weights()
        if not measured or any(weights.get(part, 0) > 0 for part in measured):
            return
        env, key = (
            ("BANDIT_GATEWAY_REWARD_WEIGHTS", "gateway_reward_weights")
            if settings.gateway_reward_weights
            else ("BANDIT_REWARD_WEIGHTS", "reward_weights")
        )
        counting = [
            name
            for name, named in settings.gateway_preferences.items()
            if any(named.get(part, 0) > 0 for part in measured)
        ]
        # a named deployment's settings come from its table or, where it sets none, the
        # environment: named as its other messages name them, which says the deployment
        log.warning(
            "gateway: %s records %s, which its reward weights, %s (%s), do not count: "
            "recorded only for requests whose x-bandit-preference counts %s%s",
            setting_named(self.name, "BANDIT_GATEWAY_PARTS", "gateway_parts")
            + ("," if self.name != DEFAULT else ""),
            " and ".join(measured),
            ",".join(f"{k}={v:g}" for k, v in weights.items()),
            setting_named(self.name, env, key),
            "it" if len(measured) == 1 else "one",
            f" ({', '.join(counting)})" if counting else "",
        )

    def left(self, event_id: str, measured: Measured, weights: Mapping[str, float]) -> None:
        """The client left before its answer's end: the latency the gateway counts is recorded
        when it is known already, the first token's (``BANDIT_GATEWAY_LATENCY=first_token``) or
        a wait past ``BANDIT_LATENCY_BUDGET_MS``, which scores 0 whatever the answer's time, so
        that an arm slower than its clients wait is charged for it. Else nothing: the leaving
        says nothing of the arm. In a task of its own: the request's is being cancelled."""
        seconds = _known_latency(self.settings, measured)
        if seconds is None:
            return
        parts = RewardParts(latency_ms=min(seconds * 1000, MAX_LATENCY_MS))
        if not counted(parts, weights):
            return
        task = asyncio.get_running_loop().create_task(_record(self, self.router, event_id, parts))
        self._recording.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self._recording.discard)

    def failed(self, arm: str, message: str) -> None:
        """Say that ``arm``'s upstream failed."""
        self._say(f"failures {arm}", f"upstream of arm {arm} {message}", "more of its failures")

    def unrecorded(self, event_id: str, message: str) -> None:
        """Say that an event's parts could not be stored (Redis down: every call's, then)."""
        self._say("unrecorded", f"event {event_id} not recorded: {message}", "more not recorded")

    def unusable(self, arm: str, message: str) -> None:
        """Say that ``arm``'s upstream answered a usage no cost can be taken from."""
        what = "unusable usages"
        self._say(f"{what} {arm}", f"upstream of arm {arm} {message}", f"more of its {what}")

    def full(self) -> None:
        """Say that a call was refused at the bound on calls in flight (a 503 each, else
        unsaid: the operator is who can raise it). The process's bound: said for all."""
        self._say(
            "full",
            f"{self.upstreams.limit} upstream calls in flight, its limit "
            "(BANDIT_GATEWAY_MAX_CONCURRENCY): calls beyond it are answered 503",
            "more answered 503",
            process=True,
        )

    def _say(self, key: str, line: str, unsaid: str, process: bool = False) -> None:
        """``line`` at once, then at most every ``FAILURES_SAID_EVERY_S`` seconds per ``key``
        (and deployment, unless ``process``), with the count of those not said between
        (``unsaid`` names them)."""
        where = "" if process else self.where
        due = self._said.due(FAILURES_SAID_EVERY_S, where + key)
        if due is None:
            return
        more = f" ({due.count} {unsaid} since the last said)" if due.count else ""
        log.warning("gateway: %s%s%s", where, line, more)

    def models(self) -> list[str]:
        """The names a request's ``model`` may take: none when no arm has an upstream."""
        return [*self.routing, *self.arms] if self.arms else []

    def unknown(self, model: str) -> str:
        where = "here" if self.name == DEFAULT else f"in deployment {self.name!r}"
        if not self.arms:
            setting = "BANDIT_ARMS" if self.name == DEFAULT else f"deployment {self.name}'s arms"
            there = "" if self.name == DEFAULT else f" {where}"
            return f"no arm has an upstream ({setting}): the gateway has no model{there}"
        return f"model {echo(model)} does not exist {where}; valid: {', '.join(self.models())}"

    def weights(self, header: str | None) -> tuple[dict[str, float], str]:
        """The reward weights and preference name of a request's ``x-bandit-preference``."""
        if header is None or not header.strip():
            return dict(self.settings.gateway_weights()), "default"
        name = header.strip()
        named = self.settings.gateway_preferences.get(name)
        if named is not None:
            return dict(named), name
        try:
            weights = check_weights(parse_weights(name))
        except (ValueError, TypeError) as e:
            choices = ", ".join(self.settings.gateway_preferences)
            raise RouterError(
                f"x-bandit-preference must be one of {choices} or weights such as "
                f"accuracy=0.5,latency=0.5: {shorten(str(e), 2 * ECHO_CHARS)}",  # quotes it
                field="x-bandit-preference",
            ) from None
        canonical = ",".join(f"{k}={v:g}" for k, v in sorted(weights.items()))
        return weights, canonical

    def weighed(self, call: ChatCall, headers: Mapping[str, str]) -> ChatCall:
        """``call`` with the reward weights of its ``x-bandit-preference`` (this deployment's
        preferences), and the preference as its feature."""
        weights, preference = self.weights(headers.get("x-bandit-preference"))
        return replace(
            call, features={**call.features, PREFERENCE_FEATURE: preference}, weights=weights
        )

    def upstream_body(self, call: ChatCall, arm: ArmSpec) -> dict[str, Any]:
        assert arm.upstream is not None
        body = dict(call.body, model=arm.upstream.model)
        if call.stream:  # the usage chunk is how a stream says its token counts
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body


def read_chat(raw: bytes, headers: Mapping[str, str]) -> ChatCall:
    """The request's parts, or a ``RouterError`` naming the field at fault (as the client
    sent it: ``messages``, ``metadata``, ``x-bandit-features``), before anything is decided.
    What depends on the deployment (the preference's weights) is ``Gateway.weighed``'s."""
    body = _parse(raw, BadBody, "body")
    if not isinstance(body, dict):
        raise BadBody("body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise RouterError("model: a string is required", field="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RouterError("messages: a non-empty array is required", field="messages")
    query = _query_text(messages)
    stream = body.get("stream")
    if stream is None:  # absent or null: not streamed, as OpenAI reads it (the SDK sends
        stream = False  # "stream": null for stream=None, which its types allow)
    if not isinstance(stream, bool):
        raise RouterError("stream must be a boolean", field="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):  # the gateway adds to it
        raise RouterError("stream_options must be a JSON object", field="stream_options")
    _contract(query, None, "messages")
    deployment = body.pop("deployment", None)  # /choose's field: the router's, not forwarded
    if deployment is not None and not isinstance(deployment, str):
        raise RouterError("deployment must be a string", field="deployment")
    header = headers.get("x-bandit-features")
    from_header = None if header is None else _parse(header, RouterError, "x-bandit-features")
    features: dict[str, Any] = {}
    source = "metadata"  # where the features came from, for the router's errors about them
    for name, value in (
        ("x-bandit-features", from_header),
        ("metadata", body.pop("metadata", None)),
    ):
        if value is None:
            continue
        if not isinstance(value, dict):
            raise RouterError(f"{name} must be a JSON object", field=name)
        _contract(query, value, name)
        if PREFERENCE_FEATURE in value:  # would be replaced by the header's, unsaid
            raise RouterError(
                f"{name}.{PREFERENCE_FEATURE}: the gateway's own feature, set from the "
                "x-bandit-preference header; give yours another name",
                field=name,
            )
        if value:
            features.update(value)
            source = name
    unsendable = _unsendable(body)  # what is forwarded must be written back as it came
    if unsendable is not None:
        raise BadBody(f"body holds {unsendable}, which cannot be forwarded as sent")
    client_usage = options is not None and options.get("include_usage") is True
    return ChatCall(body, query, features, source, stream, client_usage, deployment)


def _query_text(messages: list[Any]) -> str:
    """The text the router reads: the last user message that has text. A turn of images or
    audio alone takes the user's words before it; a prompt with no user text at all takes its
    instructions (the last system or developer message with text)."""
    for roles in (("user",), ("system", "developer")):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") in roles:
                text = _text(message.get("content"))
                if text.strip():
                    return text
    raise RouterError(
        "messages: no user, system or developer message has text content, which the router "
        "reads (the last user message's, else the instructions')",
        field="messages",
    )


def _text(content: Any) -> str:
    """A message's text: its string content, or its text parts joined by line breaks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones (an image has none)
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def _parse(raw: bytes | str, error: type[RouterError], field: str) -> Any:
    """JSON read as ``/choose`` reads it (pydantic-core's parser), so the same limits hold:
    nesting beyond 201 levels, a number too long to read, a bad escape. orjson would read up to
    1,024 levels but write back only about 255: a deeper body failed after its decision."""
    try:
        return pydantic_core.from_json(raw)
    except ValueError as e:
        kind = "valid JSON" if field == "body" else "a JSON object"
        reason = (encoding_fault(raw) if isinstance(raw, bytes) else None) or e
        raise error(f"{field} is not {kind}: {reason}", field=field) from None


def _contract(query: str, features: dict[str, Any] | None, source: str) -> None:
    """The contract's rules for a query and its features (``/choose``'s), errors named by what
    the client sent: ``messages`` for the query, ``source`` for the features."""
    try:
        ChooseRequest.model_validate({"query": query, "features": features})
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err.get("loc", ())] or ["query"]
        field = "messages" if loc[0] == "query" else source
        where = ".".join([field, *loc[1:]])
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        msg = msg.replace("features.", f"{source}.").replace("a features key", f"a {source} key")
        raise RouterError(f"{where}: {msg}", field=field) from None


def _unsendable(value: Any) -> str | None:
    """The first number in ``value`` orjson cannot write back as it was read, said in words:
    a non-finite one (it writes null) or an integer beyond 64 bits (it refuses)."""
    kind = type(value)
    if kind is float:
        return None if math.isfinite(value) else f"the non-finite number {value}"
    if kind is int:
        return None if -(2**63) <= value < 2**64 else "an integer beyond 64 bits"
    items = value.values() if kind is dict else value if kind is list else ()
    for item in items:
        found = _unsendable(item)
        if found is not None:
            return found
    return None


def error_response(exc: BaseException, router: Router | None) -> Response:
    """A gateway error in OpenAI's shape, with the contract's ``detail`` and ``field``. A
    request the contract finds invalid (its 422) is OpenAI's 400, as OpenAI answers one: the
    SDK raises ``BadRequestError``, which an app written for OpenAI catches."""
    status, raw = failure(exc, router, "gateway")
    if status == INVALID:
        status = BAD_REQUEST
    code = CODES.get(type(exc))
    # Retry-After: when the OpenAI SDK retries (it does a 503), it waits as long as this says
    retry = exc.retry_after_s if isinstance(exc, RouterError) else None
    headers = {"retry-after": str(retry)} if retry is not None else {}
    if isinstance(exc, BadGateway) and not exc.retry:  # a header the SDK obeys before status
        headers["x-should-retry"] = "false"
    return Response(
        openai_error(status, raw, code),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


INVALID, BAD_REQUEST = 422, 400

CODES: dict[type[BaseException], str] = {
    ModelNotFound: "model_not_found",
    RateLimited: "rate_limit_exceeded",  # OpenAI's code for its own 429
}


def openai_error(status: int, raw: bytes, code: str | None = None) -> bytes:
    """The contract's error body (``detail``, ``field``) with OpenAI's ``error`` object beside
    it: the SDK puts ``error.message`` in its exception's text, and only that."""
    doc = orjson.loads(raw)
    kind = _KINDS.get(status, "invalid_request_error" if status < 500 else "api_error")
    error = {"message": doc["detail"], "type": kind, "param": doc["field"], "code": code}
    return orjson.dumps({"error": error, **doc})


def is_gateway_path(scope: Scope) -> bool:
    """Whether a request is the OpenAI SDK's (under ``/v1/``): its errors, even those answered
    before the gateway's routes (a body too large, a path the gateway does not serve), are
    given in OpenAI's shape, or the SDK's exception says only "Error code: 413"."""
    path: str = scope["path"]
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.startswith("/v1/")


def _model(name: str) -> dict[str, Any]:
    """A model as OpenAI's ``/v1/models`` describes one."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "bandit-router"}


# Recording what the gateway measured


async def _record(
    gateway: Gateway, router: Router, event_id: str, parts: RewardParts, final: bool = False
) -> None:
    try:
        await router.reward(event_id, parts, final=final)
    except RouterError as e:  # Redis down, say: the answer still goes out
        gateway.unrecorded(event_id, e.message)


def counted(parts: RewardParts, weights: Mapping[str, float]) -> bool:
    """Whether an event of reward ``weights`` counts one of the gateway's ``parts``: else
    recording them changes nothing it learns (and the router refuses them, 422, unless the
    deployment's weights count one)."""
    present = parts.present()
    return any(w > 0 and PART_FIELDS[part] in present for part, w in weights.items())


async def record_success(
    gateway: Gateway,
    router: Router,
    event_id: str,
    arm: ArmSpec,
    measured: Measured,
    weights: Mapping[str, float],
) -> None:
    settings = router.settings
    metrics = router.metrics
    if measured.first_token_s is not None:
        metrics.series(metrics.upstream_seconds, arm.name, "first_token").observe(
            measured.first_token_s
        )
    if measured.total_s is not None:
        metrics.series(metrics.upstream_seconds, arm.name, "total").observe(measured.total_s)
    latency_ms = cost_usd = None
    if "latency" in settings.gateway_parts:
        seconds = measured.total_s
        if settings.gateway_latency == "first_token" and measured.first_token_s is not None:
            seconds = measured.first_token_s
        if seconds is not None:
            latency_ms = min(seconds * 1000, MAX_LATENCY_MS)
    if "cost" in settings.gateway_parts:
        cost_usd = measured.cost_usd(arm)
        if not measured.usage_sent and arm.name not in gateway.without_usage:
            gateway.without_usage.add(arm.name)  # said once per arm and process
            log.warning(
                "gateway: the upstream of arm %s answered without a usage object: no cost is "
                "recorded for its calls while it sends none",
                arm.name,
            )
    parts = RewardParts(latency_ms=latency_ms, cost_usd=cost_usd)
    if counted(parts, weights):
        await _record(gateway, router, event_id, parts)


def _known_latency(settings: Settings, measured: Measured) -> float | None:
    """The latency, in seconds, the gateway counts for a call whose client left, when it is
    known: the first token's, or the wait so far once it is past the latency budget (the
    latency part is 0 from there on, however long the answer would have taken)."""
    if "latency" not in settings.gateway_parts:
        return None
    if settings.gateway_latency == "first_token" and measured.first_token_s is not None:
        return measured.first_token_s
    waited = time.perf_counter() - measured.start
    return waited if waited * 1000 >= settings.latency_budget_ms else None


async def record_failure(
    gateway: Gateway,
    router: Router,
    event_id: str,
    weights: Mapping[str, float],
    arm: str,
    kind: str,
) -> None:
    """A failed call is a zero outcome, final at once: no answer, nothing left to rate."""
    router.metrics.series(router.metrics.upstream_failures, arm, kind).inc()
    if "failure" not in router.settings.gateway_parts:
        return
    parts = RewardParts(accuracy=0.0) if weights.get("accuracy", 0) > 0 else RewardParts(reward=0.0)
    await _record(gateway, router, event_id, parts, final=True)


# The routes


class Gateways(Mapping[str, Gateway]):
    """A gateway per deployment, by name (``default`` first), on one pool of upstream calls.

    A chat request names its deployment as ``/choose`` does (``?deployment=``, the body's
    ``deployment``) or by its ``model``: a named deployment's name lets that deployment choose
    among its arms, as ``BANDIT_GATEWAY_MODEL`` (``auto``) does in the request's deployment.
    None named: ``default``. The key must open the deployment (``/choose``'s rule)."""

    def __init__(self, routers: Routers, upstreams: Upstreams) -> None:
        self.routers = routers
        said = Throttle()  # one for the process: the bound on calls in flight is the process's
        several = len(routers) > 1
        self._gateways = {
            name: Gateway(routers, name, upstreams, said, f"deployment {name}: " if several else "")
            for name in routers
        }

    def __getitem__(self, name: str) -> Gateway:
        return self._gateways[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._gateways)

    def __len__(self) -> int:
        return len(self._gateways)

    def admit(self, headers: Sequence[tuple[bytes, bytes]], query: Sequence[str]) -> str | None:
        """Before the body is read: a key of some deployment (when each has keys), and the
        deployment ``?deployment=`` names, if any, with a key that opens it (else 401)."""
        require_key(headers, self.routers.any_keys, API_KEYS)
        names = _named(query, None)
        if not names:
            return None
        router = self.routers.named(names[0])
        require_deployment_key(self.routers, router, headers)
        return self.routers.name_of(router)

    def pick(
        self, headers: Sequence[tuple[bytes, bytes]], query: str | None, call: ChatCall
    ) -> Gateway:
        """The gateway of the deployment ``call`` is for: the one ``?deployment=`` (``query``,
        admitted) and the body's ``deployment`` name, else the one ``model`` names, else
        ``default``. Names that disagree are a 422 naming the field to change."""
        names = _named([query] if query else [], call.deployment)
        router = self.routers.named(names[0] if names else None)  # unknown: 422 with the names
        model: str = call.body["model"]
        by_model = model if model != DEFAULT and model in self.routers else None
        if names and by_model is not None and by_model != names[0]:
            name = self.routers.name_of(router)
            raise RouterError(
                f"model {echo(model)} is deployment {model!r}'s, but the request names "
                f"deployment {name!r} (?deployment= or the body's deployment): name one; "
                f"deployment {name!r}'s models: {', '.join(self[name].models()) or 'none'}",
                field="model",
            )
        if not names and by_model is not None:
            router = self.routers[by_model]
        require_deployment_key(self.routers, router, headers)
        gateway = self[self.routers.name_of(router)]
        if model not in gateway.models():
            raise ModelNotFound(gateway.unknown(model) + self._elsewhere(gateway, model))
        return gateway

    def _elsewhere(self, gateway: Gateway, model: str) -> str:
        """What a 404 adds for an arm of other deployments: how to name one."""
        others = [n for n, g in self.items() if g is not gateway and model in g.arms]
        if not others:
            return ""
        return (
            f" (an arm of deployment {', '.join(map(repr, others))}: name the deployment, "
            f"?deployment={others[0]} or the body's deployment)"
        )

    def listed(self, headers: Sequence[tuple[bytes, bytes]], named: str | None) -> list[str]:
        """The models a chat request with these headers and this ``?deployment=`` may name:
        the named deployment's; none named, ``default``'s and the name of each other
        deployment the key opens (its arms are called with ``?deployment=``)."""
        if named is not None:
            return self[named].models()
        found: list[str] = []
        for name, gateway in self.items():
            if not opens(self.routers, gateway.router, headers):
                continue
            if name == DEFAULT:
                found.extend(gateway.models())
            elif gateway.arms:
                found.append(name)
        return found


def _named(query: Sequence[str], body: str | None) -> list[str]:
    """The deployments a request names (an empty name is ``default``, as everywhere); 422 when
    they are not one."""
    given = [*query, *([] if body is None else [body])]
    names = list(dict.fromkeys(name or DEFAULT for name in given))
    if len(names) > 1:
        raise RouterError(
            f"the request names deployments {', '.join(map(echo, names))} (?deployment= and "
            "the body's deployment): name one",
            field="deployment",
        )
    return names


def register_gateway(app: FastAPI, dependencies: list[Any]) -> None:
    """The gateway's routes, on ``app.state.gateways`` (set once the routers are open)."""

    @app.get(
        "/v1/models",
        tags=["gateway"],
        dependencies=dependencies,
        responses=GATEWAY_READ,
        openapi_extra=MODELS_PARAMETER,
    )
    async def models(request: Request) -> Response:
        """The models the gateway answers as: each deployment's choice, and each arm by name
        (none when no arm has an upstream). With `?deployment=`, that deployment's."""
        gateways: Gateways = request.app.state.gateways
        headers = request.headers.raw
        try:
            named = gateways.admit(headers, request.query_params.getlist("deployment"))
            listed = gateways.listed(headers, named)
        except RouterError as e:
            return error_response(e, None)
        data = [_model(n) for n in listed]
        return Response(
            orjson.dumps({"object": "list", "data": data}), media_type="application/json"
        )

    @app.get(
        "/v1/models/{model:path}",  # an arm's name may hold a slash (the SDK sends it as %2F)
        tags=["gateway"],
        dependencies=dependencies,
        responses=GATEWAY_MODEL,
        openapi_extra=MODEL_PARAMETER,
    )
    async def model(request: Request) -> Response:
        """One model the gateway answers as (the SDK's `models.retrieve`); 404 for another."""
        model: str = request.path_params["model"]  # any string: no 422 to document
        gateways: Gateways = request.app.state.gateways
        headers = request.headers.raw
        try:
            named = gateways.admit(headers, request.query_params.getlist("deployment"))
            listed = gateways.listed(headers, named)
            if model not in listed:
                if named is not None:
                    raise ModelNotFound(gateways[named].unknown(model))
                raise ModelNotFound(_unknown_here(model, listed))
        except RouterError as e:
            return error_response(e, None)
        return Response(orjson.dumps(_model(model)), media_type="application/json")

    @app.post(
        "/v1/chat/completions",
        tags=["gateway"],
        dependencies=dependencies,
        responses=GATEWAY,
        openapi_extra=CHAT_BODY,
    )
    async def chat_completions(request: Request) -> Response:
        """OpenAI's chat completions: the deployment's router chooses the arm (`model: auto`,
        or the deployment's name), the arm's upstream answers, and the call's latency and cost
        become the event's reward parts."""
        gateways: Gateways = request.app.state.gateways
        router: Router = request.app.state.router  # the deployment's, once it is known
        headers = request.headers.raw
        try:
            named = gateways.admit(headers, request.query_params.getlist("deployment"))
            if named is not None:
                router = gateways[named].router
            check_content_type(headers)
            call = read_chat(await request.body(), request.headers)
            gateway = gateways.pick(headers, named, call)
            router = gateway.router
            call = gateway.weighed(call, request.headers)
            return await _unless_gone(request, _serve(gateway, router, call))
        except Exception as e:
            return error_response(e, router)


def _unknown_here(model: str, listed: list[str]) -> str:
    if not listed:
        return "no arm has an upstream (BANDIT_ARMS): the gateway has no model"
    return f"model {echo(model)} does not exist here; valid: {', '.join(listed)}"


CLIENT_GONE = 499  # the status logged for a request whose client left (nobody reads it)


async def _unless_gone(request: Request, serving: Coroutine[Any, Any, Response]) -> Response:
    """The answer ``serving`` makes, or, when the client leaves before it is ready (the whole
    answer, or a stream's first event), ``serving`` cancelled: its upstream call closed at once,
    its slot released, no other arm tried, no failure recorded against the arm (only the
    latency it had run up, when known: ``Gateway.left``). The body is read already: what comes
    next is the disconnect."""
    answer = asyncio.ensure_future(serving)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        left = not answer.done()
        if left:
            answer.cancel()
    if not left:
        return answer.result()
    with contextlib.suppress(asyncio.CancelledError):
        await answer
    log.info("gateway: the client left before its answer began; the upstream call was cancelled")
    return Response(status_code=CLIENT_GONE)


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _serve(gateway: Gateway, router: Router, call: ChatCall) -> Response:
    model = call.body["model"]
    settings = gateway.settings
    if model not in gateway.models():
        raise ModelNotFound(gateway.unknown(model))
    if model in gateway.routing:
        eligible, direct, retries = list(gateway.arms), False, settings.gateway_retries
    else:
        eligible, direct, retries = [model], True, 0
    upstreams = gateway.upstreams
    if not upstreams.has_room():
        gateway.full()
        raise Busy(
            f"the gateway has {upstreams.limit} upstream calls in flight, its limit "
            "(BANDIT_GATEWAY_MAX_CONCURRENCY); retry"
        )
    slot = Slot(upstreams)  # taken now, before any await: the bound holds under a burst
    try:
        decision = await _choose(gateway, call, eligible, direct)
        failures: list[UpstreamFailure] = []
        tried: set[str] = set()
        for attempt in range(retries + 1):
            arm = gateway.arms[decision.arm]
            tried.add(arm.name)
            try:
                return await _attempt(gateway, router, call, arm, decision.event_id, slot)
            except UpstreamFailure as failed:
                gateway.failed(arm.name, f"failed: {failed.logged}")
                failures.append(failed)
                await record_failure(
                    gateway, router, decision.event_id, call.weights, arm.name, failed.kind
                )
            left = [name for name in eligible if name not in tried]
            if not left or attempt == retries:
                break
            decision = await _choose(gateway, call, left)
        said = "every upstream tried failed: " + "; ".join(map(str, failures))
        if all(f.kind == "rate_limit" for f in failures):
            # An arm not tried (BANDIT_GATEWAY_RETRIES) may answer at once: no wait is known
            untried = any(name not in tried for name in eligible)
            raise RateLimited(said, [] if untried else [f.retry_after_s for f in failures])
        # Arms that failed for their settings fail again until the operator fixes them
        raise BadGateway(said, retry=not all(f.kind == "config" for f in failures))
    finally:
        if not slot.handed_over:
            slot.release()


async def _choose(
    gateway: Gateway, call: ChatCall, eligible: list[str], direct: bool = False
) -> ChooseResult:
    """The deployment's choice; its errors about the query and the features (their size, their
    count) name what the client sent instead: ``messages``, ``metadata``, ``x-bandit-features``."""
    try:
        return await gateway.router.choose(
            call.query,
            call.features,
            eligible,
            gateway.routers.event_id(gateway.name, None),  # a named deployment's: NAME:...
            weights=call.weights,
            direct=direct,
        )
    except RouterError as e:
        if type(e) is not RouterError or e.field not in ("query", "features"):
            raise
        if e.field == "query":
            what = "the last user message" + e.message.removeprefix("query")
            raise RouterError(f"messages: {what}", field="messages") from None
        counted = "BANDIT_MAX_FEATURES" in e.message
        note = f" (counting the {PREFERENCE_FEATURE!r} feature the gateway adds)" if counted else ""
        source = call.features_from
        raise RouterError(f"{source}: {e.message}{note}", field=source) from None


class Slot:
    """One of the process's upstream calls in flight; a stream's response releases it."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams
        self.handed_over = False
        self._held = True
        upstreams.in_flight += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self.upstreams.in_flight -= 1


class Relayed(StreamingResponse):
    """A streamed answer that, however it ends (finished, client gone, cancelled before it
    started), closes its upstream response and releases its slot."""

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        upstream: aiohttp.ClientResponse,
        slot: Slot,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.content = content
        self.upstream = upstream
        self.slot = slot
        slot.handed_over = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.upstream.close()  # nothing once released; else the connection is dropped
            self.slot.release()
            # closed now, not when collected: a client gone mid-answer is recorded by it
            await self.content.aclose()


def _headers(event_id: str, arm: str, upstream: aiohttp.ClientResponse) -> dict[str, str]:
    """Ours, and the upstream's ``x-request-id`` (the SDK's ``_request_id``, which a provider's
    support asks for) when it is a short printable token: its other headers are its own."""
    headers = {EVENT_HEADER: event_id, ARM_HEADER: arm}
    given = upstream.headers.get(REQUEST_ID, "")
    if 0 < len(given) <= REQUEST_ID_CHARS and given.isascii() and given.isprintable():
        headers[REQUEST_ID] = given
    return headers


async def _attempt(
    gateway: Gateway, router: Router, call: ChatCall, arm: ArmSpec, event_id: str, slot: Slot
) -> Response:
    """One arm's answer, or ``UpstreamFailure`` when it failed before its first byte; a
    client that leaves before the answer began is charged what it waited (``Gateway.left``)."""
    measured = Measured(arm=arm.name, say=gateway.unusable)
    try:
        return await _answer(gateway, router, call, arm, event_id, slot, measured)
    except asyncio.CancelledError:
        gateway.left(event_id, measured, call.weights)
        raise


async def _answer(
    gateway: Gateway,
    router: Router,
    call: ChatCall,
    arm: ArmSpec,
    event_id: str,
    slot: Slot,
    measured: Measured,
) -> Response:
    """``_attempt``'s answer."""
    upstreams = gateway.upstreams
    sent = gateway.upstream_body(call, arm)
    response = await upstreams.send(arm, sent, measured, gateway.settings.gateway_timeout_s)
    headers = _headers(event_id, arm.name, response)
    limit = gateway.settings.gateway_max_response_bytes
    if response.status >= 400:  # the client's error: passed through as it came
        body = await _read(response, arm, limit)
        media = response.headers.get("content-type", "application/json")
        headers.update(PASSED_THROUGH)
        return Response(body, status_code=response.status, headers=headers, media_type=media)
    if not call.stream:
        body = await _read(response, arm, limit)
        measured.total_s = measured.first_token_s = time.perf_counter() - measured.start
        if not body:  # as an empty stream is: said so, of kind empty (not protocol)
            raise UpstreamFailure(arm.name, "empty answer", "empty")
        answer = read_json(body)
        if not isinstance(answer, dict):  # an HTML page, a stream: no answer the client can read
            reason = "answered something other than a JSON object"
            raise UpstreamFailure(arm.name, reason, "protocol")
        measured.usage(answer.get("usage"))
        await record_success(gateway, router, event_id, arm, measured, call.weights)
        return Response(body, headers=headers, media_type="application/json")
    media = response.headers.get("content-type", "")
    if not media.lower().startswith("text/event-stream"):  # not a stream: the client reads none
        response.close()
        reason = f"answered {media[:60]!r} to a stream request, not text/event-stream"
        raise UpstreamFailure(arm.name, reason, "protocol")
    meter = StreamMeter(measured, drop_usage=not call.client_usage)
    body_iter = response.content.iter_any()
    try:
        first = await body_iter.__anext__()
    except StopAsyncIteration:
        response.release()
        raise UpstreamFailure(arm.name, "empty answer", "empty") from None
    except (TimeoutError, aiohttp.ClientError) as e:
        first = _unread(response, e)  # the answer began: its break comes at the next read
        if not first:
            response.close()
            raise UpstreamFailure(arm.name, _reason(e), _kind(e)) from None
    except BaseException:  # cancelled (the client left): the connection is not reused
        response.close()
        raise
    stream = _relay(gateway, router, response, body_iter, first, meter, arm, event_id, call)
    return Relayed(stream, response, slot, {**headers, "cache-control": "no-cache"})


async def _relay(
    gateway: Gateway,
    router: Router,
    response: aiohttp.ClientResponse,
    body_iter: AsyncIterator[bytes],
    first: bytes,
    meter: StreamMeter,
    arm: ArmSpec,
    event_id: str,
    call: ChatCall,
) -> AsyncGenerator[bytes, None]:
    """The upstream's events as they come; the call recorded before the final ``[DONE]``. A
    client that leaves cancels this, which closes the upstream connection. An upstream that
    breaks off mid-answer (a timeout between chunks, a reset) is the arm's failure, and the
    client gets an error event in OpenAI's shape (the SDK raises ``APIError``), not an answer
    cut short that reads as whole; one that sends an error event itself is the arm's failure
    too, its events passed on as they came."""
    finished = erred = recorded = False
    try:
        try:
            async for chunk in _chunks(first, body_iter, response):
                out = meter.feed(chunk)
                if meter.error is not None and not erred:  # recorded before the client sees it
                    erred = True
                    gateway.failed(arm.name, f"sent an error event mid-stream: {meter.error}")
                    await record_failure(
                        gateway, router, event_id, call.weights, arm.name, "midstream"
                    )
                if out:
                    yield out
                if meter.done:  # the answer is whole (the SDK reads no further)
                    break
        except (TimeoutError, aiohttp.ClientError) as e:  # broke mid-answer: the arm's failure
            gateway.failed(arm.name, f"broke mid-stream: {_reason(e)}")
            recorded = True
            if not erred:
                await record_failure(gateway, router, event_id, call.weights, arm.name, "midstream")
            yield _error_event(f"the upstream of {arm.name} broke off mid-answer: {_reason(e)}")
            return
        if meter.done:  # its end, unread (a break there is no failure); else it is not reused
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                async with asyncio.timeout(END_AFTER_DONE_S):
                    async for _ in body_iter:
                        pass
        finished = True
        tail = meter.finish()
        if not erred:
            await record_success(gateway, router, event_id, arm, meter.measured, call.weights)
        if tail:
            yield tail
    finally:
        if finished:
            response.release()
        else:
            response.close()  # unread: the connection is not reused, the upstream sees it end
            if not (erred or recorded):  # the client left mid-answer
                gateway.left(event_id, meter.measured, call.weights)


async def _chunks(
    first: bytes, rest: AsyncIterator[bytes], response: aiohttp.ClientResponse
) -> AsyncIterator[bytes]:
    """The upstream's body from ``first`` on; a break raised once what came before it is out."""
    yield first
    try:
        async for chunk in rest:
            yield chunk
    except aiohttp.ClientPayloadError as e:
        left = _unread(response, e)
        if left:
            yield left
        raise


def _unread(response: aiohttp.ClientResponse, error: BaseException) -> bytes:
    """What the upstream sent before its connection broke and the gateway has not read yet:
    aiohttp raises the break at the next read, before the bytes it had buffered (they arrived
    with it, or while the gateway was busy sending to its client). The reader keeps the error:
    the read after these raises it again."""
    if not isinstance(error, aiohttp.ClientPayloadError):
        return b""
    # aiohttp's private read of its buffer (no public read returns it once the error is set),
    # pinned by a test; should a release rename it, those bytes are lost, nothing else breaks
    read_buffered = getattr(response.content, "_read_nowait", None)
    return bytes(read_buffered(-1)) if callable(read_buffered) else b""


def _error_event(message: str) -> bytes:
    """A server-sent event in the shape of OpenAI's mid-stream errors."""
    error = {"message": message, "type": "api_error", "param": None, "code": None}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


async def _read(response: aiohttp.ClientResponse, arm: ArmSpec, limit: int) -> bytes:
    """A whole non-streamed answer, read to at most ``limit`` bytes: a larger one is the arm's
    failure, not held in memory (its connection is closed unread)."""
    chunks: list[bytes] = []
    size = 0
    try:
        if (response.content_length or 0) > limit:
            raise _too_large(arm, limit)
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _too_large(arm, limit)
            chunks.append(chunk)
    except (TimeoutError, aiohttp.ClientError) as e:
        response.close()
        raise UpstreamFailure(arm.name, _reason(e), _kind(e)) from None
    except BaseException:  # over the limit, or cancelled: the connection is not reused
        response.close()
        raise
    response.release()
    return b"".join(chunks)


def _too_large(arm: ArmSpec, limit: int) -> UpstreamFailure:
    reason = f"answer over {limit} bytes (BANDIT_GATEWAY_MAX_RESPONSE_BYTES)"
    return UpstreamFailure(arm.name, reason, "too_large")


def _kind(e: BaseException) -> str:
    return "timeout" if isinstance(e, TimeoutError) else "connection"


def _reason(e: BaseException) -> str:
    return "timed out" if isinstance(e, TimeoutError) else f"connection failed ({type(e).__name__})"
