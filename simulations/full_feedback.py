"""What one reward per event costs the default policy (issue 14, part 1's targets).

The same policy (by default ``squarecb``, the service's default) runs twice on each public set and
reward setting, shuffled over seeds 0..N-1, from a cold start:

- as deployed: it chooses, and learns the chosen arm's reward only;
- with full feedback: at every event it learns every arm's reward, and what it earns is that of
  its greedy choice (the arm it puts the most probability on), so it neither explores nor is
  limited by one reward per event;
- with full feedback at one event in K (K arms), greedy: as many rewards as it sees deployed,
  spread evenly over the arms instead of following its own choices.

The difference is what learning from its own choices costs this learner, with its model, features
and settings unchanged (the skyline of ``cold_start`` is a different, offline model):

    python -m simulations.full_feedback --seeds 5 > simulations/results/full_feedback.md
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
from simulations.robust_eval import REWARDS, SETS, replays

Floats = npt.NDArray[np.float64]


# How the policy learns: ``deployed`` the chosen arm's reward; ``full`` every arm's reward at
# every event; ``matched`` every arm's reward at one event in K (K arms): as many rewards as
# ``deployed`` sees, none of them chosen by the policy.
MODES = ("deployed", "full", "matched")


def play(spec: str, settings: Settings, prepared: Prepared, seed: int, mode: str) -> Floats:
    """The reward of each step of one seed's shuffled rows: of the policy's choice (``deployed``),
    or of its greedy choice (the others), learning as ``mode`` says (see ``MODES``)."""
    policy = build_policy(spec, settings, seed)
    table, index = prepared.table, prepared.arm_index
    rows = dataset.order(len(table), seed, False)
    earned = np.empty(len(rows))
    for t, i in enumerate(rows):
        x, arms = prepared.features[i], prepared.eligible[i]
        decision = policy.choose(x, arms)
        if mode != "deployed":
            greedy = max(decision.probabilities, key=decision.probabilities.__getitem__)
            earned[t] = table[i, index[greedy]]
            if mode == "full" or t % len(arms) == 0:
                for arm in arms:
                    policy.learn(x, arms, arm.name, 1.0, float(table[i, index[arm.name]]))
        else:
            earned[t] = table[i, index[decision.arm]]
            policy.learn(x, arms, decision.arm, decision.probability, float(earned[t]))
    return earned


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="squarecb")
    parser.add_argument("--seeds", type=bounded_int(1, MAX_SEEDS), default=5)
    parser.add_argument("--sets", default=",".join(SETS))
    args = parser.parse_args(argv)
    print(
        f"`{args.spec}` learning one reward per event (as deployed) and every arm's reward at "
        f"every event (full feedback, greedy), {args.seeds} shuffled seeds; vs best-fixed, "
        "± 95% CI over the seeds.\n"
    )
    print(
        "| set, reward | as deployed | full feedback, greedy | full feedback at one event in K "
        "(as many rewards as deployed), greedy | "
        "what one reward per event costs (points, full - deployed) |"
    )
    print("|---|---|---|---|---|")
    costs = []
    means: dict[str, list[float]] = {mode: [] for mode in MODES}
    for name, setting, _, settings, prepared in replays(args.sets.split(","), list(REWARDS)):
        fixed = float(report.hindsight(prepared)[0].mean())
        runs = {
            mode: [
                100 * (float(play(args.spec, settings, prepared, s, mode).mean()) / fixed - 1)
                for s in range(args.seeds)
            ]
            for mode in MODES
        }
        cost = float(np.mean(runs["full"]) - np.mean(runs["deployed"]))
        costs.append(cost)
        for mode, values in runs.items():
            means[mode].append(float(np.mean(values)))
        cells = [f"{np.mean(v):+.2f}% ± {report.ci95(v):.2f}" for v in runs.values()]
        print(
            f"| {name.replace('mmlu_pro_', '')} {setting} | "
            + " | ".join(cells)
            + f" | {cost:.2f} |",
            flush=True,
        )
    print(
        "| mean (worst) | "
        + " | ".join(f"{np.mean(v):+.2f}% ({min(v):+.2f}%)" for v in means.values())
        + f" | {np.mean(costs):.2f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
