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

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit_router.features import Features
from bandit_router.inputs import LineError, kind, numbered_lines, parse_json
from bandit_router.offline.evaluate import LoggedRecord, iter_log_file
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
    """Whether ``path`` is an exported DSJSON log (else a replay file): its first row says.

    Raises ``ValueError`` naming the line when the first row is not a JSON object at all (or
    is too long to read), since then neither format fits, and when there is no row."""
    with path.open("rb") as f:
        try:
            number, line = next(
                (n, text)
                for n, text in numbered_lines(f)
                if not isinstance(text, str) or text.strip()
            )
        except LineError as e:
            raise ValueError(f"{path}:{e.number}: {e.problem}") from None
        except StopIteration:
            raise ValueError(f"{path}: no rows to train on (the file is empty or blank)") from None
    try:
        if isinstance(line, LineError):
            raise ValueError(line.problem)
        first = parse_json(line)
        if not isinstance(first, dict):
            raise ValueError(f"got {kind(first)}")
    except ValueError as e:
        raise ValueError(
            f"{path}:{number}: {e}; expected a JSON object: a replay row (query, outcomes) or "
            "an exported DSJSON event (_label_cost, c, ...)"
        ) from None
    return "_label_cost" in first


def dsjson_records(path: Path, max_features: int | None = None) -> Iterator[LoggedRecord]:
    """The events of an exported DSJSON log, one at a time, so that ``teach`` holds one in
    memory, not all (a record takes about 3 KB, twice its line: gigabytes for a full log's
    export); errors name the file and line."""
    with path.open("rb") as f:
        try:
            yield from iter_log_file(f, max_features)
        except ValueError as e:
            raise ValueError(
                f"{path}: {e} (read as a DSJSON log: its first row has _label_cost)"
            ) from e


def arms_seen(records: Iterable[LoggedRecord], arms: dict[str, Arm]) -> Iterator[LoggedRecord]:
    """``records``, each one's arms added to ``arms`` by name as it passes (in order of first
    appearance; an arm whose size or price changed in the log, as its newest event has it)."""
    for record in records:
        arms.update((arm.name, arm) for arm in record.arms)
        yield record
