from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bandit_router.features import Features, extract, token_hash
from bandit_router.policies.arm_level import ArmStats
from bandit_router.policies.base import Arm
from bandit_router.policies.registry import build_policy, load_policy, parse_policy_spec
from bandit_router.policies.vw import (
    KEPT_SHARED,
    VW_OPTIONS,
    VWPolicy,
    adf_example,
    arm_line,
    featured_namespaces,
    predicted_costs,
    shared_line,
    thin_dominated,
    vw_arguments,
    vw_options,
)

X = Features(stats=(0.5, 0.25, 0.0, 1.0, 0, 0, 0, 0, 0, 0), tokens=(11, 22))


H = token_hash  # an app number's feature is its key's hash, an app string's key=value's


@pytest.mark.parametrize(
    ("x", "line"),
    [
        (X, "shared |Q chars:0.5 words:0.25 code:1 |W 11 22"),
        (
            Features(stats=(0.0,) * 10, numeric={"n": 2.0}, categorical={"tier": "pro"}),
            f"shared |Q |N {H('n')}:2 |C {H('tier=pro')}",
        ),
        # six significant digits, a negative and a large app number, every one of several facts
        (
            Features(
                stats=(0.1234567, 0.0, 0.0, 0.0, 0.0, 0.03125, 0.0, 0.0, 0.0, 0.0),
                tokens=(5,),
                numeric={"temp": -2.5, "budget": 1234.5},
                categorical={"tier": "pro", "lang": "de"},
            ),
            f"shared |Q chars:0.123457 digits:0.03125 |W 5 |N {H('temp')}:-2.5"
            f" {H('budget')}:1234.5 |C {H('tier=pro')} {H('lang=de')}",
        ),
        # VW's separators in an app fact's key or value do not reach the line: both are hashed
        (
            Features(stats=(0.0,) * 10, numeric={"a|b c:d": 1.0}, categorical={"k |Q": "v:1 |W"}),
            f"shared |Q |N {H('a|b c:d')}:1 |C {H('k |Q=v:1 |W')}",
        ),
    ],
)
def test_shared_line_exact(x: Features, line: str) -> None:
    assert shared_line(x) == line


@given(
    stats=st.lists(st.sampled_from([0.0, 0.5]), min_size=10, max_size=10),
    tokens=st.lists(st.integers(1, 99), max_size=3, unique=True),
    numeric=st.dictionaries(
        st.sampled_from("ab"), st.sampled_from([0.0, 2.0, -2.0, 1e-200, -1e-45])
    ),
    categorical=st.dictionaries(st.sampled_from("cd"), st.just("v")),
)
def test_featured_namespaces_are_those_shared_line_fills(
    stats: list[float],
    tokens: list[int],
    numeric: dict[str, float],
    categorical: dict[str, str],
) -> None:
    x = Features(tuple(stats), tuple(sorted(tokens)), numeric, categorical)
    # "|Q a:1 |W" -> Q has a feature, W has none
    filled = {m[0] for m in re.findall(r"\|(\w) ([^|]+)", shared_line(x))}
    assert featured_namespaces(x) == filled


@pytest.mark.parametrize("policy", ["squarecb", "egreedy", "softmax", "rnd", "bag", "cover"])
def test_numbers_too_small_for_a_float32_do_not_make_vw_predict_nan(policy: str) -> None:
    """VW reads a number written with an exponent far below float32's range (1e-200) as NaN: as
    an app feature it made that choice NaN (a 500), as the cost of a reward every later one."""
    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy

    built = build_policy(policy, seed=1)
    arms = [Arm("a"), Arm("b")]
    tiny = extract("question", {"n": 1e-200})
    assert "e-200" not in shared_line(tiny)  # 0 to VW, which keeps a float32: left out
    assert featured_namespaces(tiny) == {"Q", "W"}
    assert sum(built.choose(tiny, arms).probabilities.values()) == pytest.approx(1)
    x = extract("question")
    d = built.choose(x, arms)
    built.learn(x, arms, d.arm, d.probability, 1e-200)  # the first reward: its cost is -1e-200
    built.learn(tiny, arms, d.arm, d.probability, 0.0)
    for _ in range(5):
        probabilities = built.choose(x, arms).probabilities
        assert sum(probabilities.values()) == pytest.approx(1), probabilities


def test_arm_line_exact() -> None:
    arm_id = token_hash("arm=7b")
    assert arm_line(Arm("7b", 7, 0.2)) == f"|A {arm_id}"  # size and price are not features
    assert arm_line(Arm("7b")) == f"|A {arm_id}"


def test_label_goes_on_the_chosen_arm_with_cost_minus_reward() -> None:
    lines = adf_example(X, [Arm("a"), Arm("b")], chosen=1, cost=-0.75, p=0.5)
    assert lines[1] == f"|A {token_hash('arm=a')}"
    assert lines[2] == f"0:-0.75:0.5 |A {token_hash('arm=b')}"
    # six significant digits of the cost and the probability
    lines = adf_example(X, [Arm("a"), Arm("b")], chosen=0, cost=0.1234567, p=1 / 3)
    assert lines[1:] == [f"0:0.123457:0.333333 |A {token_hash('arm=a')}", arm_line(Arm("b"))]


def test_every_shared_namespace_interacts_with_the_arm() -> None:
    args = vw_arguments(
        "egreedy", {"epsilon": 0.1, "learning_rate": 0.5, "bits": 18, "vw_args": ""}, seed=3
    )
    assert args[:4] == ["--cb_explore_adf", "--quiet", "--epsilon", "0.1"]
    assert args[4:8] == ["--cb_min_cost", "-1", "--cb_max_cost", "1"]
    for ns in "QWNC":
        assert f"--interactions={ns}A" in args
    assert args[-2:] == ["--random_seed", "3"]


def test_a_new_arm_starts_as_an_average_arm_and_is_explored() -> None:
    """Rewards are centred: an arm VW has never seen scores as average, above the poor arms."""
    import random

    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy

    policy = build_policy("squarecb", seed=1)
    known = [Arm("small"), Arm("mid"), Arm("large")]
    pays = {"small": 0.1, "mid": 0.3, "large": 0.7}
    rng = random.Random(1)
    for _ in range(2000):
        x = extract(f"question {rng.randrange(100)}")
        d = policy.choose(x, known)
        policy.learn(x, known, d.arm, d.probability, pays[d.arm])
    probs = policy.choose(extract("question 7"), [*known, Arm("new")]).probabilities
    assert max(probs, key=lambda k: probs[k]) == "large"
    assert probs["new"] > probs["mid"] > probs["small"] > 0
    assert probs["new"] == pytest.approx(1 / 4)  # no reward of it yet: its gap is trusted at 0


def test_squarecb_pmf_is_vws_rule() -> None:
    from bandit_router.policies.vw import squarecb_pmf

    pmf = squarecb_pmf([-0.5, -0.7, -0.6], gamma=10.0)
    assert pmf[0] == pytest.approx(1 / (3 + 10 * 0.2))
    assert pmf[2] == pytest.approx(1 / (3 + 10 * 0.1))
    assert pmf[1] == pytest.approx(1 - pmf[0] - pmf[2])
    assert squarecb_pmf([0.0, 0.0], gamma=0.0) == [0.5, 0.5]  # a tie goes to the first
    tied = squarecb_pmf([0.1, 0.1, 0.3], gamma=10.0)
    assert tied[1:] == [pytest.approx(1 / 3), pytest.approx(1 / (3 + 10 * 0.2))]
    assert tied[0] == pytest.approx(1 - tied[1] - tied[2])


