"""A differential property of the gateway's answers not streamed, and of the errors it relays:
what the official openai SDK reads through the gateway is what it reads from the upstream.

The upstream is ``tests.upstreams.Scripted`` on loopback, as in ``test_gateway_differential``
(whose served gateway, ``both``, this reuses): it answers a chat completion in the ways an
OpenAI-compatible provider may, byte for byte: a 200 JSON completion of varied valid shapes
(several choices, tool calls, refusals, logprobs, usage or none, fields OpenAI does not know,
escapes and unicode, any whitespace, content types of any casing and charset), a 4xx or 5xx with
OpenAI's error body, another body or none, a body cut short (ended, or its connection broken),
chunked or with a content length, gzip-encoded (when asked, or always). The same SDK (no
retries) reads it twice, directly and through the gateway; what it parsed (``model_dump()``) or
raised (class, status, message, body) must be the same, but for what the README says the
gateway does differently (``expected``)."""

from __future__ import annotations

import gzip
import itertools
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pydantic
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from bandit_router.service.upstream import ARM_STATUSES
from tests.live import close_sdk_clients, serve
from tests.test_gateway_differential import HI, RARELY, both
from tests.upstreams import BREAK, Part, Script, Scripted, scripted

__all__ = ["both", "close_sdk_clients", "scripted", "serve"]  # the fixtures, imported

Both = tuple[Scripted, openai.OpenAI, openai.OpenAI]
TEXT = st.text(max_size=8)  # any code point but a surrogate, as a model writes text


# What the upstream answers


@st.composite
def _logprobs(draw: st.DrawFn) -> dict[str, Any] | None:
    """A choice's logprobs: null, or OpenAI's, whose logprob may be ``-Infinity`` (what vLLM
    wrote for a token of probability 0, as Python's json writes -inf)."""
    if draw(st.booleans()):
        return None
    content = []
    for token in draw(st.lists(TEXT, max_size=2)):
        logprob = float("-inf") if draw(RARELY) else draw(st.floats(-30, 0))
        entry = {"token": token, "logprob": logprob, "bytes": list(token.encode())}
        content.append({**entry, "top_logprobs": [entry] if draw(st.booleans()) else []})
    return {"content": content, "refusal": None}


@st.composite
def _message(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | TEXT)}
    if draw(st.booleans()):
        message["refusal"] = draw(st.none() | TEXT)
    if draw(RARELY):
        arguments = json.dumps({"city": draw(TEXT)}, ensure_ascii=draw(st.booleans()))
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": arguments},
        }
        message["tool_calls"] = [call] * draw(st.integers(1, 2))
    if draw(RARELY):  # what providers add: DeepSeek's reasoning, OpenAI's annotations
        message[draw(st.sampled_from(["reasoning_content", "annotations"]))] = draw(TEXT)
    return message


