"""Settings changed between restarts of a deployment whose state is already in Redis: what an
operator sees (the totals, the log lines) after the service comes back with the change."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis

from bandit_router.cli.main import main
from tests.conftest import SettingsFactory, use_settings
from tests.live import Servers


@contextmanager
def running(make_settings: SettingsFactory, **overrides: Any) -> Iterator[httpx.Client]:
    """The app under uvicorn on loopback with these settings; a client on it; stopped after."""
    servers = Servers()
    port = servers.start_service(make_settings(**overrides), log_level="warning")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        servers.stop()


def rewarded(client: httpx.Client, n: int) -> list[str]:
    """``n`` decisions, each rewarded at once (status final); the arms chosen."""
    arms = []
    for i in range(n):
        d = client.post("/choose", json={"query": f"question number {i % 3}"}).json()
        r = client.post("/reward", json={"event_id": d["event_id"], "reward": 0.5})
        assert r.status_code == 200 and r.json()["status"] == "final", r.text
        arms.append(d["arm"])
    return arms


@pytest.mark.parametrize("arms_after", ["a,c", "a,b2,c", "c,a"])
def test_totals_count_the_decisions_of_arms_no_longer_served(
    make_settings: SettingsFactory, arms_after: str
) -> None:
    """An arm removed or renamed: "decisions made, ever" and "rewards final and logged, ever"
    still count its decisions (they counted only the arms served now)."""
    common = {"key_prefix": make_settings().key_prefix, "policy": "random"}
    with running(make_settings, arms="a,b,c", **common) as client:
        chosen = rewarded(client, 60)
    assert "b" in chosen
    with running(make_settings, arms=arms_after, **common) as client:
        stats = client.get("/stats").json()
    assert (stats["decisions"], stats["rewards_accepted"]) == (60, 60)
    assert list(stats["arms"]) == arms_after.split(",")  # per arm: the arms served


ADMIN = {"x-api-key": "an-admin-key-of-16+"}


def test_a_stored_switch_that_overrides_a_changed_policy_setting_is_said_at_start(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A policy switched with /admin/policy (or promoted) stays in force over BANDIT_POLICY
    across restarts, as README says; a start whose BANDIT_POLICY names another policy says so,
    naming both and how to serve the setting's (it served the override without a word)."""
    common = {"key_prefix": make_settings().key_prefix, "admin_key": ADMIN["x-api-key"]}
    with running(make_settings, policy="squarecb", **common) as client:
        rewarded(client, 10)
        switched = client.post("/admin/policy", json={"policy": "egreedy"}, headers=ADMIN)
        assert switched.status_code == 200, switched.text
    with (
        caplog.at_level(logging.INFO, logger="bandit_router"),
        running(make_settings, policy="egreedy", **common) as client,  # the same: no word
    ):
        assert client.get("/stats").json()["policy"] == "egreedy"
    assert not [r for r in caplog.records if "BANDIT_POLICY" in r.getMessage()]
    with (
        caplog.at_level(logging.INFO, logger="bandit_router"),
        running(make_settings, policy="linucb", **common) as client,
    ):
        assert client.get("/stats").json()["policy"] == "egreedy"  # the switch wins
    said = [r.getMessage() for r in caplog.records if "BANDIT_POLICY" in r.getMessage()]
    assert len(said) == 1, said
    assert all(w in said[0] for w in ("linucb", "egreedy", "/admin/policy")), said[0]


def _said(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if all(w in r.getMessage() for w in words)]


