"""The gateway against hostile or broken input from both sides: a client body nested too deep or
holding numbers too large, and an upstream that answers with impossible token counts, far too
many bytes, JSON that orjson refuses but the SDK reads, an encoding it was not asked for, or
nothing. The app under uvicorn, replay and scripted upstreams on loopback (rewritten where they
misbehave), real Redis, the official OpenAI SDK and httpx as clients."""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest

from tests.live import final_parts, serve
from tests.upstreams import (
    ARMS,
    STALL,
    Script,
    Scripted,
    Upstream,
    arm,
    arms_json,
    rows,
    scripted,
    upstream,
)
from tests.upstreams import DONE as SSE_DONE
from tests.upstreams import chunk as sse_chunk

__all__ = ["scripted", "serve", "upstream"]  # the fixtures, imported

Serve = Callable[..., str]
Start = Callable[..., Upstream]
StartScripted = Callable[[dict[str, Script]], tuple[str, Scripted]]
KEY = "service-key-1"
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


def _gateway(serve: Serve, url: str, **overrides: Any) -> str:
    return serve(arms=arms_json(*(arm(name, url) for name in ARMS)), api_keys=KEY, **overrides)


def _ask(row: dict[str, Any]) -> list[Any]:
    return [{"role": "user", "content": row["query"]}]


def _post(base: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions", content=body, headers=AUTH | headers, timeout=30
    )


def _decisions(base: str) -> int:
    count: int = httpx.get(f"{base}/stats").json()["decisions"]
    return count


def _still_readable(base: str) -> None:
    """What the events left behind reads back: stats, metrics, the learner's health."""
    assert httpx.get(f"{base}/stats").status_code == 200
    assert httpx.get(f"{base}/metrics").status_code == 200
    assert httpx.get(f"{base}/healthz").status_code == 200


# A client's body


def _nested(levels: int) -> bytes:
    return (
        b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"x":'
        + b"[" * levels
        + b"]" * levels
        + b"}"
    )


def test_a_body_nested_too_deep_is_refused_before_any_decision(
    serve: Serve, upstream: Start
) -> None:
    url, replay = upstream(speed=1000)
    base = _gateway(serve, url)
    # Past /choose's limit (200 levels), below and above what orjson can write back (about 255).
    for levels in (230, 1000):
        refused = _post(base, _nested(levels))
        assert refused.status_code == 400, refused.text
        error = refused.json()
        assert error["field"] == error["error"]["param"] == "body"
        assert "recursion limit" in error["detail"]
    assert _decisions(base) == 0 and replay.requests == 0
    # Within the limit the body is forwarded as it came.
    assert _post(base, _nested(150)).status_code == 200
    assert replay.requests == 1


# Errors name what the client sent


