"""What a cold start costs on each public set (issue 14, part 1's -1% target).

For every public set and reward setting of ``robust_eval``, shuffled over seeds 0..N-1:

- each arm's mean reward and spread, and the scale of the Lai-Robbins regret of a consistent
  arm-level learner (Gaussian approximation with each arm's own variance: per other arm
  ``2 var_a ln T / gap_a``, capped at ``T gap_a``, what always playing it would cost; as a share
  of the best arm's total). It is asymptotic, not a bound at 12,000 rows: learners pay less;
- a grid of arm-level learners (Beta and Gaussian Thompson sampling, UCB-V, explore-then-commit),
  from textbook exploration to far greedier than theory allows, and the best of them chosen per
  pair in hindsight, which no deployed learner can do;
- Thompson sampling told every arm's reward mean and spread but not which arm has which
  (``informed``): what is left of its loss is the price of the assignment alone, the rest of a
  cold learner's is the price of not knowing the levels;
- what the features are worth with full information: the skyline (``sim.peers.skyline``, ridge
  regression per arm trained on the first half with every arm's outcome, with each penalty of
  ``SKYLINE_L2``) against the best fixed arm on the same second half, and ``best-context`` (the
  best arm per subject, in hindsight).

The learners here run vectorised over seeds straight on the reward table (the choice needs no
features): 40 seeds of every learner on every pair take about three minutes (the six-arm
sets' ``informed`` most of them):

    python -m simulations.cold_start --seeds 40 > simulations/results/cold_start.md
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bandit_router.cli.commands import MAX_SEEDS, bounded_int
from bandit_router.sim import dataset, report
from bandit_router.sim.hindsight import BestContextStepper
from bandit_router.sim.peers import skyline
from simulations.robust_eval import REWARDS, SETS, replays

Floats = npt.NDArray[np.float64]

# (kind, exploration constant): ``bts`` Beta TS with counts scaled by 1/c (c=1 is ``ts``), ``gts``
# Gaussian TS with posterior variance c * var / n, ``ucbv`` mean + sqrt(c * var * ln t / n),
# ``etc`` c pulls of every arm in turn, then greedy.
LEARNERS: list[tuple[str, float]] = [
    ("bts", 1.0),
    ("bts", 0.3),
    ("gts", 1.0),
    ("gts", 0.5),
    ("gts", 0.25),
    ("gts", 0.1),
    ("ucbv", 1.0),
    ("ucbv", 0.3),
    ("ucbv", 0.1),
    ("etc", 10),
    ("etc", 30),
    ("etc", 100),
    ("etc", 300),
]


# The skyline's ridge penalty: fixed at 1 (the simulator's before 2026-12-03), and chosen by
# cross-validation on the training half (None: the simulator's now).
SKYLINE_L2: tuple[float | None, ...] = (1.0, None)


def arm_level(table: Floats, kind: str, c: float, seeds: Sequence[int]) -> Floats:
    """Mean reward per seed of one arm-level learner over that seed's shuffled rows."""
    return play(table, kind, c, seeds)[0]


@dataclass
class Tally:
    """Per seed (rows) and arm (columns): the rewards learned, their sum, their squares."""

    count: Floats
    total: Floats
    squares: Floats


# the scores of the arms (seeds x arms) at step t, from the tally; the highest eligible is chosen
Score = Callable[[int, Tally], Floats]


def run(table: Floats, seeds: Sequence[int], score: Score) -> tuple[Floats, npt.NDArray[np.int64]]:
    """Mean reward per seed of the learner ``score`` over each seed's shuffled rows, and the arm
    chosen at each step (seeds x steps)."""
    n, k = table.shape
    orders = np.stack([dataset.order(n, s, False) for s in seeds])
    m = len(seeds)
    tally = Tally(np.zeros((m, k)), np.zeros((m, k)), np.zeros((m, k)))
    earned = np.zeros(m)
    who = np.arange(m)
    chosen = np.zeros((m, n), dtype=np.int64)
    for t in range(n):
        rewards = table[orders[:, t]]
        choice = np.where(np.isnan(rewards), -np.inf, score(t, tally)).argmax(axis=1)
        r = rewards[who, choice]
        chosen[:, t] = choice
        tally.count[who, choice] += 1
        tally.total[who, choice] += r
        tally.squares[who, choice] += r * r
        earned += r
    out: Floats = earned / n
    return out, chosen


def play(
    table: Floats, kind: str, c: float, seeds: Sequence[int]
) -> tuple[Floats, npt.NDArray[np.int64]]:
    """``arm_level``'s mean rewards, and the arm chosen at each step (seeds x steps)."""
    if kind not in ("bts", "gts", "ucbv", "etc"):
        raise ValueError(f"unknown learner {kind!r}")
    k = table.shape[1]
    rng = np.random.default_rng([1000, *seeds])

    def score(t: int, tally: Tally) -> Floats:
        count, total = tally.count, tally.total
        mean = total / np.maximum(count, 1e-9)
        var = (np.maximum(tally.squares - count * mean**2, 0.0) + 0.2) / (count + 2)  # 2 at 0.1
        if kind == "etc":
            out: Floats = mean if t >= c * k else (np.arange(k) == t % k).astype(float)[None, :]
            return out
        if kind == "bts":
            out = rng.beta(1 + total / c, 1 + (count - total) / c)
        elif kind == "gts":
            noise = rng.standard_normal(count.shape)
            out = mean + np.sqrt(c * var / np.maximum(count, 1e-9)) * noise
        else:  # ucbv
            out = mean + np.sqrt(c * var * math.log(t + 1) / np.maximum(count, 1e-9))
        return np.where(count < 1, np.inf, out)  # every arm once first

    return run(table, seeds, score)


MAX_INFORMED_ARMS = 7  # k! assignments are weighed at every step


