"""Report: turns replay runs into the summary, the per-step rolling values and the table.

Pure functions over ``replay.Run`` records; writing files and printing are the CLI's job.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bandit_router.sim.dataset import Prepared, Run, order
from bandit_router.sim.hindsight import best_fixed_arm
from bandit_router.sim.peers import SKYLINE_FOLDS, skyline
from bandit_router.sim.replay import warm_rows

Floats = npt.NDArray[np.float64]
EARLY = 1000  # the steps a cold start pays for most: what a warm start is judged on

# Two-sided 95% Student t quantiles by degrees of freedom; a handful of seeds is the norm.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
_Z975 = 1.959963984540054


def t95(df: int) -> float:
    """The two-sided 95% Student t quantile with ``df`` degrees of freedom: the table up to 9,
    then the Cornish-Fisher expansion in ``1 / df`` (within 4e-6 of it from 10 on)."""
    if df in _T95:
        return _T95[df]
    z, v = _Z975, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean over seeds (0 for one seed):
    Student t with ``n - 1`` degrees of freedom."""
    k = len(values)
    if k < 2:
        return 0.0
    return t95(k - 1) * float(np.std(values, ddof=1)) / math.sqrt(k)


def seeds_ci95(values: Sequence[float]) -> float | None:
    """``ci95`` for a summary: None for one seed, which gives no interval (not one of 0)."""
    return ci95(values) if len(values) > 1 else None


def _pm(ci: float | None) -> str:
    """The table's ``± half-width``, or a dash for one seed."""
    return "± -" if ci is None else f"± {ci:.4f}"


def _nanmean(a: Floats) -> float | None:
    return None if np.isnan(a).all() else float(np.nanmean(a))


def hindsight(prepared: Prepared) -> tuple[Floats, Floats]:
    """Per row: the best fixed arm's reward (first eligible arm where it is absent) and the
    best arm's reward (the oracle)."""
    table = prepared.table
    j = prepared.arm_index[best_fixed_arm(prepared)]
    first = np.array(
        [table[i, prepared.arm_index[e[0].name]] for i, e in enumerate(prepared.eligible)]
    )
    fixed = np.where(np.isnan(table[:, j]), first, table[:, j])
    return fixed, np.nanmax(table, axis=1)


