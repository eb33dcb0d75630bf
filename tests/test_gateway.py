"""The gateway through the official OpenAI SDK: the app under uvicorn, replay upstreams on
loopback, real Redis. Routing, passthrough, measuring, fallback, preference, keys."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import openai
import pytest
import redis

from bandit_router.sim.upstream import grade
from tests.conftest import _free_port, wait_until
from tests.live import serve
from tests.upstreams import ARMS, PRICES, Upstream, arm, arms_json, rows, upstream

__all__ = ["serve", "upstream"]  # the fixtures, imported

Serve = Callable[..., str]
Start = Callable[..., Upstream]
KEY = "service-key-1"
SECRET = "sk-upstream-secret-42"  # an upstream's key: must never leave the server


_OPEN: list[openai.OpenAI] = []


def _client(base: str, **kwargs: Any) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, **kwargs)
    _OPEN.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Any:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _gateway(serve: Serve, url: str, **overrides: Any) -> str:
    arms = overrides.pop("arms", None) or arms_json(*(arm(name, url) for name in ARMS))
    return serve(arms=arms, api_keys=KEY, **overrides)


def _ask(row: dict[str, Any]) -> list[Any]:
    return [{"role": "user", "content": row["query"]}]


def test_models_lists_auto_and_the_arms(serve: Serve, upstream: Start) -> None:
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url)
    assert [m.id for m in _client(base).models.list()] == ["auto", *ARMS]


def test_without_upstreams_the_gateway_lists_no_model_and_answers_none(serve: Serve) -> None:
    base = serve(api_keys=KEY)  # BANDIT_ARMS without upstreams: /choose and /reward only
    client = _client(base)
    assert list(client.models.list()) == []
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="auto", messages=_ask(rows()[0]))
    assert "no arm has an upstream" in str(missing.value.body)


def test_auto_routes_measures_and_learns_with_the_apps_reward(
    serve: Serve, upstream: Start, redis_url: str
) -> None:
    url, replay = upstream(speed=1000)
    base = _gateway(serve, url, reward_weights="accuracy=0.4,latency=0.3,cost=0.3")
    row = rows()[0]
    raw = _client(base).chat.completions.with_raw_response.create(
        model="auto", messages=_ask(row), metadata={"category": row["context"]["category"]}
    )
    completion = raw.parse()
    chosen = raw.headers["x-bandit-arm"]
    assert chosen in ARMS and completion.model == chosen  # the arm's upstream model
    assert replay.requests == 1
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == row["outcomes"][chosen]["output_tokens"]
    accuracy = grade(completion.choices[0].message.content or "", row["id"], row["query"])
    assert accuracy is not None
    assert accuracy == row["outcomes"][chosen]["accuracy"]  # the grader reads the recorded truth

    event_id = raw.headers["x-bandit-event-id"]
    reward = httpx.post(
        f"{base}/reward",
        json={"event_id": event_id, "accuracy": accuracy},
        headers={"authorization": f"Bearer {KEY}"},
    ).json()
    # Latency and cost came from the gateway; the app's accuracy completes the weighted parts.
    assert reward["status"] == "final"
    assert set(reward["parts"]) == {"latency_ms", "cost_usd", "accuracy"}
    assert reward["parts"]["cost_usd"] == pytest.approx(row["outcomes"][chosen]["cost_usd"], 0.02)
    assert 0 < reward["parts"]["latency_ms"] < 1000
    expected = (
        0.4 * accuracy
        + 0.3 * (1 - reward["parts"]["latency_ms"] / 2000)
        + 0.3 * (1 - reward["parts"]["cost_usd"] / 0.001)
    )
    assert reward["reward"] == pytest.approx(expected)
    assert reward["model_version"] == 1


def test_streaming_passes_chunks_through_as_they_come(serve: Serve, upstream: Start) -> None:
    # llama2-70b on this row: 45 tokens over 2,475 ms recorded, 450 ms to the first; at speed 2
    # the whole answer takes over a second and the first token about a fifth of that.
    url, _ = upstream(speed=2)
    base = _gateway(serve, url)
    row = rows()[0]

    async def main() -> tuple[float, float, list[Any]]:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
        start = time.perf_counter()
        stream = await client.chat.completions.create(
            model="llama2-70b", messages=_ask(row), stream=True
        )
        chunks: list[Any] = []
        first = 0.0
        async for chunk in stream:
            if not chunks:
                first = time.perf_counter() - start
            chunks.append(chunk)
        await client.close()
        return first, time.perf_counter() - start, chunks

    first, total, chunks = asyncio.run(main())
    assert total > 1.0
    assert first < total / 2, (first, total)  # not buffered
    # The gateway asked the upstream for usage; the client did not, so it gets no usage chunk.
    assert all(chunk.choices for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert len(chunks) == row["outcomes"]["llama2-70b"]["output_tokens"]
    assert grade(text, row["id"], row["query"]) == row["outcomes"]["llama2-70b"]["accuracy"]


@pytest.mark.parametrize("measure", ["total", "first_token"])
def test_the_latency_recorded_is_the_answers_or_its_first_tokens(
    serve: Serve, upstream: Start, measure: str
) -> None:
    """BANDIT_GATEWAY_LATENCY: the event's latency part is the whole answer's time (``total``,
    streamed or not) or, for a stream, its first token's; in milliseconds, within what the
    client waited. At speed 2, llama2-70b's answer to this row takes 1,237 ms, its first token
    about a fifth of that: the rest of the stream over a second."""
    url, _ = upstream(speed=2)
    base = _gateway(serve, url, gateway_latency=measure)
    row = rows()[0]
    whole_ms = row["outcomes"]["llama2-70b"]["latency_ms"] / 2
    for stream in (False, True):
        start = time.perf_counter()
        if stream:
            with _client(base).chat.completions.with_streaming_response.create(
                model="llama2-70b", messages=_ask(row), stream=True
            ) as answer:
                event_id = answer.headers["x-bandit-event-id"]
                assert sum(1 for _ in answer.iter_lines()) > 1
        else:
            raw = _client(base).chat.completions.with_raw_response.create(
                model="llama2-70b", messages=_ask(row)
            )
            event_id = raw.headers["x-bandit-event-id"]
        waited_ms = (time.perf_counter() - start) * 1000
        done = httpx.post(
            f"{base}/reward",
            json={"event_id": event_id, "accuracy": 1, "final": True},
            headers={"x-api-key": KEY},
        )
        assert done.status_code == 200, done.text
        latency_ms = done.json()["parts"]["latency_ms"]
        if measure == "first_token" and stream:
            assert 50 < latency_ms < waited_ms - 500, (latency_ms, waited_ms)
        else:
            assert 0.95 * whole_ms < latency_ms < waited_ms, (latency_ms, waited_ms)


def test_stream_with_usage_and_the_parts_it_records(serve: Serve, upstream: Start) -> None:
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url)
    row = rows()[1]
    with _client(base).chat.completions.with_streaming_response.create(
        model="llama2-7b",
        messages=_ask(row),
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        event_id = response.headers["x-bandit-event-id"]
        assert response.headers["x-bandit-arm"] == "llama2-7b"
        chunks = list(response.parse())
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.completion_tokens == row["outcomes"]["llama2-7b"]["output_tokens"]
    # The stream ended after the gateway recorded the call: its parts are there already.
    done = httpx.post(
        f"{base}/reward",
        json={"event_id": event_id, "final": True},
        headers={"x-api-key": KEY},
    ).json()
    assert set(done["parts"]) == {"latency_ms", "cost_usd"}
    cost = PRICES["llama2-7b"] * (usage.prompt_tokens + usage.completion_tokens) / 1e6
    assert done["parts"]["cost_usd"] == pytest.approx(cost)


@pytest.mark.parametrize("parts", ["cost", "latency", "failure"])
def test_the_gateway_records_only_the_parts_it_is_set_to(
    serve: Serve, upstream: Start, parts: str
) -> None:
    """BANDIT_GATEWAY_PARTS: an operator who leaves latency, cost or failures out (the app
    reports its own, say) finds none of them recorded by the gateway."""
    url, _ = upstream(speed=1000)
    down, _ = upstream(speed=1000, fail_status=503)
    arms = arms_json(arm("llama2-7b", url), arm("llama2-13b", down))
    weights = '{"accuracy": 0.5, "latency": 0.25, "cost": 0.25}'  # each part counts
    base = _gateway(
        serve, url, arms=arms, gateway_parts=parts, gateway_retries=0, reward_weights=weights
    )
    raw = _client(base).chat.completions.with_raw_response.create(
        model="llama2-7b", messages=_ask(rows()[1])
    )
    done = httpx.post(  # the app's accuracy completes the event; the parts are returned
        f"{base}/reward",
        json={"event_id": raw.headers["x-bandit-event-id"], "accuracy": 1, "final": True},
        headers={"x-api-key": KEY},
    )
    recorded = set(done.json()["parts"]) - {"accuracy"}
    assert recorded == {"cost": {"cost_usd"}, "latency": {"latency_ms"}}.get(parts, set())
    with pytest.raises(openai.APIStatusError):
        _client(base).chat.completions.create(model="llama2-13b", messages=_ask(rows()[1]))
    failed = httpx.get(f"{base}/stats").json()["arms"]["llama2-13b"]
    assert failed["rewards"] == (1 if parts == "failure" else 0)
    metrics = httpx.get(f"{base}/metrics").text  # measured whatever is recorded
    for measure in ("first_token", "total"):
        assert f'upstream_seconds_count{{arm="llama2-7b",measure="{measure}"}} 1.0' in metrics


def test_parts_no_weight_counts_are_said_at_the_start_and_recorded_only_where_counted(
    serve: Serve, upstream: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """BANDIT_GATEWAY_PARTS=cost under weights that do not count cost: said once at the
    start, not refused and logged at every call; a request whose preference counts cost has
    it recorded."""
    url, _ = upstream(speed=1000)
    with caplog.at_level(logging.INFO):
        _gateway(serve, url)  # the defaults count latency: nothing to say
        assert "BANDIT_GATEWAY_PARTS" not in caplog.text
        base = _gateway(serve, url, gateway_parts="cost")
        events = [
            _client(base)
            .chat.completions.with_raw_response.create(
                model="llama2-7b", messages=_ask(row), extra_headers=preference
            )
            .headers["x-bandit-event-id"]
            for row, preference in zip(
                rows()[:3], [{}, {}, {"x-bandit-preference": "cost"}], strict=True
            )
        ]
        parts = [
            httpx.post(
                f"{base}/reward",
                json={"event_id": event_id, "accuracy": 1, "final": True},
                headers={"x-api-key": KEY},
            ).json()["parts"]
            for event_id in events
        ]
    said = [m for m in caplog.messages if "BANDIT_GATEWAY_PARTS" in m]
    assert said == [
        "gateway: BANDIT_GATEWAY_PARTS records cost, which its reward weights, "
        "accuracy=0.6,rating=0.2,latency=0.2 (BANDIT_REWARD_WEIGHTS), do not count: recorded "
        "only for requests whose x-bandit-preference counts it (balanced, cost)"
    ]
    assert not [m for m in caplog.messages if "not recorded" in m]
    assert [set(p) for p in parts] == [{"accuracy"}, {"accuracy"}, {"accuracy", "cost_usd"}]


def test_a_named_arm_is_a_direct_decision(
    serve: Serve, upstream: Start, redis_url: str, make_settings: Any
) -> None:
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url)
    raw = _client(base).chat.completions.with_raw_response.create(
        model="llama2-13b", messages=_ask(rows()[2])
    )
    assert raw.headers["x-bandit-arm"] == "llama2-13b"
    stats = httpx.get(f"{base}/stats").json()
    assert stats["arms"]["llama2-13b"]["decisions"] == 1
    decision = _decision(redis_url, raw.headers["x-bandit-event-id"])
    assert decision["direct"] is True and decision["probability"] == 1.0
    assert decision["arms"] == ["llama2-13b"]


def _decision(redis_url: str, event_id: str) -> dict[str, Any]:
    import orjson

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match="*:decision:" + event_id))
    assert len(keys) == 1
    value = client.get(keys[0])
    client.close()
    assert isinstance(value, bytes)
    data: dict[str, Any] = orjson.loads(value)
    return data


def test_fallback_before_the_first_byte(
    serve: Serve, upstream: Start, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", SECRET)
    good, _ = upstream(speed=1000, api_key=SECRET)
    down, broken = upstream(speed=1000, fail_status=503, api_key=SECRET)
    refused = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    arms = arms_json(
        arm("llama2-7b", refused, api_key_env="UPSTREAM_KEY"),
        arm("llama2-13b", down, api_key_env="UPSTREAM_KEY"),
        arm("llama2-70b", good, api_key_env="UPSTREAM_KEY"),
    )
    base = _gateway(serve, good, arms=arms, gateway_retries=2)
    client = _client(base)
    with caplog.at_level(logging.INFO):
        for row in rows()[:6]:
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=_ask(row), stream=row is rows()[0]
            )
            assert raw.status_code == 200
            assert raw.headers["x-bandit-arm"] == "llama2-70b"  # the one that answers
    stats = httpx.get(f"{base}/stats").json()
    served = stats["arms"]["llama2-70b"]
    assert served["decisions"] == 6
    for name in ("llama2-7b", "llama2-13b"):  # each failure learned as a zero outcome
        failed = stats["arms"][name]
        assert failed["decisions"] == failed["rewards"] >= 1
        assert failed["mean_reward"] == 0.0
    assert broken.requests >= 1
    assert SECRET not in caplog.text and SECRET not in str(stats)
    assert "arm llama2-7b failed: connection failed" in caplog.text
    metrics = httpx.get(f"{base}/metrics").text
    assert 'bandit_gateway_upstream_failures_total{arm="llama2-13b",kind="status"}' in metrics
    assert 'bandit_gateway_upstream_failures_total{arm="llama2-7b",kind="connection"}' in metrics
    assert 'upstream_seconds_count{arm="llama2-70b",measure="total"} 6.0' in metrics

    # Only the failing arms left, no retries: one 502 naming what happened, no key in it.
    arms = arms_json(arm("llama2-13b", down, api_key_env="UPSTREAM_KEY"))
    base = _gateway(serve, good, arms=arms, gateway_retries=0)
    with pytest.raises(openai.APIStatusError) as failed:
        _client(base).chat.completions.create(model="auto", messages=_ask(rows()[0]))
    assert failed.value.status_code == 502
    assert "llama2-13b: status 503" in str(failed.value.body)
    assert SECRET not in str(failed.value.body) and SECRET not in caplog.text

    # Every arm failing: one decision per arm tried, as many as the retries allow and no more,
    # and a 502 once the arms run out before the retries do.
    arms = arms_json(
        arm("llama2-7b", refused, api_key_env="UPSTREAM_KEY"),
        arm("llama2-13b", down, api_key_env="UPSTREAM_KEY"),
        arm("llama2-70b", down, api_key_env="UPSTREAM_KEY"),
    )
    auth = {"authorization": f"Bearer {KEY}"}
    for retries, tried in ((1, 2), (5, 3)):
        base = _gateway(serve, good, arms=arms, gateway_retries=retries)
        body = {"model": "auto", "messages": _ask(rows()[0])}
        answer = httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth)
        assert answer.status_code == 502, answer.text
        said = answer.json()["detail"]
        assert (
            sum(f"{name}: " in said for name in ("llama2-7b", "llama2-13b", "llama2-70b")) == tried
        )
        assert httpx.get(f"{base}/stats").json()["decisions"] == tried


def test_an_upstream_key_read_from_a_file_with_its_newline_is_sent_without_it(
    serve: Serve, upstream: Start, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A key put in the environment from a secret file keeps the file's last newline; a header
    cannot carry one, and every call was a 500 (aiohttp refused the header), no arm tried."""
    monkeypatch.setenv("UPSTREAM_KEY", f" {SECRET}\n")
    good, _ = upstream(speed=1000, api_key=SECRET)
    base = _gateway(serve, good, arms=arms_json(arm("llama2-7b", good, api_key_env="UPSTREAM_KEY")))
    raw = _client(base).chat.completions.with_raw_response.create(
        model="auto", messages=_ask(rows()[0])
    )
    assert raw.status_code == 200 and raw.headers["x-bandit-arm"] == "llama2-7b"
    monkeypatch.setenv("UPSTREAM_KEY", " \n")  # empty: as if unset, the arm's config failure
    with pytest.raises(openai.APIStatusError) as failed:
        _client(base).chat.completions.create(model="auto", messages=_ask(rows()[0]))
    assert failed.value.status_code == 502
    # The variable's name in the log, not to the client: a key pasted in its place would be.
    assert "its key variable (the arm's api_key_env) is not set" in str(failed.value.body)
    assert "UPSTREAM_KEY" not in str(failed.value.body)
    assert "its key variable UPSTREAM_KEY is not set" in caplog.text