def test_squarecb_pmf_trusts_each_gap_as_given() -> None:
    from bandit_router.policies.vw import squarecb_pmf

    pmf = squarecb_pmf([-0.5, -0.7, -0.6], gamma=10.0, trust=[0.0, 1.0, 0.5])
    assert pmf[0] == pytest.approx(1 / 3)  # no trust: explored as if as good as the best
    assert pmf[2] == pytest.approx(1 / (3 + 10 * 0.5 * 0.1))
    assert pmf[1] == pytest.approx(1 - pmf[0] - pmf[2])
    # an untrusted arm never takes the cheapest arm's place
    assert squarecb_pmf([0.3, -0.2], gamma=100.0, trust=[0.0, 1.0]) == [0.5, 0.5]
    assert squarecb_pmf([0.3, -0.2, 0.1], gamma=100.0, trust=[0.0, 1.0, 0.0])[1] == (
        pytest.approx(1 / 3)
    )


def test_one_unlucky_reward_does_not_shut_an_arm_out() -> None:
    """The better arm's first reward is 0 and the worse one's 1: with gap_prior the better arm is
    still explored about evenly; without, SquareCB already halves its chances."""
    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy

    arms = [Arm("better"), Arm("worse")]
    chances = {}
    for spec in ("squarecb", "squarecb:gap_prior=0"):
        policy = build_policy(spec, seed=1)
        x = extract("what is 2 + 2")
        policy.learn(x, arms, "better", 0.5, 0.0)
        policy.learn(x, arms, "worse", 0.5, 1.0)
        chances[spec] = policy.choose(x, arms).probabilities["better"]
    assert chances["squarecb"] > 0.4
    assert chances["squarecb:gap_prior=0"] < 0.25


def _taught(spec: str, rewards: dict[str, list[float]]) -> VWPolicy:
    """A ``spec`` policy that learned ``rewards`` (per arm, in turn) on one query."""
    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy

    policy = build_policy(spec, seed=1)
    assert isinstance(policy, VWPolicy)
    arms = [Arm(name) for name in rewards]
    x = extract("what is 2 + 2")
    for round_ in zip(*rewards.values(), strict=True):
        for arm, reward in zip(rewards, round_, strict=True):
            policy.learn(x, arms, arm, 0.5, reward)
    return policy


def test_greed_follows_how_little_the_rewards_spread() -> None:
    """SquareCB's gamma and gap_prior are for rewards of sd reward_sd (0.3) or more: rewards
    that spread less make it greedier by reward_sd / their sd, at most SPREAD_CAP times, and
    only after SPREAD_MIN rewards."""
    from bandit_router.policies.vw import SPREAD_CAP, SPREAD_MIN

    wide = _taught("squarecb", {"a": [0.0, 1.0] * 10, "b": [1.0, 0.0] * 10})  # sd 0.5
    assert wide.greed() == 1.0
    narrow = {"a": [0.5, 0.7] * 10, "b": [0.4, 0.6] * 10}
    policy = _taught("squarecb", narrow)
    sd = policy.arm_stats.spread()
    assert 0.05 < sd < 0.15
    assert policy.greed() == pytest.approx(0.3 / sd)
    assert _taught("squarecb:reward_sd=0", narrow).greed() == 1.0
    half = SPREAD_MIN // 2
    assert _taught("squarecb", {"a": [0.5] * (half - 1), "b": [0.5] * (half - 1)}).greed() == 1.0
    assert _taught("squarecb", {"a": [0.5] * half, "b": [0.5] * half}).greed() == SPREAD_CAP


def test_rewards_that_spread_little_explore_a_worse_arm_less() -> None:
    """The same evidence in rewards of sd about 0.1: the arm shown 0.1 worse is explored less
    with reward_sd than without, by more than the regressor's noise."""
    from bandit_router.features import extract

    rewards = {"better": [0.6, 0.8] * 15, "worse": [0.5, 0.7] * 15}
    arms = [Arm("better"), Arm("worse")]
    chances = {
        spec: _taught(spec, rewards).choose(extract("what is 2 + 2"), arms).probabilities["worse"]
        for spec in ("squarecb", "squarecb:reward_sd=0")
    }
    assert chances["squarecb"] < 0.6 * chances["squarecb:reward_sd=0"]


def test_a_planted_better_arm_costs_fewer_choices_when_rewards_spread_little() -> None:
    """Two arms 0.1 apart, rewards of sd 0.05, 400 events on each of six seeds: the default
    (reward_sd 0.3) sends the worse arm clearly fewer queries than without reward_sd."""
    import numpy as np

    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy

    arms = [Arm("good"), Arm("bad")]
    queries = [extract(f"question number {i} about topic {i % 7}") for i in range(50)]
    worse = {}
    for spec in ("squarecb", "squarecb:reward_sd=0"):
        worse[spec] = 0
        for seed in range(6):
            rng = np.random.default_rng(seed)
            policy = build_policy(spec, seed=seed)
            for t in range(400):
                x = queries[t % len(queries)]
                d = policy.choose(x, arms)
                mean = 0.6 if d.arm == "good" else 0.5
                policy.learn(
                    x, arms, d.arm, d.probability, float(np.clip(rng.normal(mean, 0.05), 0, 1))
                )
                worse[spec] += d.arm == "bad"
    assert worse["squarecb:reward_sd=0"] < 0.1 * 2400  # both learn the planted rule
    assert worse["squarecb"] < 0.7 * worse["squarecb:reward_sd=0"]


def test_the_baseline_and_the_count_survive_dumps() -> None:
    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy, load_policy

    arms = [Arm("a"), Arm("b")]
    policy = build_policy("squarecb", seed=1)
    for reward in (0.2, 0.4, 0.9):
        x = extract("hello")
        d = policy.choose(x, arms)
        policy.learn(x, arms, d.arm, d.probability, reward)
    loaded = load_policy("squarecb", policy.dumps(), seed=1)
    assert isinstance(loaded, VWPolicy) and isinstance(policy, VWPolicy)
    assert loaded.baseline == pytest.approx(0.5)
    assert loaded.learned == 3
    x = extract("hello again")
    assert loaded.choose(x, arms).probabilities == policy.choose(x, arms).probabilities


def _stats(rewards: dict[str, list[float]]) -> ArmStats:
    stats = ArmStats()
    for arm, values in rewards.items():
        for r in values:
            stats.add(arm, r)
    return stats


ABC = [Arm("a"), Arm("b"), Arm("c")]


def test_thin_dominated_cuts_only_an_arm_shown_worse() -> None:
    # a and b alternate 0/1 (mean 0.5), c is always 0: c's interval is far below a's
    stats = _stats({"a": [0.0, 1.0] * 200, "b": [0.0, 1.0] * 200, "c": [0.0] * 400})
    out = thin_dominated([0.8, 0.1, 0.1], ABC, stats, z=2.0, share=0.3)
    assert out == pytest.approx([0.8 + 0.07, 0.1, 0.03])
    # z 0, share 1, or an arm with fewer than two rewards: nothing is cut
    assert thin_dominated([0.8, 0.1, 0.1], ABC, stats, z=0.0, share=0.3) == [0.8, 0.1, 0.1]
    assert thin_dominated([0.8, 0.1, 0.1], ABC, stats, z=2.0, share=1.0) == [0.8, 0.1, 0.1]
    few = _stats({"a": [0.0, 1.0] * 200, "b": [1.0], "c": [0.0] * 400})
    assert thin_dominated([0.8, 0.1, 0.1], ABC, few, z=2.0, share=0.3) == [0.8, 0.1, 0.1]


