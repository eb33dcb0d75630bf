"""Arm-level learners (ts, ucb): learning, forgetting, snapshots."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bandit_router.features import extract
from bandit_router.policies.arm_level import ArmStats, bernoulli_kl, kl_ucb
from bandit_router.policies.base import Arm
from bandit_router.policies.registry import build_policy, load_policy, policy_names

ARMS = [Arm("a"), Arm("b"), Arm("c")]
X = extract("what is the capital of France?")


def _play(
    policy: object, means: dict[str, float], steps: int, rng: np.random.Generator
) -> list[str]:
    chosen = []
    for _ in range(steps):
        d = policy.choose(X, ARMS)  # type: ignore[attr-defined]
        reward = float(rng.random() < means[d.arm])
        policy.learn(X, ARMS, d.arm, d.probability, reward)  # type: ignore[attr-defined]
        chosen.append(d.arm)
    return chosen


def test_registered() -> None:
    assert {"ts", "ucb"} <= set(policy_names())


@pytest.mark.parametrize("spec", ["ts", "ucb"])
def test_learns_planted_best_arm(spec: str) -> None:
    rng = np.random.default_rng(0)
    chosen = _play(build_policy(spec, seed=1), {"a": 0.3, "b": 0.8, "c": 0.4}, 800, rng)
    assert chosen[-200:].count("b") >= 170


@pytest.mark.parametrize(
    "spec",
    ["ts:discount=0.99", "ucb:discount=0.99"],
)
def test_adapts_to_planted_change(spec: str) -> None:
    rng = np.random.default_rng(0)
    policy = build_policy(spec, seed=1)
    _play(policy, {"a": 0.3, "b": 0.8, "c": 0.4}, 600, rng)
    chosen = _play(policy, {"a": 0.9, "b": 0.2, "c": 0.4}, 600, rng)
    assert chosen[-200:].count("a") >= 160


@pytest.mark.parametrize("spec", ["ts", "ucb"])
def test_dumps_load_roundtrip_gives_identical_choices(spec: str) -> None:
    rng = np.random.default_rng(0)
    policy = build_policy(spec, seed=1)
    _play(policy, {"a": 0.3, "b": 0.6, "c": 0.5}, 300, rng)
    first, second = (
        load_policy(spec, policy.dumps(), seed=7),
        load_policy(spec, policy.dumps(), seed=7),
    )
    queries = [extract(f"question {i} about code") for i in range(50)]
    assert [first.choose(x, ARMS) for x in queries] == [second.choose(x, ARMS) for x in queries]
    assert first.dumps().split(b"\n")[:2] == policy.dumps().split(b"\n")[:2]  # the learned state


def test_propensity_is_share_of_draws() -> None:
    policy = build_policy("ts", seed=3)
    d = policy.choose(X, ARMS)
    assert abs(sum(d.probabilities.values()) - 1) < 1e-9
    assert d.probability == d.probabilities[d.arm] > 0


def test_new_arm_is_tried() -> None:
    rng = np.random.default_rng(0)
    policy = build_policy("ucb", seed=1)
    _play(policy, {"a": 0.3, "b": 0.6, "c": 0.5}, 100, rng)
    arms = [*ARMS, Arm("d")]
    assert policy.choose(X, arms).arm == "d"


def test_wrong_snapshot_is_refused() -> None:
    with pytest.raises(ValueError):
        load_policy("ucb", build_policy("ts").dumps())


def test_scale_keeps_means_and_spreads_and_shrinks_the_counts() -> None:
    stats = ArmStats()
    for arm, reward in [("a", 0.2), ("a", 0.6), ("b", 1.0), ("b", 0.0), ("a", 0.4)]:
        stats.add(arm, reward)

    def spread(arm: str) -> float:  # the arm's rewards' variance
        return stats.squares[arm] / stats.counts[arm] - stats.mean(arm) ** 2

    before = (stats.mean("a"), stats.mean("b"), spread("a"), spread("b"), stats.overall())
    stats.scale(0.5)
    assert stats.counts == {"a": 1.5, "b": 1.0} and stats.t == 2.5
    after = (stats.mean("a"), stats.mean("b"), spread("a"), spread("b"), stats.overall())
    assert after == pytest.approx(before)
    assert ArmStats.from_json(stats.to_json(), 1.0).counts == stats.counts


def test_a_discount_fades_every_arms_evidence_at_each_reward() -> None:
    """``discount`` d multiplies every arm's counts and sums (and its squares; its squared
    weights by d^2) at each reward learned, whichever arm it is for: the means stay, the counts
    shrink, and the effective size stays Kish's of the faded weights."""
    stats = ArmStats(discount=0.5)
    stats.add("a", 1.0)
    stats.add("a", 0.5)
    for _ in range(3):
        stats.add("b", 0.0)
    fade = 0.5**3
    assert stats.counts == pytest.approx({"a": 1.5 * fade, "b": 1.75})
    assert stats.sums == pytest.approx({"a": 1.0 * fade, "b": 0.0})
    assert stats.squares == pytest.approx({"a": 0.75 * fade, "b": 0.0})
    assert stats.t == pytest.approx(1.5 * fade + 1.75)
    assert stats.mean("a") == pytest.approx(1.0 / 1.5)
    assert stats.effective("a") == pytest.approx(1.5**2 / 1.25)  # the first weight faded to 0.5
    assert stats.effective("b") == pytest.approx(1.75**2 / (1 + 0.25 + 0.0625))


