"""The full-feedback study on a planted rule: its deployed run is the simulator's, and more
feedback learns the rule better."""

from __future__ import annotations

import numpy as np

from bandit_router.rewards import RewardConfig
from bandit_router.settings import Settings
from bandit_router.sim import dataset, replay
from bandit_router.sim.dataset import Prepared
from simulations.full_feedback import play
from tests.conftest import planted_replay


def planted(n: int) -> Prepared:
    """Two kinds of query, each with its own best arm (0.8 against 0.2 for the others)."""
    return planted_replay(n, 0, RewardConfig({"accuracy": 1.0}))


def test_as_deployed_is_the_simulators_run_of_the_same_policy() -> None:
    prepared, settings = planted(400), Settings()
    rows = dataset.order(400, 2, False)
    stepper = replay.make_stepper("squarecb", prepared, 2, settings)
    simulated = replay.run("squarecb", stepper, prepared, rows, 2).reward
    assert np.array_equal(play("squarecb", settings, prepared, 2, "deployed"), simulated)


def test_more_feedback_learns_the_rule_sooner() -> None:
    prepared, settings = planted(600), Settings()
    earned = {
        mode: np.mean([play("squarecb", settings, prepared, s, mode)[:300].mean() for s in (0, 1)])
        for mode in ("deployed", "matched", "full")
    }
    # the rule earns 0.8, one arm for both kinds 0.5: full feedback is near the rule from the start
    assert earned["full"] > 0.72 and earned["full"] > earned["deployed"], earned
    assert earned["matched"] > 0.6, earned