def test_thin_dominated_never_cuts_the_arm_with_the_best_mean() -> None:
    """The regressor may favour a worse arm for this query; the best arm's share stays."""
    stats = _stats({"a": [0.0] * 400, "b": [1.0, 0.0, 1.0] * 200, "c": [0.0] * 400})
    out = thin_dominated([0.1, 0.1, 0.8], ABC, stats, z=2.0, share=0.0)
    assert out == pytest.approx([0.0, 0.1, 0.9])


def test_thin_dominated_waits_for_evidence() -> None:
    """Two arms 0.3 apart with ten rewards each are not told apart at z 2; with 200 they are."""
    few = _stats({"a": [0.0, 1.0] * 5, "b": [0.0, 0.0, 0.0, 0.0, 1.0] * 2})
    assert thin_dominated([0.9, 0.1], ABC[:2], few, z=2.0, share=0.0) == [0.9, 0.1]
    many = _stats({"a": [0.0, 1.0] * 100, "b": [0.0, 0.0, 0.0, 0.0, 1.0] * 40})
    assert thin_dominated([0.9, 0.1], ABC[:2], many, z=2.0, share=0.0) == [1.0, 0.0]


@given(
    pmf=st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3),
    rewards=st.lists(
        st.tuples(st.sampled_from("abc"), st.floats(0.0, 1.0)), min_size=0, max_size=60
    ),
    z=st.floats(0.0, 5.0),
    share=st.floats(0.0, 1.0),
)
def test_thin_dominated_keeps_a_distribution(
    pmf: list[float], rewards: list[tuple[str, float]], z: float, share: float
) -> None:
    total = sum(pmf)
    pmf = [p / total for p in pmf]
    stats = ArmStats()
    for arm, r in rewards:
        stats.add(arm, r)
    out = thin_dominated(pmf, ABC, stats, z, share)
    assert sum(out) == pytest.approx(1.0)
    top = max(range(3), key=pmf.__getitem__)
    for i in range(3):
        if i == top:
            assert out[i] >= pmf[i]
        else:
            assert 0.0 <= out[i] <= pmf[i]


def _play(spec: str, events: int) -> dict[str, int]:
    """Arms paying 0.7 / 0.5 / 0.2 on average (0/1 rewards), the same for every query."""
    import random

    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy

    policy = build_policy(spec, seed=2)
    arms = [Arm("good"), Arm("fair"), Arm("poor")]
    pays = {"good": 0.7, "fair": 0.5, "poor": 0.2}
    rng = random.Random(2)
    chosen = {arm.name: 0 for arm in arms}
    for _ in range(events):
        x = extract(f"question {rng.randrange(50)}")
        d = policy.choose(x, arms)
        chosen[d.arm] += 1
        policy.learn(x, arms, d.arm, d.probability, float(rng.random() < pays[d.arm]))
    return chosen


def test_squarecb_explores_a_worse_arm_less_once_it_is_shown_worse() -> None:
    # one regressor: the thinning's own effect, not the choice between two
    thinned = _play("squarecb:fast_l2=0", 4000)
    plain = _play("squarecb:fast_l2=0:dominated_z=0", 4000)
    assert max(thinned, key=lambda k: thinned[k]) == "good"
    assert thinned["poor"] + thinned["fair"] < 0.8 * (plain["poor"] + plain["fair"])
    assert thinned["fair"] > 0 and thinned["poor"] > 0  # still explored, less


def test_the_arm_statistics_survive_dumps() -> None:
    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy, load_policy

    arms = [Arm("a"), Arm("b")]
    policy = build_policy("squarecb", seed=1)
    assert isinstance(policy, VWPolicy)
    for arm, reward in (("a", 0.2), ("b", 0.4), ("a", 0.6)):
        policy.learn(extract("hello"), arms, arm, 0.5, reward)
    loaded = load_policy("squarecb", policy.dumps(), seed=1)
    assert isinstance(loaded, VWPolicy)
    assert loaded.arm_stats.counts == {"a": 2.0, "b": 1.0}
    assert loaded.arm_stats.mean("a") == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("squarecb:dominated_share=1.5", "dominated_share must be in [0, 1]"),
        ("squarecb:dominated_z=-1", "dominated_z must be in [0, 100], got -1.0"),
        ("squarecb:dominated_z=inf", "dominated_z must be in [0, 100], got inf"),
        ("squarecb:gap_prior=-1", "gap_prior must be in [0, 1000000], got -1.0"),
        ("squarecb:gap_prior=nan", "gap_prior must be in [0, 1000000], got nan"),
        ("squarecb:fast_l2=1", "fast_l2 must be in [0, 1)"),
        ("squarecb:fast_l2=nan", "fast_l2 must be in [0, 1)"),
        ("squarecb:mix_discount=0", "mix_discount must be in (0, 1]"),
        ("squarecb:mix_discount=1.5", "mix_discount must be in (0, 1]"),
        ("squarecb:arm_centre=-1", "arm_centre must be in [0, 1000000], got -1.0"),
        ("squarecb:arm_centre=inf", "arm_centre must be in [0, 1000000], got inf"),
        ("squarecb:reward_sd=-0.1", "reward_sd must be in [0, 1], got -0.1"),
        ("squarecb:reward_sd=nan", "reward_sd must be in [0, 1], got nan"),
        ("squarecb:horizon=-1", "horizon must be in [0, 1000000000000000], got -1.0"),
        ("squarecb:horizon=inf", "horizon must be in [0, 1000000000000000], got inf"),
        ("squarecb:coarse=X", "coarse must name some of the shared namespaces QWNC"),
        ("squarecb:coarse=CC", "coarse must name some of the shared namespaces QWNC"),
        ("squarecb:coarse=QWNC", "coarse must name some of the shared namespaces QWNC"),
    ],
)
def test_thinning_parameters_out_of_range_are_named(spec: str, message: str) -> None:
    from bandit_router.policies.registry import build_policy

    with pytest.raises(ValueError, match=re.escape(message)):
        build_policy(spec, seed=1)


def _swap(spec: str, seed: int, before: int = 3000, after: int = 300) -> tuple[int, int]:
    """Arm a pays 0.7 and b 0.4 (0/1 rewards) for ``before`` events, then the reverse: how often
    b is chosen in the ``after`` events that follow, and how often the fast regressor serves."""
    import random

    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy

    policy = build_policy(spec, seed=seed)
    assert isinstance(policy, VWPolicy)
    arms = [Arm("a"), Arm("b")]
    rng = random.Random(seed)
    chose_b = fast = 0
    for t in range(before + after):
        pays = {"a": 0.7, "b": 0.4} if t < before else {"a": 0.4, "b": 0.7}
        x = extract(f"question {rng.randrange(50)}")
        d = policy.choose(x, arms)
        if t >= before:
            chose_b += d.arm == "b"
            fast += policy.serving
        policy.learn(x, arms, d.arm, d.probability, float(rng.random() < pays[d.arm]))
    return chose_b, fast