def test_without_a_discount_nothing_fades() -> None:
    stats = ArmStats()
    for arm, reward in [("a", 1.0), ("b", 0.0), ("b", 1.0)]:
        stats.add(arm, reward)
    assert (stats.counts, stats.sums, stats.t) == ({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 1.0}, 3.0)


@pytest.mark.parametrize("spec", ["ts:discount=0.9", "ucb:discount=0.9"])
def test_a_discounted_policy_restores_after_a_long_life(spec: str) -> None:
    """Its snapshot, with every part faded alike, passes the load's checks (an arm's squares
    at most its sums) and restores the same choices."""
    rng = np.random.default_rng(0)
    policy = build_policy(spec, seed=1)
    _play(policy, {"a": 0.3, "b": 0.8, "c": 0.5}, 300, rng)
    restored = load_policy(spec, policy.dumps(), seed=1)
    assert restored.dumps() == policy.dumps()
    assert restored.stats.counts == policy.stats.counts  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", ["ts", "ucb"])
@pytest.mark.parametrize("discount", ["0", "-0.5", "1.5", "2"])
def test_a_discount_outside_zero_to_one_is_refused(policy: str, discount: str) -> None:
    """0 would forget everything at once, above 1 make old rewards outweigh new ones: (0, 1]."""
    with pytest.raises(ValueError, match=re.escape("discount must be in (0, 1]")):
        build_policy(f"{policy}:discount={discount}")
    with pytest.raises(ValueError, match=re.escape("discount must be in (0, 1]")):
        ArmStats(float(discount))
    build_policy(f"{policy}:discount=1")
    build_policy(f"{policy}:discount=1e-9")


def test_an_arm_never_rewarded_counts_nothing() -> None:
    stats = ArmStats()
    stats.add("a", 1.0, weight=4.0)
    assert (stats.count("new"), stats.effective("new"), stats.mean("new")) == (0.0, 0.0, 0.5)


def test_scaling_keeps_the_effective_size_of_weighted_rewards() -> None:
    """Kish's n_eff = (sum w)^2 / sum w^2 does not change when every weight is scaled."""
    stats = ArmStats()
    for weight in (1.0, 3.0, 0.5):
        stats.add("a", 0.5, weight)
    assert stats.effective("a") == pytest.approx(4.5**2 / 10.25)
    stats.scale(0.25)
    assert stats.weights["a"] == pytest.approx(10.25 / 16)
    assert stats.effective("a") == pytest.approx(4.5**2 / 10.25)


def test_bernoulli_kl_is_the_divergence_of_two_coins() -> None:
    assert bernoulli_kl(0.5, 0.5) == 0.0
    assert bernoulli_kl(0.1, 0.9) == pytest.approx(0.8 * math.log(9))
    assert bernoulli_kl(0.5, 0.75) == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2))
    assert bernoulli_kl(0.25, 0.5) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert bernoulli_kl(1.0, 0.5) == pytest.approx(math.log(2))  # the ends clipped, not infinite
    assert 20 < bernoulli_kl(0.0, 1.0) < 30


@given(
    mean=st.floats(0, 1),
    count=st.floats(1, 1e4),
    budget=st.floats(0.01, 20),
)
def test_kl_ucb_is_the_largest_mean_within_the_budget(
    mean: float, count: float, budget: float
) -> None:
    """KL-UCB's index: the largest q >= mean with count * kl(mean, q) <= budget (to 1e-6)."""
    q = kl_ucb(mean, count, budget)
    assert mean <= q <= 1
    assert count * bernoulli_kl(mean, q) <= budget * (1 + 1e-9)
    if q < 1 - 1e-6:
        assert count * bernoulli_kl(mean, q + 1e-6) > budget