def test_an_upstream_that_is_down_is_said_in_the_log_every_few_seconds_not_every_call(
    serve: Serve, upstream: Start, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """Every call to a dead upstream fails; a warning each flooded the log (1.2 MB for 5,000
    calls). The first is said, the next ones within FAILURES_SAID_EVERY_S counted, then said
    with the count."""
    from bandit_router.http import gateway

    monkeypatch.setattr(gateway, "FAILURES_SAID_EVERY_S", 3600.0)
    good, _ = upstream(speed=1000)
    refused = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    base = _gateway(serve, good, arms=arms_json(arm("llama2-7b", refused)), gateway_retries=0)
    client = _client(base)

    def fail() -> None:
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="auto", messages=_ask(rows()[0]))
        assert failed.value.status_code == 502

    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            fail()
        monkeypatch.setattr(gateway, "FAILURES_SAID_EVERY_S", 0.0)  # the period is over
        fail()
    said = [m for m in caplog.messages if "upstream of arm llama2-7b" in m]
    assert len(said) == 2, said
    assert "failed: connection failed" in said[0] and "more of its failures" not in said[0]
    assert said[1].endswith("(4 more of its failures since the last said)")


def test_a_timeout_falls_back_to_another_arm(serve: Serve, upstream: Start) -> None:
    slow, _ = upstream(speed=1)  # llama2-70b takes 450 ms or more to its first token
    fast, _ = upstream(speed=1000)
    arms = arms_json(arm("llama2-70b", slow, timeout_s=0.1), arm("llama2-7b", fast, timeout_s=0.1))
    base = _gateway(serve, fast, arms=arms, gateway_retries=1)
    client = _client(base)
    answered = {
        client.chat.completions.with_raw_response.create(model="auto", messages=_ask(row)).headers[
            "x-bandit-arm"
        ]
        for row in rows()[:8]
    }
    assert answered == {"llama2-7b"}
    stats = httpx.get(f"{base}/stats").json()
    assert stats["arms"]["llama2-70b"]["mean_reward"] in (None, 0.0)


