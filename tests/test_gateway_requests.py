"""The gateway against valid but less common OpenAI requests, as apps send them through the
official SDK: content parts and images, system and developer messages, tool calls and tool
results, tools, n > 1, logprobs, structured output, fields OpenAI does not know, usage the
upstream leaves out, the models endpoints. For each: the upstream gets the request as sent
(``model`` aside), the router reads the user's words, the SDK parses the answer into its types,
and the parts recorded are right. The app under uvicorn, scripted upstreams on loopback speaking
OpenAI's protocol byte for byte (``tests.upstreams.Scripted``), real Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest
import redis
from pydantic import BaseModel

from tests.live import close_sdk_clients, final_parts, sdk_client, serve
from tests.upstreams import DONE, Script, Scripted, scripted

__all__ = ["close_sdk_clients", "scripted", "serve"]  # the fixtures, imported

Serve = Callable[..., str]
Start = Callable[[dict[str, Script]], tuple[str, Scripted]]
KEY = "service-key-1"
PRICE = 2.0  # USD per million tokens, in and out, for every arm here


def _json(answer: dict[str, Any]) -> Script:
    return Script((orjson.dumps(answer),), content_type="application/json")


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _completion(message: dict[str, Any], finish: str, usage: Any = None, n: int = 1) -> Script:
    answer: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1}
    choices = [
        {"index": i, "message": message, "finish_reason": finish, "logprobs": None}
        for i in range(n)
    ]
    answer |= {"model": "upstream-model", "choices": choices}
    if usage is not None:
        answer["usage"] = usage
    return _json(answer)


USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
TOOL_CALL = {
    "id": "call_7",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
TOOL_ANSWER = _completion(
    {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}, "tool_calls", USAGE, n=2
)
PLAIN = _completion({"role": "assistant", "content": "Sunny."}, "stop", USAGE)


def _gateway(serve: Serve, url: str, scripts: dict[str, Script], **overrides: Any) -> str:
    """The gateway with one arm a script, named as the script, its upstream model the same; the
    query text kept with each decision, so a test can read what the router read."""
    arms = [
        {"name": n, "usd_per_mtok": PRICE, "upstream": {"base_url": url, "model": n}}
        for n in scripts
    ]
    return serve(arms=orjson.dumps(arms).decode(), api_keys=KEY, store_query_text=True, **overrides)


def _query(redis_url: str, event_id: str) -> str:
    """The text the router read for an event (kept with its decision: store_query_text)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match="*:decision:" + event_id))
        assert len(keys) == 1
        value = client.get(keys[0])
    finally:
        client.close()
    assert isinstance(value, bytes)
    query: str = orjson.loads(value)["query"]
    return query


def _cost(usage: dict[str, int]) -> float:
    return PRICE * (usage["prompt_tokens"] + usage["completion_tokens"]) / 1e6


# A tool-calling turn, with every less common field an app sends


AGENT_TURN: list[Any] = [
    {"role": "developer", "content": "Answer in one line."},
    {"role": "system", "content": [{"type": "text", "text": "You know the weather."}]},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is the weather like"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            {"type": "text", "text": "in this city?"},
        ],
    },
    {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
    {"role": "tool", "tool_call_id": "call_7", "content": [{"type": "text", "text": "sunny"}]},
]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "the weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
        },
    }
]


