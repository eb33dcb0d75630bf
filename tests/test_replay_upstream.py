"""The replay upstream's answers against the file they replay, and the gateway's stream meter
against the events of a real stream (the replay upstream's, split at every byte)."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from bandit_router.service.upstream import MAX_EVENT_BYTES, Measured, StreamMeter
from bandit_router.sim.upstream import ReplayUpstream, grade
from tests.upstreams import ARMS, PRICES, SLICE, SLICE_ARMS, rows


@pytest.fixture(scope="module")
def replay() -> ReplayUpstream:
    return ReplayUpstream.load(SLICE, SLICE_ARMS)


def test_every_answer_grades_as_recorded_with_the_recorded_tokens_time_and_cost(
    replay: ReplayUpstream,
) -> None:
    for row in rows():
        for arm in ARMS:
            recorded = row["outcomes"][arm]
            matched, outcome = replay.outcome(arm, row["query"])
            assert matched["id"] == row["id"]
            assert grade(outcome.text, row["id"], row["query"]) == recorded["accuracy"]
            assert len(outcome.tokens) == recorded["output_tokens"]
            assert outcome.latency_s * 1000 == pytest.approx(recorded["latency_ms"])
            assert 0 <= outcome.first_token_s <= outcome.latency_s
            cost = PRICES[arm] * (outcome.prompt_tokens + len(outcome.tokens)) / 1e6
            assert cost == pytest.approx(recorded["cost_usd"], rel=0.01, abs=2e-7)


def test_an_unknown_query_gets_the_same_row_every_time(replay: ReplayUpstream) -> None:
    first = replay.row_for("a question the file does not hold")
    assert replay.row_for("a question the file does not hold") is first
    assert grade("The answer is (Z).", "x", "no options here") is None


def _stream(replay: ReplayUpstream, body: dict[str, Any]) -> bytes:
    """The bytes the replay upstream's ASGI app sends for one request."""
    sent: list[bytes] = []
    raw = orjson.dumps(body)

    async def receive() -> dict[str, Any]:
        if raw and not sent:
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(3600)  # the client stays
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message.get("body", b""))

    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "headers": []}
    fast = ReplayUpstream(replay.rows, replay.prices, replay.arms, speed=1e9)
    asyncio.run(fast(scope, receive, send))
    return b"".join(sent)


@pytest.mark.parametrize("client_usage", [False, True])
def test_the_meter_forwards_whole_events_takes_usage_and_holds_done(
    replay: ReplayUpstream, client_usage: bool
) -> None:
    row = rows()[0]
    body = {
        "model": "llama2-13b",
        "messages": [{"role": "user", "content": row["query"]}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    upstream = _stream(replay, body)
    meter = StreamMeter(Measured(), drop_usage=not client_usage)
    forwarded = b"".join(meter.feed(upstream[i : i + 1]) for i in range(len(upstream)))
    assert b"[DONE]" not in forwarded  # held until the call is recorded
    forwarded += meter.finish()
    assert forwarded.endswith(b"data: [DONE]\n\n")
    events = [e for e in forwarded.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events)
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert (chunks[-1]["choices"] == []) is client_usage  # the usage chunk, if asked for
    outcome = row["outcomes"]["llama2-13b"]
    assert meter.measured.completion_tokens == outcome["output_tokens"]
    assert meter.measured.prompt_tokens is not None
    assert meter.measured.first_token_s is not None and meter.measured.total_s is not None
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"])
    assert grade(text, row["id"], row["query"]) == outcome["accuracy"]


def test_the_meter_holds_no_event_longer_than_its_bound() -> None:
    """An upstream streaming one event that never ends: forwarded once past the bound, not
    held (the meter would grow with it, and copy it at every chunk)."""
    meter = StreamMeter(Measured(), drop_usage=True)
    chunk, n = b"x" * 65_536, 3 * MAX_EVENT_BYTES // 65_536
    forwarded = meter.feed(b"data: ")
    for _ in range(n):
        forwarded += meter.feed(chunk)
        assert len(meter.pending) <= MAX_EVENT_BYTES
    assert forwarded  # some of it went on before the event ended
    forwarded += meter.feed(b"\n\ndata: [DONE]\n\n") + meter.finish()
    assert forwarded == b"data: " + chunk * n + b"\n\ndata: [DONE]\n\n"  # all of it, in order
