"""The frontier of simulations/frontier.py: its figures on files where the answer is known, and on
a real ``robust_eval --json`` run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bandit_router.sim import plots, report
from simulations import frontier, robust_eval
from simulations.robust_table import merge
from tests.conftest import needs_shared_data


def _entry(name: str, reward: str, policies: dict[str, list[float]]) -> dict[str, object]:
    runs: dict[str, object] = {}
    for spec, seeds in policies.items():
        run: dict[str, object] = {
            "vs_best_fixed_pct": sum(seeds) / len(seeds),
            "per_seed_vs_best_fixed_pct": seeds,
        }
        if name == "drift":
            run["gap_closed_pct"] = 80.0 + seeds[0]
        runs[spec] = run
    return {"set": name, "reward": reward, "rows": 10, "policies": runs}


def _write(path: Path, entries: list[dict[str, object]]) -> str:
    path.write_text(json.dumps(entries))
    return str(path)


def test_each_spec_is_its_mean_over_the_pairs_its_worst_and_its_drift(tmp_path: Path) -> None:
    first = _write(
        tmp_path / "a.json",
        [
            _entry("one", "default", {"a": [1.0, 3.0], "b": [0.0, 0.0]}),
            _entry("two", "default", {"a": [-2.0, -1.0], "b": [-0.5, -0.5]}),
            _entry("drift", "default", {"a": [1.0, 2.0]}),
        ],
    )
    # a second file adds a spec to the same pairs, and one that misses a pair is left out
    second = _write(
        tmp_path / "b.json",
        [
            _entry("one", "default", {"c": [0.0, 0.0], "d": [5.0, 5.0]}),
            _entry("two", "default", {"c": [1.0, 1.0]}),
        ],
    )
    rows = frontier.points(merge([first, second]))
    assert [p.spec for p in rows] == ["c", "a", "b"]  # highest mean first; d ran on one pair
    a = rows[1]
    assert a.mean == pytest.approx((2.0 - 1.5) / 2)
    assert a.worst == -1.5 and a.within == 1 and a.pairs == 2 and a.lowest == -2.0
    assert a.ci == pytest.approx(report.ci95([(1.0 - 2.0) / 2, (3.0 - 1.0) / 2]))
    assert a.drift == (81.0,)
    assert all(math.isnan(p.passing) for p in rows)  # 2 seeds: no draw of 5
    assert rows[2].within == 2 and rows[2].drift == ()
    text = frontier.table(rows)
    assert text.splitlines()[2].startswith("| 1 | `c` |")
    assert "| 2 | `a` | +0.25% ± " in text and "| -1.50% | 1 of 2 | -2.00% | 81% | - |" in text


def test_passing_counts_the_seed_draws_that_meet_both_targets() -> None:
    import numpy as np

    # two pairs, three seeds, draws of two: {0, 1} has means +2 and 0 (passes); {0, 2} and
    # {1, 2} have -0.5 and 0 (a mean below +0.5)
    seeds = np.array([[2.0, 2.0, -3.0], [0.0, 0.0, 0.0]])
    assert frontier.passing(seeds, 2) == pytest.approx(1 / 3)
    # a pair below -1% fails a draw whatever the mean: only {0, 1} again
    seeds = np.array([[9.0, 9.0, -3.0], [0.0, 0.0, -4.0]])
    assert frontier.passing(seeds, 2) == pytest.approx(1 / 3)
    assert frontier.passing(seeds, 3) == 0.0
    assert np.isnan(frontier.passing(seeds, 4))  # fewer seeds than a draw


def test_passing_samples_the_draws_where_there_are_too_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numpy as np

    # one pair whose seeds 0-9 are +2% and 10-19 -2%: a draw passes when at most one of its
    # five seeds is from the second half; exactly (C(10,5) + 10 C(10,4)) / C(20,5)
    seeds = np.array([[2.0] * 10 + [-2.0] * 10])
    exact = frontier.passing(seeds)
    assert exact == pytest.approx((252 + 10 * 210) / 15504)
    monkeypatch.setattr(frontier, "MAX_DRAWS", 5000)
    assert frontier.passing(seeds) == pytest.approx(exact, abs=0.03)


@needs_shared_data
def test_a_real_run_reads_and_draws(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    args = ["--sets", "alpaca_tulu2", "--seeds", "2", "--limit", "150", "--json"]
    robust_eval.main([*args, str(out), "ts", "static"])
    rows = frontier.points(merge([str(out)]))
    assert {p.spec for p in rows} == {"ts", "static"}
    assert all(p.pairs == len(robust_eval.REWARDS) for p in rows)
    if plots.available():
        png = tmp_path / "f.png"
        frontier.draw(rows, png)
        assert png.read_bytes()[:4] == b"\x89PNG"
