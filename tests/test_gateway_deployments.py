"""The gateway of a service with several deployments, through the official OpenAI SDK: each
deployment's calls go to its own arms' upstreams, are measured, rewarded and learned in its own
keys, and opened by its own keys; a request names its deployment as ``/choose`` does
(``?deployment=``, the body's ``deployment``) or by ``model``. The app under uvicorn, a replay
upstream for ``default`` and ``support``, a scripted one for ``coding`` (to read what it got),
real Redis."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest

from tests.conftest import wait_until
from tests.live import close_sdk_clients, sdk_client, serve
from tests.upstreams import (
    DONE,
    PRICES,
    Script,
    Scripted,
    Upstream,
    chunk,
    rows,
    scripted,
    upstream,
)

__all__ = ["close_sdk_clients", "scripted", "serve", "upstream"]  # the fixtures, imported

Serve = Callable[..., str]
KEY = "service-key-1"  # BANDIT_API_KEYS: every deployment's
SUPPORT_KEY = "support-key-1"  # support's own
CODING_KEY = "coding-key-1"  # coding's own
USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "coder",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "def f(): pass"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": USAGE,
}
USAGE_CHUNK = {**ANSWER, "object": "chat.completion.chunk", "choices": [], "usage": USAGE}
STREAMED = (chunk("def f(): pass", "coder"), b"data: " + orjson.dumps(USAGE_CHUNK) + b"\n\n")


def _coder(request: dict[str, Any]) -> Script:
    """The coding upstream's answer, streamed when asked."""
    if request.get("stream"):
        return Script((*STREAMED, DONE))
    return Script((orjson.dumps(ANSWER),), content_type="application/json")


class Service:
    """A served gateway of three deployments and each one's upstreams."""

    def __init__(self, base: str, default: Upstream, support: Upstream, coding: Scripted) -> None:
        self.base = base
        self.default, self.support, self.coding = default[1], support[1], coding

    def calls(self) -> tuple[int, int, int]:
        """Requests each deployment's upstream got: default's, support's, coding's."""
        return self.default.requests, self.support.requests, self.coding.requests

    def stats(self, deployment: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.base}/stats", params={"deployment": deployment, "window": 50})
        assert answer.status_code == 200, answer.text
        stats: dict[str, Any] = answer.json()
        return stats


def _arm(name: str, url: str, model: str) -> dict[str, Any]:
    return {
        "name": name,
        "usd_per_mtok": PRICES[model],
        "upstream": {"base_url": url, "model": model},
    }


@pytest.fixture
def service(
    serve: Serve,
    upstream: Callable[..., Upstream],
    scripted: Callable[..., tuple[str, Scripted]],
    tmp_path: Path,
) -> Service:
    default = upstream(speed=1000)
    support = upstream(speed=1000)
    coding_url, coding = scripted({"coder-a": _coder, "coder-b": _coder})
    tables = {
        "support": {
            "arms": [
                _arm("s-small", support[0], "llama2-7b"),
                _arm("s-large", support[0], "llama2-70b"),
            ],
            # what the gateway measures completes the event: learned at once
            "reward_weights": {"latency": 0.5, "cost": 0.5},
            "api_keys": [SUPPORT_KEY],
            "policy": "egreedy",
        },
        "coding": {
            "arms": [
                {"name": n, "usd_per_mtok": 2.0, "upstream": {"base_url": coding_url, "model": n}}
                for n in ("coder-a", "coder-b")
            ],
            "api_keys": [CODING_KEY],
        },
    }
    path = tmp_path / "deployments.json"
    path.write_text(json.dumps({"deployments": tables}))
    arms = [_arm(name, default[0], name) for name in ("llama2-7b", "llama2-13b")]
    base = serve(
        arms=json.dumps(arms),
        api_keys=KEY,
        deployments_file=str(path),
        reward_weights="accuracy=0.4,latency=0.3,cost=0.3",  # default's: waits for the app's
    )
    return Service(base, default, support, coding)


def _ask(i: int = 0) -> list[Any]:
    return [{"role": "user", "content": rows()[i]["query"]}]


