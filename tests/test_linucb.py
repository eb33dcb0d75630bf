from __future__ import annotations

import numpy as np
import pytest

from bandit_router.features import extract
from bandit_router.linucb import LinUCB, dense_vector
from bandit_router.policies import Arm

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
