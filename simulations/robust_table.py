"""Markdown tables from one or more ``robust_eval --json`` files (policies merged per set)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HINDSIGHT = ("best-fixed", "best-context", "oracle")


Merged = dict[tuple[str, str], dict[str, Any]]


def merge(paths: list[str]) -> Merged:
    """The files' entries by (set, reward setting), the policies of each merged."""
    merged: Merged = {}
    for path in paths:
        for entry in json.loads(Path(path).read_text()):
            key = (entry["set"], entry["reward"])
            merged.setdefault(key, {**entry, "policies": {}})["policies"].update(entry["policies"])
    return merged


def main(paths: list[str]) -> int:
    merged = merge(paths)
    _overview(merged)
    for (name, reward), entry in merged.items():
        drift = any("phases" in p for p in entry["policies"].values())
        print(f"\n### {name}, reward `{reward}` ({entry['rows']} rows)\n")
        head = "| policy | reward ± 95% CI | vs best-fixed | per seed vs best-fixed (%) |"
        if drift:
            head += " gap closed | per phase | first 300 of each phase |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for spec, p in entry["policies"].items():
            seeds = " ".join(f"{v:+.2f}" for v in p["per_seed_vs_best_fixed_pct"])
            ci = "" if spec in HINDSIGHT or spec == "static" else f" ± {p['ci95']:.4f}"
            row = f"| {spec} | {p['mean']:.4f}{ci} | {p['vs_best_fixed_pct']:+.2f}% |"
            row += f" {seeds if spec not in HINDSIGHT and spec != 'static' else ''} |"
            if drift:
                k = len(p["phases"]) // 2
                gap = p["gap_closed_pct"]
                row += f" {'' if gap is None else f'{gap:.0f}%'} |"
                row += " " + " / ".join(f"{v:.3f}" for v in p["phases"][:k]) + " |"
                row += " " + " / ".join(f"{v:.3f}" for v in p["phases"][k:]) + " |"
            print(row)
    return 0


def _overview(merged: Merged) -> None:
    """Per policy: vs best-fixed on each shuffled set and setting, their mean and worst."""
    keys = [k for k in merged if k[0] != "drift"]
    specs = list(dict.fromkeys(s for k in keys for s in merged[k]["policies"]))
    print("| policy | " + " | ".join(f"{n} {r}" for n, r in keys) + " | mean | worst |")
    print("|" + "---|" * (len(keys) + 3))
    for spec in specs:
        values = [merged[k]["policies"].get(spec, {}).get("vs_best_fixed_pct") for k in keys]
        cells = " | ".join("" if v is None else f"{v:+.2f}%" for v in values)
        known = [v for v in values if v is not None]
        print(f"| {spec} | {cells} | {sum(known) / len(known):+.2f}% | {min(known):+.2f}% |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
