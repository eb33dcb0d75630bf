"""What a client sends and an error answer repeats: a bounded part of it, never the whole.

A 4xx that quotes a client's value whole lets a client have the service write back more than it
sent (an unknown field name twice, a gateway ``model`` in both ``error.message`` and ``detail``).
Each case here sends a value far larger than any message needs, over real HTTP to the app under
uvicorn on real Redis, and requires an answer of bounded size that still names the field at fault
and shows the start of the value.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest

from tests.live import serve
from tests.upstreams import ARMS, arm, arms_json

__all__ = ["serve"]  # the fixture, imported

Serve = Callable[..., str]
JSON = {"content-type": "application/json"}
HUGE = 1_000_000  # characters of a value sent in a body (the body limit is 1 MiB)
LONG = 60_000  # characters of one sent in a URL or a header (uvicorn takes about 65,000)
ANSWER_BYTES = 12_000  # the most an error answer may hold here, whatever was sent
ASK = [{"role": "user", "content": "hi"}]


def _unknown_fields(count: int) -> bytes:
    """``/choose`` with ``count`` unknown fields of a few characters: ``"ab":0`` each."""
    names = (f"{a}{b}{c}" for a in "abcdefghij" for b in "klmnopqrst" for c in "uvwxyz0123")
    fields = [f'"{name}":0' for _, name in zip(range(count), names, strict=False)]
    return ('{"query":"q",' + ",".join(fields) + "}").encode()


def _body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# (what, method, path, headers, body, the field the answer names, what the message shows)
CASES: list[tuple[str, str, str, dict[str, str], bytes, str, str]] = [
    (
        "an unknown field's name",
        "POST",
        "/choose",
        JSON,
        _body(query="q", **{"k" * HUGE: 1}),
        "k" * 64 + "... (cut from 1000000 characters)",
        "kkkk",
    ),
    (
        "many unknown fields",
        "POST",
        "/choose",
        JSON,
        _unknown_fields(1000),
        "aku",
        "aku: unknown field; akv: unknown field; akw: unknown field; akx: unknown field",
    ),
    (
        "an unknown field's name, to /reward",
        "POST",
        "/reward",
        JSON,
        _body(event_id="e", reward=1, **{"r" * HUGE: 1}),
        "r" * 64 + "... (cut from 1000000 characters)",
        "rrrr",
    ),
    (
        "a gateway model",
        "POST",
        "/v1/chat/completions",
        JSON,
        _body(model="m" * HUGE, messages=ASK),
        "model",
        "model 'mmmm",
    ),
    (
        "a model to /v1/models",
        "GET",
        "/v1/models/" + "m" * LONG,
        {},
        b"",
        "model",
        "model 'mmmm",
    ),
    (
        "a path under /v1",
        "GET",
        "/v1/" + "p" * LONG,
        {},
        b"",
        "",
        "GET /v1/pppp",
    ),
    (
        "a deployment in the query string",
        "GET",
        "/arms?deployment=" + "d" * LONG,
        {},
        b"",
        "deployment",
        "unknown deployment 'dddd",
    ),
    (
        "a content type",
        "POST",
        "/choose",
        {"content-type": "text/" + "x" * LONG},
        b"{}",
        "content-type",
        "got 'text/xxxx",
    ),
    (
        "a preference header",
        "POST",
        "/v1/chat/completions",
        JSON | {"x-bandit-preference": "p" * LONG},
        _body(model="auto", messages=ASK),
        "x-bandit-preference",
        "'pppp",
    ),
    (
        "a preference header's number",
        "POST",
        "/v1/chat/completions",
        JSON | {"x-bandit-preference": "accuracy=" + "9x" * (LONG // 2)},
        _body(model="auto", messages=ASK),
        "x-bandit-preference",
        "9x9x",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "field", "shown"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_an_error_repeats_a_bounded_part_of_what_the_client_sent(
    serve: Serve,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    field: str,
    shown: str,
) -> None:
    # Arms with an upstream, so that the gateway reads the request; none is called.
    base = serve(arms=arms_json(*(arm(name, "http://127.0.0.1:9/v1") for name in ARMS)))
    sent = len(path) + sum(map(len, headers.values())) + len(body)
    answer = httpx.request(method, base + path, headers=headers, content=body, timeout=60)
    assert 400 <= answer.status_code < 500, answer.text[:300]
    size = len(answer.content)
    assert size <= ANSWER_BYTES, f"sent {sent} bytes, answered {size}: {answer.text[:300]}"
    doc = answer.json()
    assert shown in doc["detail"], doc["detail"][:300]
    if path.startswith("/v1/"):  # the OpenAI SDK shows error.message, which is detail again
        assert doc["error"]["message"] == doc["detail"]
    if field:
        assert doc["field"] == field


def test_an_answer_lists_ten_errors_and_counts_the_rest(serve: Serve) -> None:
    base = serve()
    answer = httpx.post(f"{base}/choose", content=_unknown_fields(1000), headers=JSON)
    assert answer.status_code == 422
    messages = answer.json()["detail"].split("; ")
    assert messages[:2] == ["aku: unknown field", "akv: unknown field"]
    assert len(messages) == 11 and messages[-1] == "and 990 more"


def test_an_answer_of_ten_errors_lists_all_ten(serve: Serve) -> None:
    base = serve()
    answer = httpx.post(f"{base}/choose", content=_unknown_fields(10), headers=JSON)
    assert answer.status_code == 422
    messages = answer.json()["detail"].split("; ")
    assert len(messages) == 10 and messages[-1] == "ak3: unknown field", messages


def test_the_error_body_cuts_any_message_whatever_built_it() -> None:
    """The last cut, in ``error_body``, under every message: one built of the service's own
    words (an unknown arm's list of 64 arms of 64 characters is over 4,000) is cut there too."""
    from bandit_router.errors import DETAIL_CHARS
    from bandit_router.http.contract import FIELD_CHARS, error_body

    valid = ", ".join(f"{i:02d}" + "a" * 62 for i in range(64))
    doc = json.loads(error_body(f"unknown arm 'x'; valid: {valid}", "arms" * 1000))
    said = f"unknown arm 'x'; valid: {valid}"
    assert doc["detail"] == f"{said[:DETAIL_CHARS]}... (cut from {len(said)} characters)"
    assert doc["field"].startswith("arms" * (FIELD_CHARS // 4))
    assert len(doc["field"]) < FIELD_CHARS + 40
