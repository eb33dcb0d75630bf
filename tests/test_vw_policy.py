from __future__ import annotations

from bandit_router.features import Features, token_hash
from bandit_router.policies import Arm
from bandit_router.vw_policy import adf_example, arm_line, shared_line, vw_arguments

X = Features(stats=(0.5, 0.25, 0.0, 1.0, 0, 0, 0, 0, 0, 0), tokens=(11, 22))


def test_shared_line_exact() -> None:
    assert shared_line(X) == "shared |Q chars:0.5 words:0.25 code:1 |W 11 22"


def test_shared_line_with_app_features() -> None:
    x = Features(stats=(0.0,) * 10, numeric={"n": 2.0}, categorical={"tier": "pro"})
    assert shared_line(x) == (f"shared |Q |N {token_hash('n')}:2 |C {token_hash('tier=pro')}")


def test_arm_line_exact() -> None:
    arm_id = token_hash("arm=7b")
    assert arm_line(Arm("7b", 7, 0.2)) == f"|A {arm_id} size:0.415888 price:0.2"
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
    assert args[4:8] == ["--cb_min_cost", "-1", "--cb_max_cost", "0"]
    for ns in "QWNC":
        assert f"--interactions={ns}A" in args
    assert args[-2:] == ["--random_seed", "3"]


def test_a_new_arm_is_scored_from_its_features_at_once() -> None:
    """Trained where bigger arms pay more, VW ranks an unseen, still bigger arm first."""
    import random

    from bandit_router.features import extract
    from bandit_router.policies import build_policy

    policy = build_policy("egreedy:epsilon=0.1", seed=1)
    known = [Arm("small", 2, 0.1), Arm("mid", 8, 0.2), Arm("large", 30, 0.4)]
    rng = random.Random(1)
    for _ in range(2000):
        x = extract(f"question {rng.randrange(100)}")
        d = policy.choose(x, known)
        reward = {"small": 0.1, "mid": 0.4, "large": 0.7}[d.arm]
        policy.learn(x, known, d.arm, d.probability, reward)
    newcomer = Arm("huge", 120, 0.8)
    probs = policy.choose(extract("question 7"), [*known, newcomer]).probabilities
    assert max(probs, key=lambda k: probs[k]) == "huge"
