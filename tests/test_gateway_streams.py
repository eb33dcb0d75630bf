"""The gateway's streaming path and its upstream calls against a provider that misbehaves, and
a client that leaves: the app under uvicorn, scripted upstreams on loopback speaking HTTP and
server-sent events byte for byte (``tests.upstreams.Scripted``), real Redis, the official OpenAI
SDK and httpx as clients."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx2 as httpx
import openai
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from bandit_router.http.gateway import _chunks, _unread
from bandit_router.service.upstream import MAX_EVENT_BYTES, Measured, StreamMeter, retry_after
from tests.conftest import wait_until
from tests.live import close_sdk_clients, sdk_client, serve
from tests.upstreams import BREAK, DONE, STALL, Script, Scripted, chunk, scripted

__all__ = ["close_sdk_clients", "scripted", "serve"]  # the fixtures, imported

Serve = Callable[..., str]
Start = Callable[[dict[str, Script]], tuple[str, Scripted]]
KEY = "service-key-1"
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
HI: list[Any] = [{"role": "user", "content": "hi"}]
USAGE = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
)
GOOD = Script((chunk("a"), chunk("b"), USAGE, DONE))


def _gateway(serve: Serve, url: str, scripts: dict[str, Script], **overrides: Any) -> str:
    """The gateway with one arm a script, named as the script, its upstream model the same."""
    arms = [{"name": n, "upstream": {"base_url": url, "model": n}} for n in scripts]
    return serve(arms=orjson.dumps(arms).decode(), api_keys=KEY, **overrides)


def _body(model: str, stream: bool) -> bytes:
    return orjson.dumps({"model": model, "messages": HI, "stream": stream})


def _failures(base: str) -> list[str]:
    text = httpx.get(f"{base}/metrics").text
    return [line for line in text.splitlines() if line.startswith("bandit_gateway_upstream_fail")]


# Redirects


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("stream", [False, True])
def test_a_redirect_is_not_followed(
    serve: Serve, scripted: Start, status: int, stream: bool
) -> None:
    """An upstream's redirect would send the query (a 307: the key too, on the same origin) to
    another address and pass back what answered there: it is the arm's failure instead."""
    elsewhere, target = scripted({"m": GOOD})
    moved = {"moved": Script((), status, "text/plain", (("location", elsewhere + "/x"),))}
    url, _ = scripted(moved | {"good": GOOD})
    base = _gateway(serve, url, moved | {"good": GOOD}, gateway_retries=0)
    refused = httpx.post(
        f"{base}/v1/chat/completions", content=_body("moved", stream), headers=AUTH
    )
    assert refused.status_code == 502, refused.text
    assert f"moved: status {status}, a redirect" in refused.json()["detail"]
    assert target.requests == 0
    assert 'bandit_gateway_upstream_failures_total{arm="moved",kind="status"} 1.0' in _failures(
        base
    )


# The upstream's 4xx: the arm's (its key, its model, its rate limit) or the client's


LEAKY = b'{"error": {"message": "Incorrect API key provided: sk-abc***xyz", "code": "invalid"}}'
ARM_4XX = {
    "keyless": Script((LEAKY,), 401, "application/json"),
    "barred": Script((LEAKY,), 403, "application/json"),
    "renamed": Script((b'{"error": {"message": "no such model"}}',), 404, "application/json"),
    "limited": Script((b'{"error": {"message": "slow down"}}',), 429, "application/json"),
}


def test_the_arms_4xx_go_to_another_arm_and_the_clients_pass_through(
    serve: Serve, scripted: Start
) -> None:
    """A refused key, a model the upstream lacks or its rate limit say nothing of the client's
    request: another arm answers, and what the upstream said of its key never reaches the
    client. A 400 is the client's: passed through."""
    url, _ = scripted(ARM_4XX | {"good": GOOD})
    base = _gateway(serve, url, ARM_4XX | {"good": GOOD}, gateway_retries=len(ARM_4XX))
    for _ in range(6):
        answer = httpx.post(
            f"{base}/v1/chat/completions", content=_body("auto", True), headers=AUTH
        )
        assert answer.status_code == 200 and answer.headers["x-bandit-arm"] == "good", answer.text
    failures = _failures(base)
    for name, kind in [("keyless", "config"), ("renamed", "config"), ("limited", "rate_limit")]:
        assert any(f'arm="{name}",kind="{kind}"' in line for line in failures), failures
    for name, status, answered in [("keyless", 401, 502), ("limited", 429, 429)]:
        alone = httpx.post(f"{base}/v1/chat/completions", content=_body(name, True), headers=AUTH)
        assert alone.status_code == answered and f"{name}: status {status}, " in alone.text
        assert "sk-abc" not in alone.text
    url, _ = scripted({"picky": Script((b'{"error": {"message": "bad messages"}}',), 400)})
    base = _gateway(serve, url, {"picky": GOOD})
    refused = httpx.post(f"{base}/v1/chat/completions", content=_body("picky", True), headers=AUTH)
    assert refused.status_code == 400 and refused.json() == {"error": {"message": "bad messages"}}
    assert _failures(base) == [] or all(line.endswith(" 0.0") for line in _failures(base))
    page = b"<html><script>alert(1)</script>bad messages</html>"
    url, _ = scripted({"html": Script((page,), 400, "text/html; charset=utf-8")})
    base = _gateway(serve, url, {"html": GOOD})
    refused = httpx.post(f"{base}/v1/chat/completions", content=_body("html", True), headers=AUTH)
    assert refused.status_code == 400 and refused.content == page  # as it came, but never run
    assert refused.headers["content-type"] == "text/html; charset=utf-8"
    assert refused.headers["x-content-type-options"] == "nosniff"
    assert refused.headers["content-security-policy"] == "default-src 'none'; sandbox"


SLOW_DOWN = b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}'
RATE_LIMITED = {
    "busy": Script((SLOW_DOWN,), 429, "application/json", (("retry-after", "3"),)),
    "busier": Script((SLOW_DOWN,), 429, "application/json", (("retry-after-ms", "1500"),)),
    "bare": Script((SLOW_DOWN,), 429, "application/json"),
    "busiest": Script((SLOW_DOWN,), 429, "application/json", (("retry-after", "5"),)),
    "down": Script((b"{}",), 503, "application/json"),
}


