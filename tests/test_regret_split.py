"""The loss split on a planted rule: its two parts add up to the simulator's loss against the
best fixed arm, and they tell the context's gain from the exploration's cost."""

from __future__ import annotations

import numpy as np

from bandit_router.rewards import RewardConfig
from bandit_router.settings import Settings
from bandit_router.sim import dataset, replay
from bandit_router.sim.hindsight import best_fixed_arm
from simulations.regret_split import split
from tests.conftest import planted_replay


def test_the_parts_add_up_to_the_simulators_loss() -> None:
    prepared, settings = planted_replay(400, 0, RewardConfig({"accuracy": 1.0})), Settings()
    rows = dataset.order(400, 3, False)
    stepper = replay.make_stepper("squarecb", prepared, 3, settings)
    earned = replay.run("squarecb", stepper, prepared, rows, 3).reward.sum()
    best = prepared.table[:, prepared.arm_index[best_fixed_arm(prepared)]].sum()
    parts = split("squarecb", settings, prepared, 3)
    assert parts.shape == (4, 2)
    assert np.isclose(parts.sum(), 100 * (best - earned) / best)


def test_the_rule_learned_shows_as_a_gain_and_exploring_as_a_cost() -> None:
    # two kinds of query, each with its own best arm (0.8 against 0.2): once the rule is learned
    # the greedy arm beats the best fixed one, and a draw away from it costs
    prepared = planted_replay(800, 1, RewardConfig({"accuracy": 1.0}))
    parts = np.mean([split("squarecb", Settings(), prepared, s) for s in (0, 1)], axis=0)
    assert parts[-1, 0] < -5, parts  # the last quarter's greedy part: a gain of over 5%
    assert parts[:, 1].sum() > 0, parts
    # a policy that never learns the rule gains nothing from it
    static = split("static", Settings(), prepared, 0)
    assert static[:, 1].sum() == 0 and static[:, 0].sum() >= 0, static


def test_the_cells_hold_the_late_greedy_loss() -> None:
    """By an app fact, the cells add up to the greedy loss after the first quarter (where the
    greedy arm beat the best fixed arm, a cell holds the gain as a negative loss)."""
    prepared, settings = planted_replay(400, 0, RewardConfig({"accuracy": 1.0})), Settings()
    cells: dict[tuple[str, str], list[float]] = {}
    parts = split("random", settings, prepared, 3, "kind", cells)
    assert cells and all(events > 0 for _, events in cells.values())
    best = prepared.table[:, prepared.arm_index[best_fixed_arm(prepared)]].sum()
    lost = sum(loss for loss, _ in cells.values())
    assert np.isclose(100 * lost / best, parts[1:, 0].sum())