HI: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [
        ({"messages": [{"role": "user", "content": "  \n "}]}, {}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 101}]}, {}, 400, "messages"),
        ({"metadata": {f"k{i}": i for i in range(65)}}, {}, 400, "metadata"),
        ({"metadata": {"k" * 65: 1}}, {}, 400, "metadata"),
        ({"metadata": {"a": {"b": 1}}}, {}, 400, "metadata"),
        # the gateway's own feature, from x-bandit-preference: it replaced the app's, unsaid
        ({"metadata": {"preference": "vip"}}, {}, 400, "metadata"),
        ({}, {"x-bandit-features": '{"preference": "vip"}'}, 400, "x-bandit-features"),
        ({}, {"x-bandit-features": '{"a": {"b": 1}}'}, 400, "x-bandit-features"),
        ({}, {"x-bandit-features": '{"n": 1e400}'}, 400, "x-bandit-features"),
        ({}, {"x-bandit-features": "{not json"}, 400, "x-bandit-features"),
        (b'"metadata": {"n": 1e400}', {}, 400, "metadata"),  # read as infinity, as /choose does
        (b'"metadata": {"n": ' + b"9" * 400 + b"}", {}, 400, "metadata"),
        (b'"metadata": {"n": NaN}', {}, 400, "metadata"),
        (b'"metadata": {"n": ' + b"9" * 5000 + b"}", {}, 400, "body"),  # too long to read
        (b'"temperature": 1e400', {}, 400, "body"),  # cannot be forwarded as sent
        (b'"x": ' + b"9" * 30, {}, 400, "body"),
        (b'"x": 18446744073709551616', {}, 400, "body"),  # 2^64
        (b'"x": [{"y": [1, 1e400]}]', {}, 400, "body"),  # however deep
        (b'"x": -9223372036854775809', {}, 400, "body"),  # -2^63 - 1
    ],
)
def test_errors_name_what_the_client_sent(
    serve: Serve,
    upstream: Start,
    body: dict[str, Any] | bytes,
    headers: dict[str, str],
    status: int,
    field: str,
) -> None:
    url, replay = upstream(speed=1000)
    base = _gateway(serve, url, max_query_chars=100)
    if isinstance(body, bytes):  # raw JSON members, beside a valid model and messages
        raw = b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], ' + body + b"}"
    else:
        raw = orjson.dumps({"model": "auto", "messages": HI, **body})
    refused = _post(base, raw, **headers)
    assert refused.status_code == status, refused.text
    error = refused.json()
    assert error["field"] == error["error"]["param"] == field, error
    assert field in error["detail"]
    assert _decisions(base) == 0 and replay.requests == 0


def test_numbers_that_can_be_written_back_are_forwarded(
    serve: Serve, scripted: StartScripted
) -> None:
    """Floats and the integers of 64 bits, signed or not, to their ends: forwarded as sent."""
    url, replay = scripted({"m": Script((orjson.dumps(SUNNY),), 200, "application/json", ())})
    arms = [{"name": "m", "upstream": {"base_url": url, "model": "m"}}]
    base = serve(arms=orjson.dumps(arms).decode(), api_keys=KEY)
    raw = (
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5,'
        b' "x": [18446744073709551615, -9223372036854775808, 0, -1.5e300]}'
    )
    answered = _post(base, raw)
    assert answered.status_code == 200, answered.text
    forwarded = orjson.loads(replay.bodies[-1])
    assert forwarded["temperature"] == 0.5
    assert forwarded["x"] == [2**64 - 1, -(2**63), 0, -1.5e300]


def test_the_same_numbers_through_choose(serve: Serve, upstream: Start) -> None:
    """The gateway's refusals above are /choose's for the same features (its 400, OpenAI's, is
    /choose's 422)."""
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url)
    for value, status in ((b"1e400", 422), (b"9" * 400, 422), (b"NaN", 422), (b"9" * 5000, 400)):
        body = b'{"query": "hi", "features": {"n": ' + value + b"}}"
        answer = httpx.post(f"{base}/choose", content=body, headers=AUTH)
        assert answer.status_code == status, answer.text


# An upstream's usage


