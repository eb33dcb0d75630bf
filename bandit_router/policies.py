"""Policies: the protocol every policy implements, and the registry that builds them by name.

A policy is named by a spec string, ``name[:param=value[:param=value...]]``, for example
``egreedy:epsilon=0.1`` or ``linucb:alpha=0.5``. Nothing outside this module branches on which
policy it holds.
"""

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
    from bandit_router.settings import ArmSpec, Settings

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
class PolicyKind:
    """A registry entry: how to build and restore one kind of policy, and its parameters."""

    build: Callable[[Mapping[str, ParamValue], int | None], Policy]
    load: Callable[[bytes, Mapping[str, ParamValue], int | None], Policy]
    defaults: Mapping[str, ParamValue]  # every accepted parameter, with its default


class Uniform(Protocol):
    """What ``sample`` needs of a generator: ``np.random.Generator`` has it."""

    def random(self) -> float: ...


def sample(rng: Uniform, arms: Sequence[Arm], pmf: Sequence[float]) -> Decision:
    """Draw an arm from ``pmf`` (aligned with ``arms``); the propensity travels with it.

    Bit for bit what ``p = pmf / sum(pmf); rng.choice(len(arms), p=p)`` gives (one uniform draw,
    the normalised cdf, a right bisection), so the same seed picks the same arms; for the usual
    handful of arms in plain Python floats, a fifth of the cost of the numpy calls.
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


def _registry() -> dict[str, PolicyKind]:
    # Imported here so that each policy module can import this one for the protocol.
    from bandit_router.baselines import BASELINES
    from bandit_router.linucb import LINUCB
    from bandit_router.vw_policy import VW_POLICIES

    return {**VW_POLICIES, "linucb": LINUCB, **BASELINES}


def policy_names() -> list[str]:
    return list(_registry())


def _coerce(policy: str, key: str, raw: str, default: ParamValue) -> ParamValue:
    try:
        if isinstance(default, str):
            return raw
        if isinstance(default, int):
            return int(raw)
        return float(raw)
    except ValueError:
        kind = type(default).__name__
        raise ValueError(
            f"policy {policy}: parameter {key} must be a {kind}, got {raw!r}"
        ) from None


def parse_policy_spec(text: str) -> PolicySpec:
    """Parse ``name:param=value:...``; errors name the valid policies or parameters."""
    name, *items = [part.strip() for part in text.strip().split(":")]
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(registry)}")
    defaults = registry[name].defaults
    params: dict[str, ParamValue] = {}
    for item in filter(None, items):
        key, sep, raw = item.partition("=")
        if not sep or key not in defaults:
            valid = ", ".join(defaults) or "none"
            raise ValueError(f"policy {name}: unknown parameter {item!r}; valid: {valid}")
        params[key] = _coerce(name, key, raw, defaults[key])
    return PolicySpec(name, params)


def _resolve(spec: PolicySpec, settings: Settings | None) -> dict[str, ParamValue]:
    """The spec's parameters over the settings' (epsilon, alpha, vw_args) over the defaults."""
    defaults = _registry()[spec.name].defaults
    params = dict(defaults)
    if settings is not None:
        from_settings: dict[str, ParamValue] = {
            "epsilon": settings.epsilon,
            "alpha": settings.linucb_alpha,
            "vw_args": settings.vw_args,
        }
        params.update({k: v for k, v in from_settings.items() if k in defaults})
    params.update(spec.params)
    return params


def effective_params(spec: PolicySpec, settings: Settings | None) -> dict[str, ParamValue]:
    """Every parameter the policy runs with: the spec's, then the settings', then defaults."""
    return _resolve(spec, settings)


def build_policy(
    spec: PolicySpec | str, settings: Settings | None = None, seed: int | None = None
) -> Policy:
    """A new policy from a spec; settings supply defaults for parameters the spec omits."""
    spec = parse_policy_spec(spec) if isinstance(spec, str) else spec
    return _registry()[spec.name].build(_resolve(spec, settings), seed)


def load_policy(
    spec: PolicySpec | str, data: bytes, settings: Settings | None = None, seed: int | None = None
) -> Policy:
    """A policy restored from ``dumps()`` bytes."""
    spec = parse_policy_spec(spec) if isinstance(spec, str) else spec
    return _registry()[spec.name].load(data, _resolve(spec, settings), seed)