def test_an_arm_whose_model_the_upstream_lacks_is_the_arms_failure(
    serve: Serve, upstream: Start
) -> None:
    """The upstream's 404 for the arm's model is the arm's settings at fault, not the client."""
    url, _ = upstream(speed=1000)
    arms = arms_json(arm("llama2-7b", url, model="no-such-model"), arm("llama2-13b", url))
    base = _gateway(serve, url, arms=arms, gateway_retries=1)
    for row in rows()[:3]:
        answer = _client(base).chat.completions.with_raw_response.create(
            model="auto", messages=_ask(row)
        )
        assert answer.headers["x-bandit-arm"] == "llama2-13b"
    with pytest.raises(openai.InternalServerError) as error:  # the arm alone: 502
        _client(base).chat.completions.create(model="llama2-7b", messages=_ask(rows()[0]))
    assert "llama2-7b: status 404, the upstream knows no such model" in str(error.value.body)


def test_the_gateways_own_errors_name_the_field(serve: Serve, upstream: Start) -> None:
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url)
    client = _client(base)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=_ask(rows()[0]))
    assert missing.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        _client(base, default_headers={"authorization": "Bearer wrong"}).models.list()
    auth = {"authorization": f"Bearer {KEY}"}
    cases: list[tuple[dict[str, Any], bytes, int, str]] = [
        ({}, b"{not json", 400, "body"),
        ({}, b'[{"model": "auto"}]', 400, "body"),
        ({}, b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        ({}, b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        ({}, b'{"model": "auto"}', 400, "messages"),
        ({}, b'{"model": "auto", "messages": ["hi"]}', 400, "messages"),
        (
            {},
            b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"deployment":5}',
            400,
            "deployment",
        ),
        (
            {},
            b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"stream":"yes"}',
            400,
            "stream",
        ),
        ({}, b'{"model": "auto", "messages": [{"role": "user", "content": 5}]}', 400, "messages"),
        ({}, b'{"model": "auto", "messages": [{"role": "user", "content": ""}]}', 400, "messages"),
        ({"x-bandit-preference": "fast"}, b'{"model":"auto","messages":[]}', 400, "messages"),
        (
            {"x-bandit-preference": "speed=1"},
            b'{"model":"auto","messages":[{"role":"user","content":"hi"}]}',
            400,
            "x-bandit-preference",
        ),
        (
            {},
            b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"metadata":{"a":[1]}}',
            400,
            "metadata",
        ),
        (
            {"x-bandit-features": "[1]"},
            b'{"model":"auto","messages":[{"role":"user","content":"hi"}]}',
            400,
            "x-bandit-features",
        ),
        (
            {},
            b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"stream":true,'
            b'"stream_options":"yes"}',
            400,
            "stream_options",
        ),
    ]
    for headers, body, status, field in cases:
        response = httpx.post(
            f"{base}/v1/chat/completions",
            content=body,
            headers={**auth, **headers, "content-type": "application/json"},
        )
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == field == response.json()["field"]
    wrong_type = httpx.post(
        f"{base}/v1/chat/completions", content=b"{}", headers=auth | {"content-type": "text/plain"}
    )
    assert wrong_type.status_code == 415