def test_every_arm_rate_limited_is_a_429_the_sdk_waits_out(serve: Serve, scripted: Start) -> None:
    """When every arm tried was at its rate limit the app gets OpenAI's 429, so the SDK raises
    ``RateLimitError`` (what apps catch to back off) and, retrying, waits as long as the
    upstreams asked: the shortest of their ``Retry-After`` (``retry-after-ms`` read too), in
    whole seconds. Answered as a 502 it was an ``InternalServerError``, which the SDK retried
    half a second later, into the same limits: another failure of each arm."""
    url, upstream = scripted(RATE_LIMITED)

    def gateway(*names: str) -> openai.OpenAI:
        base = _gateway(serve, url, {n: RATE_LIMITED[n] for n in names}, gateway_retries=1)
        return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)

    client = gateway("busy", "busier")
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="auto", messages=HI)
    assert limited.value.code == "rate_limit_exceeded" and limited.value.param == "model"
    for name in ("busy", "busier"):
        assert f"{name}: status 429, the upstream's rate limit" in limited.value.message
    assert limited.value.response.headers["retry-after"] == "2"  # 1.5 s, the shorter
    calls, began = upstream.requests, time.monotonic()
    with pytest.raises(openai.RateLimitError):
        client.with_options(max_retries=1).chat.completions.create(model="auto", messages=HI)
    assert time.monotonic() - began >= 2 and upstream.requests - calls == 4
    client.close()

    # One said nothing, or one was not tried (BANDIT_GATEWAY_RETRIES): when the gateway could
    # answer is not known, and the SDK's own backoff (half a second on) is the wait
    for arms in [("busy", "bare"), ("busy", "busier", "busiest")]:
        client = gateway(*arms)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="auto", messages=HI)
        assert "retry-after" not in limited.value.response.headers
        client.close()

    client = gateway("busy", "down")  # not every failure a rate limit: the gateway's 502
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="auto", messages=HI)
    assert failed.value.status_code == 502 and "retry-after" not in failed.value.response.headers
    client.close()


def test_arms_whose_settings_failed_are_not_retried_by_the_sdk(
    serve: Serve, scripted: Start
) -> None:
    """When every arm tried failed for its settings (a refused key, no such model, no credit
    left), the SDK's retries cannot help before the operator fixes them: the 502 says
    ``x-should-retry: false``, which the SDK obeys. Without it the SDK's default two retries
    called the upstream three times with the refused key, three decisions, three failures. A 5xx
    among them may pass: that 502 is retried as before."""
    scripts = {"keyless": ARM_4XX["keyless"], "renamed": ARM_4XX["renamed"]}
    down = {"down": Script((b"{}",), 503, "application/json")}
    url, upstream = scripted(scripts | down)
    base = _gateway(serve, url, scripts | down, gateway_retries=1)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=2)
    for model, calls, retried in [("keyless", 1, "false"), ("down", 3, None)]:
        before = upstream.requests
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model=model, messages=HI)
        assert upstream.requests - before == calls
        assert failed.value.response.headers.get("x-should-retry") == retried
    client.close()


def test_arms_that_failed_for_their_settings_and_for_a_5xx_leave_the_sdk_its_retries(
    serve: Serve, scripted: Start
) -> None:
    """One arm tried failed for its settings, the other with a 5xx: the 502 may pass, so it
    carries no ``x-should-retry: false``."""
    scripts = {"keyless": ARM_4XX["keyless"], "down": Script((b"{}",), 503, "application/json")}
    url, upstream = scripted(scripts)
    base = _gateway(serve, url, scripts, gateway_retries=1)
    refused = httpx.post(f"{base}/v1/chat/completions", content=_body("auto", False), headers=AUTH)
    assert refused.status_code == 502 and upstream.requests == 2, refused.text
    assert "x-should-retry" not in refused.headers


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # OpenAI's, read first
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date past: at once
        ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, 86_400.0),  # a day at most
        ({"retry-after": "1e400"}, None),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "later"}, None),
        ({}, None),
    ],
)
def test_an_upstreams_wait_is_read_as_the_sdk_reads_it(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert retry_after(headers) == seconds


CREDIT = b'{"error": {"message": "Insufficient credits: account acct_93 has $0.02 left"}}'
NOT_THE_REQUESTS = {
    "unpaid": (Script((CREDIT,), 402, "application/json"), "config"),
    "slow": (Script((b'{"error": {"message": "Your request timed out"}}',), 408), "timeout"),
    "locked": (Script((b'{"error": {"message": "lock timeout"}}',), 409), "status"),
}


def test_an_account_out_of_credit_and_the_statuses_the_sdk_retries_are_the_arms(
    serve: Serve, scripted: Start
) -> None:
    """A 402 (OpenRouter's: the gateway's account has no credit left) says something of the
    arm's settings, as a refused key does; a 408 or 409 is a request the upstream could not
    finish as sent (the SDK retries both unchanged): none is the client's error. Passed
    through, the app got the upstream's 402 with the account's balance, or the SDK retried a
    408 against the gateway, each retry a new decision, and the arm was never charged."""
    answer = b'{"id":"c","object":"chat.completion","created":0,"model":"good","choices":[]}'
    good = Script((answer,), content_type="application/json")
    scripts = {name: script for name, (script, _) in NOT_THE_REQUESTS.items()} | {"good": good}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts, gateway_retries=len(NOT_THE_REQUESTS))
    client = sdk_client(base, KEY)
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=HI)
        assert raw.headers["x-bandit-arm"] == "good" and raw.parse().model == "good"
    failures = _failures(base)
    for name, (_, kind) in NOT_THE_REQUESTS.items():
        assert any(f'arm="{name}",kind="{kind}"' in line for line in failures), failures
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model="unpaid", messages=HI)
    assert "unpaid: status 402, the upstream wants payment" in refused.value.message
    assert "acct_93" not in refused.value.response.text


# A client that stops reading


