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


def _need(ok: bool, where: str, what: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{where} must be {what}, got {json.dumps(value)[:60]}")


def _number(value: Any) -> bool:
    return type(value) in (int, float) and np.isfinite(value)


def check(config: Any) -> None:
    """Raise ``ValueError`` naming the first key of ``config`` that ``rows`` could not use (a
    KeyError or a numpy error mid-file before), so nothing is written for a bad config."""
    _need(isinstance(config, dict), "the config", "an object", config)
    _need(isinstance(config.get("name"), str), "name", "a string", config.get("name"))
    _need(type(config.get("seed", 0)) is int, "seed", "an integer", config.get("seed"))
    rows_ = config.get("rows")
    _need(type(rows_) is int and 1 <= rows_ <= 10_000_000, "rows", "1..10000000", rows_)
    words = config.get("words")
    _need(
        isinstance(words, list) and len(words) >= 2 and all(isinstance(w, str) for w in words),
        "words",
        "an array of 2 or more strings",
        words,
    )
    _check_arms(config.get("arms"))
    _check_categories(config.get("categories"))
    _check_phases(config.get("phases"), {a["name"] for a in config["arms"]}, config["categories"])


def _check_arms(arms: Any) -> None:
    _need(isinstance(arms, list) and bool(arms), "arms", "a non-empty array", arms)
    for i, arm in enumerate(arms):
        ok = isinstance(arm, dict) and isinstance(arm.get("name"), str)
        _need(ok, f"arms[{i}]", "an object with a name", arm)
        for key in ("usd_per_mtok", "ttft_ms", "ms_per_token"):
            value = arm.get(key)
            _need(_number(value) and value >= 0, f"arms[{i}].{key}", "a number >= 0", value)


def _check_categories(categories: Any) -> None:
    ok = isinstance(categories, dict) and bool(categories)
    _need(ok, "categories", "a non-empty object", categories)
    for name, c in categories.items():
        where = f"categories.{name}"
        _need(isinstance(c, dict), where, "an object", c)
        for key in ("share", "tokens"):
            value = c.get(key)
            _need(_number(value) and value > 0, f"{where}.{key}", "a number > 0", value)
        templates = c.get("templates")
        ok = isinstance(templates, list) and all(isinstance(t, str) for t in templates)
        _need(ok and bool(templates), f"{where}.templates", "a non-empty array of texts", templates)
        for t in templates:
            try:
                t.format(a="a", b="b", n=2, m=3)
            except (KeyError, IndexError, ValueError):
                _need(False, f"{where}.templates", "texts with no field but {a} {b} {n} {m}", t)


def _check_phases(phases: Any, arms: set[str], categories: Config) -> None:
    _need(isinstance(phases, list) and bool(phases), "phases", "a non-empty array", phases)
    for i, phase in enumerate(phases):
        where = f"phases[{i}]"
        ok = isinstance(phase, dict) and isinstance(phase.get("name"), str)
        _need(ok, where, "an object with a name", phase)
        start = phase.get("start")
        _need(type(start) is int and start >= 0, f"{where}.start", "an integer >= 0", start)
        accuracy = phase.get("accuracy")
        ok = isinstance(accuracy, dict) and bool(accuracy)
        _need(ok, f"{where}.accuracy", "a non-empty object, arm -> task -> accuracy", accuracy)
        for arm, table in accuracy.items():
            at = f"{where}.accuracy.{arm}"
            _need(arm in arms, at, f"one of the arms {sorted(arms)}", arm)
            _need(isinstance(table, dict), at, "an object", table)
            for cat in categories:
                value = table.get(cat)
                _need(_number(value) and 0 <= value <= 1, f"{at}.{cat}", "in [0, 1]", value)


def arms_file(config: Config) -> dict[str, Any]:
    """The arms file of the scenario: name, size and price of every arm."""
    keys = ("name", "params_b", "usd_per_mtok")
    return {"arms": [{k: a[k] for k in keys if k in a} for a in config["arms"]]}


def write(config_path: Path, out: Path) -> tuple[Path, Path]:
    """Write ``out`` (the replay file) and its ``.arms.json`` beside it."""
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path}: not JSON ({e})") from None
    check(config)
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
    try:
        replay, arms = write(args.config, args.out)
    except (OSError, ValueError) as e:
        print(f"generate: {e}", file=sys.stderr)
        return 2
    print(f"wrote {replay} and {arms}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
