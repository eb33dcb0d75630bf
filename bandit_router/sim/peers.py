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
from bandit_router.policies.base import Arm, Bounds, Decision, sample
from bandit_router.policies.linucb import BOUNDS, dense_vector

PEER_DEFAULTS = {"alpha": 0.5, "dim": 64, "l2_lambda": 1.0}
# Our LinUCB's ranges (the peer sees its input), and a finite positive ridge.
PEER_BOUNDS = {**BOUNDS, "l2_lambda": Bounds(0, 1e6, low_open=True)}


def peer_params(spec: str) -> dict[str, float]:
    _, *items = spec.split(":")
    params = dict(PEER_DEFAULTS)
    for item in filter(None, items):
        key, sep, raw = item.partition("=")
        if not sep or key not in params:
            raise ValueError(
                f"policy mabwiser: unknown parameter {item!r}; valid: alpha, dim, l2_lambda"
            )
        try:
            params[key] = float(raw)
        except ValueError:
            raise ValueError(
                f"policy mabwiser: parameter {key} must be a number, got {raw!r}"
            ) from None
        try:
            PEER_BOUNDS[key].check(key, params[key])
        except ValueError as e:
            raise ValueError(f"policy mabwiser: parameter {e}") from None
    if not float(params["dim"]).is_integer():
        raise ValueError(f"policy mabwiser: parameter dim must be an integer, got {params['dim']}")
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


def peer_missing(name: str) -> str | None:
    """Why the peer ``name`` cannot run here (its library is not installed), or None. MABWiser
    is in the dev and bench extras only: without it the run ended in ModuleNotFoundError's
    traceback once the replay was read."""
    try:
        import mabwiser.mab  # noqa: F401
    except ImportError:
        return (
            f"policy {name} needs the MABWiser package, which is not installed: "
            "pip install mabwiser (or the bench extra)"
        )
    return None


def mabwiser_policy(spec: str, arms: Sequence[Arm], seed: int | None) -> MabwiserLinUCB:
    return MabwiserLinUCB(spec, arms, seed)


SKYLINE_PENALTIES = (1.0, 10.0, 100.0, 1000.0, 10000.0)
SKYLINE_FOLDS = 5


def skyline(
    features: Sequence[Features],
    table: npt.NDArray[np.float64],
    train: Sequence[int],
    test: Sequence[int],
    dim: int = 256,
    l2: float | None = None,
) -> npt.NDArray[np.float64]:
    """Full-information skyline: per-arm ridge regression of the reward on the dense features,
    trained on ``train`` rows with every arm's reward known, then greedy on ``test``.

    ``l2`` None takes the penalty of ``SKYLINE_PENALTIES`` that predicts best, in
    ``SKYLINE_FOLDS``-fold cross-validation on ``train``, how each arm's reward differs from the
    row's mean over the arms: what the choice depends on. (A fixed small penalty overfits the
    hashed words where arms differ by a few points; the reward the choices earn is too noisy
    to choose by, and the plain squared error favours fitting how hard a query is for every
    arm.) Returns the reward earned on each ``test`` row. ``table`` is rows x arms, NaN where
    absent.
    """
    x_train = np.array([dense_vector(features[i], dim) for i in train])
    y_train = table[np.asarray(train)]
    if l2 is None:
        folds = np.arange(len(train)) % SKYLINE_FOLDS
        errors = [
            sum(
                _squared_error(
                    _ridge(x_train[folds != f], y_train[folds != f], penalty),
                    x_train[folds == f],
                    y_train[folds == f],
                )
                for f in range(SKYLINE_FOLDS)
            )
            for penalty in SKYLINE_PENALTIES
        ]
        l2 = SKYLINE_PENALTIES[int(np.argmin(errors))]
    x_test = np.array([dense_vector(features[i], dim) for i in test])
    return _greedy(_ridge(x_train, y_train, l2), x_test, table[np.asarray(test)])


def _ridge(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], l2: float
) -> list[npt.NDArray[np.float64] | None]:
    """Per arm (a column of ``y``), ridge coefficients on the rows where it has an outcome;
    None for an arm with none (never picked)."""
    out: list[npt.NDArray[np.float64] | None] = []
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        if not known.any():
            out.append(None)
            continue
        xk = x[known]
        out.append(np.linalg.solve(xk.T @ xk + l2 * np.eye(x.shape[1]), xk.T @ y[known, j]))
    return out


def _squared_error(
    betas: Sequence[npt.NDArray[np.float64] | None],
    x: npt.NDArray[np.float64],
    rewards: npt.NDArray[np.float64],
) -> float:
    """The summed squared error of each arm's predicted reward relative to the row's mean over
    the arms, what a choice depends on (how hard a query is for every arm does not matter)."""
    fits = [(j, beta) for j, beta in enumerate(betas) if beta is not None]
    actual = rewards[:, [j for j, _ in fits]]
    known = ~np.isnan(actual)
    shown = np.maximum(known.sum(axis=1, keepdims=True), 1)
    # predicted minus actual, each relative to its row's mean over the arms with an outcome
    gap = np.where(known, np.stack([x @ beta for _, beta in fits], axis=1) - actual, 0.0)
    error = np.where(known, gap - gap.sum(axis=1, keepdims=True) / shown, 0.0)
    return float((error**2).sum())


def _greedy(
    betas: Sequence[npt.NDArray[np.float64] | None],
    x: npt.NDArray[np.float64],
    rewards: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """The reward of the arm with the highest prediction on each row, among those with one."""
    predicted = np.full(rewards.shape, -np.inf)
    for j, beta in enumerate(betas):
        if beta is not None:
            predicted[:, j] = x @ beta
    predicted[np.isnan(rewards)] = -np.inf  # only arms with an outcome are eligible
    chosen = predicted.argmax(axis=1)
    out: npt.NDArray[np.float64] = rewards[np.arange(len(rewards)), chosen]
    return out
