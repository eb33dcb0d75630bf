"""The structure-given learners of simulations/tabular.py on planted tables with known truth."""

from __future__ import annotations

import math

import numpy as np

from bandit_router.sim.dataset import Row
from simulations.tabular import contexts, play, restarted


def planted(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two contexts with opposite best arms (0.7 vs 0.4); arm 2 is poor everywhere."""
    rng = np.random.default_rng(seed)
    context = rng.integers(0, 2, n)
    means = np.where(context[:, None] == 0, [0.7, 0.4, 0.2], [0.4, 0.7, 0.2])
    return (rng.random((n, 3)) < means).astype(float), context


def test_a_per_context_learner_finds_each_contexts_best_arm() -> None:
    table, context = planted()
    per_context = play(table, context, 3.0, 1.0, 1.0, [0, 1, 2]).mean(axis=1)
    arm_level = play(table, context, math.inf, 1.0, 1.0, [0, 1, 2]).mean(axis=1)
    assert per_context.min() > 0.65, per_context  # near the 0.7 of the per-context best
    assert arm_level.max() < 0.6, arm_level  # one arm for both contexts earns about 0.55


def test_forgetting_recovers_from_a_change_that_remembering_does_not() -> None:
    table, context = planted(6000)
    table[3000:] = table[3000:, [1, 0, 2]]  # the best arms swap half-way, in time order
    keep = play(table, context, 3.0, 0.3, 1.0, [0, 1, 2], in_order=True)[:, 4000:].mean()
    forget = play(table, context, 3.0, 0.3, 0.998, [0, 1, 2], in_order=True)[:, 4000:].mean()
    assert forget > 0.65 > keep, (forget, keep)


def test_a_reset_at_the_change_recovers_without_forgetting() -> None:
    table, context = planted(6000)
    table[3000:] = table[3000:, [1, 0, 2]]
    reset = restarted(table, context, 3.0, 0.3, [0, 1, 2], [3000])
    assert reset.shape == (3, 6000)
    assert reset[:, 4000:].mean() > 0.65, reset[:, 4000:].mean()


def test_absent_arms_are_never_chosen() -> None:
    table, context = planted()
    table[:, 0] = np.nan  # the best arm of context 0 never offered
    earned = play(table, context, 3.0, 1.0, 0.999, [0])
    assert not np.isnan(earned).any()


def test_contexts_key_rows_by_their_app_fields() -> None:
    rows = [
        Row(line=i + 1, query="q", context=ctx, outcomes={})
        for i, ctx in enumerate([{"a": "x"}, {"a": "y"}, {"a": "x"}, {}])
    ]
    assert contexts(rows).tolist() == [0, 1, 0, 2]
