"""The selector-power study's arithmetic on tables where the answer is known."""

from __future__ import annotations

import math

import numpy as np

from simulations.selector_power import events_needed, power


def test_learners_that_always_agree_can_never_be_told_apart() -> None:
    table = np.random.default_rng(0).random((100, 2))
    orders = [np.arange(100)]
    same = np.zeros((1, 100), dtype=np.int64)
    p = power(table, orders, same, same)
    assert p.disagree == 0 and math.isinf(p.full_information) and math.isinf(p.one_reward)
    assert p.contextual == p.arm_level


def test_a_sure_difference_takes_no_events_with_both_rewards_and_a_few_with_one() -> None:
    table = np.tile([1.0, 0.0], (50, 1))  # arm 0 always earns 1, arm 1 never
    orders = [np.arange(50)]
    p = power(table, orders, np.zeros((1, 50), np.int64), np.ones((1, 50), np.int64))
    assert p.disagree == 1 and p.full_information == 0
    # the coin estimate is +2 or 0 (mean 1, sd 1): 1.96^2 events
    assert math.isclose(p.one_reward, 1.96**2)
    assert math.isclose(p.contextual, 0.0) and math.isclose(p.arm_level, -100.0)


def test_the_events_needed_tell_the_better_learner_about_95_percent_of_the_time() -> None:
    # arm means 0.5 and 0.45; learner A always plays arm 0, learner B arm 1
    rng = np.random.default_rng(1)
    table = (rng.random((20000, 2)) < [0.5, 0.45]).astype(float)
    orders = [np.arange(20000)]
    p = power(table, orders, np.zeros((1, 20000), np.int64), np.ones((1, 20000), np.int64))
    n = round(p.one_reward)
    assert 2000 < n < 20000
    right = 0
    for trial in range(400):  # a fair-coin selector that sees n events, one reward each
        draws = np.random.default_rng(100 + trial)
        rows = draws.integers(0, 20000, n)
        coin = draws.random(n) < 0.5
        estimate = np.where(coin, 2 * table[rows, 0], -2 * table[rows, 1]).mean()
        right += estimate > 0
    assert 0.93 < right / 400 < 0.995  # one-sided at a two-sided 95% width: about 97.5%


def test_events_needed_grows_with_the_spread_and_shrinks_with_the_difference() -> None:
    assert events_needed(0.01, 0.5) > events_needed(0.02, 0.5)
    assert events_needed(0.01, 0.5) < events_needed(0.01, 1.0)
    assert math.isinf(events_needed(0.0, 0.5))
