"""LinUCB, disjoint (Li et al. 2010, Algorithm 1), in numpy with rank-1 inverse updates.

Each arm ``a`` keeps ``A_a^-1`` (d x d) and ``b_a`` (d). The score of arm ``a`` for context ``x``
is ``theta_a . x + alpha * sqrt(x . A_a^-1 . x)`` with ``theta_a = A_a^-1 b_a``. Learning adds
``x x^T`` to ``A_a``; its inverse is updated in O(d^2) by Sherman-Morrison:
``(A + x x^T)^-1 = A^-1 - (A^-1 x)(A^-1 x)^T / (1 + x^T A^-1 x)``. No full inverse is ever taken.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from bandit_router.features import QUERY_STATS, Features, token_hash
from bandit_router.policies import Arm, Decision, ParamValue, PolicyKind, sample

Vector = npt.NDArray[np.float64]

MIN_DIM = len(QUERY_STATS) + 2  # bias, the statistics, and at least one hashed slot


def dense_vector(x: Features, dim: int) -> Vector:
    """A fixed-width vector: bias, query statistics, then words and app facts hashed into slots."""
    # Built in Python floats (the same IEEE sums, in the same order, as numpy's add.at) and
    # converted once: numpy's per-call overhead dominated at this size.
    start = 1 + len(QUERY_STATS)
    v = [1.0, *x.stats, *(0.0 for _ in range(dim - start))]
    slots = dim - start
    if x.tokens:
        weight = 1.0 / math.sqrt(len(x.tokens))
        for token in x.tokens:
            v[start + token % slots] += weight
    for key, value in x.numeric.items():
        v[start + token_hash(key) % slots] += math.copysign(math.log1p(abs(value)), value)
    for key, text in x.categorical.items():
        v[start + token_hash(f"{key}={text}") % slots] += 1.0
    return np.array(v)


class LinUCB:
    """Disjoint LinUCB. Its choice is greedy on the upper bound: probability 1, ties split."""

    name = "linucb"

    def __init__(self, alpha: float = 0.5, dim: int = 64, seed: int | None = None) -> None:
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if dim < MIN_DIM:
            raise ValueError(f"dim must be >= {MIN_DIM}, got {dim}")
        self.alpha = float(alpha)
        self.dim = int(dim)
        self._rng = np.random.default_rng(seed)
        self._a_inv: dict[str, Vector] = {}
        self._b: dict[str, Vector] = {}
        self._last: tuple[Features, Vector, dict[str, Vector]] | None = None

    def _state(self, arm: str) -> tuple[Vector, Vector]:
        if arm not in self._a_inv:  # a new arm starts from A = I, b = 0
            self._a_inv[arm] = np.eye(self.dim)
            self._b[arm] = np.zeros(self.dim)
        return self._a_inv[arm], self._b[arm]

    def scores(self, x: Features, arms: Sequence[Arm]) -> Vector:
        v = dense_vector(x, self.dim)
        out = np.empty(len(arms))
        products = {}
        for i, arm in enumerate(arms):
            a_inv, b = self._state(arm.name)
            a_inv_v = products[arm.name] = a_inv @ v
            out[i] = a_inv_v @ b + self.alpha * math.sqrt(
                max(float(v @ a_inv_v), 0.0)
            )  # A^-1 symmetric
        # Learning this context next (choose, then learn) reuses x's vector and A^-1 x.
        self._last = (x, v, products)
        return out

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        scores = self.scores(x, arms)
        best = scores >= scores.max() - 1e-12
        return sample(self._rng, arms, best / best.sum())

    def learn(
        self, x: Features, arms: Sequence[Arm], arm: str, probability: float, reward: float
    ) -> None:
        last, self._last = self._last, None  # A^-1 changes below: the products go stale
        a_inv, b = self._state(arm)
        if last is not None and last[0] is x and arm in last[2]:
            v, a_inv_v = last[1], last[2][arm]
        else:
            v = dense_vector(x, self.dim)
            a_inv_v = a_inv @ v
        a_inv -= np.outer(a_inv_v, a_inv_v) / (1.0 + v @ a_inv_v)  # Sherman-Morrison, in place
        b += reward * v

    def dumps(self) -> bytes:
        names = list(self._a_inv)
        buf = io.BytesIO()
        np.savez(
            buf,
            names=np.array(names, dtype=str),
            a_inv=np.array([self._a_inv[n] for n in names]).reshape(len(names), self.dim, self.dim),
            b=np.array([self._b[n] for n in names]).reshape(len(names), self.dim),
            config=np.array([self.alpha, self.dim]),
        )
        return buf.getvalue()

    @classmethod
    def loads(cls, data: bytes, alpha: float | None = None, seed: int | None = None) -> LinUCB:
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            saved_alpha, dim = saved["config"]
            policy = cls(saved_alpha if alpha is None else alpha, int(dim), seed)
            for i, name in enumerate(saved["names"]):
                policy._a_inv[str(name)] = saved["a_inv"][i].copy()
                policy._b[str(name)] = saved["b"][i].copy()
        return policy


def _build(params: Mapping[str, ParamValue], seed: int | None) -> LinUCB:
    return LinUCB(float(params["alpha"]), int(params["dim"]), seed)


def _load(data: bytes, params: Mapping[str, ParamValue], seed: int | None) -> LinUCB:
    policy = LinUCB.loads(data, float(params["alpha"]), seed)
    if policy.dim != int(params["dim"]):
        raise ValueError(
            f"saved LinUCB model has dim {policy.dim}, settings ask for {params['dim']}"
        )
    return policy


LINUCB = PolicyKind(build=_build, load=_load, defaults={"alpha": 0.5, "dim": 64})
