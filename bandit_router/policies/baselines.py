"""Baseline policies: what users route with before a bandit. They learn nothing.

``random`` picks uniformly; ``fixed:arm=NAME`` always picks one arm; ``static`` is the keyword
rule teams write by hand: code, maths and long reasoning to the largest model, lookups and
embedding-like work to the smallest, everything else to the middle one (arms ordered by size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bandit_router.features import Features
from bandit_router.policies.base import Arm, Decision, ParamValue, PolicyKind, sample

LONG_QUERY_STAT = 0.73  # log1p(chars)/10 at about 1,500 characters


def _one_hot(arms: Sequence[Arm], index: int) -> list[float]:
    return [1.0 if i == index else 0.0 for i in range(len(arms))]


class _Baseline:
    """Shared plumbing: baselines keep no state, so learning is a no-op and dumps is empty."""

    name = "baseline"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        raise NotImplementedError

    def learn(
        self, x: Features, arms: Sequence[Arm], arm: str, probability: float, reward: float
    ) -> None:
        return None

    def dumps(self) -> bytes:
        return b""


class RandomPolicy(_Baseline):
    name = "random"

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        return sample(self._rng, arms, [1.0] * len(arms))


class FixedPolicy(_Baseline):
    """Always the named arm; when it is not eligible, the first eligible arm."""

    name = "fixed"

    def __init__(self, arm: str, seed: int | None = None) -> None:
        super().__init__(seed)
        if not arm:
            raise ValueError("fixed needs an arm: fixed:arm=NAME")
        self.arm = arm

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        names = [a.name for a in arms]
        index = names.index(self.arm) if self.arm in names else 0
        return sample(self._rng, arms, _one_hot(arms, index))


def by_size(arms: Sequence[Arm]) -> list[int]:
    """Indices of ``arms`` from smallest to largest; arms of unknown size keep their order."""
    return sorted(range(len(arms)), key=lambda i: (arms[i].params_b is None, arms[i].params_b or 0))


def static_rule(x: Features, arms: Sequence[Arm]) -> int:
    """The hand-written rule, as an index into ``arms``."""
    order = by_size(arms)
    hard = (
        x.stat("code") or x.stat("math") or x.stat("reasoning") or x.stat("chars") > LONG_QUERY_STAT
    )
    if hard:
        return order[-1]
    if x.stat("lookup"):
        return order[0]
    return order[len(order) // 2] if len(order) > 2 else order[0]


class StaticPolicy(_Baseline):
    name = "static"

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        return sample(self._rng, arms, _one_hot(arms, static_rule(x, arms)))


def _kind(build: type[_Baseline] | None, defaults: Mapping[str, ParamValue]) -> PolicyKind:
    def make(params: Mapping[str, ParamValue], seed: int | None) -> _Baseline:
        if build is None:
            return FixedPolicy(str(params["arm"]), seed)
        return build(seed)

    return PolicyKind(
        build=make, load=lambda _data, params, seed: make(params, seed), defaults=defaults
    )


BASELINES = {
    "random": _kind(RandomPolicy, {}),
    "fixed": _kind(None, {"arm": ""}),
    "static": _kind(StaticPolicy, {}),
}
