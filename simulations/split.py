"""Split mmlu_pro_llama2.jsonl by subject: the 7 subjects tuning looked at, and 7 held out.

python -m simulations.split ../shared/data/mmlu_pro_llama2.jsonl simulations/data
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

# Every other subject in alphabetical order, so both halves mix STEM and humanities and each holds
# about half of the rows. (The defaults were first tuned on all subjects; this split re-runs the
# learning-rate choice on one half and checks it on the other: see simulations/README.md.)
TUNED = ("biology", "chemistry", "economics", "health", "law", "other", "physics")
HELD_OUT = (
    "business",
    "computer science",
    "engineering",
    "history",
    "math",
    "philosophy",
    "psychology",
)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    source, out = Path(args[0]), Path(args[1])
    out.mkdir(parents=True, exist_ok=True)
    with (
        source.open() as f,
        (out / "mmlu_tuned.jsonl").open("w") as tuned,
        (out / "mmlu_heldout.jsonl").open("w") as held,
    ):
        for line in f:
            category = json.loads(line).get("context", {}).get("category")
            (tuned if category in TUNED else held).write(line)
    print(f"wrote {out}/mmlu_tuned.jsonl and {out}/mmlu_heldout.jsonl", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
