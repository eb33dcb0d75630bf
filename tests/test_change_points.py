"""The change-point study on a planted change: its deployed run is the simulator's, a refresh
keeps what was learned but learns faster, and a refresh at the change recovers sooner."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bandit_router.policies.base import Arm
from bandit_router.policies.registry import build_policy
from bandit_router.policies.vw import VWPolicy
from bandit_router.rewards import RewardConfig, RewardParts
from bandit_router.settings import Settings
from bandit_router.sim import dataset, replay
from bandit_router.sim.dataset import Prepared, Replay, Row, prepare
from simulations.change_points import REFRESHED_AT, play, refresh, without_rates
from tests.conftest import PLANTED_QUERIES

ARMS = ("4b", "7b", "14b")


def drifting(n: int, change: int, seed: int = 0) -> Prepared:
    """``PLANTED_QUERIES`` in time order; at row ``change`` the two kinds' best arms swap."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        query, best = rng.choice(PLANTED_QUERIES)
        if i >= change:
            best = {"4b": "14b", "14b": "4b"}[best]
        outcomes = {
            a: RewardParts(accuracy=float(rng.random() < (0.8 if a == best else 0.2))) for a in ARMS
        }
        rows.append(Row(i + 1, query, {}, outcomes, phase="after" if i >= change else "before"))
    return prepare(Replay(rows, [Arm(a) for a in ARMS]), RewardConfig({"accuracy": 1.0}))


def test_as_deployed_is_the_simulators_run_of_the_same_policy() -> None:
    prepared, settings = drifting(400, 200), Settings()
    stepper = replay.make_stepper("squarecb", prepared, 3, settings)
    simulated = replay.run("squarecb", stepper, prepared, dataset.order(400, 3, True), 3).reward
    assert np.array_equal(play("squarecb", settings, prepared, 3, "deployed"), simulated)


def test_a_refresh_keeps_the_weights_and_learns_faster() -> None:
    prepared, settings = drifting(600, 600), Settings()
    # l2 0: with --l2, VW's predict-only dump (what a refresh reloads) shifts the predictions a
    # little (about a tenth of a gap at 0.01); full snapshots stay exact.
    spec = without_rates("squarecb:l2=0")
    policies = [build_policy(spec, settings, 1) for _ in range(2)]
    for policy in policies:
        assert isinstance(policy, VWPolicy)
        for i in range(600):
            x, arms = prepared.features[i], prepared.eligible[i]
            arm = ARMS[i % 3]
            policy.learn(x, arms, arm, 1.0, float(prepared.table[i, prepared.arm_index[arm]]))
    kept, other = policies
    assert isinstance(kept, VWPolicy) and isinstance(other, VWPolicy)
    fresh = refresh(other, spec, settings, 1)
    assert fresh.learned == REFRESHED_AT
    fresh.learned = kept.learned  # the same exploration, to compare what the model predicts
    x, arms = prepared.features[0], prepared.eligible[0]
    before = kept.choose(x, arms).probabilities
    assert fresh.choose(x, arms).probabilities == pytest.approx(before, rel=0.05)
    greedy = max(before, key=before.__getitem__)
    for policy in (kept, fresh):
        for _ in range(5):  # the greedy arm fails five times on this query
            policy.learn(x, arms, greedy, 1.0, 0.0)
    assert fresh.choose(x, arms).probabilities[greedy] < kept.choose(x, arms).probabilities[greedy]


def test_a_refresh_at_the_change_recovers_sooner() -> None:
    prepared, settings = drifting(3000, 2000), Settings()
    after = {
        mode: np.mean(
            [play("squarecb", settings, prepared, s, mode)[2000:2400].mean() for s in (0, 1)]
        )
        for mode in ("deployed", "refreshed", "restarted")
    }
    assert after["refreshed"] > after["deployed"], after
    assert after["restarted"] > after["deployed"], after
