"""Could a deployment choose between the default and an arm-level learner in time? (issue 14)

Where the features are worth little (best-context within 1% of best-fixed), an arm-level learner
(``bts:0.3``, the best one of the cold-start study) beats ``squarecb``; where context pays,
``squarecb`` is far ahead. A policy that picks between the two per deployment gains only if it
can tell which one is better from the deployment's own traffic. This measures how many events
that takes, in the most favourable case, on every public set and reward setting of
``robust_eval``:

- both learners run on the same shuffled rows (seeds 0..N-1), each learning from its own choices;
- per event, the difference between the rewards of their two choices, read from the full
  feedback of the replay set (``d``). A selector that saw both rewards at every event would need
  ``(1.96 sd(d) / mean(d))^2`` events to tell the better learner at 95%;
- a deployed selector sees one reward per event. With a fair coin choosing which learner acts
  (the cheapest unbiased estimate of the difference: ``2 r`` for one learner, ``-2 r`` for the
  other), it needs ``(1.96 sd / mean(d))^2`` events with that estimate's larger spread;
- what a perfect selector would earn: each pair's better learner, in hindsight.

    python -m simulations.selector_power --seeds 5 > simulations/results/selector_power.md

About 4 minutes on this 2-core box (the ``squarecb`` replays).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bandit_router.cli.commands import MAX_SEEDS, bounded_int
from bandit_router.sim import dataset, replay
from simulations.cold_start import play
from simulations.robust_eval import REWARDS, SETS, replays

Floats = npt.NDArray[np.float64]

CONTEXTUAL = "squarecb"
ARM_LEVEL = ("bts", 0.3)
Z95 = 1.96


@dataclass(frozen=True, slots=True)
class Power:
    """The two learners' rewards against best-fixed (%), and what telling them apart takes."""

    contextual: float
    arm_level: float
    disagree: float  # share of events where their choices differ
    full_information: float  # events needed with both rewards seen
    one_reward: float  # events needed with one reward per event, a fair coin between them


def events_needed(mean: float, sd: float) -> float:
    """Events for a 95% interval of half-width ``|mean|``: ``(1.96 sd / mean)^2``."""
    return float("inf") if abs(mean) < 1e-12 else float((Z95 * sd / mean) ** 2)


def power(
    table: Floats,
    orders: Sequence[npt.NDArray[np.int64]],
    contextual: npt.NDArray[np.int64],
    arm_level: npt.NDArray[np.int64],
) -> Power:
    """``Power`` from both learners' choices (seeds x steps, arm indices into ``table``'s
    columns), each seed's steps playing the rows of its order."""
    fixed = float(np.nanmean(table, axis=0).max())
    gains, alone = [], []
    for order, a, b in zip(orders, contextual, arm_level, strict=True):
        gains.append(table[order, a])
        alone.append(table[order, b])
    ra, rb = np.concatenate(gains), np.concatenate(alone)
    d = ra - rb
    mean = float(d.mean())
    coin_sd = float(np.sqrt(max(2 * (np.mean(ra**2) + np.mean(rb**2)) - mean**2, 0.0)))
    return Power(
        contextual=100 * (float(ra.mean()) / fixed - 1),
        arm_level=100 * (float(rb.mean()) / fixed - 1),
        disagree=float((contextual != arm_level).mean()),
        full_information=events_needed(mean, float(d.std())),
        one_reward=events_needed(mean, coin_sd),
    )


def _events(n: float) -> str:
    return "never" if n == float("inf") else f"{n:,.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=bounded_int(1, MAX_SEEDS), default=5)
    parser.add_argument("--sets", default=",".join(SETS))
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    kind, c = ARM_LEVEL
    lines, best = [], []
    for name, setting, _, settings, prepared in replays(args.sets.split(","), list(REWARDS)):
        n = len(prepared.table)
        runs = replay.simulate([CONTEXTUAL], prepared, seeds, False, settings)[CONTEXTUAL]
        _, chosen = play(prepared.table, kind, c, seeds)
        orders = [dataset.order(n, s, False) for s in seeds]
        p = power(prepared.table, orders, np.stack([r.arm for r in runs]), chosen)
        best.append(max(p.contextual, p.arm_level))
        lines.append(
            f"| {name.replace('mmlu_pro_', '')} {setting} | {n:,} | {p.contextual:+.2f}% | "
            f"{p.arm_level:+.2f}% | {100 * p.disagree:.0f}% | {_events(p.full_information)} | "
            f"{_events(p.one_reward)} | {best[-1]:+.2f}% |"
        )
        print(f"{name} {setting} done", file=sys.stderr, flush=True)
    print(
        f"Telling `{CONTEXTUAL}` from `{kind}:{c:g}` on each pair's own traffic "
        f"({args.seeds} shuffled seeds; rewards vs best-fixed).\n"
    )
    print(
        f"| set, reward | rows | {CONTEXTUAL} | {kind}:{c:g} | choices differ | events needed, "
        "both rewards seen | events needed, one reward per event | the better one |"
    )
    print("|---|" + "---|" * 7)
    print("\n".join(lines))
    print(f"\nA perfect selector, mean over the pairs: {np.mean(best):+.2f}% vs best-fixed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