def _text(stream: Any) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_each_deployment_calls_its_own_upstreams_and_learns_in_its_own_keys(
    service: Service,
) -> None:
    client = sdk_client(service.base, KEY)
    create = client.chat.completions.with_raw_response.create
    # model naming the deployment: support's router chooses among support's arms
    raw = create(model="support", messages=_ask(0))
    assert raw.headers["x-bandit-arm"] in ("s-small", "s-large")
    assert raw.headers["x-bandit-event-id"].startswith("support:")
    assert raw.parse().model in ("llama2-7b", "llama2-70b")  # the support upstream's answer
    assert service.calls() == (0, 1, 0)
    # ?deployment= (extra_query), streamed; `auto` is the deployment's choice there
    with client.chat.completions.create(
        model="auto", messages=_ask(1), stream=True, extra_query={"deployment": "support"}
    ) as stream:
        assert _text(stream)
    assert service.calls() == (0, 2, 0)
    # the body's deployment (extra_body), as /choose takes it: not forwarded
    raw = create(model="auto", messages=_ask(2), extra_body={"deployment": "coding"})
    assert raw.headers["x-bandit-arm"] in ("coder-a", "coder-b")
    assert raw.headers["x-bandit-event-id"].startswith("coding:")
    assert raw.parse().choices[0].message.content == "def f(): pass"
    sent = orjson.loads(service.coding.bodies[-1])
    assert sent == {"model": raw.headers["x-bandit-arm"], "messages": _ask(2)}
    # streamed by model; then an arm of coding, named, with coding named
    with client.chat.completions.create(model="coding", messages=_ask(3), stream=True) as stream:
        assert _text(stream) == "def f(): pass"
    raw = create(model="coder-b", messages=_ask(4), extra_query={"deployment": "coding"})
    assert raw.headers["x-bandit-arm"] == "coder-b"
    assert orjson.loads(service.coding.bodies[-1])["model"] == "coder-b"
    assert service.calls() == (0, 2, 3)
    # default, as before: auto and its arms, on its own upstream
    raw = create(model="auto", messages=_ask(5))
    assert raw.headers["x-bandit-arm"] in ("llama2-7b", "llama2-13b")
    assert ":" not in raw.headers["x-bandit-event-id"]
    assert service.calls() == (1, 2, 3)

    # Each deployment's decisions and rewards are in its own keys. Support's weights count
    # latency and cost, which the gateway measured: its events are final and learned already.
    def learned(name: str, n: int) -> bool:
        return int(service.stats(name)["events_learned"]) == n

    wait_until(lambda: learned("support", 2), 20, "support to learn its two events")
    support = service.stats("support")
    assert (support["decisions"], support["rewards_accepted"]) == (2, 2)
    assert set(support["arms"]) == {"s-small", "s-large"}
    coding, default = service.stats("coding"), service.stats("default")
    assert coding["decisions"] == 3 and set(coding["arms"]) == {"coder-a", "coder-b"}
    assert default["decisions"] == 1 and set(default["arms"]) >= {"llama2-7b", "llama2-13b"}
    # default's weights wait for the app's accuracy: nothing final yet, then the app's reward
    assert default["rewards_accepted"] == 0
    event_id = raw.headers["x-bandit-event-id"]
    reward = httpx.post(
        f"{service.base}/reward",
        json={"event_id": event_id, "accuracy": 1},
        headers={"x-api-key": KEY},
    ).json()
    assert reward["status"] == "final" and set(reward["parts"]) == {
        "latency_ms",
        "cost_usd",
        "accuracy",
    }
    wait_until(lambda: learned("default", 1), 20, "default to learn its event")  # /stats: cached
    assert service.stats("default")["rewards_accepted"] == 1
    assert service.stats("support")["rewards_accepted"] == 2

    # the upstream calls' metrics carry their deployment, as every series does
    metrics = httpx.get(f"{service.base}/metrics").text
    counted = re.findall(
        r'^bandit_gateway_upstream_seconds_count\{(.*measure="total".*)\} (\S+)$', metrics, re.M
    )
    by_deployment: dict[str, float] = {}
    for labels, value in counted:
        found = re.search(r'deployment="([^"]+)"', labels)
        assert found is not None, labels
        by_deployment[found[1]] = by_deployment.get(found[1], 0) + float(value)
    assert by_deployment == {"default": 1, "support": 2, "coding": 3}


def test_a_deployments_key_opens_its_gateway_calls_only(service: Service) -> None:
    support = sdk_client(service.base, SUPPORT_KEY)
    raw = support.chat.completions.with_raw_response.create(model="support", messages=_ask())
    assert raw.headers["x-bandit-event-id"].startswith("support:")
    # default, and coding, are not support's key's: 401, naming the deployment
    for query in (None, {"deployment": "coding"}):
        with pytest.raises(openai.AuthenticationError) as refused:
            support.chat.completions.create(model="auto", messages=_ask(), extra_query=query)
        assert "deployment" in str(refused.value)
    with pytest.raises(openai.AuthenticationError):
        support.chat.completions.create(model="coding", messages=_ask(), stream=True)
    with pytest.raises(openai.AuthenticationError):
        sdk_client(service.base, CODING_KEY).chat.completions.create(
            model="support", messages=_ask()
        )
    assert service.calls() == (0, 1, 0)
    # /v1/models lists what the key opens: default's models and the other deployments' names;
    # a deployment's own arms with ?deployment=
    everything = [m.id for m in sdk_client(service.base, KEY).models.list()]
    assert everything == ["auto", "llama2-7b", "llama2-13b", "support", "coding"]
    assert [m.id for m in support.models.list()] == ["support"]
    listed = support.models.list(extra_query={"deployment": "support"})
    assert [m.id for m in listed] == ["auto", "support", "s-small", "s-large"]
    assert support.models.retrieve("support").id == "support"
    with pytest.raises(openai.AuthenticationError):
        support.models.list(extra_query={"deployment": "default"})
    with pytest.raises(openai.NotFoundError):
        support.models.retrieve("auto")  # default's: not this key's


