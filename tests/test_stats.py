"""GET /stats: totals, settings, and what the newest logged events say, through HTTP."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ClientFactory

REWARD = {"4b": 0.2, "7b": 0.5, "14b": 0.9}
LATENCY = {"4b": 300.0, "7b": 600.0, "14b": 1200.0}


def _traffic(client: TestClient, n: int) -> None:
    for i in range(n):
        d = client.post("/choose", json={"query": f"what is item {i}?"}).json()
        arm = d["arm"]
        body = {"event_id": d["event_id"], "reward": REWARD[arm], "latency_ms": LATENCY[arm]}
        if i % 2:
            body["rating"] = 4
        assert client.post("/reward", json=body).status_code == 200


def test_recent_window_per_arm_series_and_baselines(make_client: ClientFactory) -> None:
    client = make_client(policy="random")
    _traffic(client, 300)
    stats = client.get("/stats", params={"window": 300, "buckets": 6}).json()
    assert stats["decisions"] == stats["rewards_accepted"] == 300
    recent = stats["recent"]
    assert recent["events"] == 300
    assert recent["exploration_rate"] == 0  # uniform: every arm is (tied) greedy
    assert sum(a["share"] for a in recent["arms"].values()) == pytest.approx(1)
    for arm, a in recent["arms"].items():
        assert a["mean_reward"] == pytest.approx(REWARD[arm])
        assert a["latency_ms"] == pytest.approx(LATENCY[arm])
        assert a["rating"] == 4
        assert a["accuracy"] is None
    series = recent["series"]
    assert len(series["t"]) == len(series["reward"]) == len(series["events"]) == 6
    assert sum(series["events"]) == 300
    for i in range(6):
        assert sum(series["share"][arm][i] for arm in REWARD) == pytest.approx(1)
    baselines = recent["baselines"]
    assert baselines["events"] == 300
    assert baselines["logged"]["value"] == pytest.approx(recent["mean_reward"])
    policies = baselines["policies"]
    assert set(policies) == {"random", "static", "fixed:arm=4b", "fixed:arm=7b", "fixed:arm=14b"}
    for arm, reward in REWARD.items():
        estimate = policies[f"fixed:arm={arm}"]
        assert estimate["snips"]["value"] == pytest.approx(reward)  # every logged p is 1/3
        assert estimate["ips"]["value"] == pytest.approx(reward, abs=0.15)
        assert estimate["ips"]["low"] < estimate["ips"]["value"] < estimate["ips"]["high"]
    # Uniform random is the logging policy itself: every estimator gives the logged mean.
    assert policies["random"]["snips"]["value"] == pytest.approx(recent["mean_reward"])


def test_window_is_the_newest_events(make_client: ClientFactory) -> None:
    client = make_client(policy="fixed:arm=7b")
    _traffic(client, 30)
    stats = client.get("/stats", params={"window": 10}).json()
    assert stats["recent"]["events"] == 10
    assert stats["recent"]["arms"]["7b"]["share"] == 1
    never = stats["recent"]["baselines"]["policies"]["fixed:arm=4b"]
    assert never["ips"]["value"] == 0  # the log never shows 4b: IPS sees no reward for it
    assert never["snips"]["value"] is None
    assert client.get("/stats", params={"window": 0}).json()["recent"]["events"] == 0


def test_settings_in_force(make_client: ClientFactory) -> None:
    client = make_client(policy="egreedy:epsilon=0.2", reward_weights="accuracy=1")
    settings = client.get("/stats").json()["settings"]
    assert settings["policy"] == "egreedy:epsilon=0.2"
    assert settings["policy_params"]["epsilon"] == 0.2
    assert settings["reward_weights"] == {"accuracy": 1.0}
    assert [a["name"] for a in settings["arms"]] == ["4b", "7b", "14b"]
    assert "redis_url" not in settings


def test_empty_log(client: TestClient) -> None:
    recent = client.get("/stats").json()["recent"]
    assert recent["events"] == 0
    assert recent["mean_reward"] is None
    assert recent["series"]["t"] == []


def test_bad_window_is_refused(client: TestClient) -> None:
    response = client.get("/stats", params={"window": -1})
    assert response.status_code == 422
    assert response.json()["field"] == "query.window"