def _usage(prompt: Any, completion: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def rewrite(data: dict[str, Any]) -> dict[str, Any]:
        if "usage" in data:
            data["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion}
        return data

    return rewrite


BAD_USAGE = [
    (-1_000_000, 5),
    (5, -1),
    (10**12, 5),  # beyond any context window
    (2**70, 5),  # beyond 64 bits: orjson reads it as a float
    (True, 5),
    (5.5, 3),
    ("5", 3),
    (None, 3),
]


@pytest.mark.parametrize(("prompt", "completion"), BAD_USAGE)
def test_impossible_usage_records_no_cost_and_the_answer_goes_through(
    serve: Serve, upstream: Start, caplog: pytest.LogCaptureFixture, prompt: Any, completion: Any
) -> None:
    url, _ = upstream(speed=1000, rewrite=_usage(prompt, completion))
    base = _gateway(serve, url)
    with caplog.at_level(logging.WARNING):
        raw = _post(base, orjson.dumps({"model": "llama2-7b", "messages": _ask(rows()[0])}))
    assert raw.status_code == 200, raw.text
    usage = raw.json()["usage"]  # the upstream's answer, as it came
    assert usage == {"prompt_tokens": prompt, "completion_tokens": completion}
    assert "upstream of arm llama2-7b answered an unusable usage" in caplog.text
    # Latency is ours and stands; the cost from those counts is not recorded.
    assert set(final_parts(base, raw.headers["x-bandit-event-id"], KEY)) == {"latency_ms"}
    _still_readable(base)


def test_an_upstream_whose_every_usage_is_unusable_is_said_once_a_period(
    serve: Serve, upstream: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider that always counts its tokens in strings: said at its first call, then at most
    every 10 s with the count of the others; not a line a call."""
    url, _ = upstream(speed=1000, rewrite=_usage("5", "3"))
    base = _gateway(serve, url)
    with caplog.at_level(logging.WARNING):
        for row in rows()[:4]:
            raw = _post(base, orjson.dumps({"model": "llama2-7b", "messages": _ask(row)}))
            assert raw.status_code == 200, raw.text
    said = [r for r in caplog.records if "answered an unusable usage" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]


@pytest.mark.parametrize("client_usage", [True, False])
def test_impossible_usage_in_a_stream_passes_every_event_and_done(
    serve: Serve, upstream: Start, caplog: pytest.LogCaptureFixture, client_usage: bool
) -> None:
    url, _ = upstream(speed=1000, rewrite=_usage(-5, -5))
    base = _gateway(serve, url)
    row = rows()[1]
    body: dict[str, Any] = {"model": "llama2-7b", "messages": _ask(row), "stream": True}
    if client_usage:
        body["stream_options"] = {"include_usage": True}
    with (
        caplog.at_level(logging.WARNING),
        httpx.stream(
            "POST", f"{base}/v1/chat/completions", content=orjson.dumps(body), headers=AUTH
        ) as response,
    ):
        assert response.status_code == 200
        event_id = response.headers["x-bandit-event-id"]
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    tokens = row["outcomes"]["llama2-7b"]["output_tokens"]
    assert len(events) == tokens + 1 + client_usage  # every token, the usage if asked, [DONE]
    if client_usage:
        assert '"usage":{"prompt_tokens":-5,"completion_tokens":-5}' in events[-2]
    assert "upstream of arm llama2-7b answered an unusable usage" in caplog.text
    assert set(final_parts(base, event_id, KEY)) == {"latency_ms"}
    _still_readable(base)


def test_the_sdk_reads_an_answer_whose_usage_was_unusable(serve: Serve, upstream: Start) -> None:
    url, _ = upstream(speed=1000, rewrite=_usage(-1_000_000, 5))
    base = _gateway(serve, url)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    try:
        completion = client.chat.completions.create(model="auto", messages=_ask(rows()[2]))
    finally:
        client.close()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens == -1_000_000


def test_a_usage_costing_beyond_the_bound_records_no_cost(
    serve: Serve, upstream: Start, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = upstream(speed=1000, rewrite=_usage(50_000_000, 5))  # counts in range; the price:
    arms = arms_json(arm("llama2-7b", url, usd_per_mtok_in=100.0))  # 5,000 USD, over 1,000
    base = serve(arms=arms, api_keys=KEY)
    with caplog.at_level(logging.WARNING):
        raw = _post(base, orjson.dumps({"model": "auto", "messages": _ask(rows()[0])}))
    assert raw.status_code == 200, raw.text
    assert "upstream of arm llama2-7b answered a usage costing 5000 USD" in caplog.text
    assert set(final_parts(base, raw.headers["x-bandit-event-id"], KEY)) == {"latency_ms"}


# An upstream's size


def _padded(size: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def rewrite(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "padding": "x" * size}

    return rewrite


def test_an_answer_over_the_size_limit_is_the_arms_failure(serve: Serve, upstream: Start) -> None:
    big, _ = upstream(speed=1000, rewrite=_padded(300_000))
    small, _ = upstream(speed=1000, rewrite=_padded(50_000))
    arms = arms_json(arm("llama2-7b", big), arm("llama2-13b", small))
    base = serve(arms=arms, api_keys=KEY, gateway_max_response_bytes=100_000, gateway_retries=0)
    ask = {"messages": _ask(rows()[0])}
    refused = _post(base, orjson.dumps({"model": "llama2-7b", **ask}))
    assert refused.status_code == 502, refused.text
    assert "llama2-7b: answer over 100000 bytes" in refused.json()["detail"]
    answered = _post(base, orjson.dumps({"model": "llama2-13b", **ask}))
    assert answered.status_code == 200 and len(answered.json()["padding"]) == 50_000
    metrics = httpx.get(f"{base}/metrics").text
    assert 'bandit_gateway_upstream_failures_total{arm="llama2-7b",kind="too_large"}' in metrics


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_answer_of_the_size_limit_is_taken_and_one_byte_more_is_not(
    serve: Serve, scripted: StartScripted, declared: bool
) -> None:
    """``BANDIT_GATEWAY_MAX_RESPONSE_BYTES`` is the largest answer taken, its length declared
    (``content-length``) or not (chunked); a byte more is the arm's failure."""
    body = orjson.dumps({**SUNNY, "padding": "x" * 2000})  # the limit is 1024 at least
    scripts = {}
    for name, sent in (("exact", body), ("over", body + b" ")):
        headers = (("content-length", str(len(sent))),) if declared else ()
        scripts[name] = Script((sent,), content_type="application/json", headers=headers)
    url, _ = scripted(scripts)
    arms = [{"name": n, "upstream": {"base_url": url, "model": n}} for n in scripts]
    base = serve(
        arms=orjson.dumps(arms).decode(),
        api_keys=KEY,
        gateway_max_response_bytes=len(body),
        gateway_retries=0,
    )
    taken = _post(base, orjson.dumps({"model": "exact", "messages": HI}))
    assert taken.status_code == 200 and taken.content == body, taken.text
    refused = _post(base, orjson.dumps({"model": "over", "messages": HI}))
    assert refused.status_code == 502, refused.text
    assert f"over: answer over {len(body)} bytes" in refused.json()["detail"]


def test_an_answer_declared_over_the_size_limit_is_refused_before_it_is_read(
    serve: Serve, scripted: StartScripted
) -> None:
    """A ``content-length`` over the limit is the arm's failure at once (``too_large``): the
    gateway neither reads up to the limit first nor waits on an upstream that then stalls."""
    declared = Script(
        (b'{"id": "c", "padding": "', STALL),
        content_type="application/json",
        headers=(("content-length", "10000000"),),
    )
    url, _ = scripted({"big": declared})
    arms = [{"name": "big", "upstream": {"base_url": url, "model": "big", "timeout_s": 30}}]
    base = serve(
        arms=orjson.dumps(arms).decode(),
        api_keys=KEY,
        gateway_max_response_bytes=100_000,
        gateway_retries=0,
    )
    began = time.monotonic()
    refused = _post(base, orjson.dumps({"model": "big", "messages": HI}))
    assert refused.status_code == 502, refused.text
    assert refused.json()["detail"].endswith(
        "big: answer over 100000 bytes (BANDIT_GATEWAY_MAX_RESPONSE_BYTES)"
    )
    assert time.monotonic() - began < 10  # not the arm's timeout_s
    metrics = httpx.get(f"{base}/metrics").text
    assert 'bandit_gateway_upstream_failures_total{arm="big",kind="too_large"} 1.0' in metrics


# What the openai SDK reads of an upstream's answer, it reads through the gateway


SUNNY: dict[str, Any] = {
    "id": "c",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Sunny."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
}


def _logprob(value: float) -> dict[str, Any]:
    """SUNNY with a token's logprob of ``value``."""
    token = {"token": "Sunny", "logprob": value, "bytes": [83], "top_logprobs": []}
    choice = {**SUNNY["choices"][0], "logprobs": {"content": [token], "refusal": None}}
    return {**SUNNY, "choices": [choice]}


def _cut(text: str) -> dict[str, Any]:
    choice = {**SUNNY["choices"][0], "message": {"role": "assistant", "content": text}}
    return {**SUNNY, "choices": [choice]}


def _both(serve: Serve, scripted: StartScripted, script: Script) -> tuple[str, list[openai.OpenAI]]:
    """A gateway whose one arm ``m`` (priced) is a scripted upstream answering ``script``; its
    base URL, and the SDK on the upstream and on the gateway."""
    url, _ = scripted({"m": script})
    arms = [{"name": "m", "usd_per_mtok": 1.0, "upstream": {"base_url": url, "model": "m"}}]
    base = serve(arms=orjson.dumps(arms).decode(), api_keys=KEY)
    clients = [
        openai.OpenAI(base_url=there, api_key=KEY, max_retries=0) for there in (url, f"{base}/v1")
    ]
    return base, clients


@pytest.mark.parametrize(
    "body",
    [
        b"\xef\xbb\xbf" + orjson.dumps(SUNNY),  # a byte order mark, as .NET writers put one
        json.dumps(_logprob(float("-inf"))).encode(),  # -Infinity, as Python's json writes it
        json.dumps(_logprob(float("nan"))).encode(),
        json.dumps(_cut("cut \ud83d")).encode(),  # a lone surrogate, escaped (JSON.stringify)
    ],
    ids=["bom", "-infinity", "nan", "lone-surrogate"],
)
def test_an_answer_the_sdk_reads_as_json_is_passed_on_not_failed(
    serve: Serve, scripted: StartScripted, body: bytes
) -> None:
    """JSON that orjson refuses but the SDK reads (Python's json) is an answer: before, the
    gateway called it "something other than a JSON object", the arm's failure (a 502, or
    another arm's answer), and recorded no cost."""
    base, (direct, through) = _both(serve, scripted, Script((body,), 200, "application/json"))
    try:
        raw = through.chat.completions.with_raw_response.create(model="m", messages=HI)
        want = direct.chat.completions.create(model="m", messages=HI)
    finally:
        direct.close()
        through.close()
    assert repr(raw.parse().model_dump()) == repr(want.model_dump())  # NaN as NaN
    parts = final_parts(base, raw.headers["x-bandit-event-id"], KEY)
    assert parts["cost_usd"] == pytest.approx(150 / 1e6)  # its usage was read


def test_an_empty_answer_not_streamed_is_said_and_counted_as_empty(
    serve: Serve, scripted: StartScripted
) -> None:
    """An empty body, as an empty stream is: "empty answer", kind ``empty`` (README, Metrics),
    not "something other than a JSON object" (``protocol``)."""
    base, (direct, through) = _both(serve, scripted, Script((), 200, "application/json"))
    direct.close()
    with through, pytest.raises(openai.InternalServerError) as failed:
        through.chat.completions.create(model="m", messages=HI)
    assert failed.value.status_code == 502
    assert failed.value.message.endswith("every upstream tried failed: m: empty answer")
    metrics = httpx.get(f"{base}/metrics").text
    assert 'bandit_gateway_upstream_failures_total{arm="m",kind="empty"} 1.0' in metrics


def _gzipped(body: bytes, status: int = 200, media: str = "application/json") -> Script:
    """An upstream that encodes its answer whatever the request accepts."""
    return Script((gzip.compress(body),), status, media, (("content-encoding", "gzip"),))


ERROR = {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}


@pytest.mark.parametrize("status", [200, 400])
def test_an_answer_encoded_though_asked_for_none_is_decoded(
    serve: Serve, scripted: StartScripted, status: int
) -> None:
    """An upstream that gzips its answer though the gateway asks for identity: its answer was
    read as sent, no JSON (a 502), and a 4xx body passed on as gzip's bytes, without the
    Content-Encoding that says so: an error no client could read."""
    body = orjson.dumps(SUNNY if status == 200 else ERROR)
    _, clients = _both(serve, scripted, _gzipped(body, status))
    reads: list[Any] = []
    for client in clients:
        try:
            reads.append(client.chat.completions.create(model="m", messages=HI).model_dump())
        except openai.APIStatusError as e:
            reads.append((type(e), e.status_code, e.message, e.body))
        finally:
            client.close()
    direct, through = reads
    assert through == direct
    assert "Sunny." in str(direct) if status == 200 else "max_tokens is too large" in str(direct)


def test_a_stream_encoded_though_asked_for_none_is_decoded(
    serve: Serve, scripted: StartScripted
) -> None:
    """The same of a stream: its events were passed on as gzip's bytes, which the SDK could
    not read (it raised ``UnicodeDecodeError``), and the call was recorded as the arm's
    success."""
    events = sse_chunk("Sunny.") + SSE_DONE
    _, clients = _both(serve, scripted, _gzipped(events, media="text/event-stream"))
    reads = []
    for client in clients:
        with client:
            stream = client.chat.completions.create(model="m", messages=HI, stream=True)
            reads.append([chunk.model_dump() for chunk in stream])
    direct, through = reads
    assert through == direct and direct[0]["choices"][0]["delta"]["content"] == "Sunny."


def test_an_encoded_answer_is_bounded_by_its_decoded_size(
    serve: Serve, scripted: StartScripted
) -> None:
    """``BANDIT_GATEWAY_MAX_RESPONSE_BYTES`` counts the bytes decoded: 30 MB of gzip's zeros,
    sent as 30 KB, are not held in memory but refused, the arm's failure (``too_large``)."""
    url, _ = scripted({"m": _gzipped(b" " * 30_000_000)})
    arms = [{"name": "m", "upstream": {"base_url": url, "model": "m"}}]
    base = serve(arms=orjson.dumps(arms).decode(), api_keys=KEY, gateway_max_response_bytes=100_000)
    refused = _post(base, orjson.dumps({"model": "m", "messages": HI}))
    assert refused.status_code == 502, refused.text
    assert "m: answer over 100000 bytes" in refused.json()["detail"]
    metrics = httpx.get(f"{base}/metrics").text
    assert 'bandit_gateway_upstream_failures_total{arm="m",kind="too_large"} 1.0' in metrics


ID = (("x-request-id", "req_8f3a2c"),)


@pytest.mark.parametrize(
    "script",
    [
        Script((orjson.dumps(SUNNY),), 200, "application/json", ID),
        Script((sse_chunk("Sunny."), SSE_DONE), headers=ID),
        Script((orjson.dumps(ERROR),), 400, "application/json", ID),
        Script((orjson.dumps(SUNNY),), 200, "application/json", (("x-request-id", "a\tb"),)),
        Script((orjson.dumps(SUNNY),), 200, "application/json", (("x-request-id", "r" * 201),)),
        Script((orjson.dumps(SUNNY),), 200, "application/json", (("x-request-id", "r" * 200),)),
        Script((orjson.dumps(SUNNY),), 200, "application/json", (("x-request-id", "r"),)),
        Script((orjson.dumps(SUNNY),), 200, "application/json", ()),
        Script((orjson.dumps(SUNNY),), 200, "application/json", (("x-request-id", "req_\u8acb"),)),
    ],
    ids=[
        "answer",
        "stream",
        "4xx",
        "not-a-token",
        "too-long",
        "longest",
        "shortest",
        "none",
        "not-ascii",
    ],
)
def test_the_upstreams_request_id_reaches_the_sdk(
    serve: Serve, scripted: StartScripted, script: Script
) -> None:
    """The id a provider gives its call (the SDK's ``_request_id``, ``request_id`` of its
    errors) is the client's through the gateway as it is directly; it was dropped with the
    upstream's other headers. One that is not a short printable token is not passed on."""
    stream = script.content_type == "text/event-stream"
    _, clients = _both(serve, scripted, script)
    ids = []
    for client in clients:
        with client:
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="m", messages=HI, stream=stream
                )
                ids.append(raw.headers.get("x-request-id"))
                raw.parse()
            except openai.APIStatusError as e:
                assert e.status_code == script.status >= 400  # an answer passes, whatever its id
                ids.append(e.request_id)
    direct, through = ids
    assert direct == dict(script.headers).get("x-request-id")
    assert through == (direct if direct in ("req_8f3a2c", "r" * 200, "r") else None)
