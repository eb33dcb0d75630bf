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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_policy(rows: Rows) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(str(row["policy"]), []).append(row)
    return out


def reward_over_time(rows: Rows, path: Path, title: str = "") -> Path:
    """Two panels: running mean reward, and the reward over a rolling window (shows drift)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=80, sharey=False)
    for name, series in _by_policy(rows).items():
        step = [r["step"] for r in series]
        style = "--" if name in ("oracle", "best-fixed", "best-context") else "-"
        left.plot(step, [r["mean_reward"] for r in series], style, label=name, linewidth=1.2)
        right.plot(step, [r["window_reward"] for r in series], style, label=name, linewidth=1.0)
    left.set_title("cumulative mean reward")
    right.set_title("reward over a rolling window")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    left.set_ylabel("reward")
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def arm_share_over_time(rows: Rows, arms: Sequence[str], path: Path, title: str = "") -> Path:
    """One small panel per policy: the share of each arm over a rolling window, stacked."""
    plt = _pyplot()
    policies = _by_policy(rows)
    cols = min(4, len(policies))
    nrows = math.ceil(len(policies) / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), dpi=80, squeeze=False, sharey=True
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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
