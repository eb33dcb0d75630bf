"""Parameter sweeps: one line per policy spec, its reward against best-fixed and best-context.

The tuning behind the defaults (simulations/README.md) ran this over the replay core:

    python -m simulations.sweep ../shared/data/mmlu_pro_llama2.jsonl \
        --arms ../shared/data/mmlu_pro_llama2.arms.json --seeds 4 \
        egreedy egreedy:learning_rate=0.1 squarecb:learning_rate=0.1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bandit_router.cli.commands import MAX_SEEDS, bounded_int
from bandit_router.service.router import reward_config
from bandit_router.settings import Settings
from bandit_router.sim import dataset, replay, report
from bandit_router.sim.hindsight import BestContextStepper


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("replay", type=Path)
    parser.add_argument("specs", nargs="+", help="policy specs, as for simulate --policies")
    parser.add_argument("--arms", type=Path)
    parser.add_argument("--seeds", type=bounded_int(1, MAX_SEEDS), default=4)
    parser.add_argument("--in-order", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings()
    prepared = dataset.prepare(dataset.load(args.replay, args.arms), reward_config(settings))
    fixed = float(report.hindsight(prepared)[0].mean())
    context = float(BestContextStepper(prepared).rewards().mean())
    print(f"{args.replay.name}: best-fixed {fixed:.4f}, best-context {context:.4f}")
    for spec in args.specs:
        start = time.monotonic()
        runs = replay.simulate([spec], prepared, range(args.seeds), args.in_order, settings)[spec]
        rewards = [float(r.reward.mean()) for r in runs]
        mean = float(np.mean(rewards))
        closed = 100 * (mean - fixed) / (context - fixed)
        print(
            f"  {spec:58s} {mean:.4f} ± {report.ci95(rewards):.4f} "
            f"{100 * (mean / fixed - 1):+.2f}% gap closed {closed:.0f}%"
            f" ({time.monotonic() - start:.0f}s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