def test_the_fast_regressor_follows_a_change_the_slow_one_alone_does_not() -> None:
    with_fast = [_swap("squarecb", seed) for seed in range(3)]
    slow_only = [_swap("squarecb:fast_l2=0", seed) for seed in range(3)]
    assert all(fast > 0.8 * 300 for _, fast in with_fast)  # the fast one serves after the swap
    assert all(fast == 0 for _, fast in slow_only)
    assert sum(b for b, _ in with_fast) > 3 * sum(b for b, _ in slow_only)
    assert sum(b for b, _ in with_fast) > 0.5 * 3 * 300


def _upgrade(spec: str, seed: int, before: int = 3000, after: int = 3000) -> int | None:
    """Arms a, b, c pay 0.7, 0.2, 0.5 (0/1 rewards) for ``before`` events, then b pays 1.0: the
    events after the change until b has more than half of the last 100 choices (None: never
    within ``after``)."""
    import random

    from bandit_router.features import extract

    policy = build_policy(spec, seed=seed)
    arms = [Arm("a"), Arm("b"), Arm("c")]
    rng = random.Random(seed)
    chose_b: list[bool] = []
    for t in range(before + after):
        pays = {"a": 0.7, "b": 0.2 if t < before else 1.0, "c": 0.5}
        x = extract(f"question {rng.randrange(50)}")
        d = policy.choose(x, arms)
        if t >= before:
            chose_b.append(d.arm == "b")
            if len(chose_b) >= 100 and sum(chose_b[-100:]) > 50:
                return len(chose_b)
        policy.learn(x, arms, d.arm, d.probability, float(rng.random() < pays[d.arm]))
    return None


def test_a_horizon_finds_an_arm_that_became_the_best_after_a_long_life() -> None:
    """After 3,000 events of b shown worst, b becomes the best: with horizon 500, SquareCB's gamma
    and the thinning's statistics stay those of 500 events, b is still tried and taken up within
    800 events on every seed; without, its exploration has shrunk with the count, and b is found
    about three times later."""
    capped = [_upgrade("squarecb:horizon=500", seed) for seed in range(5)]
    uncapped = [_upgrade("squarecb", seed) or 3000 for seed in range(5)]
    assert all(n is not None and n < 800 for n in capped), capped
    assert sum(uncapped) > 2 * sum(n or 3000 for n in capped), (capped, uncapped)


def test_below_the_horizon_squarecb_chooses_exactly_as_without_it() -> None:
    """While the count of rewards learned is at most the horizon, nothing differs: the same
    probabilities at every step (and after it, they do differ)."""
    from bandit_router.features import extract

    def probabilities(spec: str, events: int) -> list[Mapping[str, float]]:
        import random

        policy = build_policy(spec, seed=3)
        arms = [Arm("a"), Arm("b"), Arm("c")]
        rng = random.Random(3)
        out = []
        for _ in range(events):
            x = extract(f"question {rng.randrange(20)}")
            d = policy.choose(x, arms)
            out.append(d.probabilities)
            pays = {"a": 0.6, "b": 0.5, "c": 0.3}[d.arm]
            policy.learn(x, arms, d.arm, d.probability, float(rng.random() < pays))
        return out

    plain = probabilities("squarecb", 600)
    assert probabilities("squarecb:horizon=600", 600) == plain  # the 600th choice: 599 learned
    assert probabilities("squarecb:horizon=100000", 600) == plain
    assert probabilities("squarecb:horizon=300", 600)[:301] == plain[:301]
    assert probabilities("squarecb:horizon=300", 600)[301:] != plain[301:]


def test_the_horizon_keeps_the_arm_statistics_to_its_count_and_they_survive_dumps() -> None:
    from bandit_router.features import extract
    from bandit_router.policies.registry import load_policy

    arms = [Arm("a"), Arm("b")]
    policy = build_policy("squarecb:horizon=50", seed=1)
    assert isinstance(policy, VWPolicy)
    for i in range(200):
        policy.learn(extract("hello"), arms, "ab"[i % 4 == 0], 0.5, 0.25 * (i % 3))
    stats = policy.arm_stats
    assert stats.total() == pytest.approx(50)
    assert stats.count("a") == pytest.approx(37.5, abs=1)  # three rewards of four, lately
    assert stats.mean("a") == pytest.approx(0.25, abs=0.03)
    assert policy.learned == 200
    loaded = load_policy("squarecb:horizon=50", policy.dumps(), seed=1)
    assert isinstance(loaded, VWPolicy)
    assert loaded.arm_stats.counts == stats.counts and loaded.arm_stats.sums == stats.sums
    x = extract("hello again")
    assert loaded.choose(x, arms).probabilities == policy.choose(x, arms).probabilities


def test_both_regressors_and_their_errors_survive_dumps() -> None:
    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy, load_policy

    arms = [Arm("a"), Arm("b")]
    policy = build_policy("squarecb", seed=1)
    assert isinstance(policy, VWPolicy)
    for i in range(200):
        x = extract(f"question {i % 7}")
        d = policy.choose(x, arms)
        policy.learn(x, arms, d.arm, d.probability, float(d.arm == "a") * (i % 2))
    assert policy.errors[0] != policy.errors[1]
    loaded = load_policy("squarecb", policy.dumps(), seed=1)
    assert isinstance(loaded, VWPolicy)
    assert loaded.errors == policy.errors and loaded.serving == policy.serving
    x = extract("question 3")
    for a, b in zip(loaded.regressors, policy.regressors, strict=True):
        text = "\n".join(adf_example(x, arms))
        assert predicted_costs(a, text) == predicted_costs(b, text)


def test_a_snapshot_with_one_regressor_gives_the_fast_one_a_copy() -> None:
    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy, load_policy

    arms = [Arm("a"), Arm("b")]
    single = build_policy("squarecb:fast_l2=0", seed=1)
    for i in range(50):
        single.learn(extract(f"question {i % 5}"), arms, "ab"[i % 2], 0.5, float(i % 2))
    loaded = load_policy("squarecb", single.dumps(), seed=1)
    assert isinstance(loaded, VWPolicy) and len(loaded.regressors) == 2
    text = "\n".join(adf_example(extract("question 2"), arms))
    assert predicted_costs(loaded.regressors[0], text) == predicted_costs(
        loaded.regressors[1], text
    )
    assert loaded.errors == [0.0, 0.0]
    back = load_policy("squarecb:fast_l2=0", loaded.dumps(), seed=1)  # and back to one
    assert isinstance(back, VWPolicy) and len(back.regressors) == 1
    assert predicted_costs(back.regressors[0], text) == predicted_costs(loaded.regressors[0], text)


def test_vw_reports_after_learning_the_costs_it_predicted_before() -> None:
    """``VWPolicy.learn`` reads each regressor's error from the scores ``--cb_adf`` leaves on the
    example it learned: pinned here, since VW could set them after its update instead."""
    import random

    import vowpalwabbit

    from bandit_router.features import extract
    from bandit_router.policies.vw import _NATIVE, VW_POLICIES

    vw = vowpalwabbit.Workspace(
        arg_list=vw_arguments("squarecb", VW_POLICIES["squarecb"].defaults, 1)
    )
    arms = [Arm("a"), Arm("b"), Arm("c")]
    rng = random.Random(0)
    for _ in range(300):
        x = extract(f"question {rng.randrange(30)} word{rng.randrange(9)}")
        text = "\n".join(adf_example(x, arms, rng.randrange(3), rng.random() - 0.5, 1.0))
        before = predicted_costs(vw, text)
        examples = _NATIVE._parse(vw, text)
        _NATIVE.learn_multi(vw, examples)
        assert examples[0].get_action_scores() == pytest.approx(before, abs=1e-6)
        _NATIVE._finish_example_multi_ex(vw, examples)
    assert predicted_costs(vw, text) != pytest.approx(before, abs=1e-6)  # it did learn


