"""GET /metrics: the Prometheus text parses, and every family moves as traffic flows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bandit_router.cli.main import main
from bandit_router.store.keys import KEY_LEASE
from tests.conftest import ClientFactory, RedisProcess, SettingsFactory, use_settings, wait_until

FAMILIES = {
    "bandit_decisions",
    "bandit_exploratory_decisions",
    "bandit_rewards_received",
    "bandit_rewards_learned",
    "bandit_reward",
    "bandit_request_duration_seconds",
    "bandit_exploration_rate",
    "bandit_model_version",
    "bandit_learner_lag_events",
    "bandit_degraded",
    "bandit_redis_errors",
}


def scrape(client: TestClient) -> dict[str, float]:
    """Every sample as ``name{label=value,...}`` -> value."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    names = set()
    for family in text_string_to_metric_families(response.text):
        names.add(family.name)
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    assert names >= FAMILIES, FAMILIES - names
    return samples


def _traffic(client: TestClient, n: int, rewarded_arm: str = "14b") -> None:
    for i in range(n):
        d = client.post("/choose", json={"query": f"question number {i}"}).json()
        reward = 1.0 if d["arm"] == rewarded_arm else 0.2
        assert client.post("/reward", json={"event_id": d["event_id"], "reward": reward}).is_success


def test_every_family_moves_with_traffic(make_client: ClientFactory) -> None:
    client = make_client(policy="egreedy:epsilon=0.6")
    before = scrape(client)
    assert before["bandit_decisions_total{arm=14b,policy=egreedy:epsilon=0.6}"] == 0
    assert before["bandit_degraded{}"] == 0
    _traffic(client, 60)
    client.post("/choose", json={"query": "one without a reward yet"})
    after = scrape(client)
    decisions = [v for k, v in after.items() if k.startswith("bandit_decisions_total{")]
    assert sum(decisions) == 61
    explored = [v for k, v in after.items() if k.startswith("bandit_exploratory_decisions_total")]
    assert sum(explored) > 0
    assert 0 < after["bandit_exploration_rate{}"] < 1
    received = sum(v for k, v in after.items() if k.startswith("bandit_rewards_received_total"))
    learned = sum(v for k, v in after.items() if k.startswith("bandit_rewards_learned_total"))
    assert received == learned == 60
    assert after["bandit_model_version{}"] == 60
    assert after["bandit_reward_count{arm=14b}"] > 0
    assert after["bandit_reward_bucket{arm=14b,le=1.0}"] == after["bandit_reward_count{arm=14b}"]
    assert after["bandit_reward_sum{arm=14b}"] == after["bandit_reward_count{arm=14b}"]
    assert after["bandit_request_duration_seconds_count{endpoint=choose}"] == 61
    assert after["bandit_request_duration_seconds_count{endpoint=reward}"] == 60
    assert after["bandit_request_duration_seconds_sum{endpoint=reward}"] > 0
    assert after["bandit_learner_lag_events{}"] == 0


def test_repeated_event_id_is_one_decision(client: TestClient) -> None:
    for _ in range(3):
        client.post("/choose", json={"query": "hi", "event_id": "same"})
    decisions = [v for k, v in scrape(client).items() if k.startswith("bandit_decisions_total{")]
    assert sum(decisions) == 1


def test_learner_lag_is_what_the_served_model_has_not_learned(
    make_client: ClientFactory, make_settings: SettingsFactory
) -> None:
    # Two processes on one prefix, as with --workers 2: the first holds the learner lease, the
    # second only follows published snapshots (and publishes come rarely here).
    settings = make_settings(publish_s=3600, snapshot_every=1000, model_refresh_s=3600)
    learner = make_client(settings)
    follower = make_client(settings.model_copy(update={"learn_in_workers": False}))
    _traffic(follower, 5)
    assert scrape(follower)["bandit_learner_lag_events{}"] == 5
    deadline = time.monotonic() + 10
    while scrape(learner)["bandit_learner_lag_events{}"] != 0:
        assert time.monotonic() < deadline, "the learner did not catch up"
        time.sleep(0.05)
    assert scrape(learner)["bandit_model_version{}"] == 5


