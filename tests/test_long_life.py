"""The long-life study: its recovery measure, and the study run end to end on a small scenario."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simulations import generate
from simulations.long_life import main, recovery


def test_recovery_is_the_first_event_the_arm_has_more_than_half_the_window() -> None:
    chosen = np.array([0] * 100 + [0, 1] * 20 + [1] * 100)
    # after the change at 100: 40 alternating choices, then only arm 1
    assert recovery(chosen, 1, 100, len(chosen), window=10) == 40 + 1
    assert recovery(chosen, 1, 100, len(chosen), window=1) == 2
    assert recovery(chosen, 2, 100, len(chosen), window=10) is None
    assert recovery(chosen, 1, 100, 120, window=10) is None  # not before the end


def test_the_study_runs_on_a_small_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = json.loads(Path("simulations/scenarios/long_drift.json").read_text())
    config["rows"] = 1500
    config["phases"][1]["start"] = 1000
    scenario = tmp_path / "small.json"
    scenario.write_text(json.dumps(config))
    replay, _ = generate.write(scenario, tmp_path / "small.jsonl")
    spec = "squarecb:horizon=500"
    assert main(["--replay", str(replay), "--seeds", "2", "--jobs", "1", "squarecb", spec]) == 0
    out = capsys.readouterr().out
    assert "changes at 1,000; each phase's best arm: large, medium" in out
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`squarecb`", f"`{spec}`"]
