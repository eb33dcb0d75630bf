"""Upstream calls of the gateway: a pooled HTTP client, one call, and what the call measured.

The client is aiohttp: against the replay upstream on loopback it spent about a tenth of the CPU
per request that httpx did (README, Gateway). Keys are read from the environment variable each
arm names, at call time, and go only into the upstream's ``Authorization`` header: no message,
log line or exception here carries one.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, TypeGuard

import aiohttp
import orjson

from bandit_router.rewards import MAX_COST_USD
from bandit_router.settings import ArmSpec, Settings

log = logging.getLogger("bandit_router")
DONE = b"data: [DONE]"
MAX_EVENT_BYTES = 1 << 20  # a streamed event the meter holds while it waits for the event's end
MAX_RETRY_AFTER_S = 86_400.0  # an upstream's Retry-After passed on: a day at most
MAX_USAGE_TOKENS = 100_000_000  # tokens one call can count, per side: far past any context window


# The 4xx that say something of the arm, not of the client's request: the gateway's key, its
# account or the arm's model and path (its settings), the upstream's rate limit, or a request
# the upstream could not finish as sent (408, 409: the openai SDK retries those unchanged, so
# they are no fault of the request). Another arm may answer.
ARM_STATUSES: dict[int, tuple[str, str]] = {
    401: ("the upstream refused the arm's key (api_key_env)", "config"),
    402: ("the upstream wants payment: the arm's account is out of credit", "config"),
    403: ("the upstream refused the arm's key (api_key_env)", "config"),
    404: ("the upstream knows no such model or path (the arm's model, base_url)", "config"),
    408: ("the upstream timed out", "timeout"),
    409: ("the upstream's conflict (a lock timeout, retried as sent)", "status"),
    429: ("the upstream's rate limit", "rate_limit"),
}


class UpstreamFailure(Exception):
    """An upstream failed before the first byte of its answer: the arm's fault, not the client's.

    The message says what happened (connection failed, timed out, status 5xx) and never holds a
    key or the upstream's reply."""

    def __init__(
        self,
        arm: str,
        reason: str,
        kind: str = "status",
        logged: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{arm}: {reason}")
        self.arm = arm
        self.reason = reason
        self.kind = kind  # a metric label (README, Metrics: bandit_gateway_upstream_failures_total)
        self.logged = logged or reason  # for the operator's log: may name the settings
        self.retry_after_s = retry_after_s  # a rate limit's wait, as the upstream said it


def _said(arm: str, message: str) -> None:
    log.warning("gateway: upstream of arm %s %s", arm, message)


@dataclass(slots=True)
class Measured:
    """What one upstream call measured, from the gateway's send to the last byte."""

    start: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    total_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    arm: str = "?"  # whose upstream answered, for the log
    usage_sent: bool = False  # the answer carried a ``usage`` object, usable or not
    # How a usage no cost is taken from is said: the gateway's throttles it per arm (a provider
    # whose every answer has one would otherwise write a line a call).
    say: Callable[[str, str], None] = _said

    def usage(self, data: Any) -> None:
        """Take the token counts from an OpenAI ``usage`` object (the output's, when it lacks
        ``completion_tokens``, from ``total_tokens`` less ``prompt_tokens``). An upstream is an
        outside system: counts that are not whole numbers in 0..``MAX_USAGE_TOKENS`` are logged
        and treated as missing (no cost is recorded), never let through to the reward parts."""
        if data is None:  # no usage: nothing to take, nothing wrong
            return
        self.usage_sent = True
        prompt = data.get("prompt_tokens") if isinstance(data, dict) else None
        completion = data.get("completion_tokens") if isinstance(data, dict) else None
        total = data.get("total_tokens") if isinstance(data, dict) else None
        if completion is None and _count(prompt) and _count(total) and total >= prompt:
            completion = total - prompt  # a provider that counts the total, not the output
        if _count(prompt) and _count(completion):
            self.prompt_tokens, self.completion_tokens = prompt, completion
            return
        self.prompt_tokens = self.completion_tokens = None
        self.say(
            self.arm,
            f"answered an unusable usage (prompt_tokens {prompt!r:.40}, completion_tokens "
            f"{completion!r:.40}): no cost recorded for this call",
        )

    def cost_usd(self, arm: ArmSpec) -> float | None:
        """The call's cost from its usage and the arm's prices (``usd_per_mtok`` for both sides
        unless the upstream sets input and output prices); None without usage or a price, or
        when it falls outside 0..``MAX_COST_USD`` (logged: a usage no call can have)."""
        up = arm.upstream
        price_in = up.usd_per_mtok_in if up and up.usd_per_mtok_in is not None else arm.usd_per_mtok
        price_out = (
            up.usd_per_mtok_out if up and up.usd_per_mtok_out is not None else arm.usd_per_mtok
        )
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        if price_in is None or price_out is None:
            return None
        cost = (self.prompt_tokens * price_in + self.completion_tokens * price_out) / 1e6
        if not 0 <= cost <= MAX_COST_USD:  # NaN fails too
            self.say(
                arm.name,
                f"answered a usage costing {cost:g} USD, outside 0..{MAX_COST_USD:g}: no cost "
                "recorded for this call",
            )
            return None
        return cost


def _count(value: Any) -> TypeGuard[int]:
    """A token count as a reward part can take it: a whole number (not a bool) in range."""
    return type(value) is int and 0 <= value <= MAX_USAGE_TOKENS


@dataclass(slots=True)
class Pooled:
    """Whether a request went out on a kept-alive connection from the pool (a trace context)."""

    reused: bool = False


async def _reused(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceConnectionReuseconnParams,
) -> None:
    pooled = context.trace_request_ctx
    if isinstance(pooled, Pooled):
        pooled.reused = True


class Upstreams:
    """One connection pool for every arm's upstream (every deployment's), and the process's
    bound on calls in flight (``BANDIT_GATEWAY_MAX_CONCURRENCY``)."""

    def __init__(self, settings: Settings) -> None:
        self.limit = settings.gateway_max_concurrency
        self.in_flight = 0
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.limit, ttl_dns_cache=300)
            reuse = aiohttp.TraceConfig()
            reuse.on_connection_reuseconn.append(_reused)
            self._session = aiohttp.ClientSession(
                connector=connector,
                trace_configs=[reuse],
                # The upstream is asked for identity encoding; one that encodes its answer all
                # the same (gzip, deflate) has it decoded here, as the openai SDK would: read as
                # sent, it is no JSON (the arm's failure), and a 4xx's body or a stream passed
                # on without its Content-Encoding is bytes no client can read. aiohttp decodes
                # in bounded pieces, and MAX_RESPONSE_BYTES counts the decoded bytes.
                auto_decompress=True,
                # Shared by every client's calls: a cookie one answer set would ride along with
                # the next client's request (and the jar would grow with whatever is set).
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def has_room(self) -> bool:
        return self.in_flight < self.limit

    async def send(
        self, arm: ArmSpec, body: dict[str, Any], measured: Measured, timeout_s: float
    ) -> aiohttp.ClientResponse:
        """POST ``body`` to the arm's ``/chat/completions``; the response once its status is in.
        ``timeout_s``: unless the arm sets its own, its deployment's ``gateway_timeout_s``.

        A connection failure, a timeout, a redirect, a 5xx or a 4xx of ``ARM_STATUSES`` raises
        ``UpstreamFailure``; another 4xx is returned (the client's error, passed through). The
        caller releases the response.
        """
        up = arm.upstream
        if up is None:
            raise UpstreamFailure(arm.name, "no upstream configured", "config")
        timeout_s = up.timeout_s or timeout_s
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if up.api_key_env:
            # Without the spaces and newline around it (a secret file's last line end), which
            # no header can carry: aiohttp refused every call.
            key = os.environ.get(up.api_key_env, "").strip()
            if not key:
                # The variable's name goes to the log only: a key pasted in its place
                # (api_key_env = "sk_live_...") would reach every client in the 502.
                message = "its key variable (the arm's api_key_env) is not set (or empty)"
                named = f"its key variable {up.api_key_env} is not set (or empty)"
                raise UpstreamFailure(arm.name, message, "config", logged=named)
            headers["authorization"] = f"Bearer {key}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        url = up.base_url.rstrip("/") + "/chat/completions"
        data = orjson.dumps(body)
        measured.start = time.perf_counter()
        for attempt in (1, 2):
            pooled = Pooled()
            try:
                response = await self._client().post(
                    url,
                    data=data,
                    headers=headers,
                    timeout=timeout,
                    # A redirect is not followed: it would take the query (and, on the same
                    # origin, the key) elsewhere and pass back whatever answered there, an
                    # internal URL's body included. The arm's base_url must be where it answers.
                    allow_redirects=False,
                    trace_request_ctx=pooled,
                )
                break
            except TimeoutError:
                raise UpstreamFailure(
                    arm.name, f"no answer within {timeout_s:g} s", "timeout"
                ) from None
            except aiohttp.ClientError as e:
                # A kept-alive connection the upstream closed (its idle timeout) as this request
                # went out on it: sent again, once, on another connection, as the openai SDK
                # would. A failure on a new connection, or a second one, is the arm's.
                closed = isinstance(e, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
                if closed and pooled.reused and attempt == 1:
                    continue
                reason = f"connection failed ({type(e).__name__})"
                raise UpstreamFailure(arm.name, reason, "connection") from None
        if response.status >= 500:
            response.release()
            raise UpstreamFailure(arm.name, f"status {response.status}")
        if 300 <= response.status < 400:
            response.release()
            reason = f"status {response.status}, a redirect (not followed: set its base_url)"
            raise UpstreamFailure(arm.name, reason)
        if response.status in ARM_STATUSES:
            response.release()  # its body may quote the gateway's key, masked or not
            meaning, kind = ARM_STATUSES[response.status]
            wait = retry_after(response.headers) if kind == "rate_limit" else None
            reason = f"status {response.status}, {meaning}"
            raise UpstreamFailure(arm.name, reason, kind, retry_after_s=wait)
        return response

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def retry_after(headers: Mapping[str, str]) -> float | None:
    """How long an upstream asked to wait, in seconds, as the openai SDK reads it: OpenAI's
    ``retry-after-ms``, else ``Retry-After`` in seconds or as an HTTP date; None when it said
    nothing readable (a negative or non-finite number, a text)."""
    for name, unit in (("retry-after-ms", 1000), ("retry-after", 1)):
        given = headers.get(name, "").strip()
        try:
            seconds = float(given) / unit
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return min(seconds, MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # not an HTTP date (those are GMT): no time to wait for
        return None
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


@dataclass(slots=True)
class StreamMeter:
    """Splits an upstream's server-sent events as they come: forwards each whole event, takes
    the token counts from the usage event (dropped when the gateway, not the client, asked for
    it), notes an ``error`` event (the upstream failed mid-answer), and holds back the final
    ``[DONE]`` so the gateway records the call before the client sees the end. Lines may end in
    CR, LF or CRLF, as SSE allows (and the openai SDK reads): they are forwarded as LF."""

    measured: Measured
    drop_usage: bool
    pending: bytearray = field(default_factory=bytearray)
    done: bool = False
    error: str | None = None  # the message of the upstream's error event, when it sent one
    after_cr: bool = False  # the last piece ended in CR: an LF that starts the next ends no line

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of ``chunk`` (with what was pending) to forward now. An event that grows
        past ``MAX_EVENT_BYTES`` without ending is forwarded as it is: nothing the meter reads
        is that long, and an upstream must not make the gateway hold an unbounded event. Only
        the new bytes are searched for an event's end, so an event sent in many small pieces
        costs time in proportion to its size, not to its size squared. Nothing after ``[DONE]``
        is read or forwarded: the SDK reads no further."""
        if self.done:
            return b""
        if self.after_cr and chunk.startswith(b"\n"):
            chunk, self.after_cr = chunk[1:], False
        if chunk:
            self.after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        start = max(len(self.pending) - 1, 0)  # an end ("\n\n") may begin before chunk
        self.pending += chunk
        data = self.pending
        end = data.rfind(b"\n\n", start)
        if end < 0:
            if len(data) <= MAX_EVENT_BYTES:
                return b""
            self.pending = bytearray()
            return bytes(data)
        events = bytes(data[: end + 2])
        del data[: end + 2]
        if self.measured.first_token_s is None and (
            events.startswith(b"data") or b"\ndata" in events  # not a keep-alive comment
        ):
            self.measured.first_token_s = time.perf_counter() - self.measured.start
        if b'"usage"' not in events and b"[DONE]" not in events and b'"error"' not in events:
            return events
        out = []
        for event in events.split(b"\n\n"):
            if not event.strip():
                continue
            # LFs before the event end the lines of one passed on unended (past MAX_EVENT_BYTES):
            # they stay when the event does not
            ends = event[: len(event) - len(event.lstrip(b"\n"))]
            data_field = _data(event)
            if data_field is not None and data_field.startswith(b"[DONE]"):
                self.done = True  # as the openai SDK reads it
                out.append(ends)
                break
            data_obj = _json(data_field) if data_field is not None else None
            if isinstance(data_obj, dict) and data_obj.get("error"):
                self.error = _message(data_obj["error"])
            if isinstance(data_obj, dict) and data_obj.get("usage"):
                self.measured.usage(data_obj["usage"])
                if self.drop_usage and not data_obj.get("choices"):
                    out.append(ends)
                    continue
            out.append(event + b"\n\n")
        return b"".join(out)

    def finish(self) -> bytes:
        """What is left to forward once the upstream has ended: the held ``[DONE]``."""
        self.measured.total_s = time.perf_counter() - self.measured.start
        tail, self.pending = bytes(self.pending), bytearray()
        return DONE + b"\n\n" if self.done else tail


def _data(event: bytes) -> bytes | None:
    """An event's data (its ``data`` fields' values, joined by LF, as SSE reads them); None
    when it has no data field."""
    values = []
    for line in event.split(b"\n"):
        name, _, value = line.partition(b":")
        if name == b"data":
            values.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(values) if values else None


def _json(data: bytes) -> Any:
    """An event's ``data`` read as JSON when it may hold a usage or an error, else None."""
    if b'"usage"' not in data and b'"error"' not in data:
        return None
    return read_json(data)


def read_json(body: bytes) -> Any:
    """An upstream's JSON read as the openai SDK reads it (Python's ``json``, which httpx's
    ``Response.json`` calls), or None. orjson reads most, faster; what it refuses but the SDK
    reads is JSON all the same: a UTF-8 byte order mark, ``NaN`` or ``-Infinity`` (which
    Python's json writes, a vLLM logprob of -inf among them), an escaped lone surrogate
    (JavaScript's ``JSON.stringify`` of a text cut inside a pair)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _message(error: Any) -> str:
    """An error event's message for the log: quoted and cut short (it is an outside text)."""
    message = error.get("message") if isinstance(error, dict) else error
    return f"{message!r:.200}"
