from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bandit_router.features import QUERY_STATS, Features, app_hash, extract
from bandit_router.policies.base import Arm, sample
from bandit_router.policies.linucb import MAX_DIM, LinUCB, dense_vector
from bandit_router.policies.registry import build_policy, load_policy

ARMS = [Arm("a"), Arm("b")]


def test_rank_one_updates_match_the_full_inverse() -> None:
    policy = LinUCB(alpha=1.0, dim=32, seed=0)
    queries = [f"query number {i} about topic {i % 7}" for i in range(60)]
    a_full = np.eye(32)
    for q in queries:
        x = extract(q)
        policy.learn(x, ARMS, "a", 1.0, 0.5)
        v = dense_vector(x, 32)
        a_full += np.outer(v, v)
    np.testing.assert_allclose(policy.state("a")[0], np.linalg.inv(a_full), atol=1e-9)


def test_dense_vector_shape_and_bias() -> None:
    v = dense_vector(extract("hello world", {"tier": "pro", "n": 3}), 64)
    assert v.shape == (64,)
    assert v[0] == 1.0
    assert np.all(np.isfinite(v))


START = 1 + len(QUERY_STATS)  # the hashed slots follow the bias and the statistics
KEYS = st.text("abcdefgh", min_size=1, max_size=4)


@given(
    dim=st.sampled_from([12, 13, 24, 64]),
    stats=st.lists(st.floats(0, 1), min_size=len(QUERY_STATS), max_size=len(QUERY_STATS)),
    tokens=st.lists(st.integers(0, 2**32 - 1), max_size=30, unique=True),
    numeric=st.dictionaries(KEYS, st.floats(-1e6, 1e6), max_size=3),
    categorical=st.dictionaries(KEYS, st.sampled_from(["pro", "free", "eu"]), max_size=3),
)
def test_the_dense_vector_is_the_bias_the_statistics_and_the_hashed_words_and_facts(
    dim: int,
    stats: list[float],
    tokens: list[int],
    numeric: dict[str, float],
    categorical: dict[str, str],
) -> None:
    """The layout a saved model's matrices are in, and the estimators' and peers' contexts
    too: a word adds 1/sqrt(words) to its slot (a query's words weigh 1 together, however
    many), a number its signed log1p, a string fact (key=value) 1; nothing lands on the bias
    or the statistics, and an empty slot is 0."""
    x = Features(tuple(stats), tuple(sorted(tokens)), numeric, categorical)
    v = dense_vector(x, dim)
    slots = dim - START
    hashed = np.zeros(slots)
    for token in tokens:
        hashed[token % slots] += 1 / math.sqrt(len(tokens))
    for key, value in numeric.items():
        hashed[app_hash(key) % slots] += math.copysign(math.log1p(abs(value)), value)
    for key, text in categorical.items():
        hashed[app_hash(key, text) % slots] += 1.0
    assert v.shape == (dim,) and v.dtype == np.float64
    assert v[0] == 1.0 and v[1:START].tolist() == stats
    np.testing.assert_allclose(v[START:], hashed, rtol=1e-12, atol=1e-12)


def test_linucb_tells_queries_apart_by_a_word_alone() -> None:
    """Two queries whose statistics are the same (a word of the same length swapped): only the
    hashed words tell them apart, and LinUCB learns a different arm for each."""
    zebra, otter = (
        extract("please summarise the zebra report"),
        extract("please summarise the otter report"),
    )
    assert zebra.stats == otter.stats and zebra.tokens != otter.tokens
    policy = LinUCB(alpha=0.1, seed=0)
    for _ in range(20):
        policy.learn(zebra, ARMS, "a", 1.0, 1.0)
        policy.learn(zebra, ARMS, "b", 1.0, 0.0)
        policy.learn(otter, ARMS, "a", 1.0, 0.0)
        policy.learn(otter, ARMS, "b", 1.0, 1.0)
    assert [policy.choose(x, ARMS).arm for x in (zebra, otter)] == ["a", "b"]


def test_ties_split_the_probability() -> None:
    d = LinUCB(seed=0).choose(extract("hi"), ARMS)
    assert d.probabilities == {"a": 0.5, "b": 0.5}
    assert d.probability == 0.5


def test_greedy_after_learning() -> None:
    policy = LinUCB(alpha=0.1, seed=0)
    x = extract("hi")
    for _ in range(20):
        policy.learn(x, ARMS, "a", 1.0, 1.0)
        policy.learn(x, ARMS, "b", 1.0, 0.0)
    d = policy.choose(x, ARMS)
    assert (d.arm, d.probability) == ("a", 1.0)


