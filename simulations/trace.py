"""One run of a policy, window by window (issue 14, part 1: where a seed's loss comes from).

For one set, reward setting, seed and policy spec, every ``--window`` events of the shuffled
replay: the reward earned, each arm's share of the choices and of the greedy choices (the arm
the policy put the most probability on), each arm's routed plain mean so far (the mean reward of
the events it was chosen on, with their count: what thinning compares, and what the routing
biases) and, for a policy with a fast regressor, the share of choices it served. The arms'
means over every row head the table, for comparison. With ``--by KEY`` (an app fact, such as
the MMLU-Pro sets' ``category``), each arm's routed means are also re-weighted to the shares of
KEY's values among the events so far (the arm's mean within a value where it has rewards
there, its plain mean elsewhere): what is left of the routing's bias within the values.

    python -m simulations.trace mmlu_pro_llama2 budget5000 26 squarecb --by category
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from bandit_router.policies.registry import build_policy
from bandit_router.settings import Settings
from bandit_router.sim import dataset
from bandit_router.sim.dataset import Prepared
from bandit_router.sim.hindsight import best_fixed_arm
from simulations.robust_eval import REWARDS, SHAPES, replay_sets, replays


def trace(
    spec: str, settings: Settings, prepared: Prepared, seed: int, window: int, by: str = ""
) -> str:
    """The run as a markdown table, one row per ``window`` events (the last may be shorter);
    with ``by``, a column of the routed means re-weighted to the shares of that fact's values."""
    policy = build_policy(spec, settings, seed)
    table, index = prepared.table, prepared.arm_index
    names = sorted(index, key=index.__getitem__)
    rows = dataset.order(len(table), seed, False)
    means = {n: float(np.nanmean(table[:, index[n]])) for n in names}
    best = best_fixed_arm(prepared)
    fast = hasattr(policy, "serving")
    order = " / ".join(names)
    lines = [
        "Each arm over every row: "
        + ", ".join(f"{n} {m:.3f}" for n, m in means.items())
        + f"; best fixed: {best}.",
        "",
        f"| events | reward | chosen ({order}) | greedy ({order}) | routed plain mean (rewards) |"
        + (f" routed mean by {by} |" if by else "")
        + (" fast regressor |" if fast else ""),
        "|---|---|---|---|---|" + ("---|" if by else "") + ("---|" if fast else ""),
    ]
    sums: defaultdict[tuple[str, str], float] = defaultdict(float)  # by arm and value of ``by``
    counts: Counter[tuple[str, str]] = Counter()
    seen: Counter[str] = Counter()  # events per value of ``by``
    chosen = dict.fromkeys(names, 0)
    greedy = dict.fromkeys(names, 0)
    served = earned = 0.0
    for t, i in enumerate(rows, 1):
        x, arms = prepared.features[i], prepared.eligible[i]
        decision = policy.choose(x, arms)
        top = max(decision.probabilities, key=decision.probabilities.__getitem__)
        reward = float(table[i, index[decision.arm]])
        if fast:
            served += getattr(policy, "serving", 0) > 0
        policy.learn(x, arms, decision.arm, decision.probability, reward)
        value = str(prepared.replay.rows[i].context.get(by, "")) if by else ""
        chosen[decision.arm] += 1
        greedy[top] += 1
        sums[decision.arm, value] += reward
        counts[decision.arm, value] += 1
        seen[value] += 1
        earned += reward
        if t % window == 0 or t == len(rows):
            n = (t - 1) % window + 1
            had = {a: sum(counts[a, v] for v in seen) for a in names}
            plain = {a: sum(sums[a, v] for v in seen) / had[a] for a in names if had[a]}
            routed = ", ".join(f"{plain[a]:.3f} ({had[a]})" if had[a] else "- (0)" for a in names)
            cells = [routed]
            if by:
                cells.append(", ".join(_reweighted(a, plain, sums, counts, seen) for a in names))
            if fast:
                cells.append(f"{served / n:.2f}")
            lines.append(
                f"| {t} | {earned / n:.3f} | {_shares(chosen, n)} | {_shares(greedy, n)} | "
                + " | ".join(cells)
                + " |"
            )
            chosen, greedy = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
            served = earned = 0.0
    return "\n".join(lines)


def _reweighted(
    arm: str,
    plain: dict[str, float],
    sums: dict[tuple[str, str], float],
    counts: Counter[tuple[str, str]],
    seen: Counter[str],
) -> str:
    """The arm's routed mean re-weighted to the values' shares of the events (its plain mean for
    a value it has no rewards in); "-" before its first reward."""
    if arm not in plain:
        return "-"
    total = sum(seen.values())
    mean = sum(
        seen[v] / total * (sums[arm, v] / counts[arm, v] if counts[arm, v] else plain[arm])
        for v in seen
    )
    return f"{mean:.3f}"


def _shares(counts: dict[str, int], n: int) -> str:
    return " / ".join(f"{c / n:.2f}" for c in counts.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("set")
    parser.add_argument("reward", choices=[*REWARDS, *SHAPES])
    parser.add_argument("seed", type=int)
    parser.add_argument("spec")
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--limit", type=int, help="only the file's first rows")
    parser.add_argument("--by", default="", help="an app fact: routed means re-weighted by it")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error("--window must be at least 1")
    ((name, path, _, in_order),) = replay_sets([args.set])
    if in_order:
        parser.error(f"{name} replays in time order; trace shuffles a set's rows")
    if not path.exists():
        parser.error(f"no replay file {path} (see simulations/README.md for the sets)")
    ((_, setting, _, settings, prepared),) = replays([name], [args.reward], args.limit)
    print(f"{name} `{setting}`, seed {args.seed}, `{args.spec}`.\n")
    print(trace(args.spec, settings, prepared, args.seed, args.window, args.by))
    return 0


if __name__ == "__main__":
    sys.exit(main())