def test_a_client_that_reads_no_more_of_a_stream_is_let_go_after_the_send_timeout(
    serve: Serve, scripted: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn times no write: a client that stopped reading a long stream held its connection,
    the gateway's slot and the upstream's call as long as it liked. Once the transport's buffer
    stays full for BANDIT_SEND_TIMEOUT_S the connection is aborted: the upstream's call is
    left, the slot freed (one slot: the next call is answered), the log says it once."""
    long = Script((chunk("x" * 30_000),) * 700 + (STALL,))  # 21 MB, then nothing until left
    url, upstream = scripted({"long": long, "good": GOOD})
    base = _gateway(
        serve, url, {"long": long, "good": GOOD}, send_timeout_s=0.5, gateway_max_concurrency=1
    )
    host, port = base.removeprefix("http://").split(":")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            body = _body("long", True)
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b"authorization: Bearer %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (KEY.encode(), len(body), body)
            )
            wait_until(lambda: upstream.left == 1, 30, "the upstream call left")  # nothing read
        answer = httpx.post(
            f"{base}/v1/chat/completions", content=_body("good", True), headers=AUTH
        )
    assert answer.status_code == 200, answer.text
    said = [m for m in caplog.messages if "BANDIT_SEND_TIMEOUT_S" in m]
    assert len(said) == 1 and said[0].endswith(
        "closed: response not read for 0.5 s (BANDIT_SEND_TIMEOUT_S)"
    ), said


# A stream that breaks off, or errs


def _stats(base: str, arm: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{base}/stats").json()["arms"][arm]
    return stats


def _ended(base: str) -> tuple[int, int]:
    """The events whose windows closed: rewarded, and skipped with no reward."""
    stats = httpx.get(f"{base}/stats").json()
    return stats["rewards_accepted"], stats["skipped_no_reward"]


def test_a_stream_that_stalls_midway_ends_in_an_error_the_sdk_raises(
    serve: Serve, scripted: Start
) -> None:
    """Not an answer cut short that reads as whole: the client's SDK raises, the upstream's
    connection is closed, and the call is the arm's failure (a zero outcome, final)."""
    scripts = {"stalls": Script((chunk("a"), chunk("b"), STALL))}
    url, app = scripted(scripts)
    arms = [{"name": "stalls", "upstream": {"base_url": url, "model": "stalls", "timeout_s": 1}}]
    base = serve(arms=orjson.dumps(arms).decode(), api_keys=KEY)
    texts: list[str | None] = []
    stream = sdk_client(base, KEY).chat.completions.create(model="stalls", messages=HI, stream=True)
    with pytest.raises(openai.APIError) as broke:
        texts.extend(c.choices[0].delta.content for c in stream)
    assert texts == ["a", "b"]
    assert "the upstream of stalls broke off mid-answer: timed out" in broke.value.message
    assert broke.value.type == "api_error"  # OpenAI's error event's shape, as the SDK reads it
    wait_until(lambda: app.left == 1, 20, "the upstream's connection to close")
    assert 'bandit_gateway_upstream_failures_total{arm="stalls",kind="midstream"} 1.0' in (
        _failures(base)
    )
    assert _stats(base, "stalls")["rewards"] == 1 and _stats(base, "stalls")["mean_reward"] == 0
    measured = httpx.get(f"{base}/metrics").text  # no answer's time: it has none
    assert 'bandit_gateway_upstream_seconds_count{arm="stalls",measure="total"}' not in measured


def test_a_failure_under_weights_without_accuracy_is_a_reward_of_zero(
    serve: Serve, scripted: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """The event's weights count no accuracy (a latency-only preference): its arm's failure is
    recorded as the reward 0 itself, learned, not an accuracy its weights would not count."""
    scripts = {"down": Script((b"{}",), 503, "application/json")}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts, gateway_retries=0)
    headers = {**AUTH, "x-bandit-preference": "latency=1"}
    refused = httpx.post(
        f"{base}/v1/chat/completions", content=_body("down", False), headers=headers
    )
    assert refused.status_code == 502, refused.text
    assert _stats(base, "down")["rewards"] == 1 and _stats(base, "down")["mean_reward"] == 0
    assert "not recorded" not in caplog.text


@pytest.mark.parametrize("end", [(), (0.05, BREAK)], ids=["ended", "broke"])
def test_an_error_event_is_one_failure_of_the_arm_however_the_answer_ends(
    serve: Serve, scripted: Start, end: tuple[Any, ...]
) -> None:
    """The upstream's error event is its failure, recorded once and not measured as an answer:
    neither the events after it, nor the body's end (no success), nor a break (it ends the
    client's answer in the gateway's error event) is a second failure."""
    error = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    scripts = {"errs": Script((chunk("a"), error, 0.05, chunk("b"), *end))}  # the SDK reads no "b"
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts)
    answer = httpx.post(f"{base}/v1/chat/completions", content=_body("errs", True), headers=AUTH)
    events = [e for e in answer.text.split("\n\n") if e]
    assert events[1] == error.decode().strip() and len(events) == 3 + bool(end), events
    if end:
        assert "the upstream of errs broke off mid-answer" in events[3]
    metrics = httpx.get(f"{base}/metrics").text
    assert 'bandit_gateway_upstream_failures_total{arm="errs",kind="midstream"} 1.0' in metrics
    assert 'bandit_gateway_upstream_seconds_count{arm="errs",measure="total"}' not in metrics


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_silent_after_its_headers_is_a_timeout_of_the_arm(
    serve: Serve, scripted: Start, stream: bool
) -> None:
    """Its headers came, then nothing (or half an answer, not streamed) for the arm's timeout_s:
    the arm's failure of kind ``timeout``, said "timed out", before the client's answer began
    (the gateway's 502), and its connection closed."""
    media = "text/event-stream" if stream else "application/json"
    parts = (STALL,) if stream else (b'{"id": "c", "choices": [', STALL)
    url, app = scripted({"silent": Script(parts, content_type=media)})
    arms = [{"name": "silent", "upstream": {"base_url": url, "model": "silent", "timeout_s": 1}}]
    base = serve(arms=orjson.dumps(arms).decode(), api_keys=KEY, gateway_retries=0)
    answer = httpx.post(
        f"{base}/v1/chat/completions", content=_body("silent", stream), headers=AUTH, timeout=30
    )
    assert answer.status_code == 502, answer.text
    assert answer.json()["detail"].endswith("silent: timed out"), answer.text
    wait_until(lambda: app.left == 1, 20, "the upstream's connection to close")
    failures = [line for line in _failures(base) if "_total" in line]
    assert failures == ['bandit_gateway_upstream_failures_total{arm="silent",kind="timeout"} 1.0']