def test_a_hash_key_set_after_the_redis_secret_served_is_said_at_start(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """BANDIT_HASH_KEY set on a deployment whose words were hashed with the secret in Redis:
    the model's word features do not carry over, and processes still without the key hash
    words the other way. The start says so, naming the key to delete once every process has
    BANDIT_HASH_KEY (it said nothing)."""
    prefix = make_settings().key_prefix
    with running(make_settings, key_prefix=prefix) as client:
        rewarded(client, 10)
    secret_key = "{" + prefix + "}:word_secret"
    r = redis.Redis.from_url(str(make_settings().redis_url))
    stored = r.get(secret_key)
    r.close()
    assert isinstance(stored, bytes)
    with (
        caplog.at_level(logging.INFO, logger="bandit_router"),
        running(make_settings, key_prefix=prefix, hash_key=stored.decode()) as client,
    ):
        rewarded(client, 1)  # the same secret, copied into the setting: nothing to say
    assert not _said(caplog, "BANDIT_HASH_KEY")
    with (
        caplog.at_level(logging.INFO, logger="bandit_router"),
        running(make_settings, key_prefix=prefix, hash_key="an operator's word key") as client,
    ):
        rewarded(client, 1)
    said = _said(caplog, "BANDIT_HASH_KEY", secret_key)
    assert len(said) == 1, said


def test_a_hash_key_unset_on_a_deployment_that_learned_under_it_is_said_at_start(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """BANDIT_HASH_KEY unset again: the first process makes a word secret in Redis, under which
    the words the model learned hash elsewhere. The start says so (it said nothing); a new
    deployment's first start, with nothing learned, says nothing."""
    prefix = make_settings().key_prefix
    with (
        caplog.at_level(logging.INFO, logger="bandit_router"),
        running(make_settings, key_prefix=prefix, hash_key="an operator's word key") as client,
    ):
        rewarded(client, 10)
    with (
        caplog.at_level(logging.INFO, logger="bandit_router"),
        running(make_settings) as client,  # another prefix: a new deployment
    ):
        rewarded(client, 1)
    assert not _said(caplog, "BANDIT_HASH_KEY")
    with (
        caplog.at_level(logging.INFO, logger="bandit_router"),
        running(make_settings, key_prefix=prefix) as client,
    ):
        rewarded(client, 1)
    said = _said(caplog, "BANDIT_HASH_KEY", "10 events")
    assert len(said) == 1, said


def test_restoring_a_model_trained_on_the_deployments_own_log_does_not_say_its_words_are_lost(
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """export, train on it, restore into the same deployment: the log's words were hashed with
    that deployment's key, so its word features carry over (README, Warm start). restore said
    they were "learned afresh": the file cannot tell, and restore now says what it knows."""
    settings = make_settings(policy="random")
    with running(make_settings, key_prefix=settings.key_prefix, policy="random") as client:
        rewarded(client, 30)
    use_settings(monkeypatch, settings)
    log, model = tmp_path / "events.dsjson", tmp_path / "trained.json"
    assert main(["export", "--out", str(log)]) == 0
    assert main(["train", str(log), "--out", str(model), "--policy", "squarecb"]) == 0
    capsys.readouterr()
    assert main(["restore", str(model)]) == 0
    said = capsys.readouterr().out
    assert "another word key" not in said and "learned afresh" not in said, said
    assert "does not say which word key" in said, said


def test_a_reward_for_a_deployment_no_longer_served_names_it(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A deployment taken out of the file, and a reward for one of its decisions: 404, naming
    the deployment and the file (it said only "unknown or expired"); served again, the decision
    is still there and the reward is taken."""
    file = tmp_path / "deployments.toml"
    file.write_text('[deployments.support]\narms = "4b,14b"\n')
    prefix = make_settings().key_prefix
    with running(make_settings, key_prefix=prefix, deployments_file=str(file)) as client:
        d = client.post("/choose", json={"query": "hi", "deployment": "support"}).json()
    assert d["event_id"].startswith("support:")
    with running(make_settings, key_prefix=prefix) as client:
        r = client.post("/reward", json={"event_id": d["event_id"], "reward": 1})
    assert r.status_code == 404, r.text
    assert all(w in r.json()["detail"] for w in ("'support'", "BANDIT_DEPLOYMENTS_FILE")), r.text
    with running(make_settings, key_prefix=prefix, deployments_file=str(file)) as client:
        r = client.post("/reward", json={"event_id": d["event_id"], "reward": 1})
    assert r.status_code == 200 and r.json()["status"] == "final", r.text


def test_a_follower_serving_the_learners_other_policy_says_so_once(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """`serve` with BANDIT_POLICY=egreedy and BANDIT_LEARN_IN_WORKERS=false beside a `learn`
    started with squarecb: the service served squarecb, the learner's snapshots, and no line
    said that its setting was not in force. Said once now, by the process whose setting differs
    (a spec written otherwise that runs the same says nothing)."""
    import asyncio

    from bandit_router.rewards import RewardParts
    from bandit_router.service.router import Router
    from bandit_router.store.repository import Store
    from bandit_router.store.transport import connect

    prefix = make_settings().key_prefix

    async def opened(name: str | None = None, **overrides: Any) -> Router:
        settings = make_settings(key_prefix=prefix, **overrides)
        store = Store(connect(settings.redis_url or ""), prefix, 60, 10_000)
        return await Router.open(settings, store, name=name)

    async def scenario() -> None:
        leader = await opened(policy="squarecb")
        other = await opened(policy="egreedy", learn_in_workers=False)
        twin = await opened(policy="squarecb:gamma_scale=20", learn_in_workers=False)
        # a named deployment's policy comes from the deployments file, its message says so
        named = await opened("coding", policy="softmax", learn_in_workers=False)
        for i in range(2):
            d = await leader.choose(f"question number {i}")
            await leader.reward(d.event_id, RewardParts(reward=0.5))
            await leader.learner.publish()
            assert await other.refresh() and await twin.refresh() and await named.refresh()
        assert str(other.model.spec) == "squarecb"
        for router in (leader, other, twin, named):
            await router.learner.close()
            await router.store.close()

    with caplog.at_level(logging.INFO, logger="bandit_router"):
        asyncio.run(scenario())
    said = _said(caplog, "not this process's policy")
    assert len(said) == 2, said
    assert "serving policy squarecb" in said[0] and "policy egreedy (BANDIT_POLICY)" in said[0]
    assert (
        "policy softmax (deployment coding's policy: BANDIT_DEPLOYMENTS_FILE, or BANDIT_POLICY "
        "when it sets none)"
    ) in said[1], said[1]