def _policy_summary(
    runs: Sequence[Run], arms: Sequence[str], refs: tuple[float, float]
) -> dict[str, Any]:
    rewards = [float(r.reward.mean()) for r in runs]
    half = [float(r.reward[len(r.reward) // 2 :].mean()) for r in runs]
    early = [float(r.reward[:EARLY].mean()) for r in runs]
    chosen = np.concatenate([r.arm for r in runs])
    mean = float(np.mean(rewards))
    auto = any(r.promotions is not None for r in runs)
    return {
        **({"promotions": [r.promotions or [] for r in runs]} if auto else {}),
        "mean_reward": mean,
        "ci95": seeds_ci95(rewards),
        "accuracy": _nanmean(np.concatenate([r.accuracy for r in runs])),
        "latency_ms": _nanmean(np.concatenate([r.latency_ms for r in runs])),
        "cost_usd": _nanmean(np.concatenate([r.cost_usd for r in runs])),
        "arm_share": {a: float(np.mean(chosen == j)) for j, a in enumerate(arms)},
        "regret_best_fixed": refs[0] - mean,
        "regret_oracle": refs[1] - mean,
        "second_half_reward": float(np.mean(half)),
        "first_1000_reward": float(np.mean(early)),
        "first_1000_ci95": seeds_ci95(early),
        "per_seed": {
            "seed": [r.seed for r in runs],
            "mean_reward": rewards,
            "second_half_reward": half,
            "first_1000_reward": early,
            "accuracy": [_nanmean(r.accuracy) for r in runs],
            "latency_ms": [_nanmean(r.latency_ms) for r in runs],
            "cost_usd": [_nanmean(r.cost_usd) for r in runs],
        },
    }


def skyline_summary(
    prepared: Prepared, seeds: Sequence[int], in_order: bool
) -> dict[str, Any] | None:
    """The full-information skyline per seed: trained on the first half of that seed's order;
    None for a file too short to train it (and cross-validate its penalty) on half."""
    values = []
    n = len(prepared.replay.rows)
    if n // 2 < SKYLINE_FOLDS:
        return None
    for seed in seeds:
        rows = [int(i) for i in order(n, seed, in_order)]
        earned = skyline(prepared.features, prepared.table, rows[: n // 2], rows[n // 2 :])
        values.append(float(earned.mean()))
    return {
        "second_half_reward": float(np.mean(values)),
        "ci95": seeds_ci95(values),
        "per_seed": values,
    }


def arrival(runs: Sequence[Run], j: int, step: int) -> dict[str, Any]:
    """How an arm added at ``step`` (index ``j``) fared in each run: the steps until it was
    first chosen, and its share of the traffic after it arrived."""
    waits: list[int | None] = []
    shares = []
    for r in runs:
        after = r.arm[step:] == j
        waits.append(int(np.argmax(after)) if after.any() else None)
        shares.append(float(after.mean()) if len(after) else 0.0)
    return {"step": step, "first_chosen_after": waits, "share_after": float(np.mean(shares))}


def references(
    runs: Mapping[str, Sequence[Run]], fixed: Floats, oracle: Floats
) -> tuple[float, float]:
    """The best fixed arm's and the oracle's mean reward over the rows the runs replayed (each
    seed's, averaged over the seeds as the policies' means are): every row without a warm
    start, the rows after the warm part with one."""
    first = next(iter(runs.values()), [])
    played = [r.rows for r in first if r.rows is not None]
    if not played:
        return float(fixed.mean()), float(oracle.mean())
    return (
        float(np.mean([fixed[rows].mean() for rows in played])),
        float(np.mean([oracle[rows].mean() for rows in played])),
    )


def summary(
    runs: Mapping[str, Sequence[Run]], prepared: Prepared, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """``summary.json``: ``{"policies": {NAME: {...}}}`` plus the references and the set-up."""
    arms = [a.name for a in prepared.replay.arms]
    fixed, oracle = hindsight(prepared)
    refs = references(runs, fixed, oracle)
    policies = {name: _policy_summary(rs, arms, refs) for name, rs in runs.items()}
    for name, rs in runs.items():
        added = meta.get("arrivals") or {}
        if added:
            policies[name]["arrivals"] = {
                arm: arrival(rs, prepared.arm_index[arm], step) for arm, step in added.items()
            }
    return {
        **meta,
        "rows": len(prepared.replay.rows),
        "skipped": prepared.replay.skipped,
        "arms": arms,
        "best_fixed_arm": best_fixed_arm(prepared),
        "best_fixed_reward": refs[0],
        "oracle_reward": refs[1],
        "policies": policies,
    }


def window(n: int) -> int:
    """The rolling window of steps.csv and the plots: about 1/20 of the run, 20..500 steps."""
    return max(20, min(500, n // 20))


def _rolling(a: Floats, w: int) -> Floats:
    c = np.concatenate([[0.0], np.cumsum(a)])
    t = np.arange(1, len(a) + 1)
    lo = np.maximum(t - w, 0)
    out: Floats = (c[t] - c[lo]) / (t - lo)
    return out


def steps(
    runs: Mapping[str, Sequence[Run]], arms: Sequence[str], stride: int = 1
) -> Iterator[dict[str, Any]]:
    """Per-step rolling values, averaged over seeds: running mean reward, windowed reward,
    and windowed share of each arm; one row per policy every ``stride`` steps (a stride past
    the run's steps: the last step's row)."""
    for name, rs in runs.items():
        n = len(rs[0].reward)
        stride = min(stride, n)
        w = window(n)
        t = np.arange(1, n + 1)
        running = np.mean([np.cumsum(r.reward) / t for r in rs], axis=0)
        windowed = np.mean([_rolling(r.reward, w) for r in rs], axis=0)
        shares = {
            a: np.mean([_rolling((r.arm == j).astype(float), w) for r in rs], axis=0)
            for j, a in enumerate(arms)
        }
        for k in range(stride - 1, n, stride):
            row = {"policy": name, "step": k + 1, "mean_reward": round(float(running[k]), 6)}
            row["window_reward"] = round(float(windowed[k]), 6)
            row |= {f"share:{a}": round(float(s[k]), 4) for a, s in shares.items()}
            yield row


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _versus(value: float, best: float) -> str:
    """``value``'s relative difference from the best fixed arm's; a dash when that earned
    nothing (every reward 0), where no ratio exists."""
    return f"{100 * (value / best - 1):+.2f}%" if best > 0 else "-"


def table(result: Mapping[str, Any]) -> str:
    """The terminal table: one line per policy, then the references."""
    arms = result["arms"]
    head = f"{'policy':<28} {'reward':>16} {'vs best-fixed':>13} {'accuracy':>8} {'latency':>8} "
    head += f"{'cost $':>9} {'regret bf':>9} {'regret or':>9} {'2nd half':>8}  share " + "/".join(
        arms
    )
    lines = [head]
    best = result["best_fixed_reward"]
    for name, p in result["policies"].items():
        share = "/".join(f"{p['arm_share'][a]:.2f}" for a in arms)
        lines.append(
            f"{name:<28} {p['mean_reward']:>8.4f} {_pm(p['ci95']):<8} "
            f"{_versus(p['mean_reward'], best):>13} {_fmt(p['accuracy'], '.3f'):>8} "
            f"{_fmt(p['latency_ms'], '.0f'):>8} {_fmt(p['cost_usd'], '.2e'):>9} "
            f"{p['regret_best_fixed']:>9.4f} {p['regret_oracle']:>9.4f} "
            f"{p['second_half_reward']:>8.4f}  {share}"
        )
        if "promotions" in p:
            for seed, promoted in zip(p["per_seed"]["seed"], p["promotions"], strict=True):
                steps = ", ".join(f"{old} -> {new} at step {at}" for at, old, new in promoted)
                lines.append(f"{'':<28} seed {seed}: {steps or 'no promotion'}")
    if len(result["seeds"]) < 2:
        lines.append("±: a 95% interval over seeds; one seed gives none (--seeds 2 or more)")
    lines.append(
        f"rows {result['rows']} (skipped {result['skipped']}), seeds {len(result['seeds'])}; "
        f"best fixed arm {result['best_fixed_arm']} {best:.4f}; "
        f"oracle {result['oracle_reward']:.4f}"
    )
    if result.get("warm_start"):
        # The rows the warm start left are replayed: a short file's are fewer than EARLY.
        first = min(EARLY, result["rows"] - warm_rows(result["rows"], result["warm_start"]))
        early = ", ".join(
            f"{name} {p['first_1000_reward']:.4f} {_pm(p['first_1000_ci95'])}"
            for name, p in result["policies"].items()
        )
        lines.append(
            f"warm start: the first {100 * result['warm_start']:g}% of each seed's rows trained "
            f"the learners (cold: ones did not); the rest replayed. First {first} steps: {early}"
        )
    for arm, step in (result.get("arrivals") or {}).items():
        joined = "; ".join(
            f"{name}: first chosen after {p['arrivals'][arm]['first_chosen_after']} steps, "
            f"share after {p['arrivals'][arm]['share_after']:.2f}"
            for name, p in result["policies"].items()
        )
        lines.append(f"{arm} added at step {step}: {joined}")
    if "skyline" in result:
        sky = result["skyline"]
        lines.append(
            f"skyline (full information, trained on the first half): second-half reward "
            f"{sky['second_half_reward']:.4f} {_pm(sky['ci95'])}"
        )
    return "\n".join(lines)