def test_a_preference_sets_the_events_weights_and_context(
    serve: Serve, upstream: Start, redis_url: str
) -> None:
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url)
    client = _client(base, default_headers={"x-bandit-preference": "cost"})
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=_ask(rows()[3]))
    event_id = raw.headers["x-bandit-event-id"]
    decision = _decision(redis_url, event_id)
    assert decision["weights"] == {"accuracy": 0.3, "latency": 0.2, "cost": 0.5}
    assert "direct" not in decision  # the router chose: a decision of the policy's
    plain = _client(base).chat.completions.with_raw_response.create(
        model="auto", messages=_ask(rows()[3])
    )
    other = _decision(redis_url, plain.headers["x-bandit-event-id"])
    # an empty header is no preference: the default weights, as with none
    empty = _client(base, default_headers={"x-bandit-preference": ""})
    blank = empty.chat.completions.with_raw_response.create(model="auto", messages=_ask(rows()[3]))
    assert blank.status_code == 200
    unset = _decision(redis_url, blank.headers["x-bandit-event-id"])
    assert (unset["weights"], unset["features"]) == (other["weights"], other["features"])
    assert decision["features"] != other["features"]  # the preference is part of the context
    # The event's weights count accuracy, latency and cost: the app's accuracy completes it.
    done = httpx.post(
        f"{base}/reward", json={"event_id": event_id, "accuracy": 1}, headers={"x-api-key": KEY}
    ).json()
    parts = done["parts"]
    expected = 0.3 + 0.2 * (1 - parts["latency_ms"] / 2000) + 0.5 * (1 - parts["cost_usd"] / 0.001)
    assert done["status"] == "final" and done["reward"] == pytest.approx(expected)


