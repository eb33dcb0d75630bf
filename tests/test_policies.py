"""The contract every registered policy keeps, and the registry's errors."""

from __future__ import annotations

import math
import random
import re

import pytest

from bandit_router.features import QUERY_STATS, Features, extract
from bandit_router.policies.base import Arm, PolicySpec
from bandit_router.policies.baselines import by_size
from bandit_router.policies.registry import (
    build_policy,
    load_policy,
    parse_policy_spec,
    policy_kind,
    policy_names,
)

ARMS = [Arm("4b", 4, 0.1), Arm("7b", 7, 0.2), Arm("14b", 14, 0.4)]
CONTEXTUAL = ["egreedy", "squarecb", "cover", "bag", "softmax", "regcb", "rnd", "linucb"]
LEARNING = [*CONTEXTUAL, "ts", "ucb"]  # ts, ucb: arm-level (tests/test_arm_level.py)
SPECS = [*LEARNING, "random", "static", "fixed:arm=7b"]
VOCAB = [f"word{i}" for i in range(300)]
MARKER = "zebra"


def test_every_registered_policy_is_covered() -> None:
    assert {parse_policy_spec(s).name for s in SPECS} == set(policy_names())


def _query(rng: random.Random, marked: bool) -> Features:
    words = rng.sample(VOCAB, 12)
    if marked:
        words.insert(rng.randrange(len(words)), MARKER)
    return extract(" ".join(words))


@pytest.mark.parametrize("spec", SPECS)
def test_probabilities_form_a_distribution(spec: str) -> None:
    policy = build_policy(spec, seed=1)
    rng = random.Random(0)
    for _ in range(50):
        x = _query(rng, rng.random() < 0.5)
        d = policy.choose(x, ARMS)
        assert list(d.probabilities) == [a.name for a in ARMS]
        assert sum(d.probabilities.values()) == pytest.approx(1.0)
        assert 0.0 < d.probability <= 1.0
        assert d.probability == pytest.approx(d.probabilities[d.arm])
        policy.learn(x, ARMS, d.arm, d.probability, rng.random())


@pytest.mark.parametrize("spec", SPECS)
def test_subset_of_arms(spec: str) -> None:
    policy = build_policy(spec, seed=1)
    d = policy.choose(extract("hello"), ARMS[1:])
    assert set(d.probabilities) == {"7b", "14b"}
    assert d.arm in {"7b", "14b"}


@pytest.mark.parametrize("spec", SPECS)
def test_dumps_loads_round_trip(spec: str) -> None:
    policy = build_policy(spec, seed=3)
    rng = random.Random(1)
    for _ in range(200):
        x = _query(rng, rng.random() < 0.5)
        d = policy.choose(x, ARMS)
        policy.learn(x, ARMS, d.arm, d.probability, float(d.arm == "4b"))
    data = policy.dumps()
    a, b = load_policy(spec, data, seed=11), load_policy(spec, data, seed=11)
    probe = [_query(rng, i % 2 == 0) for i in range(40)]
    for x in probe:
        original, restored = policy.choose(x, ARMS), a.choose(x, ARMS)
        assert restored.probabilities == pytest.approx(original.probabilities, abs=1e-6)
        assert restored == b.choose(x, ARMS)  # same bytes, same seed: identical choices


