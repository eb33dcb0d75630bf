"""Where a policy's loss against the best fixed arm comes from (issue 14, part 1's targets).

At each event of a shuffled replay the policy's choice differs from always choosing the best
fixed arm in two ways, both read off the replay set's full feedback:

- **greedy**: the arm it puts the most probability on (its model's choice for this query) is not
  the best fixed arm: reward of the best fixed arm minus that of the greedy arm. Negative where
  the context pays;
- **exploration**: the arm drawn is not the greedy one: reward of the greedy arm minus that of the
  arm drawn.

The two add up to the policy's loss. Each is reported per quarter of the run, as a percentage of
the best fixed arm's total reward (the unit of ``robust_eval``'s "vs best-fixed"), averaged over
the seeds:

    python -m simulations.regret_split --seeds 10 squarecb > simulations/results/regret_split.md

With ``--by KEY`` (an app fact, such as the MMLU-Pro sets' ``category``), a second table says
where the greedy loss after the first quarter goes: the cells (KEY's value, the greedy arm)
that lose the most, with their events and their loss per event.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bandit_router.cli.commands import MAX_SEEDS, bounded_int
from bandit_router.policies.registry import build_policy
from bandit_router.settings import Settings
from bandit_router.sim import dataset, report
from bandit_router.sim.dataset import Prepared
from bandit_router.sim.hindsight import best_fixed_arm
from simulations.robust_eval import REWARDS, SETS, replays

QUARTERS = 4
Floats = npt.NDArray[np.float64]


Cells = dict[tuple[str, str], list[float]]  # (KEY's value, greedy arm) -> [reward lost, events]


def split(
    spec: str,
    settings: Settings,
    prepared: Prepared,
    seed: int,
    by: str = "",
    cells: Cells | None = None,
) -> Floats:
    """One seed's loss against the best fixed arm: a (QUARTERS, 2) array, greedy and exploration
    per quarter of the run, in percent of the best fixed arm's total reward. With ``cells``, the
    reward the greedy arm lost against the best fixed arm after the first quarter is added there
    too, by the row's value of the app fact ``by`` and the greedy arm (where that is not the best
    fixed arm)."""
    policy = build_policy(spec, settings, seed)
    table, index = prepared.table, prepared.arm_index
    best = index[best_fixed_arm(prepared)]
    unit = 100 / float(table[:, best].sum())
    rows = dataset.order(len(table), seed, False)
    out = np.zeros((QUARTERS, 2))
    for t, i in enumerate(rows):
        x, arms = prepared.features[i], prepared.eligible[i]
        decision = policy.choose(x, arms)
        greedy = max(decision.probabilities, key=decision.probabilities.__getitem__)
        drawn, top = table[i, index[decision.arm]], table[i, index[greedy]]
        policy.learn(x, arms, decision.arm, decision.probability, float(drawn))
        quarter = t * QUARTERS // len(rows)
        out[quarter] += (table[i, best] - top, top - drawn)
        if cells is not None and quarter > 0 and index[greedy] != best:
            value = str(prepared.replay.rows[i].context.get(by, "")) if by else ""
            cell = cells.setdefault((value, greedy), [0.0, 0])
            cell[0] += table[i, best] - top
            cell[1] += 1
    out *= unit
    return out


def cell_table(found: list[tuple[str, str, float, Cells]], seeds: int, by: str, most: int) -> str:
    """The cells of each policy and pair that lose the most, as a markdown table (``found``:
    the policy, the pair, the best fixed arm's total reward, the cells of every seed)."""
    lines = [
        f"Greedy loss after the first quarter by {by} and greedy arm, the {most} cells of each "
        f"pair that lose the most (mean of {seeds} seeds): in % of the best fixed arm's total "
        "reward, and per event in reward.",
        "",
        f"| policy | set, reward | {by} | greedy arm | events a run | loss (%) | per event |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec, pair, total, cells in found:
        for (value, arm), (lost, events) in sorted(cells.items(), key=lambda c: -c[1][0])[:most]:
            lines.append(
                f"| `{spec}` | {pair} | {value} | {arm} | {events / seeds:.0f} "
                f"| {100 * lost / total / seeds:+.3f} | {lost / events:+.3f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--rewards", default=",".join(REWARDS))
    parser.add_argument("--seeds", type=bounded_int(1, MAX_SEEDS), default=10)
    parser.add_argument("--by", default="", help="an app fact: where the late greedy loss goes")
    parser.add_argument("--cells", type=int, default=12, help="with --by: how many cells a pair")
    args = parser.parse_args(argv)
    found: list[tuple[str, str, float, Cells]] = []
    print(f"Loss against the best fixed arm in % of its total reward, mean of {args.seeds} seeds,")
    print("by quarter of the run: greedy (its model's choice, negative where the context pays)")
    print("and exploration (the draw away from it); vs best-fixed is minus their sum.\n")
    print(
        "| policy | set, reward | greedy, by quarter | greedy | exploration, by quarter "
        "| exploration | vs best-fixed ± 95% CI |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, setting, in_order, settings, prepared in replays(
        args.sets.split(","), args.rewards.split(",")
    ):
        if in_order:
            continue  # a drift stream's best fixed arm is not what it is judged against
        for spec in args.specs:
            cells: Cells | None = {} if args.by else None
            runs = np.array(
                [split(spec, settings, prepared, s, args.by, cells) for s in range(args.seeds)]
            )
            if cells is not None:
                total = float(prepared.table[:, prepared.arm_index[best_fixed_arm(prepared)]].sum())
                found.append((spec, f"{name} {setting}", total, cells))
            mean = runs.mean(axis=0)
            totals = -runs.sum(axis=(1, 2))
            ci = report.ci95(list(totals))
            quarters = [" ".join(f"{v:+.2f}" for v in mean[:, k]) for k in (0, 1)]
            print(
                f"| `{spec}` | {name} {setting} | {quarters[0]} | {mean[:, 0].sum():+.2f} "
                f"| {quarters[1]} | {mean[:, 1].sum():+.2f} | {totals.mean():+.2f}% ± {ci:.2f} |",
                flush=True,
            )
    if found:
        print("\n" + cell_table(found, args.seeds, args.by, args.cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