def test_learner_lag_moves_after_a_restore_from_another_log(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A model restored from another log (a warm start) has learned more events than this log
    holds: the lag was held at 0, so events left unlearned (the learner down) did not show in
    it until they outnumbered the model's version."""
    source = make_settings()
    _traffic(make_client(source), 10)
    file = tmp_path / "model.json"
    use_settings(monkeypatch, source)
    assert main(["snapshot", str(file)]) == 0
    target = make_settings(learn_in_workers=False)  # the learner apart, and not running
    use_settings(monkeypatch, target)
    assert main(["restore", str(file)]) == 0
    client = make_client(target)
    assert scrape(client)["bandit_learner_lag_events{}"] == -10
    _traffic(client, 3)
    assert scrape(client)["bandit_learner_lag_events{}"] == -7


def test_redis_errors_are_counted(make_client: ClientFactory, redis_process: RedisProcess) -> None:
    client = make_client(redis_url=redis_process.url)
    _traffic(client, 2)
    redis_process.kill()
    choice = client.post("/choose", json={"query": "hello"})  # degraded: served from memory
    assert choice.status_code == 200
    assert choice.json()["degraded"] is True
    assert client.post("/reward", json={"event_id": "x", "reward": 1}).status_code == 503
    after = scrape(client)
    assert after["bandit_redis_errors_total{operation=choose}"] == 1
    assert after["bandit_redis_errors_total{operation=reward}"] == 1
    assert after["bandit_redis_errors_total{operation=counters}"] == 1
    assert after["bandit_model_version{}"] == 2
    assert after["bandit_degraded{}"] == 1
    wait_until(
        lambda: scrape(client).get("bandit_redis_errors_total{operation=learner}", 0) >= 1,
        5,
        "the learner's failed step counted",
    )


def _learned(client: TestClient) -> float:
    return sum(v for k, v in scrape(client).items() if k.startswith("bandit_rewards_learned_total"))


def test_rewards_learned_counts_a_new_learner_s_catch_up_not_the_start_up_replay(
    make_client: ClientFactory, make_settings: SettingsFactory
) -> None:
    """The HELP said the start-up replay was counted, the README that the catch-up of a process
    taking the lease was not: each was the other way round."""
    settings = make_settings(publish_s=3600, snapshot_every=1000, model_refresh_s=3600)
    first = make_client(settings.model_copy(update={"learner_lease_s": 3600}))  # the learner
    behind = make_client(settings.model_copy(update={"learner_lease_s": 0.6}))  # a follower
    _traffic(first, 4)  # learned as they came, never published
    assert _learned(first) == 4
    replayed = make_client(settings.model_copy(update={"learner_lease_s": 3600}))
    assert scrape(replayed)["bandit_model_version{}"] == 4  # the log replayed at start
    assert _learned(replayed) == 0
    help_line = next(
        line
        for line in replayed.get("/metrics").text.splitlines()
        if line.startswith("# HELP bandit_rewards_learned_total ")
    )
    assert "catch-up" in help_line and "not the start-up replay" in help_line, help_line
    # The lease lapses (its key gone): the follower whose model is behind takes it and learns
    # the four events it lacks from the log.
    r = redis.Redis.from_url(settings.redis_url or "")
    r.delete(KEY_LEASE.format(p="{" + settings.key_prefix + "}"))
    r.close()
    wait_until(lambda: behind.get("/healthz").json()["learner"], 10, "the follower to lead")
    assert scrape(behind)["bandit_model_version{}"] == 4
    assert _learned(behind) == 4


def test_a_redis_error_is_counted_for_the_deployment_the_request_named(
    make_client: ClientFactory, redis_process: RedisProcess, tmp_path: Path
) -> None:
    """/stats?deployment=support with Redis down: its failure was counted under default's
    series (on Redis Cluster the two may be on different masters, and only one failing)."""
    deployments = tmp_path / "deployments.toml"
    deployments.write_text('[deployments.support]\narms = "small,large"\n')
    client = make_client(redis_url=redis_process.url, deployments_file=str(deployments))
    redis_process.kill()
    assert client.get("/stats", params={"deployment": "support"}).status_code == 503
    after = scrape(client)
    stats = "bandit_redis_errors_total{deployment=%s,operation=stats}"
    assert after.get(stats % "support") == 1
    assert after.get(stats % "default", 0) == 0