@pytest.mark.parametrize("spec", CONTEXTUAL)
def test_learns_a_planted_rule(spec: str) -> None:
    """Marked queries are best served by 4b, the rest by 14b; greedy choice >= 90% right."""
    policy = build_policy(spec, seed=5)
    rng = random.Random(5)
    for _ in range(3000):
        marked = rng.random() < 0.5
        x = _query(rng, marked)
        d = policy.choose(x, ARMS)
        best = "4b" if marked else "14b"
        policy.learn(x, ARMS, d.arm, d.probability, 1.0 if d.arm == best else 0.0)
    right = 0
    trials = 400
    for i in range(trials):
        marked = i % 2 == 0
        probs = policy.choose(_query(rng, marked), ARMS).probabilities
        greedy = max(probs, key=lambda k: probs[k])
        right += greedy == ("4b" if marked else "14b")
    # LinUCB hashes words into 53 slots: the marker shares its slot with words of about a fifth
    # of the unmarked queries, and which words depends on the word key (0.85-0.97 over 9 keys).
    bar = 0.85 if spec == "linucb" else 0.9
    assert right / trials >= bar, f"{spec}: greedy right {right}/{trials}"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown policy 'nope'; valid: egreedy"),
        ("egreedy:epsilon=2", "epsilon must be in"),
        ("bag:bag=0", r"bag must be in \[1, 100\], got 0"),
        ("linucb:alpha=-1", r"alpha must be in \[0, 100\], got -1"),
        ("linucb:dim=4", r"dim must be in \[12, 1024\], got 4"),
        ("squarecb:bits=30", r"bits must be in \[1, 24\], got 30"),
        ("fixed", "fixed needs an arm"),
        ("squarecb:gamma_scale=10:gamma_scale=20", "parameter gamma_scale is given twice"),
        ("egreedy:vw_args=--nonsense_flag", "'--nonsense_flag' is not an allowed VW option"),
        ("squarecb:vw_args=--l2 0.5", "write squarecb:l2=0.5"),  # squarecb sets its own
        # full-width and Arabic-Indic digits, and 1_8: Python's int() and float() read them,
        # and the spec ran as gamma_scale=20, bits=18
        ("squarecb:gamma_scale=\uff12\uff10", "gamma_scale must be a float in .*, got '\uff12"),
        ("squarecb:bits=1_8", r"bits must be an int in \[1, 24\], got '1_8'"),
        ("ts:discount=\u0660.\u0665", "discount must be a float in"),
        ("egreedy:vw_args=--power_t \uff10.\uff15", "--power_t must be in .0, 1., got '\uff10"),
    ],
)
def test_bad_parameters_are_named(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_policy(spec)


def test_spec_string_round_trips() -> None:
    spec = parse_policy_spec("egreedy:epsilon=0.1:bits=20")
    assert spec.params == {"epsilon": 0.1, "bits": 20}
    assert str(spec) == "egreedy:epsilon=0.1:bits=20"


# Every numeric parameter of every registered policy, with its bounds as the errors print them.
KINDS = {name: policy_kind(name) for name in policy_names()}
NUMERIC = [
    (name, key, str(kind.bounds.get(key)))
    for name, kind in KINDS.items()
    for key, default in kind.defaults.items()
    if not isinstance(default, str)
]


def test_every_numeric_parameter_has_bounds_that_hold_its_default() -> None:
    for name, kind in KINDS.items():
        for key, default in kind.defaults.items():
            if isinstance(default, str):
                continue
            assert key in kind.bounds, f"{name}: {key} has no bounds"
            kind.bounds[key].check(key, default)


NOT_FINITE = ["nan", "NaN", "inf", "-inf", "1e400", "9" * 400, "-" + "9" * 400]


@pytest.mark.parametrize(("name", "key", "bounds"), NUMERIC)
@pytest.mark.parametrize("raw", NOT_FINITE, ids=lambda raw: raw[:6])
def test_a_value_out_of_bounds_is_refused_naming_the_parameter_and_its_range(
    name: str, key: str, bounds: str, raw: str
) -> None:
    """NaN, an infinity, a float beyond float64 or an integer of 400 digits: refused by the
    parser (so /admin/policy and the settings refuse it), with the parameter and its range."""
    named = re.escape(f"policy {name}: parameter {key} must be ") + r"(an int |a float )?in "
    with pytest.raises(ValueError, match=named + re.escape(bounds)):
        parse_policy_spec(f"{name}:{key}={raw}")


def test_a_spec_made_in_code_is_bounded_too() -> None:
    """Parameters that do not come through the parser (a spec made in code, the settings' values)
    are checked when the policy is built."""
    with pytest.raises(ValueError, match=re.escape("parameter gamma_scale must be in (0, 10000]")):
        build_policy(PolicySpec("squarecb", {"gamma_scale": math.nan}))
    with pytest.raises(ValueError, match=re.escape("parameter dim must be in [12, 1024]")):
        build_policy(PolicySpec("linucb", {"dim": 100_000_000}))


# The baselines: what each one picks, with probability 1 for static and fixed.


def _picks(spec: str, x: Features, arms: list[Arm]) -> str:
    d = build_policy(spec, seed=1).choose(x, arms)
    assert d.probability == 1.0 and d.probabilities[d.arm] == 1.0
    return d.arm


def _stats(**values: float) -> Features:
    return Features(tuple(values.get(name, 0.0) for name in QUERY_STATS))


def test_static_sends_hard_queries_to_the_largest_arm_lookups_to_the_smallest() -> None:
    """Code, maths, reasoning or a query longer than about 1,500 characters: the largest arm;
    a lookup (that is none of those): the smallest; anything else: the middle one of three.
    The arms come out of size order."""
    arms = [Arm("14b", 14), Arm("4b", 4), Arm("7b", 7)]
    for hard in ("code", "math", "reasoning"):
        assert _picks("static", _stats(**{hard: 1.0, "lookup": 1.0}), arms) == "14b", hard
    assert _picks("static", extract("a" * 1600), arms) == "14b"
    assert _picks("static", extract("a" * 1300), arms) == "7b"
    assert _picks("static", _stats(lookup=1.0), arms) == "4b"
    assert _picks("static", _stats(question=1.0), arms) == "7b"


def test_static_takes_the_middle_arm_by_size_and_the_smaller_of_two() -> None:
    four = [Arm("1b", 1), Arm("8b", 8), Arm("70b", 70), Arm("3b", 3)]
    assert _picks("static", _stats(question=1.0), four) == "8b"  # 1b, 3b, 8b, 70b: the third
    assert _picks("static", _stats(question=1.0), [Arm("70b", 70), Arm("8b", 8)]) == "8b"
    assert _picks("static", _stats(code=1.0), [Arm("70b", 70), Arm("8b", 8)]) == "70b"


def test_arms_of_unknown_size_come_after_the_others_in_their_own_order() -> None:
    arms = [Arm("u1"), Arm("70b", 70), Arm("1b", 1), Arm("u2")]
    assert by_size(arms) == [2, 1, 0, 3]
    assert by_size([Arm("u2"), Arm("u1")]) == [0, 1]


def test_fixed_picks_its_arm_and_the_first_eligible_one_when_its_arm_is_left_out() -> None:
    x = _stats(question=1.0)
    assert _picks("fixed:arm=7b", x, ARMS) == "7b"
    assert _picks("fixed:arm=7b", x, [Arm("14b", 14), Arm("4b", 4)]) == "14b"
