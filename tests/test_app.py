"""Every endpoint through HTTP (the app in-process, its lifespan running), good and bad input."""

from __future__ import annotations

import gc
import math
import weakref
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from bandit_router.http.app import create_app
from bandit_router.http.contract import UNEXPECTED, ChooseRequest, failure
from bandit_router.rewards import MAX_COST_USD, MAX_LATENCY_MS
from bandit_router.service.challengers import PromotionView
from tests.conftest import ClientFactory, SettingsFactory


def _choose(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/choose", json={"query": "What is 2+2?", **body})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def test_round_trip(client: TestClient) -> None:
    decision = _choose(client, features={"tier": "pro", "n": 2, "beta": True})
    assert set(decision) == {
        "event_id",
        "arm",
        "probability",
        "probabilities",
        "policy",
        "model_version",
        "degraded",
    }
    assert decision["degraded"] is False
    assert decision["arm"] in {"4b", "7b", "14b"}
    assert decision["probability"] == decision["probabilities"][decision["arm"]]
    assert decision["policy"] == "squarecb"  # the default policy
    response = client.post(
        "/reward",
        json={"event_id": decision["event_id"], "latency_ms": 500, "accuracy": 1, "rating": 5},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "final"
    assert body["parts"] == {"accuracy": 1.0, "rating": 5.0, "latency_ms": 500.0}
    assert body["reward"] == pytest.approx(0.6 + 0.2 + 0.2 * 0.75)
    assert body["model_version"] == 1
    stats = client.get("/stats").json()
    assert stats["arms"][decision["arm"]] == {
        "decisions": 1,
        "rewards": 1,
        "mean_reward": pytest.approx(body["reward"]),
    }
    assert stats["rewards_accepted"] == 1


def test_same_event_id_returns_the_same_decision(client: TestClient) -> None:
    first = _choose(client, event_id="req-1")
    for _ in range(5):
        assert _choose(client, event_id="req-1", query="something else") == first
    assert client.get("/stats").json()["decisions"] == 1


def test_same_event_id_with_other_arms_is_409(client: TestClient) -> None:
    first = _choose(client, event_id="req-2", arms=["4b", "7b"])
    assert _choose(client, event_id="req-2", arms=["7b", "4b", "7b"]) == first  # the same set
    assert _choose(client, event_id="req-2") == first  # no subset: whatever it was decided over
    for other in (["4b", "14b"], ["4b"], ["4b", "7b", "14b"]):
        response = client.post("/choose", json={"query": "q", "event_id": "req-2", "arms": other})
        assert response.status_code == 409, other
        body = response.json()
        assert body["field"] == "arms"
        assert "'req-2' was decided over the arms 4b, 7b, not " + ", ".join(other) in body["detail"]
    everything = _choose(client, event_id="req-3")
    assert _choose(client, event_id="req-3", arms=["14b", "7b", "4b"]) == everything
    assert (
        client.post("/choose", json={"query": "q", "event_id": "req-3", "arms": ["7b"]}).status_code
        == 409
    )


def test_arm_subset(client: TestClient) -> None:
    decision = _choose(client, arms=["7b", "14b", "7b"])
    assert set(decision["probabilities"]) == {"7b", "14b"}


def test_second_reward_is_409_and_unknown_event_404(client: TestClient) -> None:
    event_id = _choose(client)["event_id"]
    assert client.post("/reward", json={"event_id": event_id, "reward": 1}).status_code == 200
    again = client.post("/reward", json={"event_id": event_id, "reward": 1})
    assert again.status_code == 409
    assert "already has a reward" in again.json()["detail"]
    missing = client.post("/reward", json={"event_id": "nope", "reward": 1})
    assert missing.status_code == 404
    assert (
        missing.json()
        == {
            "detail": missing.json()["detail"],
            "field": "event_id",
        }
        and "unknown or expired event_id 'nope'" in missing.json()["detail"]
        and "BANDIT_REWARD_WAIT_S" in missing.json()["detail"]  # the setting, as it is set
    )


def test_a_lone_surrogate_in_a_feature_value_is_refused() -> None:
    """The JSON parser refuses a lone surrogate's escape in a body (a 400); the gateway
    validates features it built itself, as Python strings, against the contract."""
    with pytest.raises(ValidationError, match=r"features\.k holds a lone surrogate"):
        ChooseRequest.model_validate({"query": "q", "features": {"k": "\ud800"}})


def test_a_feature_that_is_nan_is_refused_by_the_contract_itself() -> None:
    """Not only by the router's own check behind it: NaN passes a comparison of its magnitude."""
    with pytest.raises(ValidationError, match=r"features\.k must be a finite number"):
        ChooseRequest.model_validate({"query": "q", "features": {"k": math.nan}})


def test_features_at_their_limits_are_taken(client: TestClient) -> None:
    features = {"s": "v" * 256, "big": 1e15, "small": -1e15, "n": 10**15}
    response = client.post("/choose", json={"query": "q", "features": features})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({}, "query", "Field required"),
        ({"query": ""}, "query", "at least 1 character"),
        ({"query": "   "}, "query", "only whitespace"),
        ({"query": 5}, "query", "valid string"),
        ({"query": "x" * 40_000}, "query", "limit is 32768"),
        ({"query": "q", "arms": ["4b", "70b"]}, "arms", "unknown arm '70b'; valid: 4b, 7b, 14b"),
        ({"query": "q", "arms": []}, "arms", "at least 1 item"),
        ({"query": "q", "arms": ["4b"] * 65}, "arms", "at most 64 items"),
        (
            {"query": "q", "features": {"nested": {"a": 1}}},
            "features",
            "features.nested must be a string, number or boolean, got object",
        ),
        ({"query": "q", "features": {"k": None}}, "features", "features.k must be a string"),
        ({"query": "q", "features": {"k": "v" * 300}}, "features", "the limit is 256"),
        ({"query": "q", "features": {"k": "v" * 257}}, "features", "k is 257 characters"),
        ({"query": "q", "features": {"k": 10**15 + 1}}, "features", "k must be a finite number"),
        ({"query": "q", "features": {"k": -(10**15) - 1}}, "features", "k must be a finite"),
        ({"query": "q", "features": {"k": [1]}}, "features", "boolean, got array"),
        ({"query": "q", "features": {"k": 1.5e15}}, "features", "k must be a finite number"),
        ({"query": "q", "features": {"k": -1.5e15}}, "features", "k must be a finite number"),
        ({"query": "q", "features": {f"k{i}": i for i in range(65)}}, "features", "limit is 64"),
        (
            {"query": "q", "features": {"k" * 65: 1}},
            "features",
            "a key: String should have at most",
        ),
        ({"query": "q", "features": {"": 1}}, "features", "a key: String should have at least"),
        ({"query": "q", "event_id": "bad id!"}, "event_id", "pattern"),
        ({"query": "q", "qurey": "typo"}, "qurey", "unknown field"),
    ],
)
def test_bad_choose_input(client: TestClient, body: dict[str, Any], field: str, words: str) -> None:
    response = client.post("/choose", json=body)
    assert response.status_code == 422, response.text
    data = response.json()
    assert data["field"] == field
    assert words in data["detail"]


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({}, "body", "send at least one reward part"),
        ({"accuracy": 1.5}, "accuracy", "less than or equal to 1"),
        ({"rating": 0}, "rating", "greater than or equal to 1"),
        ({"rating": 6}, "rating", "less than or equal to 5"),
        ({"latency_ms": -3}, "latency_ms", "greater than or equal to 0"),
        ({"reward": "high"}, "reward", "valid number"),
        ({"cost_usd": 0.01}, "reward", "no weighted reward part present"),
        ({"acuracy": 1}, "acuracy", "unknown field"),
    ],
)
def test_bad_reward_input(
    client: TestClient, extra: dict[str, Any], field: str | None, words: str
) -> None:
    event_id = _choose(client)["event_id"]
    response = client.post("/reward", json={"event_id": event_id, **extra})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert words in response.json()["detail"]
    # the event is still waiting: a valid reward afterwards is accepted
    assert client.post("/reward", json={"event_id": event_id, "reward": 0.5}).status_code == 200