def test_a_tool_calling_turn_goes_as_sent_and_comes_back_in_the_sdks_types(
    serve: Serve, scripted: Start, redis_url: str
) -> None:
    """The history ends in a tool result; the router reads the user's words (the text parts of
    the last user message, not the image, the instructions or the tool's output); every field is
    forwarded as the SDK sent it but ``model`` (the arm's upstream name) and ``metadata`` (the
    router's features); the answer's tool calls parse; latency and cost are recorded."""
    url, upstream = scripted({"tools": TOOL_ANSWER})
    base = _gateway(serve, url, {"tools": TOOL_ANSWER})
    sent: dict[str, Any] = {
        "messages": AGENT_TURN,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 3,
        "stop": ["\n\n", "END"],
        "seed": 7,
        "user": "user-42",
        "max_completion_tokens": 64,
        "temperature": 0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
        },
        "store": False,
    }
    unknown = {"top_k": 5, "repetition_penalty": 1.1, "chat_template_kwargs": {"x": [1, None]}}
    raw = sdk_client(base, KEY).chat.completions.with_raw_response.create(
        model="auto", metadata={"tier": "pro"}, extra_body=unknown, **sent
    )
    assert orjson.loads(upstream.bodies[-1]) == {"model": "tools", **sent, **unknown}
    completion = raw.parse()
    assert [c.finish_reason for c in completion.choices] == ["tool_calls", "tool_calls"]
    calls = completion.choices[0].message.tool_calls
    assert calls is not None and calls[0].type == "function"
    assert calls[0].function.name == "get_weather" and completion.choices[0].message.content is None
    event_id = raw.headers["x-bandit-event-id"]
    assert _query(redis_url, event_id) == "What is the weather like\nin this city?"
    parts = final_parts(base, event_id, KEY)
    assert set(parts) == {"latency_ms", "cost_usd"}
    assert parts["cost_usd"] == pytest.approx(_cost(USAGE))


def test_the_bodys_deployment_is_the_routers_and_not_forwarded(
    serve: Serve, scripted: Start
) -> None:
    """``deployment`` as ``/choose`` takes it, ``default`` here: read and taken out, as
    ``metadata`` is (it went to the upstream, which OpenAI refuses as an unknown argument)."""
    url, upstream = scripted({"plain": PLAIN})
    base = _gateway(serve, url, {"plain": PLAIN})
    messages: list[Any] = [{"role": "user", "content": "Weather?"}]
    sdk_client(base, KEY).chat.completions.create(
        model="auto", messages=messages, extra_body={"deployment": "default"}
    )
    assert orjson.loads(upstream.bodies[-1]) == {"model": "plain", "messages": messages}


def test_the_apps_headers_and_query_stay_with_the_gateway(serve: Serve, scripted: Start) -> None:
    """What the SDK's ``extra_headers`` add, and its own headers (the service key in
    ``Authorization`` above all), never reach the upstream: it gets the body, its content type
    and ``Accept-Encoding: identity`` (and the arm's key, none here). The URL it is sent to is
    the arm's ``base_url`` and ``/chat/completions``, whatever query the app added."""
    url, upstream = scripted({"plain": PLAIN})
    base = _gateway(serve, url, {"plain": PLAIN})
    sdk_client(base, KEY).chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Weather?"}],
        extra_headers={"OpenAI-Beta": "assistants=v2", "HTTP-Referer": "https://app.example"},
        extra_query={"api-version": "2024-10-21"},
    )
    sent = upstream.headers[-1]
    assert set(sent) <= {b"host", b"content-type", b"content-length", b"accept", b"accept-encoding"}
    assert (sent[b"content-type"], sent[b"accept-encoding"]) == (b"application/json", b"identity")


def _chunk(choices: list[Any], usage: Any = None) -> bytes:
    """An OpenAI stream chunk as OpenAI sends it with include_usage: ``usage`` null but in the
    last."""
    data = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    return _event({**data, "choices": choices, "usage": usage})


def _delta(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}


STREAM_USAGE = {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}


