"""A long life, then a change: how soon the default finds an arm that became the best (issue 14).

The scenario (``scenarios/long_drift.json``) replays in time order, seeds 0..N-1 varying only
the policy's own draws. For each policy spec and seed: **recovery**, the events after each phase
change until the phase's best arm (the arm with the highest mean reward over the phase's rows)
has more than half of the last ``--window`` choices (counted to the end of the run when it never
does, and said); the mean reward before the first change, after it, over its first 2,000
events and over the whole run; and the phase's best arm's share of the last 10,000 choices
before the change (what the policy still tried of it), and its choices in the first 1,000
events after the change and before the window in which it took over (how many rewards of it
the policy learned before it switched). Best-fixed per phase and best-context
(the best arm per task and phase) are the hindsight references.

    python -m simulations.generate simulations/scenarios/long_drift.json \\
        simulations/data/long_drift.jsonl
    python -m simulations.long_life --seeds 5 squarecb squarecb:horizon=16384
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bandit_router.cli.commands import MAX_SEEDS, bounded_int
from bandit_router.policies.registry import build_policy
from bandit_router.service.router import reward_config
from bandit_router.settings import Settings
from bandit_router.sim import dataset, report
from bandit_router.sim.dataset import Prepared
from bandit_router.sim.hindsight import BestContextStepper

LONG_DRIFT = Path(__file__).parent / "data" / "long_drift.jsonl"
FIRST = 2000  # events after the change reported on their own
BEFORE = 10_000  # events before the change over which the new best arm's share is reported

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

_PREPARED: Prepared | None = None  # set before the worker processes fork
_SETTINGS = Settings()


def play(task: tuple[str, int]) -> tuple[str, int, Ints, Floats]:
    """The arm chosen and the reward earned at each event, in time order."""
    spec, seed = task
    assert _PREPARED is not None
    prepared = _PREPARED
    table, index = prepared.table, prepared.arm_index
    policy = build_policy(spec, _SETTINGS, seed)
    arms_chosen = np.empty(len(table), np.int64)
    earned = np.empty(len(table))
    for t in range(len(table)):
        x, arms = prepared.features[t], prepared.eligible[t]
        decision = policy.choose(x, arms)
        arms_chosen[t] = index[decision.arm]
        earned[t] = table[t, arms_chosen[t]]
        policy.learn(x, arms, decision.arm, decision.probability, float(earned[t]))
    return spec, seed, arms_chosen, earned


def recovery(chosen: Ints, arm: int, change: int, end: int, window: int) -> int | None:
    """Events after ``change`` (0-based) until ``arm`` has more than half of the last
    ``window`` choices; None when it does not before ``end``."""
    hits = np.concatenate([[0], np.cumsum(chosen == arm)])
    for t in range(change + 1, end + 1):  # the choices before t
        if hits[t] - hits[max(t - window, 0)] > window / 2:
            return t - change
    return None


def cell(values: Sequence[float], digits: int) -> str:
    ci = report.seeds_ci95(values)
    mean = float(np.mean(values))
    return f"{mean:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def main(argv: Sequence[str] | None = None) -> int:
    global _PREPARED
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--seeds", type=bounded_int(1, MAX_SEEDS), default=5)
    parser.add_argument("--window", type=bounded_int(1, 100_000), default=500)
    parser.add_argument("--jobs", type=bounded_int(1, 64), default=2)
    parser.add_argument("--replay", type=Path, default=LONG_DRIFT)
    args = parser.parse_args(argv)
    if not args.replay.is_file():
        parser.error(
            f"no {args.replay}: python -m simulations.generate "
            f"simulations/scenarios/long_drift.json {LONG_DRIFT}"
        )
    loaded = dataset.load(args.replay, args.replay.with_suffix(".arms.json"))
    _PREPARED = prepared = dataset.prepare(loaded, reward_config(_SETTINGS))
    table = prepared.table
    names = sorted(prepared.arm_index, key=prepared.arm_index.__getitem__)
    changes = [c - 1 for c in dataset.phase_changes(loaded.rows)]
    bounds = [0, *changes, len(table)]
    first_change = changes[0]
    # each phase's best arm and its mean; best-context's rewards
    best = [int(np.nanargmax(np.nanmean(table[a:b], 0))) for a, b in itertools.pairwise(bounds)]
    fixed = np.concatenate(
        [table[a:b, j] for (a, b), j in zip(itertools.pairwise(bounds), best, strict=True)]
    )
    context = BestContextStepper(prepared).rewards()

    tasks = [(spec, seed) for spec in args.specs for seed in range(args.seeds)]
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        results = pool.map(play, tasks, chunksize=1)

    print(
        f"{args.replay.name}, {len(table):,} events in time order, changes at "
        f"{', '.join(f'{c:,}' for c in changes)}; each phase's best arm: "
        f"{', '.join(names[j] for j in best)}; {args.seeds} seeds (0..{args.seeds - 1}), "
        f"± 95% CI over them. Recovery: events after the change until its best arm has more "
        f"than half of the last {args.window} choices.\n"
    )
    head = (
        "| policy | recovery (events) | per seed | share before | tries, first 1,000 | "
        "tries before take-over | reward before | "
        f"reward after | first {FIRST:,} after | whole run |"
    )
    print(head)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, rewards in (("best-fixed per phase", fixed), ("best-context per phase", context)):
        print(
            f"| {label} | | | | | | {rewards[:first_change].mean():.4f} | "
            f"{rewards[first_change:].mean():.4f} | "
            f"{rewards[first_change : first_change + FIRST].mean():.4f} | "
            f"{rewards.mean():.4f} |"
        )
    for spec in args.specs:
        runs = [(chosen, earned) for s, _, chosen, earned in results if s == spec]
        rec = [recovery(c, best[1], first_change, bounds[2], args.window) for c, _ in runs]
        censored = [r if r is not None else bounds[2] - first_change for r in rec]
        shares = [
            float(np.mean(c[max(first_change - BEFORE, 0) : first_change] == best[1]))
            for c, _ in runs
        ]
        never = sum(r is None for r in rec)
        # the new best arm's choices in the first 1,000 events after the change, and from the
        # change to the start of the window in which it took over (to the end: never)
        early = [float(np.sum(c[first_change : first_change + 1000] == best[1])) for c, _ in runs]
        tries = [
            float(np.sum(c[first_change : first_change + max(n - args.window, 0)] == best[1]))
            for (c, _), n in zip(runs, censored, strict=True)
        ]
        print(
            f"| `{spec}` | {cell(censored, 0)}"
            + (f" ({never} never)" if never else "")
            + f" | {' '.join(str(r) if r is not None else '-' for r in rec)} | "
            f"{cell(shares, 4)} | {cell(early, 1)} | {cell(tries, 0)} | "
            f"{cell([e[:first_change].mean() for _, e in runs], 4)} | "
            f"{cell([e[first_change:].mean() for _, e in runs], 4)} | "
            f"{cell([e[first_change : first_change + FIRST].mean() for _, e in runs], 4)} | "
            f"{cell([e.mean() for _, e in runs], 4)} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
