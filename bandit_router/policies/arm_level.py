"""Arm-level learners: each arm's mean reward, no context. Baselines, and the composite's base.

``ts`` is Thompson sampling with a Beta posterior per arm fed fractional rewards (reward r adds r
to the successes and 1 - r to the failures: Agrawal and Goyal 2012 for rewards in [0, 1]). ``ucb``
is KL-UCB (Garivier and Cappe 2011): the largest mean ``q`` with ``n kl(mean, q) <= log t``,
Bernoulli KL. Both can forget: ``discount`` < 1 multiplies every arm's counts by it at each learn,
so old evidence fades (discounted TS / D-UCB); 1, the default, is the textbook learner.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from bandit_router.features import Features
from bandit_router.policies.base import Arm, Bounds, Decision, ParamValue, PolicyKind, sample

Floats = npt.NDArray[np.float64]

_MAGIC = b"bandit-router arm-level 1\n"
PROPENSITY_DRAWS = 256  # Thompson draws behind the propensity of a choice
DISCOUNT = Bounds(0, 1, low_open=True)


class ArmStats:
    """Per arm: discounted reward sum and count, keyed by name (arms may come and go)."""

    def __init__(self, discount: float = 1.0) -> None:
        DISCOUNT.check("discount", discount)
        self.discount = discount
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.squares: dict[str, float] = {}  # discounted sums of squared rewards
        self.weights: dict[str, float] = {}  # discounted sums of squared weights (see add)
        self.t = 0.0  # discounted number of rewards learned

    def add(self, arm: str, reward: float, weight: float = 1.0) -> None:
        """Learn one reward; ``weight`` (an inverse propensity) makes the means self-normalised
        importance-weighted ones, and ``effective`` counts what the weights leave of the data."""
        if self.discount < 1:
            d = self.discount
            for name in self.counts:
                self.sums[name] *= d
                self.counts[name] *= d
                self.squares[name] *= d
                self.weights[name] = self.weights.get(name, 0.0) * d * d
            self.t *= d
        self.sums[arm] = self.sums.get(arm, 0.0) + weight * reward
        self.squares[arm] = self.squares.get(arm, 0.0) + weight * reward * reward
        self.counts[arm] = self.counts.get(arm, 0.0) + weight
        self.weights[arm] = self.weights.get(arm, 0.0) + weight * weight
        self.t += 1.0

    def scale(self, factor: float) -> None:
        """Weigh every reward learned so far by ``factor`` (in (0, 1]): the means and spreads
        stay, the counts shrink, as ``discount`` does at each ``add``."""
        for name in self.counts:
            self.sums[name] *= factor
            self.counts[name] *= factor
            self.squares[name] *= factor
            self.weights[name] *= factor * factor
        self.t *= factor

    def effective(self, arm: str) -> float:
        """Kish's effective sample size of the arm's weighted rewards (its count if unweighted)."""
        n, w2 = self.counts.get(arm, 0.0), self.weights.get(arm, 0.0)
        return n * n / w2 if w2 > 1e-12 else n

    def count(self, arm: str) -> float:
        return self.counts.get(arm, 0.0)

    def mean(self, arm: str, prior: float = 0.5) -> float:
        """The arm's mean reward; ``prior`` for an arm not seen yet (or forgotten)."""
        n = self.counts.get(arm, 0.0)
        return self.sums[arm] / n if n > 1e-9 else prior

    def total(self) -> float:
        """The (discounted, weighted) count of rewards over every arm."""
        return sum(self.counts.values())

    def overall(self) -> float:
        """The mean reward over every arm, 0.5 before any."""
        n = self.total()
        return sum(self.sums.values()) / n if n > 1e-9 else 0.5

    def spread(self) -> float:
        """The sample standard deviation of every reward over every arm; needs more than one."""
        n, mean = self.total(), self.overall()
        return math.sqrt(max(sum(self.squares.values()) - n * mean * mean, 0.0) / (n - 1))

    def to_json(self) -> dict[str, object]:
        return {
            "discount": self.discount,
            "sums": self.sums,
            "counts": self.counts,
            "squares": self.squares,
            "weights": self.weights,
            "t": self.t,
        }

    @classmethod
    def from_json(cls, data: object, discount: float) -> ArmStats:
        """The statistics ``to_json`` wrote; ValueError names the part that is not as it writes
        it. A snapshot may be damaged or edited, and what loads here must not break a choice:
        every value finite, none negative, and an arm's reward sum (rewards are in [0, 1]) at
        most its count, its sum of squares at most its sum."""
        if not isinstance(data, dict):
            raise ValueError(f"arm statistics are not an object: {_shown(data)}")
        stats = cls(discount)
        stats.counts = _table(data, "counts", required=True)
        stats.sums = _table(data, "sums", required=True)
        if set(stats.sums) != set(stats.counts):
            raise ValueError("arm statistics: sums and counts name different arms")
        squares, weights = _table(data, "squares"), _table(data, "weights")
        if not set(squares) | set(weights) <= set(stats.counts):
            raise ValueError("arm statistics: squares or weights name an arm counts does not")
        stats.squares = {k: squares.get(k, 0.0) for k in stats.counts}
        stats.weights = {k: weights.get(k, 0.0) for k in stats.counts}
        for arm, n in stats.counts.items():
            slack = 1e-9 * (1.0 + n)  # rounding
            if stats.sums[arm] > n + slack or stats.squares[arm] > stats.sums[arm] + slack:
                raise ValueError(
                    f"arm statistics of {arm!r}: rewards in [0, 1] cannot sum to "
                    f"{stats.sums[arm]!r} (squares {stats.squares[arm]!r}) over {n!r}"
                )
        t = data.get("t")
        if not _count(t):
            raise ValueError(f"arm statistics: t is not a count of rewards: {_shown(t)}")
        stats.t = float(t)  # type: ignore[arg-type]
        return stats