def test_an_error_event_midway_is_the_arms_failure(
    serve: Serve, scripted: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream that sends OpenAI's error event after some chunks failed that call: not a
    success whose latency scores well because the answer stopped early."""
    error = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    scripts = {"errs": Script((chunk("a"), error)), "good": GOOD}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts)
    stream = sdk_client(base, KEY).chat.completions.create(model="errs", messages=HI, stream=True)
    with (
        caplog.at_level(logging.WARNING, logger="bandit_router"),
        pytest.raises(openai.APIError) as failed,
    ):
        list(stream)
    assert failed.value.message == "overloaded"  # the upstream's event, passed on as it came
    said = "upstream of arm errs sent an error event mid-stream: 'overloaded'"
    assert any(said in m for m in caplog.messages), caplog.messages
    assert _stats(base, "errs")["rewards"] == 1 and _stats(base, "errs")["mean_reward"] == 0
    assert 'bandit_gateway_upstream_failures_total{arm="errs",kind="midstream"} 1.0' in (
        _failures(base)
    )
    # A whole stream is still a success, measured.
    with sdk_client(base, KEY).chat.completions.with_streaming_response.create(
        model="good", messages=HI, stream=True
    ) as response:
        event_id = response.headers["x-bandit-event-id"]
        assert [c.choices[0].delta.content for c in response.parse()] == ["a", "b"]
    done = httpx.post(
        f"{base}/reward", json={"event_id": event_id, "final": True}, headers={"x-api-key": KEY}
    )
    assert set(done.json()["parts"]) == {"latency_ms"}


@pytest.mark.parametrize(
    "error",
    [
        b'{"error": {"message": "cut \\ud83d", "type": "server_error"}}',  # JSON.stringify's
        b'{"error": {"message": "overloaded", "retry_after": NaN}}',  # Python's json's
    ],
    ids=["lone-surrogate", "nan"],
)
def test_an_error_event_the_sdk_reads_is_the_arms_failure(
    serve: Serve, scripted: Start, error: bytes
) -> None:
    """An error event that orjson refuses but the SDK reads (and raises) is an error all the
    same: it was passed on as the upstream's, but the call counted as the arm's success."""
    scripts = {"errs": Script((chunk("a"), b"data: " + error + b"\n\n"))}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts)
    stream = sdk_client(base, KEY).chat.completions.create(model="errs", messages=HI, stream=True)
    with pytest.raises(openai.APIError):
        list(stream)
    assert _stats(base, "errs")["rewards"] == 1 and _stats(base, "errs")["mean_reward"] == 0
    assert 'bandit_gateway_upstream_failures_total{arm="errs",kind="midstream"} 1.0' in (
        _failures(base)
    )


def test_an_upstream_that_drops_its_connection_after_done_has_answered_whole(
    serve: Serve, scripted: Start
) -> None:
    """[DONE] ends the answer as the SDK reads it: from the upstream directly it reads "a" and
    stops there. A connection dropped after it (before the chunked body's end) ended the
    client's stream in the gateway's error event instead, and counted as the arm's failure."""
    scripts = {"drops": Script((chunk("a"), 0.05, DONE, 0.05, BREAK))}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts)
    assert _directly_and_through(url, base, "drops") == [["a"], ["a"]]
    assert _failures(base) == []


def test_an_upstream_that_stays_open_after_done_holds_the_client_a_moment_only(
    serve: Serve, scripted: Start
) -> None:
    """The gateway holds [DONE] until it has recorded the call, and read on to the body's end
    first: an upstream that kept its connection open after [DONE] held the client's [DONE] for
    the arm's timeout_s (here 30 s), the SDK's read with it. The end is waited for a moment
    (END_AFTER_DONE_S), then the connection is let go; the call is a success."""
    scripts = {"open": Script((chunk("a"), DONE, STALL))}
    url, app = scripted(scripts)
    arms = [{"name": "open", "upstream": {"base_url": url, "model": "open", "timeout_s": 30}}]
    base = serve(arms=orjson.dumps(arms).decode(), api_keys=KEY)
    began = time.monotonic()
    stream = sdk_client(base, KEY).chat.completions.create(model="open", messages=HI, stream=True)
    assert [c.choices[0].delta.content for c in stream] == ["a"]
    assert time.monotonic() - began < 10  # a moment (END_AFTER_DONE_S), not the arm's 30 s
    wait_until(lambda: app.left == 1, 20, "the upstream's connection to close")
    assert _failures(base) == []  # a success


@pytest.mark.parametrize("stream", [True, False])
def test_an_upstreams_connection_is_reused_by_the_next_call(
    serve: Serve, scripted: Start, stream: bool
) -> None:
    """An answer read to its end gives its connection back to the pool, a stream's too when its
    body ends a moment after [DONE]: the arm's next calls come on the same connection, not on a
    new one each."""
    answer = orjson.dumps({"id": "c", "object": "chat.completion", "created": 0, "choices": []})
    script = (
        Script((chunk("a"), DONE, 0.2))
        if stream
        else Script((answer,), content_type="application/json")
    )
    url, app = scripted({"kept": script})
    base = _gateway(serve, url, {"kept": script})
    for _ in range(3):
        done = httpx.post(
            f"{base}/v1/chat/completions", content=_body("kept", stream), headers=AUTH
        )
        assert done.status_code == 200, done.text
    assert app.requests == 3 and len(app.connections) == 1, app.connections
    assert _failures(base) == []


@pytest.mark.parametrize(
    "after", [chunk("late"), b'data: {"choices": []', b'data: {"error": {"message": "late"}}\n\n']
)
def test_what_an_upstream_sends_after_done_does_not_reach_the_client(
    serve: Serve, scripted: Start, after: bytes
) -> None:
    """The SDK reads no further than [DONE]. The gateway, which holds [DONE] to the end, passed
    on what came after it before it: the client read one more chunk (or raised the upstream's
    late error), or an event left unended ran into the [DONE] behind it, an event the SDK
    cannot parse."""
    scripts = {"late": Script((chunk("a"), DONE, after))}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts)
    assert _directly_and_through(url, base, "late") == [["a"], ["a"]]
    assert _failures(base) == []