def test_a_window_closed_by_the_sweep_uses_the_events_weights(
    serve: Serve, upstream: Start, redis_url: str
) -> None:
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url, reward_wait_s=1, sweep_s=0.2)
    client = _client(base, default_headers={"x-bandit-preference": "latency=1"})
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=_ask(rows()[4]))
    chosen = raw.headers["x-bandit-arm"]

    def learned() -> bool:
        stats = httpx.get(f"{base}/stats").json()
        return bool(stats["arms"][chosen]["rewards"] == 1)

    wait_until(learned, 10, "the sweep to close the window")
    # Only latency counts for this event: its reward is its latency score, near 1 on loopback.
    mean = httpx.get(f"{base}/stats").json()["arms"][chosen]["mean_reward"]
    assert 0.9 < mean <= 1.0


def test_a_window_closed_with_no_part_its_weights_count_is_skipped_without_a_log_line(
    serve: Serve, upstream: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """Weights that count none of what the gateway records (it records nothing for them) and a
    rating the app then never sent leave nothing to learn when the window closes: the event is
    skipped and counted, not a warning each (a client sending the header at full rate wrote a
    log line per call, 2,000 lines for 2,000 calls). Parts stored that the weights since do not
    count: tests/test_reward_window.py."""
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url, reward_wait_s=1, sweep_s=0.2)
    client = _client(base, default_headers={"x-bandit-preference": "rating=1"})
    calls = 20
    with caplog.at_level(logging.WARNING):
        for i in range(calls):
            client.chat.completions.create(model="auto", messages=_ask(rows()[i]))

        def skipped() -> bool:
            return bool(httpx.get(f"{base}/stats").json()["skipped_no_reward"] == calls)

        wait_until(skipped, 15, "the sweep to close the windows")
    assert [m for m in caplog.messages if "not learned at their window" in m] == []


