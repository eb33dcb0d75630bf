"""References beside our policies: MABWiser's LinUCB as a peer, and a full-information skyline.

Both see exactly what our LinUCB sees, ``linucb.dense_vector`` of the same ``Features``. MABWiser
is a ``dev`` extra, imported only when the peer is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bandit_router.features import Features
from bandit_router.policies.base import Arm, Decision, sample
from bandit_router.policies.linucb import dense_vector

PEER_DEFAULTS = {"alpha": 0.5, "dim": 64, "l2_lambda": 1.0}


def peer_params(spec: str) -> dict[str, float]:
    _, *items = spec.split(":")
    params = dict(PEER_DEFAULTS)
    for item in filter(None, items):
        key, sep, raw = item.partition("=")
        if not sep or key not in params:
            raise ValueError(
                f"policy mabwiser: unknown parameter {item!r}; valid: alpha, dim, l2_lambda"
            )
        params[key] = float(raw)
    return params


class MabwiserLinUCB:
    """MABWiser's ``LearningPolicy.LinUCB`` behind our Policy protocol (greedy on the bound)."""

    name = "mabwiser"

    def __init__(self, spec: str, arms: Sequence[Arm], seed: int | None = None) -> None:
        from mabwiser.mab import MAB, LearningPolicy

        p = peer_params(spec)
        self.dim = int(p["dim"])
        policy = LearningPolicy.LinUCB(alpha=p["alpha"], l2_lambda=p["l2_lambda"])
        self._mab: Any = MAB([a.name for a in arms], policy, seed=seed or 0)
        self._fitted = False
        self._rng = np.random.default_rng(seed)

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        if not self._fitted:  # MABWiser predicts only after a first fit
            return sample(self._rng, arms, [1.0] * len(arms))
        for arm in arms:
            if arm.name not in self._mab.arms:
                self._mab.add_arm(arm.name)
        scores = self._mab.predict_expectations(dense_vector(x, self.dim).reshape(1, -1))
        values = np.array([scores[a.name] for a in arms])
        best = values >= values.max() - 1e-12
        return sample(self._rng, arms, best / best.sum())

    def learn(
        self, x: Features, arms: Sequence[Arm], arm: str, probability: float, reward: float
    ) -> None:
        if arm not in self._mab.arms:
            self._mab.add_arm(arm)
        v = dense_vector(x, self.dim).reshape(1, -1)
        if self._fitted:
            self._mab.partial_fit([arm], [reward], v)
        else:
            self._mab.fit([arm], [reward], v)
            self._fitted = True

    def dumps(self) -> bytes:
        return b""  # a peer for the simulator only; never served


def mabwiser_policy(spec: str, arms: Sequence[Arm], seed: int | None) -> MabwiserLinUCB:
    return MabwiserLinUCB(spec, arms, seed)


def skyline(
    features: Sequence[Features],
    table: npt.NDArray[np.float64],
    train: Sequence[int],
    test: Sequence[int],
    dim: int = 256,
    l2: float = 1.0,
) -> npt.NDArray[np.float64]:
    """Full-information skyline: per-arm ridge regression of the reward on the dense features,
    trained on ``train`` rows with every arm's reward known, then greedy on ``test``.

    Returns the reward earned on each ``test`` row. ``table`` is rows x arms, NaN where absent.
    """
    x_train = np.array([dense_vector(features[i], dim) for i in train])
    x_test = np.array([dense_vector(features[i], dim) for i in test])
    predicted = np.full((len(test), table.shape[1]), -np.inf)
    for j in range(table.shape[1]):
        y = table[np.asarray(train), j]
        known = ~np.isnan(y)
        if not known.any():
            continue  # an arm never seen in training is never picked
        xk = x_train[known]
        beta = np.linalg.solve(xk.T @ xk + l2 * np.eye(dim), xk.T @ y[known])
        predicted[:, j] = x_test @ beta
    test_table = table[np.asarray(test)]
    predicted[np.isnan(test_table)] = -np.inf  # only arms with an outcome are eligible
    chosen = predicted.argmax(axis=1)
    out: npt.NDArray[np.float64] = test_table[np.arange(len(test)), chosen]
    return out
