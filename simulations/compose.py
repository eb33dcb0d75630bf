"""Replay sets the public ones lack: other arm counts, and no app facts (issue 14).

The three MMLU-Pro files hold the same 12,032 questions (same ids), answered by different models;
``qwen15-110b`` is in two of them with identical outcomes. Their arms can be regrouped into sets
the public files do not have: nine arms of three families, and two close small models. The
defaults are judged on such sets elsewhere (2 to 9 arms), so they are checked here on sets that
played no part in choosing them, and on the public sets without their app facts:

    python -m simulations.compose simulations/data

writes ``<name>.jsonl`` and ``<name>.arms.json`` for each of ``COMPOSED``, and
``<set>_bare.jsonl`` for each public set (its rows without ``context``: traffic from an app that
sends no features, such as a gateway client's; about 80 MB in all, ``simulations/data/`` is
ignored by git). ``robust_eval --sets mmlu_pro_nine,mmlu_pro_llama2_bare,...`` replays them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulations.robust_eval import DATA, SETS

SOURCES = ["mmlu_pro_llama2", "mmlu_pro_qwen15", "mmlu_pro_mixed6"]

# name -> its arms, in order; each is taken from whichever source file has it.
COMPOSED: dict[str, list[str]] = {
    "mmlu_pro_nine": [
        "llama2-7b",
        "llama2-13b",
        "llama2-70b",
        "gemma-7b",
        "mathstral-7b",
        "llama3-8b",
        "command-r-35b",
        "llama3-70b",
        "qwen15-110b",
    ],
    "mmlu_pro_two": ["gemma-7b", "llama3-8b"],
    "mmlu_pro_top2": ["llama3-70b", "qwen15-110b"],
}


def compose(data: Path, arms: Sequence[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of a set with ``arms``, in the sources' order, and its arms file's entries."""
    rows: dict[str, dict[str, Any]] = {}
    specs: dict[str, dict[str, Any]] = {}
    for source in SOURCES:
        for spec in json.loads((data / f"{source}.arms.json").read_text())["arms"]:
            specs.setdefault(spec["name"], spec)
        with open(data / f"{source}.jsonl") as f:
            for line in f:
                row = json.loads(line)
                kept = rows.setdefault(
                    row["id"],
                    {
                        "id": row["id"],
                        "query": row["query"],
                        "context": row.get("context", {}),
                        "outcomes": {},
                    },
                )
                for name, outcome in row["outcomes"].items():
                    if name in arms:
                        kept["outcomes"].setdefault(name, outcome)
    missing = [name for name in arms if name not in specs]
    if missing:
        raise ValueError(f"no source has arms {missing}; known: {sorted(specs)}")
    for row in rows.values():  # the outcomes in the order of ``arms``
        got = row["outcomes"]
        row["outcomes"] = {name: got[name] for name in arms if name in got}
    return list(rows.values()), [specs[name] for name in arms]


def bare(data: Path, name: str) -> list[dict[str, Any]]:
    """The rows of the public set ``name`` without their app facts (``context``)."""
    with open(data / f"{name}.jsonl") as f:
        rows = [json.loads(line) for line in f]
    for row in rows:
        row.pop("context", None)
    return rows


def _write(out: Path, name: str, rows: Sequence[dict[str, Any]], arms: str) -> None:
    with open(out / f"{name}.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    (out / f"{name}.arms.json").write_text(arms)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, arms in COMPOSED.items():
        rows, specs = compose(args.data, arms)
        _write(args.out, name, rows, json.dumps({"arms": specs}, indent=1))
        print(f"wrote {args.out / name}.jsonl: {len(rows)} rows, {len(arms)} arms")
    for source in SETS:
        rows = bare(args.data, source)
        _write(args.out, f"{source}_bare", rows, (args.data / f"{source}.arms.json").read_text())
        print(f"wrote {args.out / source}_bare.jsonl: {len(rows)} rows without app facts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