def _directly_and_through(url: str, base: str, model: str) -> list[list[str | None]]:
    """The streamed contents the SDK reads from the upstream at ``url``, then through the
    gateway at ``base``."""
    read = []
    for client in (openai.OpenAI(base_url=url, api_key="x", max_retries=0), sdk_client(base, KEY)):
        with client:
            stream = client.chat.completions.create(model=model, messages=HI, stream=True)
            read.append([c.choices[0].delta.content for c in stream])
    return read


def test_what_an_upstream_sent_before_it_broke_is_read_before_the_break(scripted: Start) -> None:
    """aiohttp raises a dropped connection at the next read, before it hands over the bytes it
    had buffered: bytes that arrived with the break, or while the gateway was busy sending to
    its client. The SDK reading the upstream directly reads them, then raises; the gateway lost
    them: the client's answer was shorter than the upstream's before the error, an upstream's
    [DONE] among them turned a whole answer into the arm's failure, and a first read that
    raised took an answer begun for one that failed before its first byte (another arm tried,
    or a 502). The gateway's reads, on the upstream's real connection, with the gateway held
    busy (a sleep) while the rest and the break arrive."""
    url, _ = scripted(
        {
            "later": Script((chunk("a"), 0.1, chunk("b"), BREAK)),
            "at_once": Script((chunk("a"), BREAK)),
        }
    )

    async def read(model: str) -> tuple[bytes, bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/chat/completions", json={"model": model}) as response,
        ):
            body = response.content.iter_any()
            if model == "at_once":  # as _attempt's first read
                await asyncio.sleep(0.3)
                with pytest.raises(aiohttp.ClientPayloadError) as broke:
                    await body.__anext__()
                first = _unread(response, broke.value)
            else:
                first = await body.__anext__()
                await asyncio.sleep(0.3)
            got = b""
            with pytest.raises(aiohttp.ClientPayloadError):
                async for piece in _chunks(first, body, response):  # as _relay reads
                    got += piece
            return first, got

    assert asyncio.run(read("at_once")) == (chunk("a"), chunk("a"))
    assert asyncio.run(read("later")) == (chunk("a"), chunk("a") + chunk("b"))


JSON_ANSWER = (
    b'{"id":"c","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'
)


@pytest.mark.parametrize(
    ("stream", "script", "reason"),
    [
        (True, Script((JSON_ANSWER,), content_type="application/json"), "'application/json'"),
        (True, Script((b"<html>sign in</html>",), content_type="text/html"), "'text/html'"),
        (False, Script((b"<html>sign in</html>",), content_type="text/html"), "JSON object"),
        (False, GOOD, "JSON object"),  # a stream to a request that asked for none
    ],
)
def test_an_answer_in_another_form_than_asked_is_the_arms_failure(
    serve: Serve, scripted: Start, stream: bool, script: Script, reason: str
) -> None:
    """A 200 the client cannot read (a login page, a JSON answer to a stream request, which the
    SDK would read as an empty stream) is the arm's failure before the first byte: another arm
    is tried, and without one the client gets a 502 saying what came."""
    scripts = {"odd": script, "good": Script((JSON_ANSWER,), content_type="application/json")}
    if stream:
        scripts["good"] = GOOD
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts, gateway_retries=1)
    refused = httpx.post(f"{base}/v1/chat/completions", content=_body("odd", stream), headers=AUTH)
    assert refused.status_code == 502, refused.text
    assert reason in refused.json()["detail"]
    assert 'bandit_gateway_upstream_failures_total{arm="odd",kind="protocol"} 1.0' in (
        _failures(base)
    )
    for _ in range(4):  # auto: whichever arm the policy tries first, the good one answers
        answered = httpx.post(
            f"{base}/v1/chat/completions", content=_body("auto", stream), headers=AUTH
        )
        assert answered.status_code == 200 and answered.headers["x-bandit-arm"] == "good"


def test_a_stream_is_sent_uncached_with_the_gateways_headers(serve: Serve, scripted: Start) -> None:
    """A stream's answer says ``cache-control: no-cache`` (a proxy between holds no event back
    nor serves it again), beside the event and arm the app rewards by."""
    scripts = {"m": GOOD}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts)
    answer = httpx.post(f"{base}/v1/chat/completions", content=_body("m", True), headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["x-bandit-arm"] == "m" and answer.headers["x-bandit-event-id"]


def test_an_empty_stream_is_the_arms_failure_of_kind_empty(serve: Serve, scripted: Start) -> None:
    """A stream's body that ends before its first byte: "empty answer", kind ``empty`` (README,
    Metrics), as an empty answer not streamed is; not ``protocol``."""
    scripts = {"m": Script(())}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts, gateway_retries=0)
    refused = httpx.post(f"{base}/v1/chat/completions", content=_body("m", True), headers=AUTH)
    assert refused.status_code == 502, refused.text
    assert refused.json()["detail"].endswith("every upstream tried failed: m: empty answer")
    failures = [line for line in _failures(base) if "_total" in line]
    assert failures == ['bandit_gateway_upstream_failures_total{arm="m",kind="empty"} 1.0']


def test_a_stream_whose_media_type_is_written_in_capitals_is_a_stream(
    serve: Serve, scripted: Start
) -> None:
    """A media type is case-insensitive (RFC 9110): ``Text/Event-Stream`` with parameters is a
    stream, relayed, not the arm's failure."""
    scripts = {"m": Script((chunk("a"), DONE), content_type="Text/Event-Stream; charset=utf-8")}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts, gateway_retries=0)
    stream = sdk_client(base, KEY).chat.completions.create(model="m", messages=HI, stream=True)
    assert [c.choices[0].delta.content for c in stream] == ["a"]
    assert [line for line in _failures(base) if "_total" in line] == []


