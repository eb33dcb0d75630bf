"""Plots of a replay: reward over time per policy, and each policy's arm share over time.

matplotlib is the optional ``sim`` extra: it is imported inside the functions, only when a plot
is drawn, and always with the file-only Agg backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Rows = Sequence[Mapping[str, Any]]


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def available() -> bool:
    """Whether matplotlib (the ``sim`` extra) can be imported, so the plots can be drawn."""
    try:
        pyplot()
    except ImportError:
        return False
    return True


def _by_policy(rows: Rows) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(str(row["policy"]), []).append(row)
    return out


def _save(plt: Any, fig: Any, path: Path, title: str) -> Path:
    """Title, lay out, write and close a figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


REFERENCE = "best-fixed"
CEILING = "oracle"  # far above every policy: in the table, left out of the plots' scale


def reward_over_time(rows: Rows, path: Path, title: str = "", marks: Sequence[int] = ()) -> Path:
    """Two panels: cumulative reward gained over the best fixed arm (cumulative reward when it
    was not run), and the reward over a rolling window (shows drift and recovery); ``marks``
    are steps drawn as dotted lines (a scenario's phase changes)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=72)
    policies = {k: v for k, v in _by_policy(rows).items() if k != CEILING}
    base = {r["step"]: r["mean_reward"] * r["step"] for r in policies.get(REFERENCE, [])}
    for name, series in policies.items():
        step = [r["step"] for r in series]
        gain = [r["mean_reward"] * r["step"] - base.get(r["step"], 0.0) for r in series]
        style = "--" if name in (REFERENCE, "best-context") else "-"
        left.plot(step, gain, style, label=name, linewidth=1.2)
        right.plot(step, [r["window_reward"] for r in series], style, label=name, linewidth=1.0)
    left.set_title(f"cumulative reward minus {REFERENCE}'s" if base else "cumulative reward")
    right.set_title("reward over a rolling window")
    for ax in (left, right):
        for mark in marks:
            ax.axvline(mark, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(plt, fig, path, title)


def arm_share_over_time(rows: Rows, arms: Sequence[str], path: Path, title: str = "") -> Path:
    """One small panel per policy: the share of each arm over a rolling window, stacked."""
    plt = pyplot()
    policies = _by_policy(rows)
    cols = min(4, len(policies))
    nrows = math.ceil(len(policies) / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), dpi=72, squeeze=False, sharey=True
    )
    for ax, (name, series) in zip(axes.flat, policies.items(), strict=False):
        step = [r["step"] for r in series]
        ax.stackplot(step, [[r[f"share:{a}"] for r in series] for a in arms], labels=arms)
        ax.set_title(name, fontsize=8)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(policies) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="lower left")
    return _save(plt, fig, path, title)


def redraw(out: Path) -> None:
    """Draw the plots again from ``out``'s summary.json and steps.csv."""
    import csv
    import json

    result = json.loads((out / "summary.json").read_text())
    with (out / "steps.csv").open() as f:
        rows = [
            {k: v if k == "policy" else float(v) for k, v in r.items()} for r in csv.DictReader(f)
        ]
    title = Path(result["replay"]).name + (" (time order)" if result["in_order"] else " (shuffled)")
    reward_over_time(rows, out / "reward.png", title, result.get("phase_changes", []))
    arm_share_over_time(rows, result["arms"], out / "arm_share.png", title)


if __name__ == "__main__":
    import sys

    redraw(Path(sys.argv[1]))