def _subjects(spec: str, events: int, seed: int = 1, context: bool = True) -> VWPolicy:
    """A policy after ``events`` queries of two subjects, each with words of its own that carry
    nothing: arm a pays 0.8 on maths and 0.2 on law, arm b the reverse (0/1 rewards); without
    ``context`` the subject is not sent."""
    import random

    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy

    policy = build_policy(spec, seed=seed)
    assert isinstance(policy, VWPolicy)
    arms = [Arm("a"), Arm("b")]
    rng = random.Random(seed)
    for _ in range(events):
        subject = rng.choice(["maths", "law"])
        words = " ".join(f"w{rng.randrange(5000)}" for _ in range(60))
        x = extract(words, {"subject": subject} if context else None)
        d = policy.choose(x, arms)
        pays = 0.8 if (d.arm == "a") == (subject == "maths") else 0.2
        policy.learn(x, arms, d.arm, d.probability, float(rng.random() < pays))
    return policy


def _preference(policy: VWPolicy, subject: str) -> float:
    """How much better the serving scores make arm a than b on a fresh query of ``subject``."""
    from bandit_router.features import extract

    x = extract("w1 w2 w3", {"subject": subject})
    costs = policy.predicted(policy.serving, "\n".join(adf_example(x, [Arm("a"), Arm("b")])))
    return costs[1] - costs[0]


def test_a_coarse_stage_learns_the_subject_sooner_than_the_words_let_the_regressor() -> None:
    """Every query brings sixty words that carry nothing: the regressor alone, its steps paced
    by all of an example's features, has learned less of the subject's preference (0.6 either
    way) after 300 events than with a coarse stage that sees the subject (C) alone (about 0.07
    of it against 0.24 on this seed)."""
    plain = _subjects("squarecb:coarse=", 300)
    coarse = _subjects("squarecb:coarse=C", 300)
    assert [len(p.coarse) for p in (plain, coarse)] == [0, 2]
    assert all("--ignore" in vw.get_arguments() for vw in coarse.coarse)
    gaps = {
        name: (_preference(p, "maths"), _preference(p, "law"))
        for name, p in (("plain", plain), ("coarse", coarse))
    }
    assert gaps["coarse"][0] > 0.05 and gaps["coarse"][1] < -0.05  # the rule, both ways
    assert gaps["coarse"][0] - gaps["coarse"][1] > 2 * (gaps["plain"][0] - gaps["plain"][1])


def test_without_the_app_facts_the_coarse_stages_stay_out() -> None:
    """A query without features in the coarse stages' namespaces neither asks nor teaches
    them: the default (coarse CN) makes the same choices as without stages when no context is
    sent; with it, they learn."""
    from bandit_router.features import extract

    x = extract("w1 w2 w3")
    one = _subjects("squarecb", 1)
    assert not one.staged(x) and not one.staged(extract("w1", {"n": 0}))  # 0 is no feature
    assert one.staged(extract("w1", {"subject": "law"})) and one.staged(extract("w1", {"n": 2}))
    assert not _subjects("squarecb:coarse=", 1).staged(extract("w1", {"subject": "law"}))
    bare, plain = (_subjects(spec, 200, context=False) for spec in ("squarecb", "squarecb:coarse="))
    assert all(predicted_costs(vw, "shared |Q x:1\n|A a") == [0.0] for vw in bare.coarse)
    text = "\n".join(adf_example(x, [Arm("a"), Arm("b")]))
    assert bare.predicted(bare.serving, text) == plain.predicted(plain.serving, text)
    law = "\n".join(adf_example(extract("w1", {"subject": "law"}), [Arm("a"), Arm("b")]))
    assert all(predicted_costs(vw, law) != [0.0, 0.0] for vw in _subjects("squarecb", 200).coarse)


def test_the_coarse_stages_survive_dumps_and_an_older_snapshot_starts_them_empty() -> None:
    from bandit_router.features import extract
    from bandit_router.policies.registry import load_policy

    policy = _subjects("squarecb:coarse=CN", 100)
    loaded = load_policy("squarecb:coarse=CN", policy.dumps(), seed=1)
    assert isinstance(loaded, VWPolicy) and len(loaded.coarse) == 2
    assert loaded.errors == policy.errors and loaded.serving == policy.serving
    text = "\n".join(adf_example(extract("w1", {"subject": "law"}), [Arm("a"), Arm("b")]))
    stages = zip(
        [*loaded.regressors, *loaded.coarse], [*policy.regressors, *policy.coarse], strict=True
    )
    for a, b in stages:
        assert predicted_costs(a, text) == predicted_costs(b, text)
    assert _preference(loaded, "law") == _preference(policy, "law")
    older = _subjects("squarecb:coarse=", 100)
    upgraded = load_policy("squarecb:coarse=CN", older.dumps(), seed=1)
    assert isinstance(upgraded, VWPolicy) and len(upgraded.coarse) == 2
    assert predicted_costs(upgraded.coarse[0], text) == [0.0, 0.0]  # starts empty
    assert _preference(upgraded, "law") == _preference(older, "law")
    back = load_policy("squarecb:coarse=", policy.dumps(), seed=1)  # the stages dropped
    assert isinstance(back, VWPolicy) and back.coarse == []
    assert predicted_costs(back.regressors[0], text) == predicted_costs(policy.regressors[0], text)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"coarse": 5}, "coarse stages are not a count"),
        ({"coarse": "2"}, "coarse stages are not a count"),
        ({"coarse": True}, "coarse stages are not a count"),
        ({"sizes": [1, 2]}, "models are"),
        ({"sizes": "12"}, "models are"),
        ({"sizes": []}, "models are"),
        ({"errors": ["x", 1]}, "errors are not squared errors"),
        ({"errors": [-1.0, 0.0]}, "errors are not squared errors"),
    ],
)
def test_a_snapshot_whose_regressors_do_not_add_up_is_refused(
    change: dict[str, object], message: str
) -> None:
    import json

    from bandit_router.policies.registry import build_policy, load_policy

    data = build_policy("squarecb", seed=1).dumps()
    magic, header, models = data.split(b"\n", 2)
    state = {**json.loads(header), **change}
    bad = magic + b"\n" + json.dumps(state).encode() + b"\n" + models
    with pytest.raises(ValueError, match=message):
        load_policy("squarecb", bad, seed=1)


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_a_snapshot_whose_model_bytes_vw_cannot_read_is_refused_naming_the_policy(
    damage: str,
) -> None:
    """A model VW rejects (cut short, its sizes made to match; bytes flipped past its options)
    is a ValueError naming the policy and VW's words, as a bad header is: not VW's own error."""
    data = build_policy("squarecb", seed=1).dumps()
    magic, header, models = data.split(b"\n", 2)
    state = json.loads(header)
    first, rest = models[: state["sizes"][0]], models[state["sizes"][0] :]
    kept, after = first[:200], first[200:]  # the options VW reads first, then the weights
    first = kept + (b"" if damage == "cut" else bytes(b ^ 0xFF for b in after))
    state["sizes"][0] = len(first)
    bad = magic + b"\n" + json.dumps(state).encode() + b"\n" + first + rest
    with pytest.raises(ValueError, match=r"^policy squarecb: VW rejected --cb_adf .*: .+"):
        load_policy("squarecb", bad, seed=1)