@st.composite
def completions(draw: st.DrawFn) -> Any:
    """A chat completion as providers write one, or (rarely) another JSON value."""
    choices = [
        {
            "index": i,
            "message": draw(_message()),
            "finish_reason": draw(st.sampled_from(["stop", "length", "tool_calls", None])),
            "logprobs": draw(_logprobs()),
        }
        for i in range(draw(st.integers(1, 3)))
    ]
    for choice in choices:
        if choice["logprobs"] is None and draw(st.booleans()):
            del choice["logprobs"]
    answer: dict[str, Any] = {
        "id": draw(st.sampled_from(["chatcmpl-1", "", "gen-\u00e9"])),
        "object": "chat.completion",
        "created": draw(st.integers(0, 2**33)),
        "model": draw(st.sampled_from(["m", "meta-llama/Llama-2-70b-chat-hf"])),
        "choices": choices,
    }
    usage = draw(
        st.sampled_from(
            [
                "absent",
                None,
                {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                {"prompt_tokens": 3, "total_tokens": 5},
                {"prompt_tokens": "3", "completion_tokens": 2.5},
                {
                    "prompt_tokens": 3,
                    "completion_tokens": 2,
                    "total_tokens": 5,
                    "prompt_tokens_details": {"cached_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 1},
                },
            ]
        )
    )
    if usage != "absent":
        answer["usage"] = usage
    for name in draw(st.lists(st.sampled_from(["system_fingerprint", "service_tier", "x_groq"]))):
        answer[name] = {"id": draw(TEXT)} if name == "x_groq" else draw(TEXT)
    if draw(RARELY):  # a JS provider's text cut inside a surrogate pair, as JSON.stringify says
        answer["choices"][0]["message"]["content"] = "cut \ud83d"
    shape = draw(st.sampled_from(["completion"] * 12 + ["error at 200", "list", "string"]))
    if shape == "error at 200":  # OpenRouter's way with some failures
        return {"error": {"message": draw(TEXT), "code": 502}}
    return answer if shape == "completion" else [answer] if shape == "list" else "ok"


@st.composite
def _json_bytes(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` written as JSON as writers write it: compact, spaced or indented, ASCII or
    not, whitespace around it, rarely a byte order mark before it."""
    surrogate = "\\ud83d" in json.dumps(value)  # written escaped
    ascii_only = surrogate or draw(st.booleans())  # a lone surrogate only goes escaped
    indent = draw(st.sampled_from([None, None, 0, 2]))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")])) if indent is None else None
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent, separators=separators)
    space = st.sampled_from(["", "", " ", "\n", "\r\n", "\t"])
    raw = (draw(space) + text + draw(space)).encode()
    return (b"\xef\xbb\xbf" + raw) if draw(RARELY) else raw


@st.composite
def _error_body(draw: st.DrawFn) -> tuple[bytes, str]:
    """An error's body and content type: OpenAI's, another JSON, text, a page, or nothing."""
    message = draw(TEXT)
    kind = draw(st.sampled_from(["openai", "openai", "detail", "error string", "text", "empty"]))
    if kind == "openai":
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
        value: Any = {"error": error}
    elif kind == "detail":  # FastAPI's
        value = {"detail": message}
    elif kind == "error string":
        value = {"error": message}
    else:
        text = f"<html><body>{message}</body></html>" if kind == "text" else ""
        media = draw(st.sampled_from(["text/plain; charset=utf-8", "text/html"]))
        return text.encode(), media
    media = draw(st.sampled_from(["application/json", "application/json; charset=utf-8"]))
    return draw(_json_bytes(value)), media


@dataclass(frozen=True, slots=True)
class Answer:
    """What the upstream sends: a status, a body, how it is framed and encoded, and where it is
    cut short (``short``: the body's length sent, then ``end`` it or ``break`` the connection)."""

    status: int
    body: bytes
    content_type: str
    cuts: tuple[int, ...]
    content_length: bool  # framed by Content-Length, else chunked
    gzip: str  # never, asked (when the request accepts it), always (whatever it accepts)
    short: tuple[int, str] | None

    def gzipped(self, accepted: bytes) -> bool:
        return self.gzip == "always" or (self.gzip == "asked" and b"gzip" in accepted)

    def encoded(self, accepted: bytes) -> tuple[bytes, int, str]:
        """The body as sent to a request whose ``Accept-Encoding`` is ``accepted``, how much of
        it is sent, and how it ends."""
        body = gzip.compress(self.body, mtime=0) if self.gzipped(accepted) else self.body
        sent, end = (len(body), "end") if self.short is None else self.short
        sent = min(sent, len(body) - (end == "break"))  # a break leaves a byte unsent
        return (body[:sent] if end == "end" else body), max(sent, 0), end

    def broken(self, accepted: bytes) -> bool:
        """Whether the body breaks off before its end: an empty one framed by its length
        (nothing to leave unsent) is whole before its connection breaks."""
        body, sent, end = self.encoded(accepted)
        return end == "break" and (sent < len(body) or not self.content_length)

    def received(self, accepted: bytes) -> bytes:
        """The body a reader has of an answer that ended, decoded (what gzip it was sent cut
        short holds)."""
        body, _, _ = self.encoded(accepted)
        return zlib.decompressobj(wbits=31).decompress(body) if self.gzipped(accepted) else body

    def script(self, accepted: bytes) -> Script:
        """The answer to a request whose ``Accept-Encoding`` is ``accepted``: a body cut short
        but ended says so by its content length, if it has one."""
        body, sent, end = self.encoded(accepted)
        headers: list[tuple[str, str]] = []
        if self.gzipped(accepted):
            headers.append(("content-encoding", "gzip"))
        if self.content_length:
            headers.append(("content-length", str(len(body))))
        bounds = sorted({0, sent, *(c % (sent + 1) for c in self.cuts)})
        parts: list[Part] = [body[a:b] for a, b in itertools.pairwise(bounds)]
        if end == "break":
            parts.append(BREAK)
        return Script(tuple(parts), self.status, self.content_type, tuple(headers))


STATUSES = [200] * 6 + [400, 402, 408, 409, 413, 422, 401, 403, 404, 429, 500, 502, 503]


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    status = draw(st.sampled_from(STATUSES))
    if status == 200:
        body = draw(_json_bytes(draw(completions())))
        media = draw(
            st.sampled_from(
                [
                    "application/json",
                    "application/json; charset=utf-8",
                    "Application/JSON",
                    "application/json;charset=UTF-8",
                    "text/plain",
                ]
            )
        )
        if draw(RARELY):  # not JSON: a proxy's page, nothing
            body = draw(st.sampled_from([b"<html>Bad gateway</html>", b""]))
    else:
        body, media = draw(_error_body())
    encoding = draw(st.sampled_from(["never", "never", "asked", "always"]))
    short = None
    if draw(RARELY):
        # A body encoded for one request only, cut short and ended, is not the same answer
        # to the two (the SDK's bytes are gzip's, the gateway's not): nothing to compare.
        ends = ["break"] if encoding == "asked" else ["end", "break"]
        short = (draw(st.integers(0, max(len(body) - 1, 0))), draw(st.sampled_from(ends)))
    return Answer(
        status=status,
        body=body,
        content_type=media,
        cuts=tuple(draw(st.lists(st.integers(0, 10_000), max_size=4))),
        # nor one that breaks for one of them only: an empty body framed by its length is
        # whole before it breaks, its 20 bytes of gzip are not
        content_length=draw(st.booleans()) and not (encoding == "asked" and short is not None),
        gzip=encoding,
        short=short,
    )


# What the SDK reads


@dataclass(frozen=True, slots=True)
class Read:
    """What the SDK made of an answer: the completion it parsed (``model_dump()``, as its repr,
    so that a NaN compares equal), or what it raised: class, status, message, body."""

    parsed: str | None = None
    raised: type[Exception] | None = None
    status: int | None = None
    message: str | None = None
    body: Any = None


def _read(client: openai.OpenAI) -> Read:
    try:
        completion = client.chat.completions.create(model="m", messages=HI)
    except openai.APIStatusError as e:
        return Read(None, type(e), e.status_code, e.message, e.body)
    except Exception as e:  # what the SDK raises of an answer it cannot read: the same, or not
        return Read(None, type(e), None, str(e))
    if not isinstance(completion, pydantic.BaseModel):  # a JSON list, a text: as it came
        return Read(repr(completion))
    return Read(repr(completion.model_dump(warnings=False)))  # odd usage: no warning


def _arms_failure(reason: str) -> Read:
    """The gateway's 502 when its one arm failed (README, Gateway: Streaming, fallback, client
    errors: "When every try fails the answer is a 502 naming each arm and what happened to
    it"); the SDK raises a 5xx as ``InternalServerError``."""
    message = f"every upstream tried failed: m: {reason}"
    return Read(None, openai.InternalServerError, 502, message)


def _json_object(body: bytes) -> bool:
    """Whether ``body`` is what the SDK reads as JSON (``json.loads``) and an object."""
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


def expected(direct: Read, answer: Answer) -> Read:
    """What the SDK should read through the gateway, from what it read from the upstream. The
    differences the README states (Gateway: Streaming, fallback, client errors), and only those:

    - "An upstream that fails before the first byte of its answer is recorded as a failure of
      its arm: connection refused, a 5xx, ..., a 401, 402, 403, 404, 408, 409 or 429, ..., an
      empty answer, a 2xx in another form than asked (... not a JSON object otherwise, read as
      the openai SDK reads it ...), ... or one [a non-streamed answer or 4xx body] whose
      connection breaks before its end ... When every try fails the answer is a 502 naming
      each arm and what happened to it" (the only arm here, ``m``, named in the request: "A
      request naming an arm is not retried on another"); the reasons are ``UpstreamFailure``'s, in
      ``bandit_router.http.gateway._attempt`` and ``_read``;
    - "Any other 4xx from the upstream is the client's error: it passes through unchanged
      (status, body and content type ...)": the SDK reads the same error;
    - a 200 JSON object: "The answer comes back as the upstream sent it" (What the gateway reads
      and forwards): the SDK parses the same completion.

    The content type of a 200 answer (its casing, its charset), its framing (chunked or a
    length), where it is cut in pieces and its encoding ("one it encodes all the same (gzip,
    deflate) is decoded, as the SDK would", What the gateway reads and forwards) change nothing
    the SDK reads: no difference is allowed for them."""
    if answer.status == 429:  # "when every one was the upstream's rate limit (429), OpenAI's
        message = "every upstream tried failed: m: status 429"  # 429 instead"
        return Read(None, openai.RateLimitError, 429, message)
    if answer.status >= 500 or answer.status in ARM_STATUSES:
        return _arms_failure(f"status {answer.status}")
    if answer.broken(b"identity"):
        return _arms_failure("connection failed")
    if answer.status >= 400:
        return direct
    sent = answer.received(b"identity")
    if not sent:
        return _arms_failure("empty answer")
    if not _json_object(sent):
        return _arms_failure("answered something other than a JSON object")
    return direct


def _described(answer: Answer) -> Iterator[str]:
    yield f"status: {answer.status // 100}xx"
    yield f"gzip: {answer.gzip}"
    yield f"short: {answer.short and answer.short[1]}, broken: {answer.broken(b'identity')}"
    yield f"JSON object: {_json_object(answer.body)}"


def _ok(body: bytes, status: int = 200, encoding: str = "never") -> Answer:
    return Answer(status, body, "application/json", (), False, encoding, None)


SUNNY = (
    b'{"id":"c","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Sunny."},"finish_reason":"stop","logprobs":%s}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
)
LOGPROBS = b'{"content":[{"token":"S","logprob":-Infinity,"bytes":[83],"top_logprobs":[]}]}'
ERROR = b'{"error":{"message":"max_tokens is too large","type":"invalid_request_error"}}'


# The differences found, each a bug fixed (tests/test_gateway_hostile.py has a focused test of
# each): JSON orjson refuses but the SDK reads; gzip the upstream sends though asked for none;
# an empty answer said as "something other than a JSON object".
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(answers())
@example(_ok(b"\xef\xbb\xbf" + SUNNY % b"null"))
@example(_ok(SUNNY % LOGPROBS))
@example(_ok((SUNNY % b"null").replace(b"Sunny.", b"cut \\ud83d")))
@example(_ok(SUNNY % b"null", encoding="always"))
@example(_ok(ERROR, status=400, encoding="always"))
@example(_ok(b""))
@example(_ok(ERROR, status=429))
def test_the_sdk_reads_through_the_gateway_the_answer_it_reads_from_the_upstream(
    both: Both, answer: Answer
) -> None:
    upstream, direct_client, gateway_client = both
    upstream.scripts["m"] = lambda _: answer.script(
        upstream.headers[-1].get(b"accept-encoding", b"")
    )
    for what in _described(answer):
        event(what)
    direct = _read(direct_client)
    through = _read(gateway_client)
    want = expected(direct, answer)
    assert through.raised is want.raised, (through, direct)
    assert through.status == want.status, (through, direct)
    if want.status in (429, 502):  # the gateway's message; the SDK says the status before it
        assert want.message is not None and want.message in (through.message or ""), through
    else:
        assert (through.parsed, through.message, through.body) == (
            want.parsed,
            want.message,
            want.body,
        ), direct
