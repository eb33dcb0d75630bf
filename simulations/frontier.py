"""What the stationary targets ask of one policy (issue 14, part 1): the mean over the public
pairs against the worst pair, every spec of ``robust_eval --json`` files run on the same seeds.

Each spec is a point: its mean vs best-fixed over the shuffled set/setting pairs (± the 95% CI
over the seeds of each seed's mean over the pairs), its worst pair, how many pairs are within
1%, its lowest single run, the share of the drift gap it closes, and the share of the ways to
draw the issue's 5 seeds from those it ran on that meet both stationary targets (the corner mean
>= +0.5%, every pair >= -1%); ``--png`` draws the points against the corner:

    python -m simulations.frontier FILE... --png simulations/results/frontier.png \\
        > simulations/results/frontier.md
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit_router.sim import plots, report
from simulations.robust_table import Merged, merge

MEAN_TARGET, PAIR_TARGET = 0.5, -1.0  # % vs best-fixed: the mean over the pairs, every pair
ISSUE_SEEDS = 5  # the seeds the issue judges the stationary targets on
MAX_DRAWS = 200_000  # draws of them counted at most (30 seeds have 142,506)


@dataclass(frozen=True)
class Point:
    spec: str
    mean: float  # % vs best-fixed, mean over the pairs
    ci: float  # its 95% CI over the seeds
    worst: float  # the worst pair's %
    within: int  # pairs within 1%
    pairs: int
    lowest: float  # the lowest single run's %
    drift: tuple[float, ...]  # % of the drift gap closed, per reward setting
    passing: float  # share of its ISSUE_SEEDS-seed draws meeting both targets (nan: fewer seeds)


def passing(seeds: np.ndarray, k: int = ISSUE_SEEDS) -> float:
    """The share of the ``k``-subsets of the seeds (``seeds``: pairs x seeds, % vs best-fixed) on
    which the pairs' means over the subset meet both stationary targets (a seeded random
    MAX_DRAWS of them where there are more); nan with fewer than ``k`` seeds."""
    n = seeds.shape[1]
    if n < k:
        return float("nan")
    if math.comb(n, k) <= MAX_DRAWS:
        draws = np.array(list(itertools.combinations(range(n), k)))
    else:
        rng = np.random.default_rng(0)
        draws = np.array([rng.choice(n, k, replace=False) for _ in range(MAX_DRAWS)])
    per_pair = seeds[:, draws].mean(axis=2)  # pairs x draws
    met = (per_pair.mean(axis=0) >= MEAN_TARGET) & (per_pair.min(axis=0) >= PAIR_TARGET)
    return float(met.mean())


def points(merged: Merged) -> list[Point]:
    """One point per spec that ran on every shuffled pair, highest mean first."""
    pairs = [k for k in merged if k[0] != "drift"]
    specs = dict.fromkeys(s for k in pairs for s in merged[k]["policies"])
    out = []
    for spec in specs:
        runs = [merged[k]["policies"].get(spec, {}) for k in pairs]
        if not all("per_seed_vs_best_fixed_pct" in r for r in runs):
            continue
        values = [float(r["vs_best_fixed_pct"]) for r in runs]
        seeds = [r["per_seed_vs_best_fixed_pct"] for r in runs]
        # pairs x seeds, where every pair ran on as many seeds (else no CI and no draws)
        matrix = np.array(seeds) if len({len(s) for s in seeds}) == 1 else None
        drift = tuple(
            float(merged[k]["policies"][spec]["gap_closed_pct"])
            for k in merged
            if k[0] == "drift" and spec in merged[k]["policies"]
        )
        out.append(
            Point(
                spec,
                float(np.mean(values)),
                report.ci95(list(matrix.mean(axis=0))) if matrix is not None else float("nan"),
                min(values),
                sum(v >= PAIR_TARGET for v in values),
                len(values),
                min(min(s) for s in seeds),
                drift,
                passing(matrix) if matrix is not None else float("nan"),
            )
        )
    return sorted(out, key=lambda p: -p.mean)


def table(rows: Sequence[Point]) -> str:
    """The points as a markdown table, numbered as ``draw`` labels them."""
    head = (
        "| # | spec | mean ± 95% CI | worst pair | within 1% | lowest run | drift gap "
        f"| {ISSUE_SEEDS}-seed draws meeting both |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for i, p in enumerate(rows, 1):
        drift = " / ".join(f"{d:.0f}%" for d in p.drift)
        lines.append(
            f"| {i} | `{p.spec}` | {p.mean:+.2f}% ± {p.ci:.2f} | {p.worst:+.2f}% | {p.within} of "
            f"{p.pairs} | {p.lowest:+.2f}% | {drift} | {_share(p.passing)} |"
        )
    return "\n".join(lines)


def _share(value: float) -> str:
    """A share of draws: "-" for none to count, a decimal under 10%."""
    if math.isnan(value):
        return "-"
    return f"{value:.1%}" if 0 < value < 0.1 else f"{value:.0%}"


def draw(rows: Sequence[Point], path: Path, highlight: str = "squarecb") -> None:
    """The points, mean against worst pair, numbered as in ``table``, with the targets' corner
    shaded: every point on the left, those nearest the corner on the right."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    near = [p for p in rows if p.worst >= PAIR_TARGET - 1.5 and p.mean >= MEAN_TARGET - 1]
    for ax, shown in zip(axes, (rows, near or rows), strict=True):
        right = max([p.worst for p in shown] + [PAIR_TARGET]) + 0.3
        top = max([p.mean + p.ci for p in shown] + [MEAN_TARGET]) + 0.2
        ax.fill_between([PAIR_TARGET, right], MEAN_TARGET, top, color="tab:green", alpha=0.15)
        ax.text(PAIR_TARGET + 0.03, top - 0.03, "targets", va="top", color="tab:green")
        for i, p in enumerate(rows, 1):
            if p not in shown:
                continue
            own = p.spec == highlight
            colour = "tab:red" if own else "tab:blue"
            ax.errorbar(p.worst, p.mean, yerr=p.ci, fmt="o", ms=5, color=colour, ecolor="0.85")
            ax.annotate(
                str(i),
                (p.worst, p.mean),
                fontsize=7,
                xytext=(3, 2),
                textcoords="offset points",
                color=colour,
            )
        ax.set_xlim(right=right)
        ax.set_ylim(top=top)
        ax.set_xlabel("worst pair, % vs best-fixed")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over the pairs, % vs best-fixed (95% CI over the seeds)")
    axes[0].set_title("every spec", fontsize=10)
    axes[1].set_title(f"nearest the targets ({highlight} in red)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--png", type=Path, help="also draw the points to this file")
    args = parser.parse_args(argv)
    rows = points(merge(args.files))
    print(
        "Each spec vs best-fixed: the mean over the shuffled set/setting pairs (± 95% CI over the "
        "seeds), its worst pair, the pairs within 1%, its lowest single run, the share of the "
        f"drift gap it closes, and the share of the ways to draw {ISSUE_SEEDS} of its seeds on "
        f"which it meets both targets: a mean >= {MEAN_TARGET:+.1f}% with every pair >= "
        f"{PAIR_TARGET:.0f}%.\n"
    )
    print(table(rows))
    if args.png:
        draw(rows, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
