"""A differential property of the gateway's streams: what the official openai SDK reads through
the gateway is what it reads from the upstream directly.

The upstream is a real HTTP server on loopback (``tests.upstreams.Scripted``) that writes an
event stream as SSE allows it, byte for byte, in pieces cut anywhere and flushed one by one. The
same SDK reads it twice: (a) from the upstream, (b) through a served gateway (uvicorn, real
Redis). The chunks it parses, and the error it raises, must be the same, but for what the README
says the gateway does differently (``expected``)."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.live import close_sdk_clients, sdk_client, serve
from tests.upstreams import BREAK, Break, Part, Script, Scripted, Scripts, scripted

__all__ = ["close_sdk_clients", "scripted", "serve"]  # the fixtures, imported

Serve = Callable[..., str]
Start = Callable[[Scripts], tuple[str, Scripted]]
KEY = "service-key-1"
HI: list[Any] = [{"role": "user", "content": "hi"}]
PAUSE_S = 0.002  # between pieces: each reaches the reader on its own, not merged with the next


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the stream as the upstream writes it, its ending blank line included."""

    raw: bytes
    usage: bool = False  # the usage event: sent when the request asks for it (or always)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the upstream sends for a request: its events, cut where ``cuts`` say, then an end
    (the chunked body ended, or the connection dropped)."""

    events: tuple[Event, ...]
    cuts: tuple[int, ...]
    usage_always: bool  # a provider that ignores stream_options and always sends its usage
    null_usage: bool  # asked for usage, it writes "usage": null in each other chunk (OpenAI)
    breaks: bool

    def script(self, request: Any) -> Script:
        options = request.get("stream_options") or {}
        asked = options.get("include_usage") is True
        raw = b"".join(
            _nulled(e.raw) if asked and self.null_usage and not e.usage else e.raw
            for e in self.events
            if not e.usage or asked or self.usage_always
        )
        bounds = sorted({0, len(raw), *(c % (len(raw) + 1) for c in self.cuts)})
        parts: list[Part] = []
        for a, b in itertools.pairwise(bounds):
            parts += [PAUSE_S, raw[a:b]]
        if self.breaks:  # at once after the last piece: the reader may have both at its next read
            parts.append(BREAK)
        return Script(tuple(parts))


def _nulled(raw: bytes) -> bytes:
    """A chunk as OpenAI writes it when asked for usage: ``"usage": null`` in it."""
    return raw.replace(b'"object":', b'"usage":null,"object":', 1)


def _chunk(text: str, index: int, last: bool) -> dict[str, Any]:
    delta = {"role": "assistant", "content": text} if index == 0 else {"content": text}
    choice = {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [choice]}  # fmt: skip


USAGE: dict[str, Any] = {
    "id": "c",
    "object": "chat.completion.chunk",
    "created": 0,
    "model": "m",
    "choices": [],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


@st.composite
def _json_lines(draw: st.DrawFn, payload: dict[str, Any]) -> list[str]:
    """``payload`` as JSON as writers write it (compact, spaced, indented, ASCII or not), over
    one or several data lines: split where the JSON has whitespace, read back joined by LF."""
    ascii_only = draw(st.booleans())
    indent = draw(st.sampled_from([None, None, 0, 1]))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")])) if indent is None else None
    text = json.dumps(payload, ensure_ascii=ascii_only, indent=indent, separators=separators)
    lines = text.split("\n")
    out = [lines[0]]
    for line in lines[1:]:  # each LF of the indented text: a new data line, or none
        if draw(st.booleans()):
            out.append(line)
        else:
            out[-1] += line
    return out


@st.composite
def _event(
    draw: st.DrawFn, payload: dict[str, Any] | None, name: str | None = None, ids: bool = False
) -> list[bytes]:
    """An event's lines (unended): its data lines (``[DONE]`` for None), with or without the
    space after ``data:``, and among them comments, an ``event:`` line, and with ``ids``, ``id``
    and ``retry`` lines."""
    data = ["[DONE]"] if payload is None else draw(_json_lines(payload))
    lines = [draw(st.sampled_from([b"data: ", b"data:"])) + d.encode() for d in data]
    more = [b"id: 7", b"retry: 900"] if ids else []
    extras = draw(st.lists(st.sampled_from([b": keep-alive", b":", *more]), max_size=2))
    if name is not None:
        extras.append(b"event: " + name.encode())
    for extra in extras:
        lines.insert(draw(st.integers(0, len(lines))), extra)
    return lines


@st.composite
def _ended(draw: st.DrawFn, lines: list[bytes]) -> bytes:
    """``lines`` each ended by CR, LF or CRLF, then the empty line that ends the event. After a
    CR, an LF alone would only complete a CRLF, not end the event."""
    endings = [draw(st.sampled_from([b"\n", b"\r", b"\r\n"])) for _ in lines]
    raw = b"".join(line + end for line, end in zip(lines, endings, strict=True))
    after_cr = endings[-1] == b"\r"
    return raw + draw(st.sampled_from([b"\r", b"\r\n"] if after_cr else [b"\n", b"\r", b"\r\n"]))


RARELY = st.sampled_from([False, False, False, True])  # a quarter of the time; shrinks to False


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    """An upstream's answer: content chunks, an error event somewhere, the usage event, keep-
    alive comments, ``[DONE]``, each optional, in pieces cut anywhere; maybe the connection
    dropped at the end."""
    texts = draw(st.lists(st.text(max_size=6), max_size=4))
    plan: list[tuple[dict[str, Any] | None, str | None, bool]] = [
        (_chunk(t, i, i == len(texts) - 1), draw(st.sampled_from([None, "message"])), False)
        for i, t in enumerate(texts)
    ]
    if draw(st.booleans()):
        plan.append((USAGE, None, True))
    elif texts != [] and draw(st.booleans()):  # usage in the last chunk, with its choices
        final = _chunk(texts[-1], len(texts) - 1, True)
        plan[-1] = ({**final, "usage": USAGE["usage"]}, plan[-1][1], False)
    if draw(RARELY):
        message = draw(st.sampled_from(["overloaded", "", "Rate limit: \u2028 try later"]))
        error = {"error": {"message": message, "type": "server_error", "code": None}}
        plan.insert(
            draw(st.integers(0, len(plan))), (error, draw(st.sampled_from([None, "error"])), False)
        )
    # An event without data (a keep-alive comment alone, an empty line more) is nothing to SSE,
    # nor to the SDK until an id is set: from then on the SDK (not as SSE) reads it as an event
    # of empty data, which it cannot parse. The gateway may pass such a stream on in a form that
    # SSE reads the same but the SDK does not (without the empty lines; without the id line of
    # a usage event it dropped): the SDK's failure on it is not the gateway's to reproduce. So
    # an answer has ids, or events without data, not both.
    ids = draw(st.booleans())
    events: list[Event] = []
    for payload, name, usage in plan:
        if not ids and draw(st.booleans()):
            events.append(Event(draw(_ended([b": keep-alive"]))))
        events.append(Event(draw(_ended(draw(_event(payload, name, ids)))), usage))
        if not ids and draw(RARELY):  # empty lines more than the one that ends it
            blank = st.sampled_from([b"\n", b"\r", b"\r\n"])
            events.append(Event(b"".join(draw(st.lists(blank, min_size=1, max_size=3)))))
    if draw(st.booleans()):
        events.append(Event(draw(_ended(draw(_event(None, None, ids))))))
        if draw(RARELY):  # what a provider writes after it: the SDK reads none
            after = _chunk("after [DONE]", 1, True) if draw(st.booleans()) else None
            lines = [b": bye"] if after is None else draw(_event(after))
            events.append(Event(draw(_ended(lines))))
    if events != [] and draw(RARELY):  # the last event left unended
        last = events[-1]
        events[-1] = Event(
            last.raw.rstrip(b"\r\n") + draw(st.sampled_from([b"", b"\n", b"\r"])), last.usage
        )
    cuts = draw(st.lists(st.integers(0, 10_000), max_size=10))
    return Answer(
        events=tuple(events),
        cuts=tuple(cuts),
        usage_always=draw(st.booleans()),
        null_usage=draw(st.booleans()),
        breaks=draw(RARELY),
    )


# What the SDK reads


@dataclass(frozen=True, slots=True)
class Read:
    """What the SDK made of a stream: the chunks it parsed, and what it raised (class, message)."""

    chunks: list[dict[str, Any]]
    raised: type[Exception] | None = None
    message: str | None = None


def _read(client: openai.OpenAI, asks_usage: bool) -> Read:
    chunks: list[dict[str, Any]] = []
    options: Any = {"include_usage": True} if asks_usage else openai.omit
    try:
        stream = client.chat.completions.create(
            model="m", messages=HI, stream=True, stream_options=options
        )
        for chunk in stream:
            chunks.append(chunk.model_dump())
    except openai.APIError as e:
        return Read(chunks, type(e), e.message)
    except Exception as e:  # what the SDK raises of a stream it cannot read: the same, or not
        return Read(chunks, type(e), str(e))
    return Read(chunks)


def expected(direct: Read, answer: Answer, asks_usage: bool) -> Read:
    """What the SDK should read through the gateway, from what it read from the upstream. The
    differences the README states, and only those:

    - a client that did not ask for the usage chunk does not get it, even from an upstream that
      sends it unasked (the gateway asked for it for itself: Gateway, What the gateway measures);
    - an empty answer (no byte before the body's end) is the arm's failure before the first
      byte: a 502, where the SDK reads an empty stream from the upstream (Streaming, fallback);
    - an upstream that breaks off mid-stream: where the SDK raises its connection error, the
      gateway ends the stream with its error event, which the SDK raises as ``APIError`` with
      the gateway's message (Streaming, fallback).

    Line endings the gateway normalises to LF, the events it forwards whole, and what an
    upstream adds because the gateway asked for usage (OpenAI's ``"usage": null`` in each other
    chunk, which the SDK parses as a chunk without usage) change nothing the SDK reads: no
    difference is allowed for them."""
    if not answer.events:  # the gateway's request (usage asked) had no byte in answer
        reason = "connection failed" if answer.breaks else "empty answer"
        return Read([], openai.InternalServerError, f"every upstream tried failed: m: {reason}")
    chunks = direct.chunks
    if not asks_usage:
        chunks = [c for c in chunks if not (c["usage"] and not c["choices"])]
    if direct.raised is openai.APIConnectionError and answer.breaks:
        return Read(chunks, openai.APIError, "the upstream of m broke off mid-answer")
    return Read(chunks, direct.raised, direct.message)


def _not_a_break(record: logging.LogRecord) -> bool:
    """uvicorn's log of the exception that drops the upstream's connection: said each time."""
    return not (record.exc_info and isinstance(record.exc_info[1], Break))


@pytest.fixture
def both(serve: Serve, scripted: Start) -> Iterator[tuple[Scripted, openai.OpenAI, openai.OpenAI]]:
    """The upstream (its script set per example), the SDK on it, and the SDK on a gateway whose
    one arm ``m`` it is. One of each for the whole test, not one an example."""
    url, upstream = scripted({})
    arms = [{"name": "m", "upstream": {"base_url": url, "model": "m"}}]
    base = serve(arms=orjson.dumps(arms).decode(), api_keys=KEY)
    logging.getLogger("uvicorn.error").addFilter(_not_a_break)
    with openai.OpenAI(base_url=url, api_key="upstream-key", max_retries=0) as direct:
        yield upstream, direct, sdk_client(base, KEY)
    logging.getLogger("uvicorn.error").removeFilter(_not_a_break)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(answers(), st.booleans())
def test_the_sdk_reads_through_the_gateway_what_it_reads_from_the_upstream(
    both: tuple[Scripted, openai.OpenAI, openai.OpenAI], answer: Answer, asks_usage: bool
) -> None:
    upstream, direct_client, gateway_client = both
    upstream.scripts["m"] = answer.script
    for what, there in [
        ("[DONE]", any(b"[DONE]" in e.raw for e in answer.events)),
        ("an error event", any(b'"error"' in e.raw for e in answer.events)),
        ("a usage event", any(e.usage for e in answer.events)),
        ("an id line", any(b"id: 7" in e.raw for e in answer.events)),
        ("a break", answer.breaks),
    ]:
        event(f"{what}: {there}")
    direct = _read(direct_client, asks_usage)
    through = _read(gateway_client, asks_usage)
    want = expected(direct, answer, asks_usage)
    assert through.chunks == want.chunks
    assert through.raised is want.raised, (through, direct)
    if want.raised in (openai.APIError, openai.InternalServerError):  # the gateway's message
        assert want.message is not None and want.message in (through.message or ""), through
    else:  # the upstream's error event's message, or what the SDK could not read
        assert through.message == want.message
