"""Across-sets evaluation for the default policy: every public set x two reward settings + drift.

Each set is replayed from a cold start; shuffled sets over seeds 0..N-1, the drift scenario in
time order (seeds then vary only the policy's own draws). Prints, per set and setting, each
spec's mean reward, its 95% CI over seeds, each seed's difference from the best fixed arm, and
on drift the share of the best-fixed-to-best-context gap closed and the reward per phase:

    python -m simulations.robust_eval --seeds 5 robust squarecb ts ucb static random \
        --json simulations/results/robust_default.json

``--sets`` also takes the sets ``compose.py`` writes to simulations/data/ (``mmlu_pro_nine``, ...),
and ``--rewards`` the shapes in ``SHAPES`` (``accuracy``, ``rating``), which the defaults were not
chosen on.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandit_router.cli.commands import MAX_SEEDS, bounded_int
from bandit_router.service.router import reward_config
from bandit_router.settings import Settings
from bandit_router.sim import dataset, replay, report
from bandit_router.sim.dataset import Prepared
from bandit_router.sim.hindsight import BestContextStepper

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data
SETS = ["mmlu_pro_llama2", "mmlu_pro_qwen15", "mmlu_pro_mixed6", "alpaca_tulu2"]
DRIFT = Path("simulations/data/drift.jsonl")
REWARDS = {
    "default": {},
    "budget5000": {
        "reward_weights": {"accuracy": 0.6, "rating": 0.2, "latency": 0.2},
        "latency_budget_ms": 5000.0,
    },
}
# Reward shapes the defaults were not chosen on (``--rewards accuracy``; ``rating`` for alpaca).
SHAPES: dict[str, dict[str, object]] = {
    "accuracy": {"reward_weights": {"accuracy": 1.0}},
    "rating": {"reward_weights": {"rating": 1.0}},
}
COMPOSED_DATA = DRIFT.parent  # simulations/compose.py writes its sets here too
RECOVERY = 300  # steps after each phase change reported on their own


def replay_sets(names: Sequence[str]) -> list[tuple[str, Path, Path, bool]]:
    out = []
    for name in names:
        if name == "drift":
            out.append((name, DRIFT, DRIFT.with_suffix(".arms.json"), True))
        else:
            folder = DATA if (DATA / f"{name}.jsonl").exists() else COMPOSED_DATA
            out.append((name, folder / f"{name}.jsonl", folder / f"{name}.arms.json", False))
    return out


def existing_sets(names: Sequence[str]) -> list[tuple[str, Path, Path, bool]]:
    """``replay_sets``, each file checked first: a missing one ends the run saying where it was
    looked for and how to make it (a FileNotFoundError traceback before, after any set before
    it had run)."""
    sets = replay_sets(names)
    for name, path, _, _ in sets:
        if not path.is_file():
            hint = {
                "drift": f"python -m simulations.generate simulations/scenarios/drift.json {DRIFT}"
            }.get(name, "python -m simulations.compose (for its sets)")
            raise SystemExit(
                f"set {name!r}: no {path} (nor in {DATA}); the public sets are "
                f"{', '.join(SETS)}; make the others with `{hint}`, from the repository"
            )
    return sets


def replays(
    sets: Sequence[str], rewards: Sequence[str], limit: int | None = None
) -> Iterator[tuple[str, str, bool, Settings, Prepared]]:
    """Each set under each reward setting (a name of ``REWARDS`` or ``SHAPES``): the set's name,
    the setting's, whether it replays in time order, the run's settings and the prepared replay.
    Each file is read once."""
    for name, path, arms, in_order in existing_sets(sets):
        loaded = dataset.load(path, arms, limit=limit)
        for setting in rewards:
            settings = Settings(**{**REWARDS, **SHAPES}[setting])  # type: ignore[arg-type]
            yield (
                name,
                setting,
                in_order,
                settings,
                dataset.prepare(loaded, reward_config(settings)),
            )


def evaluate(
    specs: Sequence[str], sets: Sequence[str], rewards: Sequence[str], seeds: int, limit: int | None
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for name, setting, in_order, settings, prepared in replays(sets, rewards, limit):
        fixed_rows, oracle_rows = report.hindsight(prepared)
        fixed, oracle = float(fixed_rows.mean()), float(oracle_rows.mean())
        n = len(prepared.replay.rows)
        bc_rewards = BestContextStepper(prepared).rewards()
        context = float(bc_rewards.mean())
        changes = [0, *(c - 1 for c in dataset.phase_changes(prepared.replay.rows))]
        entry: dict[str, Any] = {
            "set": name,
            "reward": setting,
            "rows": n,
            "best_fixed": fixed,
            "best_context": context,
            "oracle": oracle,
            "best_context_phases": phases(bc_rewards, changes),
            "policies": {},
        }
        print(
            f"{name} [{setting}] rows {n}: best-fixed {fixed:.4f}, "
            f"best-context {context:.4f} ({100 * (context / fixed - 1):+.2f}%), "
            f"oracle {oracle:.4f}",
            flush=True,
        )
        for spec in specs:
            start = time.monotonic()
            runs = replay.simulate([spec], prepared, range(seeds), in_order, settings)[spec]
            values = [float(r.reward.mean()) for r in runs]
            mean = float(np.mean(values))
            vs = [100 * (v / fixed - 1) for v in values]
            info: dict[str, Any] = {
                "mean": mean,
                "ci95": report.ci95(values),
                "per_seed": values,
                "vs_best_fixed_pct": 100 * (mean / fixed - 1),
                "per_seed_vs_best_fixed_pct": vs,
                "gap_closed_pct": (
                    100 * (mean - fixed) / (context - fixed) if context > fixed + 1e-9 else None
                ),
                "share": np.bincount(
                    np.concatenate([r.arm for r in runs]), minlength=len(prepared.replay.arms)
                ).tolist(),
            }
            if in_order:
                info["phases"] = np.mean([phases(r.reward, changes) for r in runs], 0).tolist()
            entry["policies"][spec] = info
            extra = ""
            if in_order:
                extra = " phases " + " ".join(f"{v:.3f}" for v in info["phases"])
            gap, vs_mean = info["gap_closed_pct"], info["vs_best_fixed_pct"]
            print(
                f"  {spec:48s} {mean:.4f} ± {info['ci95']:.4f} {vs_mean:+.2f}%"
                + (f" gap {gap:.0f}%" if gap is not None else "")
                + " seeds "
                + " ".join(f"{v:+.2f}" for v in vs)
                + extra
                + f" ({time.monotonic() - start:.0f}s)",
                flush=True,
            )
        results.append(entry)
    return results


def phases(reward: np.ndarray[Any, Any], changes: Sequence[int]) -> list[float]:
    """Per phase: the mean reward, then the mean over its first RECOVERY steps."""
    bounds = [*changes, len(reward)]
    whole = [float(reward[a:b].mean()) for a, b in itertools.pairwise(bounds)]
    first = [float(reward[a : min(b, a + RECOVERY)].mean()) for a, b in itertools.pairwise(bounds)]
    return whole + first


def reward_names(parser: argparse.ArgumentParser, value: str) -> list[str]:
    """The reward settings ``value`` names, comma-separated (of ``REWARDS`` or ``SHAPES``); an
    unknown one is a usage error that names the known ones."""
    names = value.split(",")
    unknown = set(names) - {*REWARDS, *SHAPES}
    if unknown:
        known = ", ".join([*REWARDS, *SHAPES])
        parser.error(f"unknown --rewards {sorted(unknown)}; known: {known}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--sets", default=",".join([*SETS, "drift"]))
    parser.add_argument("--rewards", default=",".join(REWARDS))
    parser.add_argument("--seeds", type=bounded_int(1, MAX_SEEDS), default=5)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rewards = reward_names(parser, args.rewards)
    results = evaluate(args.specs, args.sets.split(","), rewards, args.seeds, args.limit)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
