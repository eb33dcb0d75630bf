"""simulations/trace.py on a real set: one row per window, shares that add up, and the routed
plain means of a policy whose choices are known."""

from __future__ import annotations

import pytest

from bandit_router.settings import Settings
from bandit_router.sim.dataset import Prepared
from simulations import trace
from simulations.robust_eval import replays
from tests.conftest import needs_shared_data

pytestmark = needs_shared_data


def _prepared(limit: int, name: str = "alpaca_tulu2") -> tuple[Settings, Prepared]:
    ((_, _, _, settings, prepared),) = replays([name], ["default"], limit)
    return settings, prepared


def _rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_one_row_per_window_and_the_last_one_short() -> None:
    settings, prepared = _prepared(150)
    rows = _rows(trace.trace("squarecb", settings, prepared, 1, 40))
    assert [int(r[0]) for r in rows] == [40, 80, 120, 150]
    for r in rows:
        for column in (2, 3):  # chosen and greedy shares add up to 1
            assert sum(float(v) for v in r[column].split(" / ")) == pytest.approx(1, abs=0.02)
        assert 0 <= float(r[5]) <= 1  # the fast regressor's share
    counts = [int(v.split("(")[1].rstrip(")")) for v in rows[-1][4].split(", ")]
    assert sum(counts) == 150  # every event counted once in the routed means


def test_a_policy_that_always_chooses_one_arm() -> None:
    settings, prepared = _prepared(100)
    arm = prepared.arm_index["tulu2-13b"]
    rows = _rows(trace.trace("fixed:arm=tulu2-13b", settings, prepared, 0, 50))
    assert len(rows) == 2 and len(rows[0]) == 5  # no fast regressor column
    assert all(r[2].split(" / ")[arm] == "1.00" == r[3].split(" / ")[arm] for r in rows)
    # its routed plain mean is its mean over the rows it was shown, here all of them
    column = prepared.table[:, arm]
    assert rows[-1][4].split(", ")[arm] == f"{column.mean():.3f} (100)"
    assert rows[-1][4].split(", ")[(arm + 1) % 3] == "- (0)"  # never chosen
    assert float(rows[0][1]) + float(rows[1][1]) == pytest.approx(2 * column.mean(), abs=2e-3)


def test_a_time_ordered_or_missing_set_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):  # before its file is read: a fresh clone has none
        trace.main(["drift", "default", "0", "static"])
    assert "time order" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        trace.main(["no_such_set", "default", "0", "static"])
    assert "no replay file" in capsys.readouterr().err


def test_the_command_prints_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    trace.main(["alpaca_tulu2", "budget5000", "3", "ts", "--limit", "60", "--window", "30"])
    out = capsys.readouterr().out
    assert out.startswith("alpaca_tulu2 `budget5000`, seed 3, `ts`.")
    assert len(_rows(out)) == 2


def test_routed_means_by_a_fact() -> None:
    settings, prepared = _prepared(300, "mmlu_pro_llama2")
    arm = prepared.arm_index["llama2-13b"]
    # an arm chosen on every event: re-weighted to the subjects' shares, its mean is its plain one
    rows = _rows(trace.trace("fixed:arm=llama2-13b", settings, prepared, 0, 100, "category"))
    for r in rows:
        plain, by = r[4].split(", ")[arm], r[5].split(", ")[arm]
        assert plain.split(" ")[0] == by
        assert r[5].split(", ")[(arm + 1) % 3] == "-"
    # under a learner every arm has a mean by subject between 0 and 1
    rows = _rows(trace.trace("squarecb", settings, prepared, 0, 150, "category"))
    assert len(rows[-1]) == 7  # and the fast regressor's column after it
    assert all(0 <= float(v) <= 1 for v in rows[-1][5].split(", "))