MAX_COUNT = 1e18  # far above any count of rewards; beyond it sums of squares near overflow


def _count(value: object) -> bool:
    """A finite number in [0, MAX_COUNT], not a bool."""
    return type(value) in (int, float) and 0 <= value <= MAX_COUNT  # type: ignore[operator]


def _table(data: Mapping[str, object], key: str, required: bool = False) -> dict[str, float]:
    if required and key not in data:
        raise ValueError(f"arm statistics: {key} is missing")
    table = data.get(key, {})
    if not isinstance(table, dict) or not all(_count(v) for v in table.values()):
        raise ValueError(
            f"arm statistics: {key} is not an object of numbers in [0, {MAX_COUNT:g}] by arm: "
            f"{_shown(table)}"
        )
    return {str(k): float(v) for k, v in table.items()}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def bernoulli_kl(p: float, q: float) -> float:
    eps = 1e-12
    p = min(max(p, eps), 1 - eps)
    q = min(max(q, eps), 1 - eps)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def kl_ucb(mean: float, count: float, budget: float, steps: int = 25) -> float:
    """The largest ``q >= mean`` with ``count * kl(mean, q) <= budget``, by bisection."""
    if count <= 0:
        return 1.0
    low, high = mean, 1.0
    limit = budget / count
    for _ in range(steps):
        mid = (low + high) / 2
        if bernoulli_kl(mean, mid) > limit:
            high = mid
        else:
            low = mid
    return low


def decision(arms: Sequence[Arm], chosen: int, wins: Floats) -> Decision:
    """The arm of index ``chosen``; each arm's propensity is its share of ``wins``."""
    pmf = (wins / wins.sum()).tolist()
    names = [arm.name for arm in arms]
    return Decision(names[chosen], pmf[chosen], dict(zip(names, pmf, strict=True)))


class _ArmLevel:
    name = "arm-level"

    def __init__(self, discount: float = 1.0, seed: int | None = None) -> None:
        self.stats = ArmStats(discount)
        self._rng = np.random.default_rng(seed)

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        raise NotImplementedError

    def learn(
        self, x: Features, arms: Sequence[Arm], arm: str, probability: float, reward: float
    ) -> None:
        self.stats.add(arm, reward)

    def dumps(self) -> bytes:
        return _MAGIC + json.dumps({"kind": self.name, **self.stats.to_json()}).encode()

    def restore(self, data: bytes) -> None:
        """The state ``dumps`` wrote; ValueError names what is not as it writes it (empty bytes
        among them: ``dumps`` never writes none, and no other policy loads them as new)."""
        if not data.startswith(_MAGIC):
            raise ValueError(f"not a saved {self.name} policy")
        try:
            state = json.loads(data[len(_MAGIC) :])
        except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
            raise ValueError(f"saved {self.name} policy is not JSON: {e}") from None
        if not isinstance(state, dict):
            raise ValueError(f"saved {self.name} policy is not a JSON object")
        if state.get("kind") != self.name:
            raise ValueError(f"saved policy is {state.get('kind')!r}, not {self.name!r}")
        self.stats = ArmStats.from_json(state, self.stats.discount)


class ThompsonPolicy(_ArmLevel):
    """Beta-Bernoulli Thompson sampling on fractional rewards."""

    name = "ts"

    def posterior(self, arms: Sequence[Arm]) -> tuple[Floats, Floats]:
        """Each arm's Beta parameters: 1 + reward sum, 1 + count - reward sum."""
        s = np.array([self.stats.sums.get(a.name, 0.0) for a in arms])
        n = np.array([self.stats.count(a.name) for a in arms])
        return 1.0 + s, 1.0 + n - s

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        a, b = self.posterior(arms)
        draws = self._rng.beta(a, b, size=(PROPENSITY_DRAWS, len(arms)))
        wins = np.bincount(draws.argmax(axis=1), minlength=len(arms)).astype(float)
        chosen = int(draws[0].argmax())  # the first draw decides; all of them give the propensity
        return decision(arms, chosen, wins)


class KLUCBPolicy(_ArmLevel):
    """KL-UCB with Bernoulli KL and ``log t`` exploration; every arm is tried once first."""

    name = "ucb"

    def indices(self, arms: Sequence[Arm]) -> list[float]:
        budget = math.log(max(self.stats.t, 1.0))
        out = []
        for arm in arms:
            n = self.stats.count(arm.name)
            out.append(2.0 if n < 1.0 else kl_ucb(self.stats.mean(arm.name), n, budget))
        return out

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        scores = self.indices(arms)
        top = max(scores) - 1e-12
        best = [1.0 if s >= top else 0.0 for s in scores]
        return sample(self._rng, arms, best)


def _kind(cls: type[_ArmLevel]) -> PolicyKind:
    def build(params: Mapping[str, ParamValue], seed: int | None) -> _ArmLevel:
        return cls(float(params["discount"]), seed)

    def load(data: bytes, params: Mapping[str, ParamValue], seed: int | None) -> _ArmLevel:
        policy = build(params, seed)
        policy.restore(data)
        return policy

    return PolicyKind(
        build=build, load=load, defaults={"discount": 1.0}, bounds={"discount": DISCOUNT}
    )


ARM_LEVEL = {"ts": _kind(ThompsonPolicy), "ucb": _kind(KLUCBPolicy)}
