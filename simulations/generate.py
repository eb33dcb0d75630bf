"""Synthetic drift scenarios, written as replay files for ``bandit-router simulate``.

A scenario config (``simulations/scenarios/*.json``) names the arms (size, price, latency
model), query categories (share, answer length, text templates) and phases in time order, each
with every live arm's accuracy per category. An arm missing from a phase is absent from that
phase's rows (so a new arm can appear mid-stream); changing an arm's accuracies between phases
degrades or upgrades it. Rows carry their ``phase`` for the simulator's hindsight baselines.

    python -m simulations.generate simulations/scenarios/drift.json simulations/data/drift.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Config = Mapping[str, Any]


def _phase_at(phases: Sequence[Config], step: int) -> Config:
    current = phases[0]
    for phase in phases:
        if phase["start"] <= step:
            current = phase
    return current


def _query(rng: np.random.Generator, category: Config, words: Sequence[str]) -> str:
    template = str(rng.choice(category["templates"]))
    a, b = rng.choice(words, size=2, replace=False)
    return template.format(a=a, b=b, n=int(rng.integers(2, 99)), m=int(rng.integers(2, 99)))


def _outcome(rng: np.random.Generator, arm: Config, accuracy: float, tokens: int) -> dict[str, Any]:
    latency = (arm["ttft_ms"] + arm["ms_per_token"] * tokens) * rng.lognormal(0.0, 0.15)
    return {
        "accuracy": float(rng.random() < accuracy),
        "latency_ms": round(float(latency), 1),
        "cost_usd": float(f"{arm['usd_per_mtok'] * (tokens + 60) / 1e6:.4g}"),
        "output_tokens": tokens,
    }


def rows(config: Config) -> Iterator[dict[str, Any]]:
    """The scenario's rows in time order, reproducible from the config's ``seed``."""
    rng = np.random.default_rng(int(config.get("seed", 0)))
    names = list(config["categories"])
    shares = np.array([config["categories"][c]["share"] for c in names], dtype=float)
    arms = {a["name"]: a for a in config["arms"]}
    for step in range(int(config["rows"])):
        phase = _phase_at(config["phases"], step)
        name = names[int(rng.choice(len(names), p=shares / shares.sum()))]
        category = config["categories"][name]
        tokens = max(1, int(category["tokens"] * rng.lognormal(0.0, 0.3)))
        outcomes = {
            arm: _outcome(rng, arms[arm], table[name], tokens)
            for arm, table in phase["accuracy"].items()
        }
        yield {
            "id": f"{config['name']}-{step}",
            "query": _query(rng, category, config["words"]),
            "context": {"task": name},
            "phase": phase["name"],
            "outcomes": outcomes,
        }


def arms_file(config: Config) -> dict[str, Any]:
    """The arms file of the scenario: name, size and price of every arm."""
    keys = ("name", "params_b", "usd_per_mtok")
    return {"arms": [{k: a[k] for k in keys if k in a} for a in config["arms"]]}


def write(config_path: Path, out: Path) -> tuple[Path, Path]:
    """Write ``out`` (the replay file) and its ``.arms.json`` beside it."""
    config = json.loads(config_path.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in rows(config):
            f.write(json.dumps(row) + "\n")
    arms_path = out.with_suffix(".arms.json")
    arms_path.write_text(json.dumps(arms_file(config), indent=1) + "\n")
    return out, arms_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="scenario config (simulations/scenarios/*.json)")
    parser.add_argument("out", type=Path, help="replay file to write (.jsonl)")
    args = parser.parse_args(argv)
    replay, arms = write(args.config, args.out)
    print(f"wrote {replay} and {arms}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