def test_thompson_samples_each_arm_from_its_beta_posterior() -> None:
    """Beta(1 + rewards, 1 + count - rewards): a uniform prior and fractional rewards."""
    policy = build_policy("ts", seed=0)
    for arm, reward in [("a", 1.0), ("a", 0.5), ("b", 0.0)]:
        policy.learn(X, ARMS, arm, 1.0, reward)
    alpha, beta = policy.posterior(ARMS)  # type: ignore[attr-defined]
    assert alpha.tolist() == [2.5, 1.0, 1.0] and beta.tolist() == [1.5, 2.0, 1.0]


def test_kl_ucb_tries_each_arm_once_then_follows_its_indices() -> None:
    """One reward each is enough: from then on the arm with the best index is chosen, alone."""
    policy = build_policy("ucb", seed=0)
    for arm, reward in [("a", 1.0), ("b", 0.0), ("c", 0.0)]:
        assert policy.choose(X, ARMS).probabilities[arm] > 0  # an arm not tried yet is first
        policy.learn(X, ARMS, arm, 1.0, reward)
    decision = policy.choose(X, ARMS)
    assert (decision.arm, decision.probability) == ("a", 1.0)


MAGIC = b"bandit-router arm-level 1\n"
SOUND = {
    "kind": "ts",
    "discount": 1.0,
    "sums": {"a": 1.0},
    "counts": {"a": 2.0},
    "squares": {"a": 1.0},
    "weights": {"a": 2.0},
    "t": 2.0,
}


def _edited(**parts: object) -> bytes:
    """A sound ts snapshot with ``parts`` replaced (None: left out), as JSON text."""
    state = {k: v for k, v in {**SOUND, **parts}.items() if v is not None}
    return MAGIC + json.dumps(state).encode()


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"", "not a saved ts policy"),
        (json.dumps(SOUND).encode(), "not a saved ts policy"),
        (MAGIC + b'{"kind": "ts", "sums": {}', "not JSON"),
        (MAGIC + b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (_edited(counts=None, sums={}), "counts is missing"),
        (_edited(counts=[2.0]), "counts is not an object of numbers"),
        (_edited(counts={"a": True}), "counts is not an object of numbers"),
        (_edited(counts={"a": 1e19}), "counts is not an object of numbers in [0, 1e+18]"),
        (_edited(counts={"a": math.inf}), "counts is not an object of numbers"),
        (_edited(weights="none"), "weights is not"),
        (_edited(squares=[]), "squares is not"),
        (_edited(t=True), "t is not a count"),
        (_edited(squares={"a": 1.0, "b": 0.5}), "squares or weights name an arm"),
        (_edited(weights={"b": 1.0}), "squares or weights name an arm"),
        (_edited(sums={"a": 1000.5}, counts={"a": 1000.0}, squares={}), "cannot sum"),
        (_edited(squares={"a": 1.5}), "cannot sum"),
    ],
)
def test_a_damaged_or_edited_snapshot_is_refused_naming_what_is_wrong(
    data: bytes, named: str
) -> None:
    """Each is a sound snapshot with one part broken: refused with a ValueError that names it,
    never loaded as a model (an empty one among them)."""
    load_policy("ts", _edited())  # the sound one loads
    with pytest.raises(ValueError, match=re.escape(named)):
        load_policy("ts", data)


def test_a_refusal_shows_a_long_value_cut_short() -> None:
    """What a hostile snapshot holds reaches the operator's message shortened, not whole."""
    counts = {f"arm-{i}": 1.0 for i in range(10_000)} | {"bad": -1.0}
    with pytest.raises(ValueError, match=r"\(\d+ characters\)$") as refused:
        load_policy("ts", _edited(counts=counts, sums={}))
    assert len(str(refused.value)) < 200


def test_a_snapshot_from_before_squares_and_weights_loads_with_none_learned() -> None:
    """An older snapshot has no ``squares`` or ``weights``: it loads, each arm's squares 0 and its
    effective size its count, rather than being refused or given squares it never learned."""
    policy = load_policy("ucb", _edited(kind="ucb", squares=None, weights=None))
    stats = policy.stats  # type: ignore[attr-defined]
    assert (stats.squares, stats.weights, stats.effective("a")) == ({"a": 0.0}, {"a": 0.0}, 2.0)
