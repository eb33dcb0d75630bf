"""What a learner handed the context's structure reaches (issue 14, part 1's targets).

``best-context`` is the best arm per context (the row's app fields, e.g. the MMLU-Pro subject) and
scenario phase, in hindsight. The learners here are given that structure, which a deployed
policy is not: Gaussian Thompson sampling per (context, arm), each cell's posterior shrunk towards
its arm's mean over all contexts with the weight of ``k`` pseudo-observations (``k`` = inf is the
arm-level learner), the posterior's variance scaled by ``c`` (below 1: greedier than textbook),
and every count discounted by ``d`` per event (forgetting; 1 keeps everything). A grid of them
runs on every public set and reward setting (shuffled, seeds 0..N-1) and on the drift scenario
(time order; the seeds vary the draws), and the best of the grid is chosen per pair in hindsight,
which no deployed learner can do. It shows how far each target is from what a learner that knows
the model class of ``best-context`` reaches, and which settings each target asks for:

    python -m simulations.tabular --seeds 40 > simulations/results/tabular.md
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bandit_router.cli.commands import MAX_SEEDS, bounded_int
from bandit_router.sim import dataset, report
from bandit_router.sim.hindsight import BestContextStepper, context_key
from simulations.robust_eval import REWARDS, SETS, replays

Floats = npt.NDArray[np.float64]

# (k, c, d): shrinkage towards the arm's mean, posterior variance scale, discount per event.
GRID: list[tuple[float, float, float]] = list(
    itertools.product(
        [1.0, 3.0, 30.0, 300.0, math.inf], [1.0, 0.5, 0.3], [1.0, 0.9995, 0.999, 0.998]
    )
)


def label(k: float, c: float, d: float) -> str:
    return f"k={k:g} c={c:g} d={d:g}"


def contexts(rows: Sequence[dataset.Row]) -> npt.NDArray[np.int64]:
    """Each row's context (its app fields, as ``best-context`` keys them) as a small integer."""
    keys = [context_key(row) for row in rows]
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return np.array([index[key] for key in keys], dtype=np.int64)


def play(
    table: Floats,
    context: npt.NDArray[np.int64],
    k: float,
    c: float,
    d: float,
    seeds: Sequence[int],
    in_order: bool = False,
) -> Floats:
    """Reward per step (seeds x steps) of one learner of the grid over each seed's row order."""
    n, arms = table.shape
    m = len(seeds)
    orders = np.stack([dataset.order(n, s, in_order) for s in seeds])
    rng = np.random.default_rng([2000, *seeds])
    cells = int(context.max()) + 1
    count, total, squares = np.zeros((m, arms)), np.zeros((m, arms)), np.zeros((m, arms))
    cell_count, cell_total = np.zeros((m, cells, arms)), np.zeros((m, cells, arms))
    who = np.arange(m)
    earned = np.zeros((m, n))
    for t in range(n):
        rows = orders[:, t]
        rewards, here = table[rows], context[rows]
        mean = total / np.maximum(count, 1e-9)
        var = (np.maximum(squares - count * mean**2, 0.0) + 0.2) / (count + 2)  # 2 pseudo at 0.1
        spread = np.sqrt(c * var / np.maximum(count, 1e-9))
        arm_draw = mean + spread * rng.standard_normal((m, arms))
        if math.isinf(k):
            score = arm_draw
        else:
            seen, sums = cell_count[who, here], cell_total[who, here]
            centre = (sums + k * arm_draw) / (seen + k)
            score = centre + np.sqrt(c * var / (seen + k)) * rng.standard_normal((m, arms))
        score = np.where(count < 1, np.inf, score)  # every arm once first
        choice = np.where(np.isnan(rewards), -np.inf, score).argmax(axis=1)
        r = rewards[who, choice]
        earned[:, t] = r
        if d < 1:
            for a in (count, total, squares, cell_count, cell_total):
                a *= d
        count[who, choice] += 1
        total[who, choice] += r
        squares[who, choice] += r * r
        cell_count[who, here, choice] += 1
        cell_total[who, here, choice] += r
    return earned


