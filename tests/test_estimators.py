"""The estimators against values computed by hand on tiny logs, and the DR reward model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bandit_router.features import Features
from bandit_router.offline.estimators import Z95, Estimate, RewardModel, doubly_robust, ips, snips
from bandit_router.policies.linucb import dense_vector

# Three events: the target picks the logged arm in events 1 and 3 only.
TARGET = [1.0, 0.0, 1.0]  # pi(a_i | x_i)
LOGGED = [0.5, 0.5, 0.25]  # p_i
REWARDS = [1.0, 1.0, 0.5]
# Importance weights w = [2, 0, 4]; IPS terms w * r = [2, 0, 2].


def test_ips_by_hand() -> None:
    e = ips(TARGET, LOGGED, REWARDS)
    assert e.value == pytest.approx(4 / 3)
    # sample sd of [2, 0, 2]: sqrt(((2/3)^2 + (4/3)^2 + (2/3)^2) / 2) = sqrt(4/3)
    half = Z95 * math.sqrt(4 / 3) / math.sqrt(3)
    assert [e.low, e.high] == pytest.approx([4 / 3 - half, 4 / 3 + half])
    assert e.n == 3


def test_snips_by_hand() -> None:
    e = snips(TARGET, LOGGED, REWARDS)
    assert e.value == pytest.approx((2 * 1 + 0 + 4 * 0.5) / (2 + 0 + 4))  # 2/3
    # delta-method terms: v + w (r - v) / mean(w), with mean(w) = 2
    terms = [2 / 3 + w * (r - 2 / 3) / 2 for w, r in zip([2, 0, 4], REWARDS, strict=True)]
    assert terms == pytest.approx([1.0, 2 / 3, 1 / 3])
    half = Z95 * (1 / 3) / math.sqrt(3)  # sd of [1, 2/3, 1/3] is 1/3
    assert [e.low, e.high] == pytest.approx([2 / 3 - half, 2 / 3 + half])


def test_doubly_robust_by_hand() -> None:
    predicted = [0.5, 0.5, 0.5]  # rhat(x_i, a_i)
    direct = [0.5, 0.2, 0.6]  # sum_a pi(a | x_i) rhat(x_i, a)
    e = doubly_robust(TARGET, LOGGED, REWARDS, predicted, direct)
    # terms: 0.5 + 2 * 0.5 = 1.5; 0.2 + 0 = 0.2; 0.6 + 4 * 0 = 0.6
    assert e.value == pytest.approx((1.5 + 0.2 + 0.6) / 3)
    assert e.n == 3 and e.low < e.value < e.high


def test_a_perfect_reward_model_makes_dr_exact() -> None:
    rewards = [0.2, 0.9, 0.4, 0.7]
    e = doubly_robust([1, 1, 1, 1], [0.5, 0.25, 1.0, 0.1], rewards, rewards, rewards)
    assert e.value == pytest.approx(0.55)


def test_snips_when_the_target_never_agrees_with_the_log() -> None:
    e = snips([0, 0], [0.5, 0.5], [1, 0])
    assert math.isnan(e.value)
    assert e.to_json() == {"value": None, "low": None, "high": None, "n": 2}


def test_one_event_has_no_interval_and_bad_input_is_refused() -> None:
    e = ips([1.0], [0.5], [1.0])
    assert e.value == 2.0 and math.isnan(e.low)
    assert e.to_json() == {"value": 2.0, "low": None, "high": None, "n": 1}
    with pytest.raises(ValueError, match="propensities must be in"):
        ips([1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="propensities must be in"):
        ips([1.0], [1.5], [1.0])
    with pytest.raises(ValueError, match="equally long"):
        ips([1.0, 1.0], [0.5], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        ips([], [], [])


def test_two_events_have_an_interval() -> None:
    e = ips([1.0, 1.0], [0.5, 0.5], [1.0, 0.0])  # terms [2, 0]: mean 1, sd sqrt(2)
    assert [e.value, e.low, e.high, e.n] == pytest.approx([1.0, 1.0 - Z95, 1.0 + Z95, 2])


def test_estimate_is_a_plain_record() -> None:
    assert Estimate(0.5, 0.4, 0.6, 10).to_json() == {"value": 0.5, "low": 0.4, "high": 0.6, "n": 10}


def test_reward_model_learns_per_arm_and_starts_at_one_half() -> None:
    model = RewardModel()
    code = Features(stats=(0.5, 0.3, 0, 1, 0, 0, 0, 0, 0, 0))
    plain = Features(stats=(0.5, 0.3, 0, 0, 0, 0, 0, 0, 0, 0))
    assert model.predict(code, ["14b"]) == {"14b": 0.5}
    for _ in range(200):
        model.learn(code, "14b", 0.9)
        model.learn(plain, "14b", 0.1)
    assert model.predict(code, ["14b"])["14b"] == pytest.approx(0.9, abs=0.02)
    assert model.predict(plain, ["14b", "4b"]) == {"14b": pytest.approx(0.1, abs=0.02), "4b": 0.5}
    with pytest.raises(ValueError, match="l2 must be > 0, got 0"):
        RewardModel(l2=0)


def test_reward_model_predictions_stay_in_the_reward_range() -> None:
    """Rewards 0 at one value of a statistic and 1 at twice it: the fitted line runs past [0, 1]
    further along (and back to 0) and the predictions stop at 1 and 0 (DR's terms assume it)."""
    model = RewardModel()
    low = Features(stats=(0.1, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    high = Features(stats=(0.2, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    for _ in range(200):
        model.learn(low, "4b", 0.0)
        model.learn(high, "4b", 1.0)
    assert model.predict(low, ["4b"])["4b"] < 0.5 < model.predict(high, ["4b"])["4b"]
    far = Features(stats=(0.5, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    back = Features(stats=(0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    assert model.predict(far, ["4b"]) == {"4b": 1.0}
    assert model.predict(back, ["4b"]) == {"4b": 0.0}


def test_reward_model_penalty_and_its_bytes() -> None:
    """One event learned: theta . v = (r - 0.5) |v|^2 / (l2 + |v|^2), so the penalty shows; the
    bytes give back the same predictions for every arm (two, to read each one's slice)."""
    x = Features(stats=(0.5, 0.3, 0, 1, 0, 0, 0, 0, 0, 0), tokens=(3, 7))
    model = RewardModel(dim=12, l2=4.0)
    model.learn(x, "14b", 1.0)
    square = float(dense_vector(x, 12) @ dense_vector(x, 12))
    assert model.predict(x, ["14b"])["14b"] == pytest.approx(0.5 + 0.5 * square / (4 + square))
    for _ in range(5):
        model.learn(x, "4b", 0.0)
    loaded = RewardModel.loads(model.dumps())
    assert (loaded.dim, loaded.l2) == (12, 4.0)
    assert loaded.predict(x, ["14b", "4b", "7b"]) == model.predict(x, ["14b", "4b", "7b"])
    assert loaded.predict(x, ["4b"])["4b"] < 0.5 < loaded.predict(x, ["14b"])["14b"]


@pytest.mark.parametrize(
    "data",
    [
        b'{"dim": 11, "l2": 1, "arms": []}\n',  # no slot left for words
        b'{"dim": 1025, "l2": 1, "arms": []}\n',  # wider than MAX_DIM
        b'{"dim": 12, "l2": Infinity, "arms": []}\n',
        b'{"dim": 12, "l2": 1, "arms": []}',  # no header line
        b'{"dim": 12, "l2": 1, "arms": ["a"]}\n' + bytes(8 * 155),  # one value short
        b'{"dim": 12, "l2": 1, "arms": ["a"]}\n' + np.full(156, np.nan).tobytes(),
    ],
)
def test_reward_model_bytes_it_cannot_have_written_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="reward model"):
        RewardModel.loads(data)


@pytest.mark.parametrize("dim", [12, 1024])
def test_reward_model_widths_at_the_bounds_load(dim: int) -> None:
    assert RewardModel.loads(f'{{"dim": {dim}, "l2": 1, "arms": []}}\n'.encode()).dim == dim