def test_a_stream_that_ends_in_an_unended_event_without_done_is_relayed_whole(
    serve: Serve, scripted: Start
) -> None:
    """An upstream whose body ends with its last event unended (no blank line) and no
    ``[DONE]``: what it sent reaches the client byte for byte, the last event with it."""
    sent = (chunk("a"), chunk("b").rstrip(b"\n"))
    scripts = {"m": Script(sent)}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts)
    answer = httpx.post(f"{base}/v1/chat/completions", content=_body("m", True), headers=AUTH)
    assert answer.status_code == 200 and answer.content == b"".join(sent)


# A client that leaves


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_before_the_first_byte_cancels_the_upstream_call(
    serve: Serve, scripted: Start, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    """The upstream call is closed when the client goes, not held to the arm's timeout (nor
    followed by calls to other arms); the arm is not blamed, and its slot is free again."""
    media = "text/event-stream" if stream else "application/json"
    scripts = {"slow": Script((STALL,), content_type=media), "good": GOOD}
    url, app = scripted(scripts)
    arms = [
        {"name": n, "upstream": {"base_url": url, "model": n, "timeout_s": 600}} for n in scripts
    ]
    base = serve(arms=orjson.dumps(arms).decode(), api_keys=KEY, gateway_max_concurrency=1)
    caplog.set_level(logging.INFO)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{base}/v1/chat/completions", content=_body("slow", stream), headers=AUTH, timeout=1
        )
    wait_until(lambda: app.left == 1, 30, "the upstream call to be closed")
    answered = httpx.post(f"{base}/v1/chat/completions", content=_body("good", True), headers=AUTH)
    assert answered.status_code == 200  # the only slot is free
    assert _failures(base) == [] and app.requests == 2
    assert "the client left before its answer began" in caplog.text
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("budget_ms", "charged"), [(200, True), (5000, False)])
def test_a_client_that_leaves_after_the_latency_budget_charges_the_arm(
    serve: Serve, scripted: Start, stream: bool, budget_ms: int, charged: bool
) -> None:
    """An arm slower than its clients wait was never charged for it: each client left, nothing
    was recorded, and the event was skipped when its window closed. Once the wait is past the
    latency budget the latency part is 0 however long the answer would have taken: recorded,
    the event is learned with reward 0. Before the budget, the leaving still says nothing."""
    media = "text/event-stream" if stream else "application/json"
    url, app = scripted({"slow": Script((STALL,), content_type=media), "good": GOOD})
    arms = [{"name": n, "upstream": {"base_url": url, "model": n}} for n in ("slow", "good")]
    base = serve(
        arms=orjson.dumps(arms).decode(),
        api_keys=KEY,
        latency_budget_ms=budget_ms,
        reward_wait_s=3,
        sweep_s=0.2,
    )
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{base}/v1/chat/completions", content=_body("slow", stream), headers=AUTH, timeout=1
        )
    wait_until(lambda: app.left == 1, 30, "the upstream call to be closed")

    wait_until(lambda: sum(_ended(base)) == 1, 30, "the event's window to close")
    assert _ended(base) == ((1, 0) if charged else (0, 1))
    if charged:
        assert _stats(base, "slow")["mean_reward"] == 0


@pytest.mark.parametrize("counted", [True, False])
def test_a_client_that_leaves_mid_stream_is_charged_its_first_tokens_latency(
    serve: Serve, scripted: Start, caplog: pytest.LogCaptureFixture, counted: bool
) -> None:
    """Measured to the first token, the latency is known once that came: a client that leaves
    after it records it, as a whole stream does (before, nothing: the event was skipped).
    Recorded only when the weights count latency: else it would change nothing the event
    learns (and the router would refuse it, said in the log at every call)."""
    url, app = scripted({"held": Script((chunk("a"), STALL)), "good": GOOD})
    weights = {} if counted else {"reward_weights": '{"accuracy": 1}'}
    base = _gateway(
        serve,
        url,
        {"held": GOOD, "good": GOOD},
        gateway_latency="first_token",
        reward_wait_s=2,
        **weights,
    )
    with sdk_client(base, KEY).chat.completions.with_streaming_response.create(
        model="held", messages=HI, stream=True
    ) as response:
        next(response.iter_lines())  # the first event, then leave
    wait_until(lambda: app.left == 1, 30, "the upstream call to be closed")

    wait_until(lambda: sum(_ended(base)) == 1, 30, "the event's window to close")
    assert _ended(base) == ((1, 0) if counted else (0, 1))
    if counted:
        assert _stats(base, "held")["mean_reward"] > 0.9  # its first token came at once
    assert "not recorded" not in caplog.text


def test_a_stream_that_breaks_midway_is_a_failure_not_a_client_that_left(
    serve: Serve, scripted: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream that breaks off after its first token is the arm's failure, final at once:
    its first token's latency, known, is not recorded beside it as a client's leaving is."""
    scripts = {"breaks": Script((chunk("a"), 0.05, BREAK))}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts, gateway_latency="first_token")
    answer = httpx.post(f"{base}/v1/chat/completions", content=_body("breaks", True), headers=AUTH)
    assert "the upstream of breaks broke off mid-answer" in answer.text
    time.sleep(0.5)  # a leaving's latency is recorded in a task of its own: given its time
    # recorded, it would be refused (the event is learned already), said in the log
    assert "not recorded" not in caplog.text
    assert _stats(base, "breaks")["rewards"] == 1 and _stats(base, "breaks")["mean_reward"] == 0


def test_a_stream_read_to_its_end_is_recorded_once_not_as_a_client_that_left(
    serve: Serve, scripted: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole stream whose latency, its first token's, completes the event (a latency-only
    preference): recorded once, learned; no leaving's latency after it, which the router would
    refuse (the event is learned already), said in the log."""
    scripts = {"m": GOOD}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts, gateway_latency="first_token")
    headers = {**AUTH, "x-bandit-preference": "latency=1"}
    answer = httpx.post(f"{base}/v1/chat/completions", content=_body("m", True), headers=headers)
    assert answer.status_code == 200 and answer.text.endswith("data: [DONE]\n\n"), answer.text
    wait_until(lambda: _stats(base, "m")["rewards"] == 1, 10, "the event to be learned")
    time.sleep(0.5)  # a leaving's latency is recorded in a task of its own: given its time
    assert "not recorded" not in caplog.text