def _call(index: int, arguments: str, call_id: str | None = None, name: str = "") -> Any:
    """A tool call's delta, as OpenAI streams one: its head (id, name), then its arguments in
    pieces. The first call's head comes with the message's role and a null content."""
    if call_id is None:
        return _delta({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
    function = {"name": name, "arguments": arguments}
    call = {"index": index, "id": call_id, "type": "function", "function": function}
    head = {"role": "assistant", "content": None} if index == 0 else {}
    return _delta({**head, "tool_calls": [call]})


TOOL_STREAM = Script(
    (
        _chunk([_call(0, "", "call_1", "get_weather")]),
        _chunk([_call(0, '{"city": ')]),
        _chunk([_call(0, '"usage"}')]),  # reads like a usage: the meter must not take it for one
        _chunk([_call(1, "{}", "call_2", "get_time")]),
        _chunk([_delta({}, "tool_calls")]),
        _chunk([], STREAM_USAGE),
        DONE,
    )
)


@pytest.mark.parametrize("client_usage", [False, True])
def test_streamed_tool_calls_reach_the_sdks_stream_helper_whole(
    serve: Serve, scripted: Start, client_usage: bool
) -> None:
    """Tool call deltas pass through as they came; the usage chunk (``choices`` empty) reaches
    the client only when it asked for it, and its counts are recorded as the cost either way."""
    url, upstream = scripted({"tools": TOOL_STREAM})
    base = _gateway(serve, url, {"tools": TOOL_STREAM})
    # the client's other stream options go as sent, beside the usage the gateway asks for
    asked = {"include_usage": True, "include_obfuscation": False}
    options: Any = {"stream_options": asked} if client_usage else {}
    with sdk_client(base, KEY).chat.completions.with_streaming_response.create(
        model="auto", messages=AGENT_TURN, tools=TOOLS, stream=True, **options
    ) as response:
        event_id = response.headers["x-bandit-event-id"]
        chunks = list(response.parse())
    forwarded = orjson.loads(upstream.bodies[-1])
    assert forwarded["stream_options"] == (asked if client_usage else {"include_usage": True})
    assert forwarded["tools"] == TOOLS
    assert len(chunks) == 5 + client_usage
    assert [c.usage is not None for c in chunks] == [False] * 5 + [True] * client_usage
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    arguments = "".join(d.function.arguments or "" for d in deltas if d.index == 0 and d.function)
    assert arguments == '{"city": "usage"}'
    assert chunks[4].choices[0].finish_reason == "tool_calls"
    assert final_parts(base, event_id, KEY)["cost_usd"] == pytest.approx(_cost(STREAM_USAGE))

    # The SDK's own stream helper puts the calls back together.
    with sdk_client(base, KEY).chat.completions.stream(
        model="auto", messages=AGENT_TURN, tools=TOOLS, **options
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name) for c in calls] == [
        ("call_1", "get_weather"),
        ("call_2", "get_time"),
    ]


def test_n_choices_streamed_with_logprobs_pass_through(serve: Serve, scripted: Start) -> None:
    logprobs = {"content": [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]}
    script = Script(
        (
            _chunk([{**_delta({"role": "assistant", "content": "a"}), "logprobs": logprobs}]),
            _chunk([_delta({"role": "assistant", "content": "b"}, index=1)]),
            _chunk([_delta({}, "stop"), _delta({}, "length", index=1)]),
            _chunk([], STREAM_USAGE),
            DONE,
        )
    )
    url, _ = scripted({"m": script})
    base = _gateway(serve, url, {"m": script})
    with sdk_client(base, KEY).chat.completions.with_streaming_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], n=2, logprobs=True, stream=True
    ) as response:
        event_id = response.headers["x-bandit-event-id"]
        chunks = list(response.parse())
    texts = {c.choices[0].index: c.choices[0].delta.content for c in chunks[:2]}
    assert texts == {0: "a", 1: "b"}
    first = chunks[0].choices[0].logprobs
    assert first is not None and first.content is not None and first.content[0].logprob == -0.1
    assert [c.finish_reason for c in chunks[2].choices] == ["stop", "length"]
    assert final_parts(base, event_id, KEY)["cost_usd"] == pytest.approx(_cost(STREAM_USAGE))


def test_cookies_an_upstream_sets_are_not_sent_back(serve: Serve, scripted: Start) -> None:
    """The gateway calls upstreams for every client: a cookie one answer set (a provider's load
    balancer or bot filter sets them) must not ride along with the next client's request, nor
    pile up in the process."""
    script = Script(PLAIN.parts, content_type=PLAIN.content_type, headers=(COOKIE,))
    url, upstream = scripted({"m": script})
    # by name, not address: a cookie jar ignores the cookies of an IP address
    base = _gateway(serve, url.replace("127.0.0.1", "localhost"), {"m": script})
    client = sdk_client(base, KEY)
    for _ in range(2):
        client.chat.completions.create(model="m", messages=HELLO)
    assert upstream.requests == 2
    assert [h.get(b"cookie") for h in upstream.headers] == [None, None]