def test_each_arm_is_centred_on_its_importance_weighted_mean() -> None:
    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy

    policy = build_policy("squarecb:arm_centre=10", seed=1)
    assert isinstance(policy, VWPolicy)
    arms = [Arm("a"), Arm("b")]
    x = extract("hello")
    assert policy.centre("a") == 0.0  # nothing learned: the overall mean, 0 so far
    policy.learn(x, arms, "a", 0.5, 1.0)  # weight 2
    policy.learn(x, arms, "a", 0.25, 0.0)  # weight 4
    policy.learn(x, arms, "b", float("nan"), 1.0)  # counted as the clip: weight 100
    policy.learn(x, arms, "b", 0.001, 1.0)  # below the clip, counted as it: weight 100
    policy.learn(x, arms, "b", 0.5, 0.0)  # weight 2
    mean, n = 2 / 6, 6 * 6 / (2 * 2 + 4 * 4)  # the weighted mean, Kish's effective count
    baseline = 3 / 5
    assert policy.centre("a") == pytest.approx((n * mean + 10 * baseline) / (n + 10))
    assert policy.centres.mean("b") == pytest.approx(200 / 202)
    assert policy.centres.effective("b") == pytest.approx(202**2 / (2 * 100**2 + 2**2))
    assert policy.centre("c") == pytest.approx(baseline)  # an arm never chosen


def test_the_centre_is_not_biased_by_the_routing() -> None:
    """Arm b pays 0.3 on hard queries and 0.9 on easy ones, half of each; the routing sends it
    hard queries with probability 0.9 and easy ones with 0.1. Its plain mean is far below what
    it pays over every query (0.6); the centre is not."""
    import random

    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy

    policy = build_policy("squarecb:arm_centre=10", seed=1)
    assert isinstance(policy, VWPolicy)
    arms = [Arm("a"), Arm("b")]
    rng = random.Random(3)
    for _ in range(20000):
        hard = rng.random() < 0.5
        p = 0.9 if hard else 0.1
        if rng.random() < p:
            reward = float(rng.random() < (0.3 if hard else 0.9))
            policy.learn(extract("hard" if hard else "easy"), arms, "b", p, reward)
    assert policy.arm_stats.mean("b") == pytest.approx(0.36, abs=0.02)
    assert policy.centre("b") == pytest.approx(0.6, abs=0.03)


def test_arm_centre_changes_only_the_slow_regressor_and_its_stage() -> None:
    """Only the slow regressor drops the arm's own weight and learns rewards minus the arm's
    centre (its stage too): the fast regressor and its stage learn exactly as without
    arm_centre, on queries with the app's facts (staged) and without."""
    centred = build_policy("squarecb:arm_centre=10", seed=1)
    plain = build_policy("squarecb:arm_centre=0", seed=1)
    assert isinstance(centred, VWPolicy) and isinstance(plain, VWPolicy)
    args = [vw.get_arguments() for vw in (*centred.regressors, *plain.regressors)]
    assert ["--ignore_linear" in a for a in args] == [True, False, False, False]
    arms = [Arm("a"), Arm("b")]
    for i in range(60):
        x = extract(f"question {i % 5}", {"tier": "ab"[i % 2]} if i % 3 else None)
        for policy in (centred, plain):
            policy.learn(x, arms, "ab"[i % 3 == 0], 0.5, float(i % 3 == 0))
    for x in (extract("question 2"), extract("question 2", {"tier": "a"})):
        text = "\n".join(adf_example(x, arms))
        for models in ("regressors", "coarse"):
            slow, fast = (
                [predicted_costs(getattr(p, models)[i], text) for p in (centred, plain)]
                for i in (0, 1)
            )
            assert fast[0] == fast[1], models
            assert slow[0] != slow[1], models


def test_the_centres_survive_dumps_and_an_older_snapshot_starts_them_empty() -> None:
    from bandit_router.features import extract
    from bandit_router.policies.registry import build_policy, load_policy

    arms = [Arm("a"), Arm("b")]
    policy = build_policy("squarecb:arm_centre=10", seed=1)
    older = build_policy("squarecb:arm_centre=0", seed=1)
    assert isinstance(policy, VWPolicy)
    for i in range(40):
        for p in (policy, older):
            p.learn(extract(f"question {i % 5}"), arms, "ab"[i % 2], 0.2 + 0.01 * i, i % 3 / 2)
    loaded = load_policy("squarecb:arm_centre=10", policy.dumps(), seed=1)
    assert isinstance(loaded, VWPolicy)
    assert loaded.centres.to_json() == policy.centres.to_json()
    assert loaded.centre("a") == policy.centre("a") != policy.arm_stats.mean("a")
    upgraded = load_policy("squarecb:arm_centre=10", older.dumps(), seed=1)
    assert isinstance(upgraded, VWPolicy)
    assert upgraded.centres.counts == {} and upgraded.centre("a") == upgraded.baseline


# vw_args that read or write a file (or, as a bare word, name VW's data file), open a port or
# change the reductions; {tmp} is a directory the test checks stays empty.
FILE_AND_PORT_ARGS = [
    ("-f {tmp}/x.model", "-f"),
    ("--final_regressor {tmp}/x.model", "--final_regressor"),
    ("--readable_model {tmp}/x.txt", "--readable_model"),
    ("--readable_model={tmp}/x.txt", "--readable_model"),
    ("--invert_hash {tmp}/x.txt", "--invert_hash"),
    ("--cache_file {tmp}/x.cache", "--cache_file"),
    ("-c -k", "-c"),
    ("-p {tmp}/x.pred", "-p"),
    ("--dump_json_weights_experimental {tmp}/x.json", "--dump_json_weights_experimental"),
    ("--output_feature_regularizer_text {tmp}/x.txt", "--output_feature_regularizer_text"),
    ("--power_t 0.3 -f {tmp}/x.model", "-f"),
    ("--ignore W --readable_model {tmp}/x.txt", "--readable_model"),
    ("-i /etc/hostname", "-i"),
    ("-i {tmp}/no-such-file", "-i"),
    ("--initial_regressor /etc/hostname", "--initial_regressor"),
    ("--feature_mask /etc/hostname", "--feature_mask"),
    ("--dictionary /etc/hostname", "--dictionary"),
    ("-d /etc/hostname", "-d"),
    ("/etc/hostname", "/etc/hostname"),
    ("--daemon", "--daemon"),
    ("--port 0", "--port"),
    ("--cb_explore_adf", "--cb_explore_adf"),
    ("--bit_precision 30", "--bit_precision"),
]


@pytest.mark.parametrize("policy", ["egreedy", "squarecb"])
@pytest.mark.parametrize(("vw_args", "option"), FILE_AND_PORT_ARGS)
def test_vw_args_that_touch_files_or_ports_are_refused(
    tmp_path: Path, policy: str, vw_args: str, option: str
) -> None:
    """``-f PATH`` had VW write the model there; ``-i PATH`` told whether PATH exists. Refused
    before VW sees them, with the same message whether the file exists or not."""
    spec = f"{policy}:vw_args={vw_args.format(tmp=tmp_path)}"
    message = f"vw_args: {option!r} is not an allowed VW option; allowed: --power_t"
    with pytest.raises(ValueError, match=re.escape(message)):
        build_policy(spec, seed=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("vw_args", "message"),
    [
        ("--power_t nan", "--power_t must be in [0, 1], got nan"),
        ("--power_t=inf", "--power_t must be in [0, 1], got inf"),
        ("--l1 1e400", "--l1 must be in [0, 1), got inf"),
        ("--initial_t -1", "--initial_t must be in [0, 1000000], got -1.0"),
        ("--power_t", "--power_t must be in [0, 1], got ''"),
        ("--l2 /etc/hostname", "--l2 must be in [0, 1), got '/etc/hostname'"),
        ("--ignore", "--ignore takes namespace letters, got ''"),
        ("--ignore W /etc/hostname", "--ignore takes namespace letters, got 'W /etc/hostname'"),
        ("--coin=/etc/hostname", "--coin takes no value, got '/etc/hostname'"),
        ("--ignore W/etc/hostname", "--ignore takes namespace letters, got 'W/etc/hostname'"),
        ("--ignore=W Q", "'Q' is not an allowed VW option"),
    ],
)
def test_vw_args_values_are_checked(vw_args: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"vw_args: {message}")):
        vw_options(vw_args)