# Many streams at once


def test_streams_beyond_the_concurrency_bound_are_refused_with_retry_after(
    serve: Serve, scripted: Start
) -> None:
    scripts = {"held": Script((chunk("a"), STALL)), "good": GOOD}
    url, app = scripted(scripts)
    base = _gateway(serve, url, scripts, gateway_max_concurrency=2)
    with (
        httpx.stream(
            "POST", f"{base}/v1/chat/completions", content=_body("held", True), headers=AUTH
        ) as one,
        httpx.stream(
            "POST", f"{base}/v1/chat/completions", content=_body("held", True), headers=AUTH
        ) as two,
    ):
        assert one.status_code == two.status_code == 200
        for _ in range(3):
            busy = httpx.post(
                f"{base}/v1/chat/completions", content=_body("good", True), headers=AUTH
            )
            assert busy.status_code == 503, busy.text
            assert busy.headers["retry-after"] == "1"
            assert "BANDIT_GATEWAY_MAX_CONCURRENCY" in busy.json()["detail"]
    wait_until(lambda: app.left == 2, 20, "both held streams to be closed")
    for _ in range(3):  # nothing stuck: the slots are free again
        answered = httpx.post(
            f"{base}/v1/chat/completions", content=_body("good", True), headers=AUTH
        )
        assert answered.status_code == 200


# /metrics


def test_metrics_labels_stay_bounded_whatever_a_client_sends(serve: Serve, scripted: Start) -> None:
    """Label values are arm names from the settings and fixed kinds: a client's model names,
    metadata and headers add no series, and the scrape parses after every fault above."""
    error = b'data: {"error": {"message": "x"}}\n\n'
    scripts = {"good": GOOD, "errs": Script((chunk("a"), error)), "odd": Script((b"<p>",))}
    url, _ = scripted(scripts)
    base = _gateway(serve, url, scripts, gateway_retries=0)
    for model in ("good", "errs", "odd"):
        httpx.post(f"{base}/v1/chat/completions", content=_body(model, True), headers=AUTH)
    before = _series(base)
    for i in range(50):
        hostile = f'x{i}"}} \n# TYPE evil counter\nevil 1'
        body = {"model": hostile, "messages": HI, "metadata": {hostile[:60]: hostile[:200]}}
        header = hostile.replace("\n", " ")  # a header cannot hold a line break
        headers = AUTH | {"x-bandit-preference": f"accuracy={i % 9 + 1}", "x-bandit-arm": header}
        refused = httpx.post(
            f"{base}/v1/chat/completions", content=orjson.dumps(body), headers=headers
        )
        assert refused.status_code == 404, refused.text
    assert _series(base) == before
    assert {labels.get("arm") for labels in before.values() if "arm" in labels} == set(scripts)


def _series(base: str) -> dict[str, dict[str, str]]:
    """Every sample of a scrape, read by prometheus_client's own parser."""
    text = httpx.get(f"{base}/metrics").text
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# The meter