COOKIE = ("set-cookie", "session=abc123; Path=/; Max-Age=3600")


class Weather(BaseModel):
    city: str
    sky: str


def test_structured_output_parses_into_the_apps_model(serve: Serve, scripted: Start) -> None:
    """``chat.completions.parse`` sends a json_schema response format built from a pydantic
    model and parses the answer's content into it."""
    content = '{"city": "Paris", "sky": "clear"}'
    script = _completion({"role": "assistant", "content": content}, "stop", USAGE)
    url, upstream = scripted({"m": script})
    base = _gateway(serve, url, {"m": script})
    completion = sdk_client(base, KEY).chat.completions.parse(
        model="auto", messages=[{"role": "user", "content": "weather?"}], response_format=Weather
    )
    assert completion.choices[0].message.parsed == Weather(city="Paris", sky="clear")
    format_sent = orjson.loads(upstream.bodies[-1])["response_format"]
    assert format_sent["type"] == "json_schema" and format_sent["json_schema"]["name"] == "Weather"


# What the router reads


HELLO: list[Any] = [{"role": "user", "content": "hi"}]
IMAGE: Any = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


@pytest.mark.parametrize(
    ("messages", "query"),
    [
        # an answer to continue: the last user message is not the last message
        (
            [{"role": "user", "content": "Write a haiku"}, {"role": "assistant", "content": "Old"}],
            "Write a haiku",
        ),
        # a turn of an image alone: the user's words before it
        (
            [
                {"role": "user", "content": "I will send you photos of cats"},
                {"role": "assistant", "content": "Please do."},
                {"role": "user", "content": [IMAGE]},
            ],
            "I will send you photos of cats",
        ),
        # no user text at all: the instructions
        (
            [
                {"role": "system", "content": "Describe images in French."},
                {"role": "user", "content": [IMAGE]},
            ],
            "Describe images in French.",
        ),
        ([{"role": "developer", "content": [{"type": "text", "text": "A joke"}]}], "A joke"),
    ],
)
def test_the_router_reads_the_users_words_wherever_they_are(
    serve: Serve, scripted: Start, redis_url: str, messages: list[Any], query: str
) -> None:
    url, upstream = scripted({"m": PLAIN})
    base = _gateway(serve, url, {"m": PLAIN})
    raw = sdk_client(base, KEY).chat.completions.with_raw_response.create(
        model="auto", messages=messages
    )
    assert raw.parse().choices[0].message.content == "Sunny."
    assert _query(redis_url, raw.headers["x-bandit-event-id"]) == query
    assert orjson.loads(upstream.bodies[-1])["messages"] == messages


def test_a_request_with_no_text_to_read_is_refused_naming_messages(
    serve: Serve, scripted: Start
) -> None:
    url, upstream = scripted({"m": PLAIN})
    base = _gateway(serve, url, {"m": PLAIN})
    with pytest.raises(openai.BadRequestError) as refused:
        sdk_client(base, KEY).chat.completions.create(
            model="auto",
            messages=[
                {"role": "user", "content": [IMAGE]},
                {"role": "assistant", "content": "A cat."},
            ],
        )
    assert refused.value.param == "messages"
    assert "no user, system or developer message has text content" in refused.value.message
    assert upstream.requests == 0


def test_stream_none_is_a_request_not_streamed(serve: Serve, scripted: Start) -> None:
    """The SDK's types allow ``stream=None`` and send it as ``"stream": null``, which OpenAI
    reads as false: answered, not refused, and forwarded as sent."""
    url, upstream = scripted({"m": PLAIN})
    base = _gateway(serve, url, {"m": PLAIN})
    completion = sdk_client(base, KEY).chat.completions.create(
        model="auto", messages=HELLO, stream=None
    )
    assert completion.choices[0].message.content == "Sunny."
    assert orjson.loads(upstream.bodies[-1])["stream"] is None


