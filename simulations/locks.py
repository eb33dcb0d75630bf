"""Seeds that lock onto a worse arm: per public set and reward setting, each seed's result and
the arm that got most of the last sixth of its run, flagged when that arm is not the best fixed
arm and got at least ``LOCKED`` of it (issue 14 counts such a seed as a defect, not noise).
Beside each lock, the rewards of each of the two arms that would show their gap at two standard
errors: a lock onto an arm that needs more than half the run's rows (the run split evenly between
the two could not tell them apart) is counted apart, as a tie within what the data can resolve:

    python -m simulations.locks --seeds 10 squarecb squarecb:l2=0.001 ts \
        > simulations/results/locks.md
    python -m simulations.locks --sets mmlu_pro_nine --rewards accuracy squarecb  # other shapes
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bandit_router.cli.commands import MAX_SEEDS, bounded_int
from bandit_router.sim import replay, report
from bandit_router.sim.hindsight import best_fixed_arm
from simulations.robust_eval import REWARDS, SETS, replays, reward_names

LOCKED = 0.75  # a worse arm's share of the tail at which the seed counts as locked onto it
TAIL = 6  # the tail: the last 1/TAIL of each run


def tail_arm(chosen: npt.NDArray[np.integer[Any]], arms: int) -> tuple[int, float]:
    """The arm chosen most in the last ``1 / TAIL`` of ``chosen`` (arm indices), and its share."""
    tail = chosen[-max(1, len(chosen) // TAIL) :]
    shares = np.bincount(tail, minlength=arms) / len(tail)
    top = int(np.argmax(shares))
    return top, float(shares[top])


def is_locked(top: int, share: float, best: int) -> bool:
    return top != best and share >= LOCKED


def rewards_to_separate(table: npt.NDArray[np.float64], a: int, b: int) -> float:
    """How many rewards of each of arms ``a`` and ``b`` (columns of ``table``, NaN where absent)
    show the gap between their means at two standard errors: ``8 var / gap**2``, ``var`` the
    mean of the two arms' variances (inf for arms level on average)."""
    x, y = table[:, a], table[:, b]
    gap = float(np.nanmean(x) - np.nanmean(y))
    var = (float(np.nanvar(x)) + float(np.nanvar(y))) / 2
    return 8 * var / (gap * gap) if gap else float("inf")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--rewards", default=",".join(REWARDS))
    parser.add_argument("--seeds", type=bounded_int(1, MAX_SEEDS), default=10)
    args = parser.parse_args(argv)
    rewards = reward_names(parser, args.rewards)
    print(f"Last sixth of each run, {args.seeds} shuffled seeds; a seed is locked when a worse")
    print(f"arm than the best fixed one gets at least {LOCKED:.0%} of it.\n")
    print(
        "| policy | set, reward | seed | vs best-fixed | arm with most of the last sixth "
        "| its share | that arm vs best-fixed | rewards of each to tell them apart | locked |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    locked: dict[str, int] = {spec: 0 for spec in args.specs}
    ties: dict[str, int] = {spec: 0 for spec in args.specs}  # of them, onto an unresolvable arm
    for name, setting, in_order, settings, prepared in replays(args.sets.split(","), rewards):
        means = np.nanmean(prepared.table, axis=0)  # each arm's, where it has an outcome
        best = prepared.arm_index[best_fixed_arm(prepared)]
        fixed = float(report.hindsight(prepared)[0].mean())  # robust_eval's best-fixed
        arms = [arm.name for arm in prepared.replay.arms]
        rows = len(prepared.table)
        needs = {best: 0.0}  # each tail arm's rewards to tell it from the best, once per pair
        seeds = range(args.seeds)
        for spec, runs in replay.simulate(args.specs, prepared, seeds, in_order, settings).items():
            for seed, run in zip(seeds, runs, strict=True):
                top, share = tail_arm(run.arm, len(arms))
                lock = is_locked(top, share, best)
                if top not in needs:
                    needs[top] = rewards_to_separate(prepared.table, best, top)
                need = needs[top]
                locked[spec] += lock
                ties[spec] += lock and 2 * need > rows
                print(
                    f"| {spec} | {name} {setting} | {seed} "
                    f"| {100 * (run.reward.mean() / fixed - 1):+.2f}% | {arms[top]} "
                    f"| {share:.2f} | {100 * (means[top] / means[best] - 1):+.2f}% "
                    f"| {f'{need:,.0f}' if need else ''} | {'**locked**' if lock else ''} |",
                    flush=True,
                )
    print()
    for spec, n in locked.items():
        print(
            f"- {spec}: {n} locked seeds, {ties[spec]} of them onto an arm the run's rows split"
            " evenly with the best could not tell from it"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
