"""What a perfect change detector would give the default policy on drift (issue 14, part 1).

The default (``squarecb``) runs on the drift scenario in time order, seeds 0..N-1 varying only
its own draws, three ways:

- as deployed;
- refreshed at each phase change, the change points handed over (a detector that is never late
  and never wrong, which no deployment has): the model keeps its weights, VW's per-feature
  learning rates start afresh, and SquareCB explores as at its ``REFRESHED_AT``-th event;
- restarted at each phase change: a new policy, cold.

Each row gives the share of the gap between best-fixed and best-context (the drift target's
reference) closed, and the reward of each phase and of its first ``RECOVERY`` events:

    python -m simulations.change_points --seeds 10 > simulations/results/change_points.md
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bandit_router.cli.commands import MAX_SEEDS, bounded_int
from bandit_router.policies.base import Policy
from bandit_router.policies.registry import build_policy, load_policy, parse_policy_spec
from bandit_router.policies.vw import VWPolicy
from bandit_router.settings import Settings
from bandit_router.sim import dataset, report
from bandit_router.sim.dataset import Prepared
from bandit_router.sim.hindsight import BestContextStepper
from simulations.robust_eval import RECOVERY, REWARDS, phases, replays

Floats = npt.NDArray[np.float64]

MODES = ("deployed", "refreshed", "restarted")
REFRESHED_AT = 100  # SquareCB's event count after a refresh: gamma 20 * sqrt(100) = 200


def refresh(policy: VWPolicy, spec: str, settings: Settings, seed: int) -> VWPolicy:
    """The policy's weights, with VW's per-feature learning rates started afresh (it must run
    with ``--predict_only_model``, so that its dump leaves them out) and SquareCB's count cut."""
    fresh = load_policy(spec, policy.dumps(), settings, seed)
    assert isinstance(fresh, VWPolicy)
    fresh.learned = min(fresh.learned, REFRESHED_AT)
    return fresh


def without_rates(spec: str) -> str:
    """``spec`` with ``--predict_only_model`` added to its VW arguments."""
    parsed = parse_policy_spec(spec)
    vw_args = f"{parsed.params.get('vw_args', '')} --predict_only_model".strip()
    return str(dataclasses.replace(parsed, params={**parsed.params, "vw_args": vw_args}))


def play(spec: str, settings: Settings, prepared: Prepared, seed: int, mode: str) -> Floats:
    """The reward of each event of the scenario in time order, the policy run as ``mode`` says."""
    spec = without_rates(spec)
    changes = {c - 1 for c in dataset.phase_changes(prepared.replay.rows)}
    table, index = prepared.table, prepared.arm_index
    policy: Policy = build_policy(spec, settings, seed)
    earned = np.empty(len(table))
    for t in range(len(table)):
        if t in changes and mode != "deployed":
            # a seed of its own per phase: the restored policy's draws do not repeat the first's
            phase_seed = seed + 1000 * t
            if mode == "restarted":
                policy = build_policy(spec, settings, phase_seed)
            else:
                assert isinstance(policy, VWPolicy)
                policy = refresh(policy, spec, settings, phase_seed)
        x, arms = prepared.features[t], prepared.eligible[t]
        decision = policy.choose(x, arms)
        earned[t] = table[t, index[decision.arm]]
        policy.learn(x, arms, decision.arm, decision.probability, float(earned[t]))
    return earned


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=["squarecb"])
    parser.add_argument("--seeds", type=bounded_int(1, MAX_SEEDS), default=10)
    parser.add_argument("--sets", default="drift")
    args = parser.parse_args(argv)
    print(
        f"The drift scenario in time order, {args.seeds} seeds: as deployed, refreshed at each "
        "phase change (the change points handed over: weights kept, VW's per-feature rates "
        f"afresh, SquareCB's exploration as at event {REFRESHED_AT}), and restarted cold at "
        "each. Gap closed: (policy - best-fixed) / (best-context - best-fixed), ± 95% CI over "
        f"the seeds. Phases: the mean reward of each phase, then of its first {RECOVERY} events.\n"
    )
    print("| set, reward | policy | run | gap closed | vs best-fixed | phases | first events |")
    print("|---|---|---|---|---|---|---|")
    for name, setting, _, settings, prepared in replays(args.sets.split(","), list(REWARDS)):
        fixed = float(report.hindsight(prepared)[0].mean())
        best_context = BestContextStepper(prepared).rewards()
        changes = [0, *(c - 1 for c in dataset.phase_changes(prepared.replay.rows))]
        n = len(changes)
        cells = [f"{v:.3f}" for v in phases(best_context, changes)]
        print(
            f"| {name} {setting} | best-context | | 100% | "
            f"{100 * (best_context.mean() / fixed - 1):+.2f}% | {' '.join(cells[:n])} | "
            f"{' '.join(cells[n:])} |"
        )
        for spec in args.specs:
            for mode in MODES:
                runs = [play(spec, settings, prepared, s, mode) for s in range(args.seeds)]
                gaps = [100 * (r.mean() - fixed) / (best_context.mean() - fixed) for r in runs]
                vs = 100 * (np.mean([r.mean() for r in runs]) / fixed - 1)
                cells = [f"{v:.3f}" for v in np.mean([phases(r, changes) for r in runs], 0)]
                print(
                    f"| {name} {setting} | `{spec}` | {mode} | "
                    f"{np.mean(gaps):.0f}% ± {report.ci95(gaps):.0f} | {vs:+.2f}% | "
                    f"{' '.join(cells[:n])} | {' '.join(cells[n:])} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