# Usage left out


@pytest.mark.parametrize(
    ("usage", "cost"),
    [
        (None, None),  # no usage at all: latency only
        ({"prompt_tokens": 120, "total_tokens": 150}, _cost(USAGE)),  # the output from the total
        ({"prompt_tokens": 120}, None),  # nothing to count the output from
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_usage_left_out_or_in_part(
    serve: Serve,
    scripted: Start,
    usage: dict[str, int] | None,
    cost: float | None,
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if stream:
        end = (_chunk([], usage),) if usage is not None else ()
        script = Script((_chunk([_delta({"content": "Sunny."}, "stop")]), *end, DONE))
    else:
        script = _completion({"role": "assistant", "content": "Sunny."}, "stop", usage)
    url, _ = scripted({"m": script})
    base = _gateway(serve, url, {"m": script})
    for _ in range(2):
        with sdk_client(base, KEY).chat.completions.with_streaming_response.create(
            model="auto", messages=HELLO, stream=stream
        ) as response:
            event_id = response.headers["x-bandit-event-id"]
            answer = list(response.parse()) if stream else [response.parse()]
        assert answer
        parts = final_parts(base, event_id, KEY)
        assert parts.get("cost_usd") == (None if cost is None else pytest.approx(cost))
        assert "latency_ms" in parts
    said = [m for m in caplog.messages if "answered without a usage object" in m]
    assert len(said) == (1 if usage is None else 0)  # once per arm, not per call


# The models


def test_models_list_and_retrieve(serve: Serve, scripted: Start) -> None:
    scripts = {"org/model-a": PLAIN, "b": PLAIN}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts)
    client = sdk_client(base, KEY)
    assert [m.id for m in client.models.list()] == ["auto", "org/model-a", "b"]
    for name in ("auto", "org/model-a", "b"):  # a slash in a name: the SDK sends it as %2F
        model = client.models.retrieve(name)
        assert (model.id, model.object, model.owned_by) == (name, "model", "bandit-router")
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert "'gpt-4o' does not exist here; valid: auto, org/model-a, b" in missing.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.retrieve("b")


def test_without_upstreams_no_model_is_retrieved(serve: Serve) -> None:
    base = serve(api_keys=KEY)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk_client(base, KEY).models.retrieve("auto")
    assert "no arm has an upstream" in missing.value.message


# Errors answered before the gateway's routes


def test_a_body_over_the_limit_is_a_413_the_sdk_says_in_words(
    serve: Serve, scripted: Start
) -> None:
    """A base64 image counts toward BANDIT_MAX_BODY_BYTES: the SDK's exception names it."""
    url, upstream = scripted({"m": PLAIN})
    base = _gateway(serve, url, {"m": PLAIN}, max_body_bytes=16_384)
    picture: Any = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + "A" * 20_000},
    }
    with pytest.raises(openai.APIStatusError) as refused:
        sdk_client(base, KEY).chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, picture]}],
        )
    assert refused.value.status_code == 413 and refused.value.param == "body"
    assert "over the limit of 16384 bytes (BANDIT_MAX_BODY_BYTES)" in refused.value.message
    assert upstream.requests == 0


def test_an_endpoint_the_gateway_does_not_serve_is_a_404_the_sdk_says_in_words(
    serve: Serve, scripted: Start
) -> None:
    url, _ = scripted({"m": PLAIN})
    base = _gateway(serve, url, {"m": PLAIN})
    client = sdk_client(base, KEY)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="auto", input="hi")
    assert "POST /v1/embeddings" in missing.value.message
    assert "the gateway serves POST /v1/chat/completions" in missing.value.message
    assert missing.value.response.json()["field"] == "path"  # as the routing API's 404 says
    # The routing API's own errors keep their shape.
    assert httpx.get(f"{base}/nowhere").json()["field"] == "path"