def test_loads_refuses_pickle_and_keeps_state() -> None:
    policy = LinUCB(alpha=0.2, dim=16, seed=0)
    policy.learn(extract("x"), ARMS, "b", 1.0, 1.0)
    restored = LinUCB.loads(policy.dumps())
    assert (restored.alpha, restored.dim) == (0.2, 16)
    np.testing.assert_array_equal(restored.state("b")[1], policy.state("b")[1])
    with pytest.raises(ValueError):
        LinUCB.loads(b"not a model")


def test_scores_match_the_textbook_formula_through_every_path() -> None:
    """theta . x + alpha sqrt(x A^-1 x) from A and b built in full, after choose-then-learn (the
    reused products), learns of an arm that was not chosen, of a context never scored, and
    scores of a subset of the arms in another order (the gather path)."""
    arms = [Arm("a"), Arm("b"), Arm("c")]
    policy = LinUCB(alpha=0.7, dim=24, seed=3)
    full = {arm.name: (np.eye(24), np.zeros(24)) for arm in arms}

    def learn(x_text: str, arm: str, reward: float) -> None:
        x = extract(x_text)
        policy.learn(x, arms, arm, 1.0, reward)
        a, b = full[arm]
        v = dense_vector(x, 24)
        full[arm] = (a + np.outer(v, v), b + reward * v)

    for i in range(120):
        text = f"question {i} on subject {i % 5} with {i % 3} parts"
        x = extract(text)
        decision = policy.choose(x, arms)
        policy.learn(x, arms, decision.arm, decision.probability, (i % 4) / 4)
        a, b = full[decision.arm]
        v = dense_vector(x, 24)
        full[decision.arm] = (a + np.outer(v, v), b + (i % 4) / 4 * v)
        if i % 7 == 0:
            learn(text, "c", 0.9)  # not the chosen arm, and no products left for it
        if i % 11 == 0:
            learn(f"never scored {i}", "a", 0.1)

    x = extract("a final question on subject 2")
    v = dense_vector(x, 24)
    for subset in (arms, [arms[2], arms[0]]):
        expected = []
        for arm in subset:
            a, b = full[arm.name]
            a_inv = np.linalg.inv(a)
            expected.append((a_inv @ b) @ v + 0.7 * np.sqrt(v @ a_inv @ v))
        np.testing.assert_allclose(policy.scores(x, subset), expected, rtol=1e-9, atol=1e-9)


def test_choices_draw_the_generator_stream_one_number_each() -> None:
    """The draws are taken 256 at a time; the arms drawn are those of one rng.random() each."""
    from bandit_router.policies.linucb import _Draws

    draws = _Draws(np.random.default_rng(9))
    reference = np.random.default_rng(9)
    assert [draws.random() for _ in range(700)] == [reference.random() for _ in range(700)]


def test_dim_is_bounded_where_the_matrices_stay_small() -> None:
    """dim=100000000 asked numpy for 71 PiB of matrices; the bound refuses it before any."""
    assert MAX_DIM == 1024
    LinUCB(dim=MAX_DIM).choose(extract("hello"), ARMS)  # 8 MiB per arm
    for dim in (MAX_DIM + 1, 100_000_000, 10**400):
        with pytest.raises(ValueError, match=r"dim must be in \[12, 1024\], got"):
            LinUCB(dim=dim)
        with pytest.raises(
            ValueError, match=r"policy linucb: parameter dim must be in \[12, 1024\]"
        ):
            build_policy(f"linucb:dim={dim}")
    for alpha in (float("nan"), float("inf"), 101.0):
        with pytest.raises(ValueError, match=r"alpha must be in \[0, 100\], got"):
            LinUCB(alpha=alpha)


def test_an_arm_added_later_starts_fresh_and_the_others_keep_what_they_learned() -> None:
    """A new arm in the list (an arm added to the settings) starts from A = I, b = 0; the arms
    already known keep their matrices and scores, in whatever order they are listed after."""
    policy = LinUCB(alpha=0.5, dim=16, seed=0)
    x = extract("a question about the weather")
    for i in range(10):
        policy.learn(x, ARMS, "a", 1.0, 1.0)
        policy.learn(extract(f"another {i}"), ARMS, "b", 1.0, 0.2)
    before = {arm: policy.state(arm) for arm in ("a", "b")}
    scores = policy.scores(x, ARMS).tolist()
    grown = [Arm("c"), Arm("b"), Arm("a")]
    after = policy.scores(x, grown).tolist()
    assert after[1:] == pytest.approx(scores[::-1], rel=1e-12)
    assert after[0] == pytest.approx(0.5 * np.linalg.norm(dense_vector(x, 16)))  # A = I, b = 0
    for arm, (a_inv, b) in before.items():
        np.testing.assert_array_equal(policy.state(arm)[0], a_inv)
        np.testing.assert_array_equal(policy.state(arm)[1], b)
    np.testing.assert_array_equal(policy.state("c")[0], np.eye(16))
    assert not policy.state("c")[1].any()