def test_a_deployment_named_two_ways_must_be_one(service: Service) -> None:
    client = sdk_client(service.base, KEY)
    create = client.chat.completions.create
    with pytest.raises(openai.BadRequestError) as refused:
        create(
            model="auto",
            messages=_ask(),
            extra_query={"deployment": "coding"},
            extra_body={"deployment": "support"},
        )
    assert refused.value.body["param"] == "deployment"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        create(model="support", messages=_ask(), extra_query={"deployment": "coding"})
    error: Any = refused.value.body
    assert error["param"] == "model"
    assert "coder-a" in error["message"]  # the named deployment's models, to choose from
    with pytest.raises(openai.BadRequestError) as refused:
        create(model="support", messages=_ask(), stream=True, extra_body={"deployment": "coding"})
    with pytest.raises(openai.BadRequestError) as refused:
        create(model="auto", messages=_ask(), extra_query={"deployment": "billing"})
    error = refused.value.body
    assert error["param"] == "deployment"
    assert "valid: default, support, coding" in error["message"]
    # an arm of another deployment than the request's: 404, saying how to name it
    with pytest.raises(openai.NotFoundError) as missing:
        create(model="s-small", messages=_ask())
    assert "?deployment=support" in str(missing.value)
    assert service.calls() == (0, 0, 0)  # nothing decided, no upstream called


def test_names_a_gateway_request_could_not_tell_apart_are_refused_at_start(
    tmp_path: Path,
) -> None:
    """An arm with an upstream named as a deployment, or a gateway model named as another
    deployment, could never be asked for by that name (``model`` names the deployment)."""
    from bandit_router.deployments import DeploymentsError, load_deployments
    from bandit_router.settings import Settings

    upstream = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    cases: list[tuple[dict[str, Any], list[Any] | None, str]] = [
        ({"support": {}}, [{"name": "support", "upstream": upstream}], "arm 'support'"),
        (
            {"support": {"arms": [{"name": "coding", "upstream": upstream}]}, "coding": {}},
            None,
            "arm 'coding'",
        ),
        ({"auto": {}}, None, "BANDIT_GATEWAY_MODEL 'auto'"),
        ({"support": {"gateway_model": "coding"}, "coding": {}}, None, "gateway_model"),
    ]
    for i, (tables, arms, message) in enumerate(cases):
        path = tmp_path / f"d{i}.json"
        path.write_text(json.dumps({"deployments": tables}))
        values: dict[str, Any] = {"deployments_file": str(path)}
        if arms is not None:
            values["arms"] = json.dumps(arms)
        with pytest.raises(DeploymentsError) as refused:
            load_deployments(Settings.model_validate(values))
        assert message in str(refused.value), refused.value
    # an arm without an upstream is no gateway model: it may share a deployment's name
    path = tmp_path / "fine.json"
    path.write_text(json.dumps({"deployments": {"support": {}}}))
    load_deployments(Settings.model_validate({"deployments_file": str(path), "arms": "support,a"}))


def test_parts_a_deployments_weights_do_not_count_are_said_by_its_own_settings(
    serve: Serve,
    upstream: Callable[..., Upstream],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A named deployment's gateway records a part its weights do not count: the start-up line
    names that deployment's settings as its other messages do, not the environment's alone."""
    url = upstream(speed=1000)[0]
    tables = {
        "quiet": {
            "arms": [_arm("q-small", url, "llama2-7b")],
            "gateway_parts": "cost",
            "reward_weights": {"accuracy": 1},
        }
    }
    path = tmp_path / "deployments.json"
    path.write_text(json.dumps({"deployments": tables}))
    with caplog.at_level(logging.INFO):
        serve(arms=json.dumps([_arm("llama2-7b", url, "llama2-7b")]), deployments_file=str(path))
    assert [m for m in caplog.messages if "do not count" in m] == [
        "gateway: deployment quiet's gateway_parts: BANDIT_DEPLOYMENTS_FILE, or "
        "BANDIT_GATEWAY_PARTS when it sets none, records cost, which its reward weights, "
        "accuracy=1 (deployment quiet's reward_weights: BANDIT_DEPLOYMENTS_FILE, or "
        "BANDIT_REWARD_WEIGHTS when it sets none), do not count: recorded only for requests "
        "whose x-bandit-preference counts it (balanced, cost)"
    ]