def test_with_a_default_reward_a_window_with_no_part_its_weights_count_learns_it(
    serve: Serve, upstream: Start
) -> None:
    """Such an event has no reward at all, so BANDIT_DEFAULT_REWARD, when set, is what it
    learns, as for an event with no part (it was skipped all the same)."""
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url, reward_wait_s=1, sweep_s=0.2, default_reward=0.25)
    client = _client(base, default_headers={"x-bandit-preference": "rating=1"})
    calls = 5
    for i in range(calls):
        client.chat.completions.create(model="auto", messages=_ask(rows()[i]))

    def learned() -> bool:
        return bool(httpx.get(f"{base}/stats").json()["events_learned"] == calls)

    wait_until(learned, 15, "the sweep to learn the windows with the default reward")
    stats = httpx.get(f"{base}/stats").json()
    assert stats["skipped_no_reward"] == 0
    assert stats["recent"]["mean_reward"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    "preference",
    [
        "accuracy=nan",
        "accuracy=inf",
        "accuracy=1e308,latency=1e308",
        '{"accuracy": NaN}',
        '{"accuracy": 1' + "0" * 400 + "}",
        '{"a": ' * 1500 + "1" + "}" * 1500,
    ],
)
def test_a_preference_that_weighs_nothing_usable_is_refused_before_anything_is_decided(
    serve: Serve, upstream: Start, preference: str
) -> None:
    """Weights that are not bounded numbers would be stored with the event and break its
    reward and the sweep: refused, naming the header, before a decision or an upstream call."""
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url)
    client = _client(base, default_headers={"x-bandit-preference": preference})
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="auto", messages=_ask(rows()[0]))
    assert refused.value.body["param"] == "x-bandit-preference"  # type: ignore[index]
    assert httpx.get(f"{base}/stats").json()["decisions"] == 0


