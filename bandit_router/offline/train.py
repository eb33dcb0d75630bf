"""Warm start: a policy trained on history before it serves, then learning on as usual.

Two kinds of history teach a policy:

- a full-feedback replay file (every arm's outcome known per query): each row teaches every arm
  that has an outcome, as a choice made with probability 1, in a shuffled order of rows and of
  arms within a row, so no arm is favoured by position;
- an exported DSJSON log (one logged choice per event): each event teaches the logged arm with
  its logged propensity, which the policy weights as it weights its own live choices (VW's
  importance weight ``1 / p``).

The result is a snapshot file (``service.backup``) that ``bandit-router restore`` publishes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit_router.features import Features
from bandit_router.offline.evaluate import LoggedRecord, read_log
from bandit_router.policies.base import Arm, Policy


@dataclass(frozen=True, slots=True)
class Example:
    """One teaching step: features, the eligible arms, the arm taught, its propensity, reward."""

    x: Features
    arms: Sequence[Arm]
    arm: str
    probability: float
    reward: float


def full_feedback(
    features: Sequence[Features],
    eligible: Sequence[Sequence[Arm]],
    rewards: Callable[[int], Mapping[str, float]],
    rows: Iterable[int],
    seed: int,
) -> Iterable[Example]:
    """Every arm's outcome (``rewards(i)``: arm -> reward) of each row in ``rows``, in that
    order, the arms of a row shuffled."""
    rng = np.random.default_rng(seed)
    for i in rows:
        outcome = rewards(i)
        known = [a for a in eligible[i] if a.name in outcome]
        for j in rng.permutation(len(known)):
            arm = known[int(j)]
            yield Example(features[i], eligible[i], arm.name, 1.0, outcome[arm.name])


def logged(records: Iterable[LoggedRecord]) -> Iterable[Example]:
    """Each logged event's choice, with its logged propensity."""
    for r in records:
        yield Example(r.x, r.arms, r.arm, r.probability, r.reward)


def teach(policy: Policy, examples: Iterable[Example]) -> int:
    """Teach ``policy`` every example; returns how many it learned."""
    n = 0
    for e in examples:
        policy.learn(e.x, e.arms, e.arm, e.probability, e.reward)
        n += 1
    return n


def is_dsjson(path: Path) -> bool:
    """Whether ``path`` is an exported DSJSON log (else a replay file): its first row says."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and "_label_cost" in first
    return False


def read_dsjson(path: Path) -> list[LoggedRecord]:
    with path.open(encoding="utf-8") as f:
        return read_log(f)