def test_an_event_in_many_small_pieces_is_forwarded_whole() -> None:
    """An upstream that sends a long event a few bytes at a time. The meter searches only the
    new bytes for an event's end, and holds the event until it ends."""
    meter = StreamMeter(Measured(), drop_usage=True)
    piece = b"xxxx"
    out = [meter.feed(b'data: {"p": "')]
    out += [meter.feed(piece) for _ in range((MAX_EVENT_BYTES - 64) // len(piece))]
    assert not any(out)  # held until the event ends
    out.append(meter.feed(b'"}\n\n'))
    forwarded = b"".join(out)
    assert forwarded.endswith(b'"}\n\n') and orjson.loads(forwarded[6:])["p"].count("x") > 10**6


def test_an_event_as_long_as_the_bound_is_held_and_read() -> None:
    """``MAX_EVENT_BYTES`` is the longest event held until it ends: one of that length is read
    (its usage taken, then dropped as asked), not passed on unread as a longer one is."""
    meter = StreamMeter(Measured(), drop_usage=True)
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}, "p": "'
    event = usage + b"x" * (MAX_EVENT_BYTES - len(usage) - 2) + b'"}'
    assert len(event) == MAX_EVENT_BYTES
    assert meter.feed(event) == b""  # held until it ends
    assert meter.feed(b"\n\n") == b""  # its usage read, and dropped
    assert (meter.measured.prompt_tokens, meter.measured.completion_tokens) == (3, 2)


# an upstream's events: an answer's piece, the usage, an error
EVENTS = (
    {"choices": [{"delta": {"content": "a\\nb"}}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    {"error": {"message": "overloaded"}},
)


@st.composite
def event_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """An upstream's event stream as SSE allows it: each line ended by CR, LF or CRLF; ids,
    event names and comments; ``data:`` with or without its space, a JSON split over two data
    lines; then cut in pieces anywhere."""
    lines_of_events: list[list[bytes]] = []
    for payload in draw(st.lists(st.sampled_from(EVENTS), max_size=6)):
        text = orjson.dumps(payload)
        split = text.index(b":") + 1 if draw(st.booleans()) else 0  # read back joined by LF
        data = [text[:split], text[split:]] if split else [text]
        lines = [draw(st.sampled_from([b"data: ", b"data:"])) + part for part in data]
        extra = draw(st.sets(st.sampled_from([b"event: message", b": keep-alive"])))
        lines_of_events.append(sorted(extra) + lines)
    if draw(st.booleans()):
        lines_of_events.append([b": keep-alive"])
    if draw(st.booleans()):
        lines_of_events.append([b"data: [DONE]"])
    stream = b""
    for lines in lines_of_events:
        endings = [draw(st.sampled_from([b"\n", b"\r", b"\r\n"])) for _ in lines]
        # the empty line that ends the event: after a CR, an LF would only end its line
        after_cr = [b"\r", b"\r\n"] if endings[-1] == b"\r" else [b"\n", b"\r", b"\r\n"]
        endings.append(draw(st.sampled_from(after_cr)))
        stream += b"".join(line + end for line, end in zip([*lines, b""], endings, strict=True))
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=12))
    return stream, [0, *sorted(cuts), len(stream)]


def _sse(stream: bytes) -> list[tuple[str | None, str]]:
    """The events the openai SDK reads from ``stream``: name and data."""
    return [(e.event, e.data) for e in openai._streaming.SSEDecoder().iter_bytes(iter([stream]))]


@settings(max_examples=1000, deadline=None)
@given(event_streams(), st.booleans())
@example((b"data: [DONE]\r\n\n", [0, 13, 14, 15]), False)  # CR | LF | LF: the LF after CR only
def test_the_meter_reads_and_forwards_events_as_the_openai_sdk_reads_them(
    stream_and_bounds: tuple[bytes, list[int]], drop_usage: bool
) -> None:
    """Whatever the line endings and wherever the pieces are cut (a CRLF split in two, say),
    each event is forwarded as soon as it has ended, the usage and an error are read from the
    events the SDK reads, and ``[DONE]`` is held to the end."""
    stream, bounds = stream_and_bounds
    read = _sse(stream)
    done = [event for event in read if event[1].startswith("[DONE]")]

    def forwarded(event: tuple[str | None, str]) -> bool:
        data = orjson.loads(event[1]) if event[1].startswith("{") else {}
        return event not in done and not (drop_usage and "usage" in data and not data["choices"])

    meter = StreamMeter(Measured(), drop_usage=drop_usage)
    got = b""
    for a, b in itertools.pairwise(bounds):
        got += meter.feed(stream[a:b])
        assert _sse(got) == [e for e in _sse(stream[:b]) if forwarded(e)]  # each as it ends
    assert _sse(got + meter.finish()) == [e for e in read if forwarded(e)] + done[:1]
    sent = [orjson.loads(data) for _, data in read if data.startswith("{")]
    assert meter.measured.usage_sent == any("usage" in d for d in sent)
    assert meter.measured.prompt_tokens == (3 if meter.measured.usage_sent else None)
    assert meter.error == ("'overloaded'" if any("error" in d for d in sent) else None)


def test_the_first_token_is_the_first_event_with_data_not_a_keep_alive_comment() -> None:
    """Providers send SSE comments while the model thinks (OpenRouter's ": OPENROUTER
    PROCESSING"): BANDIT_GATEWAY_LATENCY=first_token must time the first event with data."""
    meter = StreamMeter(Measured(), drop_usage=False)
    assert meter.feed(b": OPENROUTER PROCESSING\n\n") == b": OPENROUTER PROCESSING\n\n"
    assert meter.feed(b":\r\n\r\n") and meter.measured.first_token_s is None
    assert meter.feed(b'data: {"choices": []}\n\n')
    assert meter.measured.first_token_s is not None
    together = StreamMeter(Measured(), drop_usage=False)  # a comment, its first event after it
    assert together.feed(b': OPENROUTER PROCESSING\n\ndata: {"choices": []}\n\n')
    assert together.measured.first_token_s is not None


def test_done_is_read_as_the_sdk_reads_it_from_the_start_of_the_data() -> None:
    """The SDK ends its stream at an event whose data starts with ``[DONE]``: the meter holds
    it as the end, whatever follows in the data."""
    meter = StreamMeter(Measured(), drop_usage=False)
    assert meter.feed(b"data: [DONE] \n\n") == b""
    assert meter.done and meter.finish() == DONE


def test_an_event_whose_error_is_null_is_no_error() -> None:
    """The SDK raises on an event whose ``error`` is set, not on one that carries it as null
    (as some providers' chunks do): the meter reads it as the SDK does."""
    meter = StreamMeter(Measured(), drop_usage=False)
    event = b'data: {"choices": [{"delta": {"content": "a"}}], "error": null}\n\n'
    assert meter.feed(event) == event and meter.error is None


def test_a_crlf_split_with_its_lf_alone_in_a_piece_ends_one_line_only() -> None:
    """Pieces "\\r", "\\n", "\\n": the lone LF completes the CRLF, and the next LF is the empty
    line that ends the event. It was skipped too (the meter still took the last piece to end in
    CR), and the event's end was lost: the content event and the usage event behind it went out
    as one event of two data lines, the usage unread and not dropped."""
    meter = StreamMeter(Measured(), drop_usage=True)
    content = b'data: {"choices": []}'
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
    pieces = [content + b"\r", b"\n", b"", b"\n", usage + b"\n\n", b"data: [DONE]\r\n\r\n"]
    stream = b"".join(pieces)
    got = b""
    for end, piece in enumerate(pieces, 1):
        got += meter.feed(piece)
        sent = _sse(b"".join(pieces[:end]))
        assert _sse(got) == [e for e in sent if "usage" not in e[1] and e[1] != "[DONE]"]
    assert got == content + b"\n\n"  # the usage dropped, [DONE] held
    assert _sse(got + meter.finish()) == [e for e in _sse(stream) if "usage" not in e[1]]
    assert meter.measured.prompt_tokens == 3


@pytest.mark.parametrize("usage_sent", [True, False])
def test_the_end_of_an_event_passed_on_unended_is_kept_before_done_and_a_dropped_usage(
    usage_sent: bool,
) -> None:
    """An event past MAX_EVENT_BYTES goes out as it is, up to its last line's LF; the LF that
    ends it comes with the next piece, at the start of the event behind it. That event held
    ([DONE]) or dropped (the usage) took the LF with it: the long event and [DONE] reached the
    client as one event, which the SDK cannot read."""
    meter = StreamMeter(Measured(), drop_usage=True)
    long = b'data: "' + b"x" * MAX_EVENT_BYTES + b'"\n'
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
    rest = b"\n" + (usage if usage_sent else b"") + b"data: [DONE]\n\n"
    assert meter.feed(long) == long
    got = long + meter.feed(rest) + meter.finish()
    assert _sse(got) == [e for e in _sse(long + rest) if "usage" not in e[1]]
    assert meter.measured.prompt_tokens == (3 if usage_sent else None)
