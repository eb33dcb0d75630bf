"""What every policy is: the protocol, arms, decisions, specs and their bounds, and sampling."""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from bandit_router.errors import InvalidArm
from bandit_router.features import Features

if TYPE_CHECKING:
    from bandit_router.settings import ArmSpec


ParamValue = float | int | str


@dataclass(frozen=True, slots=True)
class Arm:
    """An arm as policies see it: the model's name and the features it carries."""

    name: str
    params_b: float | None = None
    usd_per_mtok: float | None = None

    @classmethod
    def from_spec(cls, spec: ArmSpec) -> Arm:
        return cls(spec.name, spec.params_b, spec.usd_per_mtok)


@dataclass(frozen=True, slots=True)
class Decision:
    """A choice: the arm, its propensity, and the distribution it was sampled from."""

    arm: str
    probability: float
    probabilities: Mapping[str, float]


class Policy(Protocol):
    """What the router, the simulator and the evaluator need of a policy."""

    name: str

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision: ...

    def learn(
        self, x: Features, arms: Sequence[Arm], arm: str, probability: float, reward: float
    ) -> None:
        """Learn one reward in [0, 1] for ``arm``, chosen with ``probability`` among ``arms``."""
        ...

    def dumps(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A policy name and the parameters given for it."""

    name: str
    params: Mapping[str, ParamValue] = field(default_factory=dict)

    def __str__(self) -> str:
        return ":".join([self.name, *(f"{k}={v}" for k, v in self.params.items())])


@dataclass(frozen=True, slots=True)
class Bounds:
    """The values a numeric parameter may take: from ``low`` to ``high``, both finite; an end
    marked open is excluded. NaN is in no bounds, and an infinity or a huge integer in none
    either."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        low, high = (f"{v:g}" if v % 1 else str(int(v)) for v in (self.low, self.high))
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def check(self, key: str, value: ParamValue) -> None:
        """Raise ValueError naming ``key`` and the bounds unless ``value`` is within them."""
        # comparisons, not float(): exact for an int of any size, and False for NaN
        inside = (
            not isinstance(value, str)
            and (value > self.low if self.low_open else value >= self.low)
            and (value < self.high if self.high_open else value <= self.high)
        )
        if not inside:
            raise ValueError(f"{key} must be in {self}, got {shown(value)}")


def plain_number(text: str) -> bool:
    """Whether ``text`` may be read as a number: ASCII with no ``_``. Python's ``int`` and
    ``float`` also read other scripts' digits (full-width, Arabic-Indic) and ``1_8``, which a
    spec shown back, or read by anything but Python, would not hold."""
    return text.isascii() and "_" not in text


def shown(value: ParamValue) -> str:
    """``value`` as an error message shows it: a string quoted, a long one (such as an integer
    of 400 digits) cut to its start and its length."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class PolicyKind:
    """A registry entry: how to build and restore one kind of policy, and its parameters."""

    build: Callable[[Mapping[str, ParamValue], int | None], Policy]
    load: Callable[[bytes, Mapping[str, ParamValue], int | None], Policy]
    defaults: Mapping[str, ParamValue]  # every accepted parameter, with its default
    bounds: Mapping[str, Bounds] = field(default_factory=dict)  # every numeric parameter's
    # what the parameters must be together, beyond their bounds: raises ValueError
    check: Callable[[Mapping[str, ParamValue]], None] | None = None


class Uniform(Protocol):
    """What ``sample`` needs of a generator: ``np.random.Generator`` has it."""

    def random(self) -> float: ...


def sample(rng: Uniform, arms: Sequence[Arm], pmf: Sequence[float]) -> Decision:
    """Draw an arm from ``pmf`` (aligned with ``arms``); the propensity travels with it.

    Bit for bit what ``p = pmf / sum(pmf); rng.choice(len(arms), p=p)`` gives (one uniform draw,
    the normalised cdf, a right bisection), so the same seed picks the same arms; for the usual
    handful of arms in plain Python floats, which is cheaper than the numpy calls.
    """
    if len(pmf) < 8:  # numpy sums fewer than 8 values left to right, as this loop does
        probs = [float(v) for v in pmf]
        total = 0.0
        for v in probs:
            total += v
        probs = [v / total for v in probs] if total > 0 else [math.nan]
    else:
        p = np.asarray(pmf, dtype=np.float64)
        probs = (p / p.sum()).tolist()
    for v in probs:
        if not 0.0 <= v < math.inf:
            raise ValueError(f"probabilities must be finite, non-negative, not all 0: {list(pmf)}")
    index = 0
    if len(arms) > 1:
        cdf = list(itertools.accumulate(probs))  # numpy's cumsum: the same left-to-right sums
        last = cdf[-1]
        index = bisect_right([c / last for c in cdf], rng.random())
    names = [a.name for a in arms]
    return Decision(names[index], probs[index], dict(zip(names, probs, strict=True)))


def index_of(arms: Sequence[Arm], name: str) -> int:
    for i, arm in enumerate(arms):
        if arm.name == name:
            return i
    raise InvalidArm(name, [arm.name for arm in arms])
