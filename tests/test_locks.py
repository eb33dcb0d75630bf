"""The locked-seed check of simulations/locks.py on arm sequences where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.locks import LOCKED, is_locked, main, rewards_to_separate, tail_arm


def test_the_tail_is_the_last_sixth_of_the_run() -> None:
    chosen = np.array([0] * 500 + [1] * 100, dtype=np.int64)  # the last sixth all arm 1
    assert tail_arm(chosen, 3) == (1, 1.0)
    chosen[-10:] = 2
    top, share = tail_arm(chosen, 3)
    assert top == 1 and share == 0.9


def test_a_worse_arm_with_most_of_the_tail_is_a_lock_and_the_best_arm_never_is() -> None:
    assert is_locked(top=1, share=LOCKED, best=0)
    assert not is_locked(top=1, share=LOCKED - 0.01, best=0)  # still exploring the others
    assert not is_locked(top=0, share=1.0, best=0)


def test_the_rewards_to_tell_two_arms_apart_grow_as_their_gap_shrinks() -> None:
    x = np.array([1.0, 0.0] * 50)  # mean 0.5, variance 0.25
    y = np.array([1.0] * 40 + [0.0] * 60)  # mean 0.4, variance 0.24
    table = np.column_stack([x, y])
    assert rewards_to_separate(table, 0, 1) == pytest.approx(8 * 0.245 / 0.1**2)
    assert rewards_to_separate(table, 1, 0) == pytest.approx(196)
    absent = np.vstack([table, [[np.nan, np.nan]] * 7])  # rows an arm has no outcome in
    assert rewards_to_separate(absent, 0, 1) == pytest.approx(196)
    closer = np.column_stack([x, np.array([1.0] * 48 + [0.0] * 52)])
    assert rewards_to_separate(closer, 0, 1) == pytest.approx(8 * (0.25 + 0.2496) / 2 / 0.02**2)
    assert rewards_to_separate(np.column_stack([x, x]), 0, 1) == float("inf")


def test_a_short_run_still_has_a_tail() -> None:
    assert tail_arm(np.array([2, 2, 0], dtype=np.int64), 3) == (0, 1.0)


def test_an_unknown_reward_setting_is_refused_naming_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--rewards", "default,bogus", "squarecb"])
    err = capsys.readouterr().err
    assert "unknown --rewards ['bogus']" in err and "accuracy, rating" in err