def restarted(
    table: Floats,
    context: npt.NDArray[np.int64],
    k: float,
    c: float,
    seeds: Sequence[int],
    changes: Sequence[int],
) -> Floats:
    """``play`` in time order, every count reset at each of ``changes`` (0-based first rows of
    the new phases): change detection that is never late and never wrong, given in hindsight."""
    bounds = [0, *changes, len(table)]
    return np.concatenate(
        [
            play(table[a:b], context[a:b], k, c, 1.0, seeds, in_order=True)
            for a, b in itertools.pairwise(bounds)
        ],
        axis=1,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=bounded_int(1, MAX_SEEDS), default=40)
    parser.add_argument("--sets", default=",".join([*SETS, "drift"]))
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    names = [label(*point) for point in GRID]
    columns: list[str] = []
    drift_columns: list[str] = []
    score: dict[str, list[float]] = {name: [] for name in names}  # % vs best-fixed, shuffled sets
    gap: dict[str, list[float]] = {name: [] for name in names}  # % of the gap closed, drift
    spread: dict[str, list[float]] = {name: [] for name in names}  # its 95% CI over the seeds
    points = sorted({(k, c) for k, c, _ in GRID})
    reset: dict[str, list[str]] = {f"k={k:g} c={c:g}, reset at each change": [] for k, c in points}
    for name, setting, in_order, _, prepared in replays(args.sets.split(","), list(REWARDS)):
        table = prepared.table
        fixed = float(report.hindsight(prepared)[0].mean())
        context = float(BestContextStepper(prepared).rewards().mean())
        cells = contexts(prepared.replay.rows)
        (drift_columns if in_order else columns).append(
            f"{name.replace('mmlu_pro_', '')} {setting}"
        )
        for point, key in zip(GRID, names, strict=True):
            per_seed = play(table, cells, *point, seeds, in_order).mean(axis=1)
            if in_order:
                closed = [100 * (v - fixed) / (context - fixed) for v in per_seed]
                gap[key].append(float(np.mean(closed)))
                spread[key].append(report.ci95(closed))
            else:
                score[key].append(100 * (float(per_seed.mean()) / fixed - 1))
        if in_order:
            changes = [c - 1 for c in dataset.phase_changes(prepared.replay.rows)]
            for (k, c), key in zip(points, reset, strict=True):
                per_seed = restarted(table, cells, k, c, seeds, changes).mean(axis=1)
                closed = [100 * (v - fixed) / (context - fixed) for v in per_seed]
                reset[key].append(f"{np.mean(closed):.0f} ± {report.ci95(closed):.0f}")
        print(f"{name} {setting} done", file=sys.stderr, flush=True)
    print(
        f"Learners handed the context's structure, {args.seeds} seeds; shuffled sets vs "
        "best-fixed (%), drift as the share of the best-fixed to best-context gap closed "
        "(%, ± 95% CI over the seeds).\n"
    )
    print("| learner | " + " | ".join([*columns, "mean", "worst", *drift_columns]) + " |")
    print("|---|" + "---|" * (len(columns) + 2 + len(drift_columns)))
    for key in names:
        cells_out = [f"{v:+.2f}" for v in score[key]]
        if score[key]:
            cells_out += [f"{np.mean(score[key]):+.2f}", f"{min(score[key]):+.2f}"]
        else:
            cells_out += ["", ""]
        cells_out += [f"{v:.0f} ± {e:.0f}" for v, e in zip(gap[key], spread[key], strict=True)]
        print(f"| {key} | " + " | ".join(cells_out) + " |")
    if columns:
        print("\nBest of the grid per pair, chosen in hindsight:\n")
        print("| pair | best learner | vs best-fixed (%) |")
        print("|---|---|---|")
        for i, column in enumerate(columns):
            top = max(names, key=lambda key: score[key][i])
            print(f"| {column} | {top} | {score[top][i]:+.2f} |")
        best = [max(score[key][i] for key in names) for i in range(len(columns))]
        print(f"| mean of these | | {np.mean(best):+.2f} |")
    if drift_columns:
        for i, column in enumerate(drift_columns):
            top = max(names, key=lambda key: gap[key][i])
            print(
                f"\n{column}: best of the grid {top}, {gap[top][i]:.0f}% ± {spread[top][i]:.0f} "
                "of the gap."
            )
        print(
            "\nDrift, every count reset at each phase change (the changes given in hindsight), "
            "% of the gap closed:\n"
        )
        print("| learner | " + " | ".join(drift_columns) + " |")
        print("|---|" + "---|" * len(drift_columns))
        for key, values in reset.items():
            print(f"| {key} | " + " | ".join(values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
