"""Off-policy estimators: the value of a target policy from logged bandit data.

Each event ``i`` of the log has a reward ``r_i`` in [0, 1] for the arm ``a_i`` the logging policy
chose with propensity ``p_i``; ``w_i = pi(a_i | x_i) / p_i`` is the target policy's importance
weight. Every estimate is a mean of per-event terms, and its 95% confidence interval is the
normal approximation ``value +- 1.96 * s / sqrt(n)`` with ``s`` the sample standard deviation of
those terms (SNIPS: of its delta-method linearisation). It assumes many events and no extreme
weights; with ``n == 1`` the interval is undefined (NaN).

- IPS (Horvitz-Thompson): ``mean(w_i r_i)``; unbiased when every ``p_i > 0`` is the true one.
- SNIPS: ``sum(w_i r_i) / sum(w_i)``; slightly biased, much lower variance, stays in [0, 1].
- DR (Dudik et al. 2011): ``mean(sum_a pi(a | x_i) rhat(x_i, a) + w_i (r_i - rhat(x_i, a_i)))``
  with a reward model ``rhat``: unbiased if either the propensities or the model are right.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from bandit_router.features import QUERY_STATS, Features
from bandit_router.policies.linucb import dense_vector

Array = npt.ArrayLike
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
FIXED_SLOTS = 1 + len(QUERY_STATS)  # a dense vector's bias and statistics; words hash after them
MAX_DIM = 1024  # a reward model's widest vector: its arrays are dim x dim per arm


@dataclass(frozen=True, slots=True)
class Estimate:
    """An estimated policy value with its 95% confidence interval over ``n`` events."""

    value: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict[str, float | int | None]:
        """A JSON-safe dict: NaN (no interval, or no data on the target's arms) becomes null."""

        def finite(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "value": finite(self.value),
            "low": finite(self.low),
            "high": finite(self.high),
            "n": self.n,
        }


def _interval(value: float, n: int, sd: float) -> Estimate:
    """``value`` with its interval from the ``n`` terms' sample standard deviation ``sd``."""
    if n < 2:
        return Estimate(value, math.nan, math.nan, n)
    half = Z95 * sd / math.sqrt(n)
    return Estimate(value, value - half, value + half, n)


def _normal(value: float, terms: npt.NDArray[np.float64]) -> Estimate:
    n = len(terms)
    return _interval(value, n, float(np.std(terms, ddof=1)) if n >= 2 else math.nan)


def _sd(squares: Fraction, n: int) -> float:
    """The sample standard deviation of ``n`` terms whose squared deviations from their mean
    sum to ``squares`` (below 0 only by the underflow of a product of tiny numbers)."""
    return math.sqrt(max(float(squares), 0.0) / (n - 1))


def _arrays(*arrays: Array) -> list[npt.NDArray[np.float64]]:
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    if len({len(a) for a in out}) != 1 or len(out[0]) == 0:
        raise ValueError(
            f"need equally long, non-empty arrays, got lengths {[len(a) for a in out]}"
        )
    if np.any(out[1] <= 0) or np.any(out[1] > 1):
        raise ValueError("logged propensities must be in (0, 1]")
    return out


def ips(target: Array, logged: Array, rewards: Array) -> Estimate:
    """IPS: ``target[i] = pi(a_i | x_i)``, ``logged[i] = p_i``, ``rewards[i] = r_i``."""
    t, p, r = _arrays(target, logged, rewards)
    terms = t / p * r
    return _normal(float(terms.mean()), terms)


def snips(target: Array, logged: Array, rewards: Array) -> Estimate:
    """Self-normalised IPS; its interval linearises the ratio (delta method)."""
    t, p, r = _arrays(target, logged, rewards)
    w = t / p
    if w.sum() <= 0:  # the target never picks a logged arm: the log says nothing about it
        return Estimate(math.nan, math.nan, math.nan, len(w))
    value = float((w * r).sum() / w.sum())
    return _normal(value, value + w * (r - value) / w.mean())


def doubly_robust(
    target: Array, logged: Array, rewards: Array, predicted: Array, direct: Array
) -> Estimate:
    """DR: ``predicted[i] = rhat(x_i, a_i)``, ``direct[i] = sum_a pi(a | x_i) rhat(x_i, a)``."""
    t, p, r, q, dm = _arrays(target, logged, rewards, predicted, direct)
    terms = dm + t / p * (r - q)
    return _normal(float(terms.mean()), terms)


# The same estimates from sufficient statistics: exact sums over the events (``offline.moments``
# keeps them for a sliding window). The formulas are the ones above, rewritten in sums.


def mean_of(n: int, total: Fraction, squares: Fraction) -> Estimate:
    """The mean of ``n`` per-event terms with its interval, from the exact sums of the terms and
    of their squares: IPS (terms ``w_i r_i``), DR (its terms) or the on-policy mean (``r_i``)."""
    if n < 1:
        raise ValueError("need at least one event")
    value = float(total / n)
    if n < 2:
        return _interval(value, n, math.nan)
    return _interval(value, n, _sd(squares - total * total / n, n))


def snips_of(
    n: int, w: Fraction, wr: Fraction, ww: Fraction, wwr: Fraction, wwrr: Fraction
) -> Estimate:
    """SNIPS from the exact sums of ``w_i``, ``w_i r_i``, ``w_i^2``, ``w_i^2 r_i`` and
    ``w_i^2 r_i^2`` over ``n`` events, as ``snips`` gives it."""
    if n < 1:
        raise ValueError("need at least one event")
    if w <= 0:  # as snips: the target never picks a logged arm
        return Estimate(math.nan, math.nan, math.nan, n)
    value = float(wr / w)
    if n < 2:
        return _interval(value, n, math.nan)
    # snips' terms are value + w_i (r_i - value) / mean(w): their squared deviations from their
    # mean sum to (sum of (w_i (r_i - v))^2 - (sum of w_i (r_i - v))^2 / n) / mean(w)^2, the
    # second sum being zero but for the rounding of value.
    v, mean_w = Fraction(value), w / n
    off = wr - v * w
    squares = (wwrr - 2 * v * wwr + v * v * ww - off * off / n) / (mean_w * mean_w)
    return _interval(value, n, _sd(squares, n))


class RewardModel:
    """Per-arm ridge regression of the reward on ``linucb.dense_vector`` features, for DR.

    Fitted online (progressively): the prediction for an event is made before its own reward is
    learned, so the model never fits the noise it is meant to correct. It regresses ``r - 0.5``
    (an arm it has never seen predicts 0.5) and clips predictions to [0, 1]. Each arm keeps
    ``(l2 I + sum x x^T)^-1`` with Sherman-Morrison rank-1 updates, as LinUCB does.
    """

    def __init__(self, dim: int = 64, l2: float = 1.0) -> None:
        if not l2 > 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        self.dim = dim
        self.l2 = l2
        self._a_inv: dict[str, npt.NDArray[np.float64]] = {}
        self._b: dict[str, npt.NDArray[np.float64]] = {}

    def predict(self, x: Features, arms: Sequence[str]) -> dict[str, float]:
        """The predicted reward of each of ``arms`` for context ``x``."""
        v = dense_vector(x, self.dim)
        out = {}
        for arm in arms:
            if arm not in self._a_inv:
                out[arm] = 0.5
                continue
            score = (self._a_inv[arm] @ v) @ self._b[arm]  # theta . v, A^-1 symmetric
            out[arm] = float(np.clip(0.5 + score, 0.0, 1.0))
        return out

    def learn(self, x: Features, arm: str, reward: float) -> None:
        v = dense_vector(x, self.dim)
        if arm not in self._a_inv:
            self._a_inv[arm] = np.eye(self.dim) / self.l2
            self._b[arm] = np.zeros(self.dim)
        a_inv_v = self._a_inv[arm] @ v
        self._a_inv[arm] -= np.outer(a_inv_v, a_inv_v) / (1.0 + v @ a_inv_v)  # Sherman-Morrison
        self._b[arm] += (reward - 0.5) * v

    def dumps(self) -> bytes:
        """The model as bytes (a JSON header line, then each arm's arrays, little-endian)."""
        header = {"dim": self.dim, "l2": self.l2, "arms": list(self._a_inv)}
        arrays = [
            np.concatenate([self._a_inv[arm].ravel(), self._b[arm]]).astype("<f8").tobytes()
            for arm in self._a_inv
        ]
        return json.dumps(header).encode() + b"\n" + b"".join(arrays)

    @classmethod
    def loads(cls, data: bytes) -> RewardModel:
        """A model from ``dumps()``; ``ValueError`` when the bytes are not one: also a width the
        dense vector does not fit (no slot for words: every prediction divided by zero), a
        penalty or an array that is not finite (every prediction NaN, for good)."""
        head, sep, body = data.partition(b"\n")
        try:
            header = json.loads(head)
            model = cls(int(header["dim"]), float(header["l2"]))
            arms = [str(arm) for arm in header["arms"]]
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise ValueError(f"not a reward model ({type(e).__name__})") from None
        if not FIXED_SLOTS < model.dim <= MAX_DIM or not math.isfinite(model.l2):
            raise ValueError(f"reward model: dim {model.dim}, l2 {model.l2}")
        size = model.dim * model.dim + model.dim
        values = np.frombuffer(body, dtype="<f8")
        if not sep or len(values) != size * len(arms):
            raise ValueError(f"reward model: {len(values)} values for {len(arms)} arms")
        if not np.all(np.isfinite(values)):
            raise ValueError("reward model: a value that is not finite")
        for i, arm in enumerate(arms):
            chunk = values[i * size : (i + 1) * size].astype(np.float64)
            model._a_inv[arm] = chunk[: model.dim * model.dim].reshape(model.dim, model.dim)
            model._b[arm] = chunk[model.dim * model.dim :].copy()
        return model