def _vw_args_in_the_repo() -> set[str]:
    """Every ``vw_args=...`` value the README, the simulations and their results use."""
    root = Path(__file__).resolve().parents[1]
    used = {"--predict_only_model"}  # simulations/change_points.py adds it to a spec's vw_args
    folders = ("simulations", "docs", "examples", "benchmarks", "clients")
    for path in [root / "README.md", *(p for f in folders for p in (root / f).rglob("*"))]:
        if path.suffix in {".md", ".py", ".sh", ".patch"}:
            used |= {v.strip() for v in re.findall(r"vw_args=([^'\"`|:)\n]*)", path.read_text())}
    return used - {""}


def test_every_vw_args_the_repo_uses_is_allowed() -> None:
    used = _vw_args_in_the_repo()
    assert {"--power_t 0.3", "--ignore W", "--l1 1e-7", "--lrq WA2", "--coin"} <= used
    for vw_args in sorted(used):
        args = vw_options(vw_args)
        assert args[0] in VW_OPTIONS
        # and VW takes them; squarecb passes its own --l2 and VW refuses a second one
        policy = "egreedy" if "--l2" in vw_args else "squarecb"
        build_policy(f"{policy}:vw_args={vw_args}", seed=1).choose(X, [Arm("a"), Arm("b")])


def test_vw_args_in_the_equals_form_reach_vw_as_separate_words() -> None:
    assert vw_options("--power_t=0.3 --ignore W Q -q WA --noconstant") == [
        *("--power_t", "0.3", "--ignore", "W", "Q", "-q", "WA", "--noconstant"),
    ]


def _edited(data: bytes, change: Mapping[str, object]) -> bytes:
    """A ``dumps()`` snapshot with ``change`` over its JSON state."""
    magic, header, models = data.split(b"\n", 2)
    state = {**json.loads(header), **change}
    return magic + b"\n" + json.dumps(state).encode() + b"\n" + models


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"baseline": True}, "baseline is not a mean reward"),
        ({"baseline": -0.01}, "baseline is not a mean reward"),
        ({"baseline": 1.01}, "baseline is not a mean reward"),
        ({"learned": True}, "learned is not a count"),
        ({"learned": -1}, "learned is not a count"),
        ({"learned": 2**63}, "learned is not a count"),
        ({"coarse": 4}, "coarse stages are not a count"),  # as many as the models: no regressor
        ({"errors": [math.inf, 0.0]}, "errors are not squared errors"),  # it would never serve
        ({"sizes": 5}, "a VW snapshot's models are"),
        ({"sizes": True}, "a VW snapshot's models are"),
        ({"arms": [1]}, "a VW snapshot's arm statistics are not an object"),
        ({"centres": {"sums": {}}}, "a VW snapshot's arm statistics: counts is missing"),
    ],
)
def test_a_snapshot_state_out_of_its_bounds_or_shape_is_refused_naming_it(
    change: dict[str, object], message: str
) -> None:
    data = build_policy("squarecb", seed=1).dumps()
    load_policy("squarecb", _edited(data, {"baseline": 1, "learned": 2**63 - 1}), seed=1)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_policy("squarecb", _edited(data, change), seed=1)


@pytest.mark.parametrize("policy", ["egreedy", "squarecb"])
def test_bytes_that_are_no_vw_model_are_called_so(policy: str) -> None:
    no_model = [build_policy("linucb", seed=1).dumps(), b"\x07\x00\x00\x009.11.9\x00" + b"x" * 300]
    for data in no_model:
        with pytest.raises(ValueError, match=f"the saved VW model is not a VW model, not {policy}"):
            load_policy(policy, data, seed=1)


def test_a_bare_vw_model_loads_as_a_policy_that_learned_nothing_else() -> None:
    """A VW model file without this module's header (its line and JSON state) loads: the
    regressor's weights, with the baseline and the count at 0."""
    policy = build_policy("egreedy", seed=1)
    arms = [Arm("a"), Arm("b")]
    for i in range(50):
        policy.learn(extract(f"question {i % 5}"), arms, "ab"[i % 2], 0.5, float(i % 2))
    bare = policy.dumps().split(b"\n", 2)[2]
    loaded = load_policy("egreedy", bare, seed=1)
    assert isinstance(loaded, VWPolicy) and (loaded.baseline, loaded.learned) == (0.0, 0)
    x = extract("question 3")
    assert loaded.choose(x, arms).probabilities == policy.choose(x, arms).probabilities


def test_a_snapshot_of_one_model_gives_the_fast_regressor_a_copy() -> None:
    """One regressor and no stages: the snapshot holds one model and no sizes."""
    single = build_policy("squarecb:fast_l2=0:coarse=", seed=1)
    arms = [Arm("a"), Arm("b")]
    for i in range(50):
        single.learn(extract(f"question {i % 5}"), arms, "ab"[i % 2], 0.5, float(i % 2))
    assert b"sizes" not in single.dumps().split(b"\n")[1]
    loaded = load_policy("squarecb:coarse=", single.dumps(), seed=1)
    assert isinstance(loaded, VWPolicy) and len(loaded.regressors) == 2
    text = "\n".join(adf_example(extract("question 2"), arms))
    costs = [predicted_costs(vw, text) for vw in loaded.regressors]
    assert costs[0] == costs[1] != [0.0, 0.0]


def test_a_new_policy_and_its_snapshot_serve_the_slow_regressor() -> None:
    """Nothing learned: both regressors' errors are 0, a tie the slow one wins."""
    policy = build_policy("squarecb", seed=1)
    assert isinstance(policy, VWPolicy) and policy.errors == [0.0, 0.0]
    loaded = load_policy("squarecb", policy.dumps(), seed=1)
    assert isinstance(loaded, VWPolicy) and loaded.errors == [0.0, 0.0]
    assert policy.serving == loaded.serving == 0


@pytest.mark.parametrize("arm_centre", [0, 10])
def test_each_regressors_error_is_its_discounted_squared_error_on_the_chosen_arms(
    arm_centre: int,
) -> None:
    """Each reward adds the squared error of the regressor's prediction (its stage's added),
    made before learning it, of the chosen arm's centred cost, to its error discounted by
    mix_discount. With arm_centre the slow regressor's costs are centred on the arm's centre."""
    policy = build_policy(f"squarecb:mix_discount=0.5:arm_centre={arm_centre}", seed=1)
    assert isinstance(policy, VWPolicy)
    arms = [Arm("a"), Arm("b"), Arm("c")]
    expected = [0.0, 0.0]
    for i in range(30):
        x = extract(f"question {i % 4}", {"tier": "abc"[i % 3]})
        chosen, reward = i % 3, float(i % 4 == 0)
        text = "\n".join(adf_example(x, arms))
        centre = policy.centre("abc"[chosen]) if arm_centre else policy.baseline
        for r, cost in enumerate((centre - reward, policy.baseline - reward)):
            error = (policy.predicted(r, text, policy.staged(x))[chosen] - cost) ** 2
            expected[r] = 0.5 * expected[r] + error
        policy.learn(x, arms, "abc"[chosen], 0.5, reward)
        assert policy.errors == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert expected[0] != expected[1]