# Each reward part's bounds, both taken.
REWARD_BOUNDS = {
    "accuracy": (0.0, 1.0),
    "rating": (1.0, 5.0),
    "latency_ms": (0.0, MAX_LATENCY_MS),
    "cost_usd": (0.0, MAX_COST_USD),
    "reward": (0.0, 1.0),
}


@pytest.mark.parametrize("part", sorted(REWARD_BOUNDS))
def test_a_reward_part_is_taken_at_its_bounds_and_refused_just_past_them(
    client: TestClient, part: str
) -> None:
    """``reward`` is sent beside the part, so that a part no weight counts is still an answer."""
    low, high = REWARD_BOUNDS[part]
    for value in (low, high):
        event_id = _choose(client)["event_id"]
        response = client.post("/reward", json={"event_id": event_id, "reward": 0.5, part: value})
        assert response.status_code == 200, (value, response.text)
        assert response.json()["parts"][part] == value
    event_id = _choose(client)["event_id"]
    for value in (math.nextafter(low, -math.inf), math.nextafter(high, math.inf)):
        response = client.post("/reward", json={"event_id": event_id, "reward": 0.5, part: value})
        assert response.status_code == 422, (value, response.text)
        assert response.json()["field"] == part


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity"])
@pytest.mark.parametrize("field", [*sorted(REWARD_BOUNDS), "features"])
def test_a_number_that_is_not_finite_is_refused_as_such(
    client: TestClient, field: str, value: bytes
) -> None:
    """The parser reads NaN and Infinity, which JSON has not: each is refused as not finite
    (a bound alone takes no NaN either, but says "less than or equal to 1" of it)."""
    if field == "features":
        path, raw = "/choose", b'{"query": "q", "features": {"k": %s}}' % value
    else:
        path, raw = "/reward", b'{"event_id": "e-1", "%s": %s}' % (field.encode(), value)
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert "finite number" in response.json()["detail"]


