"""The gateway against hostile or broken input from both sides: a client body nested too deep or
holding numbers too large, and an upstream that answers with impossible token counts or far too
many bytes. The app under uvicorn, replay upstreams on loopback (rewritten where they misbehave),
real Redis, the official OpenAI SDK and httpx as clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from tests.live import serve
from tests.upstreams import ARMS, Upstream, arm, arms_json, upstream

__all__ = ["serve", "upstream"]  # the fixtures, imported

Serve = Callable[..., str]
Start = Callable[..., Upstream]
KEY = "service-key-1"
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


def _gateway(serve: Serve, url: str, **overrides: Any) -> str:
    return serve(arms=arms_json(*(arm(name, url) for name in ARMS)), api_keys=KEY, **overrides)


def _post(base: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions", content=body, headers=AUTH | headers, timeout=30
    )


def _decisions(base: str) -> int:
    count: int = httpx.get(f"{base}/stats").json()["decisions"]
    return count


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


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [
        ({"messages": [{"role": "user", "content": "  \n "}]}, {}, 422, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 101}]}, {}, 422, "messages"),
        ({"metadata": {f"k{i}": i for i in range(65)}}, {}, 422, "metadata"),
        ({"metadata": {"k" * 65: 1}}, {}, 422, "metadata"),
        ({"metadata": {"a": {"b": 1}}}, {}, 422, "metadata"),
        ({}, {"x-bandit-features": '{"a": {"b": 1}}'}, 422, "x-bandit-features"),
        ({}, {"x-bandit-features": '{"n": 1e400}'}, 422, "x-bandit-features"),
        ({}, {"x-bandit-features": "{not json"}, 422, "x-bandit-features"),
        (b'"metadata": {"n": 1e400}', {}, 422, "metadata"),  # read as infinity, as /choose does
        (b'"metadata": {"n": ' + b"9" * 400 + b"}", {}, 422, "metadata"),
        (b'"metadata": {"n": NaN}', {}, 422, "metadata"),
        (b'"metadata": {"n": ' + b"9" * 5000 + b"}", {}, 400, "body"),  # too long to read
        (b'"temperature": 1e400', {}, 400, "body"),  # cannot be forwarded as sent
        (b'"x": ' + b"9" * 30, {}, 400, "body"),
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


def test_the_same_numbers_through_choose(serve: Serve, upstream: Start) -> None:
    """The gateway's answers above are /choose's for the same features."""
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url)
    for value, status in ((b"1e400", 422), (b"9" * 400, 422), (b"NaN", 422), (b"9" * 5000, 400)):
        body = b'{"query": "hi", "features": {"n": ' + value + b"}}"
        answer = httpx.post(f"{base}/choose", content=body, headers=AUTH)
        assert answer.status_code == status, answer.text