def informed(table: Floats, seeds: Sequence[int]) -> Floats:
    """Mean reward per seed of Thompson sampling over the assignments of the arms' true reward
    profiles (each arm's mean and sd over the whole table) to the arms, with a Gaussian
    likelihood of each arm's rewards: a prior no deployment has."""
    k = table.shape[1]
    if k > MAX_INFORMED_ARMS:
        raise ValueError(f"informed weighs all {k}! assignments: at most {MAX_INFORMED_ARMS} arms")
    rng = np.random.default_rng([2000, *seeds])
    mu, sd = np.nanmean(table, axis=0), np.maximum(np.nanstd(table, axis=0), 1e-3)
    perms = np.array(list(itertools.permutations(range(k))))  # arm a holds profile perms[p, a]
    arms = np.arange(k)

    def score(t: int, tally: Tally) -> Floats:
        # the log-likelihood of each arm's rewards under each profile: seed x arm x profile
        c, s1, s2 = (x[:, :, None] for x in (tally.count, tally.total, tally.squares))
        loglik = -c * np.log(sd) - (s2 - 2 * mu * s1 + c * mu**2) / (2 * sd**2)
        posterior = loglik[:, arms, perms].sum(axis=2)  # seed x assignment
        cumulative = np.exp(posterior - posterior.max(axis=1, keepdims=True)).cumsum(axis=1)
        drawn = (cumulative < rng.random((len(seeds), 1)) * cumulative[:, -1:]).sum(axis=1)
        out: Floats = mu[perms[drawn]]
        return out

    return run(table, seeds, score)[0]


def lai_robbins(table: Floats) -> float:
    """The Lai-Robbins regret scale (see the module's doc), as a share of the best arm's total."""
    n = table.shape[0]
    means, var = np.nanmean(table, axis=0), np.nanvar(table, axis=0)
    best = int(means.argmax())
    regret = sum(
        min(2 * var[a] * math.log(n) / (means[best] - means[a]), n * (means[best] - means[a]))
        for a in range(len(means))
        if a != best and means[best] - means[a] > 1e-9
    )
    return float(regret / (n * means[best]))


def _pct(value: float, reference: float) -> float:
    return 100 * (value / reference - 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=bounded_int(1, MAX_SEEDS), default=40)
    parser.add_argument("--sets", default=",".join(SETS))
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    names = [f"{kind}:{c:g}" for kind, c in LEARNERS]
    rows: list[tuple[str, list[str]]] = []
    grid: dict[str, list[float]] = {name: [] for name in names}
    for name, setting, _, _, prepared in replays(args.sets.split(","), list(REWARDS)):
        table = prepared.table
        means = np.nanmean(table, axis=0)
        best, fixed = int(means.argmax()), float(means.max())
        n = len(table)
        context = BestContextStepper(prepared).rewards()
        sky: dict[float | None, list[float]] = {l2: [] for l2 in SKYLINE_L2}
        for seed, l2 in itertools.product(seeds[:5], SKYLINE_L2):  # 5 seeds: the fits dominate
            order = [int(i) for i in dataset.order(n, seed, False)]
            test = order[n // 2 :]
            earned = skyline(prepared.features, table, order[: n // 2], test, l2=l2)
            sky[l2].append(_pct(float(earned.mean()), float(table[test, best].mean())))
        learned = {}
        for (kind, c), label in zip(LEARNERS, names, strict=True):
            per_seed = arm_level(table, kind, c, seeds)
            learned[label] = _pct(float(per_seed.mean()), fixed)
            grid[label].append(learned[label])
        top = max(learned, key=learned.__getitem__)
        told = [_pct(float(x), fixed) for x in informed(table, seeds)]
        gaps = sorted(fixed - means[a] for a in range(len(means)) if a != best)
        rows.append(
            (
                f"{name.replace('mmlu_pro_', '')} {setting}",
                [
                    str(n),
                    str(len(means)),
                    f"{fixed:.4f}",
                    " / ".join(f"{g:.3f}" for g in gaps),
                    f"{float(np.sqrt(np.nanvar(table, axis=0)).mean()):.2f}",
                    f"{-100 * lai_robbins(table):+.2f}%",
                    f"{learned['bts:1']:+.2f}%",
                    f"{learned[top]:+.2f}% ({top})",
                    f"{np.mean(told):+.2f}% ± {report.ci95(told):.2f}",
                    f"{_pct(float(context.mean()), fixed):+.2f}%",
                    *(f"{np.mean(v):+.2f}% ± {report.ci95(v):.2f}" for v in sky.values()),
                ],
            )
        )
        print(f"{name} {setting} done", file=sys.stderr, flush=True)
    print(f"Cold-start study, {args.seeds} shuffled seeds (skyline: 5); all vs best-fixed.\n")
    print(
        "| set, reward | rows | arms | best-fixed | gaps to the others | reward sd | "
        "Lai-Robbins scale | ts | best arm-level learner, chosen in hindsight | "
        "ts told the arms' reward distributions | best-context | "
        + " | ".join(
            f"skyline, penalty {'cross-validated' if l2 is None else f'{l2:g}'} "
            "(full information, 2nd half)"
            for l2 in SKYLINE_L2
        )
        + " |"
    )
    print("|---|" + "---|" * (10 + len(SKYLINE_L2)))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nEvery arm-level learner, mean over the seeds, vs best-fixed (%):\n")
    print("| learner | " + " | ".join(label for label, _ in rows) + " | mean | worst |")
    print("|---|" + "---|" * (len(rows) + 2))
    for label in names:
        v = grid[label]
        print(
            f"| {label} | "
            + " | ".join(f"{x:+.2f}" for x in v)
            + f" | {np.mean(v):+.2f} | {min(v):+.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