# An event id of the most characters, each kind the pattern takes among them.
LONGEST_EVENT_ID = "a.b_c:D-9" + "x" * 119


def test_an_event_id_of_128_characters_is_taken_and_one_of_129_refused(
    client: TestClient,
) -> None:
    assert _choose(client, event_id=LONGEST_EVENT_ID)["event_id"] == LONGEST_EVENT_ID
    response = client.post("/reward", json={"event_id": LONGEST_EVENT_ID, "reward": 0.5})
    assert response.status_code == 200, response.text
    for path, body in (("/choose", {"query": "q"}), ("/reward", {"reward": 0.5})):
        response = client.post(path, json={**body, "event_id": LONGEST_EVENT_ID + "x"})
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "event_id"
        assert "at most 128 characters" in response.json()["detail"]


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/choose", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["field"] == "body"
    assert "not valid JSON" in response.json()["detail"]


@pytest.mark.parametrize(
    "declared",
    ["Application/JSON", "application/json ; charset=utf-8", "application/json;charset=UTF-8"],
)
def test_the_json_type_is_taken_in_any_case_and_with_a_charset(
    client: TestClient, declared: str
) -> None:
    response = client.post("/choose", content=b'{"query": "q"}', headers={"content-type": declared})
    assert response.status_code == 200, response.text


def test_health_and_arms(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["redis"] == "ok"
    arms = client.get("/arms").json()["arms"]
    assert arms[0] == {"name": "4b", "params_b": 4.0, "usd_per_mtok": 0.1}


def test_restart_keeps_what_was_learned(make_client: ClientFactory, make_settings: Any) -> None:
    settings = make_settings(policy="linucb")
    client = make_client(settings)
    for i in range(60):
        d = _choose(client, query=f"translate word {i}")
        reward = 1.0 if d["arm"] == "7b" else 0.0
        client.post("/reward", json={"event_id": d["event_id"], "reward": reward})
    before = client.get("/healthz").json()["model_version"]
    client.__exit__(None, None, None)  # lifespan end: final snapshot

    again = make_client(settings)
    assert again.get("/healthz").json()["model_version"] == before == 60
    picks = [_choose(again, query=f"translate word {i}")["arm"] for i in range(100, 110)]
    assert picks == ["7b"] * 10


def test_an_app_closed_is_freed_with_its_models(make_settings: SettingsFactory) -> None:
    """Nothing process-wide keeps an app once it is closed: FastAPI caches its endpoint
    functions for the process, so an endpoint that held the app (the docs page did) kept it and
    its VW models (tens of MB) alive, and a test run grew to gigabytes."""
    with TestClient(create_app(make_settings())) as client:
        assert client.get("/docs").status_code == 200
        assert client.post("/choose", json={"query": "hello"}).status_code == 200
        app = weakref.ref(client.app)
    del client
    gc.collect()
    assert app() is None


def test_a_validation_error_of_ours_is_a_500_not_the_clients_422(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client's bodies are validated where they are read; a pydantic error raised anywhere
    else is the service's own (a record it built that does not fit its view), so the client is
    not told to fix its request."""
    try:
        PromotionView.model_validate({"at": "not a time"})
    except ValidationError as e:
        error = e
    status, body = failure(error, None, "admin/promote")
    assert status == 500
    assert orjson.loads(body) == {"detail": UNEXPECTED, "field": None}
    assert "unhandled error on admin/promote" in caplog.text


@pytest.mark.parametrize(("method", "path"), [("POST", "/choose/"), ("GET", "/stats/")])
def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_clients_host(
    client: TestClient, method: str, path: str
) -> None:
    """Starlette redirected ``/choose/`` to ``/choose`` with a Location built from the request's
    Host (and a trusted proxy's X-Forwarded-Proto): it could point at plain http or at another
    host, and a client that follows redirects sends its key there."""
    response = client.request(
        method, path, headers={"host": "elsewhere.example"}, follow_redirects=False
    )
    assert response.status_code == 404, response.headers
    assert "location" not in response.headers
