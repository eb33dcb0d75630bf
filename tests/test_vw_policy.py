from __future__ import annotations

import pytest

from bandit_router.features import Features, token_hash
from bandit_router.policies.base import Arm
from bandit_router.policies.vw import VWPolicy, adf_example, arm_line, shared_line, vw_arguments

X = Features(stats=(0.5, 0.25, 0.0, 1.0, 0, 0, 0, 0, 0, 0), tokens=(11, 22))


def test_shared_line_exact() -> None:
    assert shared_line(X) == "shared |Q chars:0.5 words:0.25 code:1 |W 11 22"


def test_shared_line_with_app_features() -> None:
    x = Features(stats=(0.0,) * 10, numeric={"n": 2.0}, categorical={"tier": "pro"})
    assert shared_line(x) == (f"shared |Q |N {token_hash('n')}:2 |C {token_hash('tier=pro')}")


def test_arm_line_exact() -> None:
    arm_id = token_hash("arm=7b")
    assert arm_line(Arm("7b", 7, 0.2)) == f"|A {arm_id}"  # size and price are not features
    assert arm_line(Arm("7b")) == f"|A {arm_id}"


def test_label_goes_on_the_chosen_arm_with_cost_minus_reward() -> None:
    lines = adf_example(X, [Arm("a"), Arm("b")], chosen=1, cost=-0.75, p=0.5)
    assert lines[1] == f"|A {token_hash('arm=a')}"
    assert lines[2] == f"0:-0.75:0.5 |A {token_hash('arm=b')}"


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


def test_squarecb_pmf_is_vws_rule() -> None:
    from bandit_router.policies.vw import squarecb_pmf

    pmf = squarecb_pmf([-0.5, -0.7, -0.6], gamma=10.0)
    assert pmf[0] == pytest.approx(1 / (3 + 10 * 0.2))
    assert pmf[2] == pytest.approx(1 / (3 + 10 * 0.1))
    assert pmf[1] == pytest.approx(1 - pmf[0] - pmf[2])
    assert squarecb_pmf([0.0, 0.0], gamma=0.0) == [0.5, 0.5]  # a tie goes to the first


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
