"""Hindsight references for the replay simulator: what could have been earned knowing the log.

``oracle`` takes the best arm of every row (the ceiling); ``best-fixed`` the single best arm;
``best-context`` the best arm per context (and scenario phase), the best per-phase contextual
policy a learner can hope to match.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bandit_router.policies.base import Arm
from bandit_router.sim.dataset import Prepared, Row


@dataclass(slots=True)
class OracleStepper:
    """The best arm of each row in hindsight: the ceiling no policy can beat."""

    prepared: Prepared

    def step(self, i: int, row: Row, arms: Sequence[Arm]) -> tuple[str, float]:
        j = int(np.nanargmax(self.prepared.table[i]))
        return self.prepared.replay.arms[j].name, float(self.prepared.table[i, j])


def best_fixed_arm(prepared: Prepared) -> str:
    """The single arm with the highest total reward over the rows where it has an outcome."""
    totals = np.nansum(prepared.table, axis=0)
    return prepared.replay.arms[int(np.argmax(totals))].name


def context_key(row: Row) -> str:
    """A row's context (its app fields) as one comparable value: what ``best-context`` keys on."""
    return json.dumps(dict(row.context), sort_keys=True)


@dataclass(slots=True)
class BestContextStepper:
    """Best arm per (phase, context) in hindsight: the best per-phase contextual policy."""

    prepared: Prepared
    choice: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sums: dict[tuple[str, str], npt.NDArray[np.float64]] = {}
        for row, values in zip(self.prepared.replay.rows, self.prepared.table, strict=True):
            key = (row.phase, context_key(row))
            sums[key] = sums.get(key, np.zeros(len(values))) + np.nan_to_num(values)
        self.choice = {key: int(np.argmax(total)) for key, total in sums.items()}

    def rewards(self) -> npt.NDArray[np.float64]:
        """Each row's reward, in the file's order: what a replay in time order earns."""
        rows = self.prepared.replay.rows
        return np.array([self.step(i, row, ())[1] for i, row in enumerate(rows)])

    def step(self, i: int, row: Row, arms: Sequence[Arm]) -> tuple[str, float]:
        key = (row.phase, context_key(row))
        j = self.choice[key]
        if np.isnan(self.prepared.table[i, j]):  # that arm is absent here: the row's best
            j = int(np.nanargmax(self.prepared.table[i]))
        return self.prepared.replay.arms[j].name, float(self.prepared.table[i, j])


def fixed_spec(name: str, prepared: Prepared) -> str:
    """The registry spec behind the simulator's spellings ``fixed:<arm>`` and ``best-fixed``."""
    if name == "best-fixed":
        return f"fixed:arm={best_fixed_arm(prepared)}"
    head, _, rest = name.partition(":")
    if head != "fixed":
        return name
    arm = rest.removeprefix("arm=")
    if arm not in prepared.arm_index:  # the service's fallback would hide a misspelt arm here
        said = f"unknown arm {arm!r}" if arm else "names no arm (fixed:NAME or fixed:arm=NAME)"
        raise ValueError(f"{name}: {said}; valid: {', '.join(prepared.arm_index)}")
    return f"fixed:arm={arm}"