def test_a_stage_and_its_regressor_learn_the_centred_reward_together() -> None:
    """Arm a always pays 1 and b 0 (a mean of 0.5), on queries with an app fact: the staged
    predictions approach the centred costs, -0.5 and 0.5; each regressor learns what its stage
    left, not the whole cost again (that made them about -0.8 and 0.8 here)."""
    policy = build_policy("squarecb", seed=1)
    assert isinstance(policy, VWPolicy)
    arms = [Arm("a"), Arm("b")]
    for n in range(100):
        x = extract(f"question {n % 3}", {"tier": "pro"})
        arm = "ab"[n % 2]
        assert policy.staged(x)
        policy.learn(x, arms, arm, 0.5, float(arm == "a"))
    text = "\n".join(adf_example(extract("question 1", {"tier": "pro"}), arms))
    for i in (0, 1):
        assert policy.predicted(i, text) == pytest.approx([-0.5, 0.5], abs=0.1)


def test_vw_explorers_weigh_a_reward_by_its_probability_and_squarecb_does_not() -> None:
    """VW's own explorers learn a reward weighted by 1 / the probability its arm was chosen
    with: b's reward of 0 at probability 0.1 counts ten times one at 1, and b is chosen less
    after it. SquareCB regresses on the rewards as observed: the probability changes nothing."""
    arms = [Arm("a"), Arm("b")]
    x = extract("what is 2 + 2")
    chances = {}
    for spec in ("softmax", "squarecb"):
        for p in (0.1, 1.0):
            policy = build_policy(spec, seed=1)
            policy.learn(x, arms, "a", 0.5, 1.0)
            policy.learn(x, arms, "b", p, 0.0)
            chances[spec, p] = policy.choose(x, arms).probabilities["b"]
    assert chances["softmax", 0.1] < 0.5 * chances["softmax", 1.0]
    assert chances["squarecb", 0.1] == chances["squarecb", 1.0]


def test_each_regressor_adds_its_own_coarse_stage() -> None:
    policy = _subjects("squarecb", 300)
    assert len(policy.regressors) == len(policy.coarse) == 2
    text = "\n".join(adf_example(extract("w1", {"subject": "law"}), [Arm("a"), Arm("b")]))
    for i in (0, 1):
        alone = predicted_costs(policy.regressors[i], text)
        stage = predicted_costs(policy.coarse[i], text)
        assert policy.predicted(i, text) == [a + s for a, s in zip(alone, stage, strict=True)]
        assert policy.predicted(i, text, staged=False) == alone
    assert predicted_costs(policy.coarse[0], text) != predicted_costs(policy.coarse[1], text)


def test_a_query_without_the_app_facts_is_chosen_for_as_without_the_stages() -> None:
    """The stages learned the subject; a query that sends none is chosen for exactly as by the
    same regressors without stages (the snapshot loaded with coarse empty); one that sends it
    is not."""
    data = _subjects("squarecb", 300).dumps()
    staged = load_policy("squarecb", data, seed=7)
    plain = load_policy("squarecb:coarse=", data, seed=7)
    arms = [Arm("a"), Arm("b")]
    bare = extract("w1 w2 w3")
    assert staged.choose(bare, arms) == plain.choose(bare, arms)
    law = extract("w1 w2 w3", {"subject": "law"})
    assert staged.choose(law, arms).probabilities != plain.choose(law, arms).probabilities


def test_the_fast_regressor_serves_its_own_scores_with_arm_centre() -> None:
    """Only the slow regressor learns rewards minus each arm's centre: while the fast one
    serves, the centres are not taken off its scores, and the choice is the one the same
    regressors make without arm_centre."""
    policy = build_policy("squarecb:arm_centre=10", seed=1)
    arms = [Arm("a"), Arm("b")]
    for i in range(60):
        policy.learn(extract(f"question {i % 5}"), arms, "ab"[i % 3 == 0], 0.5, float(i % 3 == 0))
    assert isinstance(policy, VWPolicy) and policy.centre("a") != policy.centre("b")
    x = extract("question 2")
    for errors, same in (([1.0, 0.0], True), ([0.0, 1.0], False)):
        data = _edited(policy.dumps(), {"errors": errors})
        centred = load_policy("squarecb:arm_centre=10", data, seed=3)
        plain = load_policy("squarecb:arm_centre=0", data, seed=3)
        assert isinstance(centred, VWPolicy) and centred.serving == errors.index(0.0)
        chosen = centred.choose(x, arms).probabilities, plain.choose(x, arms).probabilities
        assert (chosen[0] == chosen[1]) is same, errors


def test_the_shared_lines_kept_for_learning_are_bounded() -> None:
    """Choices never learned (their rewards lost) do not grow the policy without end."""
    policy = build_policy("squarecb", seed=1)
    assert isinstance(policy, VWPolicy)
    for i in range(KEPT_SHARED + 50):
        policy.choose(extract(f"question {i}"), [Arm("a"), Arm("b")])
    assert len(policy._shared) == KEPT_SHARED


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("squarecb:coarse=QWNC", "coarse must name some of the shared namespaces"),
        ("squarecb:vw_args=--l2 0.5", "write squarecb:l2=0.5"),
    ],
)
def test_a_spec_that_would_not_build_is_refused_when_parsed(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_policy_spec(spec)


def test_greed_scales_gamma_by_itself_and_the_gap_prior_by_its_square() -> None:
    """Rewards that spread far less than reward_sd make SquareCB SPREAD_CAP (4) times greedier:
    it chooses as with gamma_scale 4 times larger and gap_prior 16 times smaller."""
    greedy = build_policy("squarecb:gamma_scale=20:gap_prior=16", seed=1)
    scaled = build_policy("squarecb:gamma_scale=80:gap_prior=1:reward_sd=0", seed=1)
    assert isinstance(greedy, VWPolicy) and isinstance(scaled, VWPolicy)
    arms = [Arm("a"), Arm("b"), Arm("c")]
    for i in range(40):
        for policy in (greedy, scaled):
            x = extract(f"question {i % 4}")
            policy.learn(x, arms, "abc"[i % 3], 0.5, 0.5 + 0.05 * (i % 2) + 0.02 * (i % 3 == 0))
    assert greedy.greed() == 4.0 and scaled.greed() == 1.0
    for i in range(4):
        x = extract(f"question {i}")
        assert greedy.choose(x, arms).probabilities == scaled.choose(x, arms).probabilities


def test_a_probability_above_1_weighs_an_arms_centre_as_1() -> None:
    policy = build_policy("squarecb:arm_centre=10", seed=1)
    assert isinstance(policy, VWPolicy)
    x, arms = extract("hello"), [Arm("a"), Arm("b")]
    policy.learn(x, arms, "a", 2.0, 1.0)  # weight 1
    policy.learn(x, arms, "a", 0.5, 0.0)  # weight 2
    assert policy.centres.mean("a") == pytest.approx(1 / 3)