def test_learning_right_after_a_choice_learns_the_context_and_arm_given() -> None:
    """A learn may follow the choice of another context, or be for an arm the choice did not
    score: it learns what it is given, as a policy that made no choice does."""
    chooser, learner = LinUCB(dim=16, seed=0), LinUCB(dim=16, seed=0)
    three = [*ARMS, Arm("c")]
    for i in range(12):
        x, other = extract(f"first question {i}"), extract(f"another matter {i % 4}")
        chooser.choose(x, ARMS)
        chooser.learn(other, three, "a", 1.0, 0.7)  # a context that was not scored
        chooser.choose(x, ARMS)
        chooser.learn(x, three, "c", 1.0, 0.3)  # an arm that was not scored
        chooser.choose(x, three[1:])
        chooser.learn(x, three, "a", 1.0, 0.9)  # and the first arm, not scored either
        learner.learn(other, three, "a", 1.0, 0.7)
        learner.learn(x, three, "c", 1.0, 0.3)
        learner.learn(x, three, "a", 1.0, 0.9)
    for arm in ("a", "c"):
        np.testing.assert_allclose(chooser.state(arm)[0], learner.state(arm)[0], atol=1e-12)
        np.testing.assert_allclose(chooser.state(arm)[1], learner.state(arm)[1], atol=1e-12)


def test_choices_are_the_seeded_samples_of_the_tied_best_arms() -> None:
    """Each choice is what ``sample`` draws from the tied best arms' uniform distribution, from
    the seed's stream: one number a choice among several arms (with one best arm too, so later
    ties stay the same), none for a single arm."""
    arms = [Arm(name) for name in "abcd"]
    policy, twin = LinUCB(dim=16, seed=4), LinUCB(dim=16, seed=99)  # twin: scores only
    rng = np.random.default_rng(4)
    for i in range(80):
        offered = arms[i % 4 :] if i % 5 else arms[i % 4 : i % 4 + 1]
        x = extract(f"question {i % 3}")
        scores = twin.scores(x, offered)
        best = [1.0 if s >= max(scores) - 1e-12 else 0.0 for s in scores]
        decision = policy.choose(x, offered)
        assert decision == sample(rng, offered, best)
        for p in (policy, twin):
            p.learn(x, offered, decision.arm, decision.probability, 0.0)


def test_a_saved_model_loads_with_the_alpha_the_settings_give_now() -> None:
    """An operator who changes alpha keeps what was learned: the matrices load, the new alpha
    scores them (the saved one only when none is given)."""
    policy = LinUCB(alpha=0.2, dim=16, seed=0)
    x = extract("how far is the moon")
    policy.learn(x, ARMS, "a", 1.0, 1.0)
    data = policy.dumps()
    assert LinUCB.loads(data).alpha == 0.2
    loaded = load_policy("linucb:alpha=3:dim=16", data, seed=0)
    assert isinstance(loaded, LinUCB) and loaded.alpha == 3.0
    np.testing.assert_array_equal(loaded.state("a")[1], policy.state("a")[1])
    wide = LinUCB(alpha=3.0, dim=16)
    wide.learn(x, ARMS, "a", 1.0, 1.0)
    np.testing.assert_allclose(loaded.scores(x, ARMS), wide.scores(x, ARMS), rtol=1e-12)


@pytest.mark.parametrize("value", [math.nan, math.inf, 2e15])
def test_a_saved_model_whose_b_is_not_finite_or_beyond_its_bound_is_refused(value: float) -> None:
    policy = LinUCB(dim=12, seed=0)
    policy.learn(extract("hello"), ARMS, "a", 1.0, 1.0)
    a_inv, b = policy.state("a")
    b[3] = value
    buf = io.BytesIO()
    np.savez(buf, names=np.array(["a"]), a_inv=a_inv[None], b=b[None], config=np.array([0.5, 12]))
    with pytest.raises(ValueError, match="b is not finite within"):
        LinUCB.loads(buf.getvalue())