def test_a_client_that_leaves_mid_stream_cancels_the_upstream(
    serve: Serve, upstream: Start
) -> None:
    url, replay = upstream(speed=1)  # llama2-70b: seconds of streaming
    base = _gateway(serve, url)
    with _client(base).chat.completions.with_streaming_response.create(
        model="llama2-70b", messages=_ask(rows()[0]), stream=True
    ) as response:
        for _ in response.iter_lines():
            break  # the first event, then leave
    wait_until(lambda: replay.cancelled == 1, 10, "the upstream to see the client leave")


def test_the_upstream_never_shows_on_open_endpoints(serve: Serve, upstream: Start) -> None:
    url, _ = upstream(speed=1000)
    base = _gateway(serve, url)
    for path in ("/arms", "/stats", "/openapi.json"):
        assert url.removesuffix("/v1") not in httpx.get(f"{base}{path}").text, path


def test_calls_beyond_the_concurrency_bound_are_refused(
    serve: Serve, upstream: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """Each refused, and the bound reached said in the log once, not per call."""
    url, _ = upstream(speed=1)
    # llama2-70b streams for 10 s: its call holds the slot while the calls below are refused,
    # however slowly a loaded machine makes them
    slow, replay = upstream(speed=0.25)
    arms = arms_json(arm("llama2-7b", url), arm("llama2-13b", url), arm("llama2-70b", slow))
    base = _gateway(serve, url, arms=arms, gateway_max_concurrency=1)
    with _client(base).chat.completions.with_streaming_response.create(
        model="llama2-70b", messages=_ask(rows()[0]), stream=True
    ) as response:
        lines = response.iter_lines()
        next(lines)  # one call in flight, holding the only slot
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            for _ in range(5):
                with pytest.raises(openai.APIStatusError) as busy:
                    _client(base).chat.completions.create(model="auto", messages=_ask(rows()[1]))
                assert busy.value.status_code == 503, busy.value.body
                assert "BANDIT_GATEWAY_MAX_CONCURRENCY" in str(busy.value.body)
        response.close()
    said = [m for m in caplog.messages if "BANDIT_GATEWAY_MAX_CONCURRENCY" in m]
    assert said == [
        "gateway: 1 upstream calls in flight, its limit (BANDIT_GATEWAY_MAX_CONCURRENCY): "
        "calls beyond it are answered 503"
    ]
    wait_until(lambda: replay.cancelled == 1, 10, "the first call to end")
    # The slot is free again.
    fast = _client(base).chat.completions.with_raw_response.create(
        model="llama2-13b", messages=_ask(rows()[1]), max_tokens=5
    )
    assert fast.status_code == 200
    # and a call answered whole frees its slot too: one after another, each gets it
    for _ in range(3):
        again = _client(base).chat.completions.with_raw_response.create(
            model="llama2-7b", messages=_ask(rows()[1]), max_tokens=5
        )
        assert again.status_code == 200
