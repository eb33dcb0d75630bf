"""The drift scenario generator: phases in time order, arms that change or appear, replayable."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bandit_router.cli.main import main
from bandit_router.service.router import reward_config
from bandit_router.settings import Settings
from bandit_router.sim import dataset, replay
from simulations import generate

DRIFT = Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "drift.json"


def _config(rows: int = 400) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(DRIFT.read_text())
    config["rows"] = rows
    scale = rows / 12000
    for phase in config["phases"]:
        phase["start"] = int(phase["start"] * scale)
    return config


def test_rows_follow_the_phases_and_a_new_arm_appears() -> None:
    rows = list(generate.rows(_config()))
    assert len(rows) == 400
    phases = [r["phase"] for r in rows]
    assert phases == sorted(
        phases, key=["baseline", "small degrades", "medium upgraded", "xl appears"].index
    )
    assert all("xl" not in r["outcomes"] for r in rows[:300])
    assert all("xl" in r["outcomes"] for r in rows[300:])
    assert {r["context"]["task"] for r in rows} == {"chat", "lookup", "code", "math"}


def test_the_same_seed_gives_the_same_file() -> None:
    assert list(generate.rows(_config())) == list(generate.rows(_config()))


def test_the_small_arm_degrades(tmp_path: Path) -> None:
    config = _config(4000)
    rows = list(generate.rows(config))
    acc = [
        np.mean([r["outcomes"]["small"]["accuracy"] for r in rows if r["phase"] == p])
        for p in ("baseline", "small degrades")
    ]
    assert acc[0] > acc[1] + 0.2


def test_written_files_replay(tmp_path: Path) -> None:
    config_path = tmp_path / "s.json"
    config_path.write_text(json.dumps(_config()))
    out, arms_path = generate.write(config_path, tmp_path / "s.jsonl")
    data = dataset.load(out, arms_path)
    assert [a.name for a in data.arms] == ["small", "medium", "large", "xl"]
    prepared = dataset.prepare(data, reward_config(Settings()))
    runs = replay.simulate(["best-fixed", "best-context"], prepared, [0], in_order=True)
    assert runs["best-context"][0].reward.mean() > runs["best-fixed"][0].reward.mean()


def test_phase_changes_are_found_in_time_order(tmp_path: Path) -> None:
    config_path = tmp_path / "s.json"
    config_path.write_text(json.dumps(_config()))
    out, arms_path = generate.write(config_path, tmp_path / "s.jsonl")
    assert dataset.phase_changes(dataset.load(out, arms_path).rows) == [101, 201, 301]
    # simulate --in-order writes them into its summary (and marks them on its reward plot)
    args = ["--arms", str(arms_path), "--policies", "random", "--no-skyline", "--no-plots"]
    assert main(["simulate", str(out), *args, "--in-order", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["phase_changes"] == [101, 201, 301]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("phases"), "phases must be a non-empty array, got null"),
        (lambda c: c.update(rows=-5), "rows must be 1..10000000, got -5"),
        (
            lambda c: c["phases"][0]["accuracy"].update(nosuch={"chat": 0.5}),
            "phases[0].accuracy.nosuch must be one of the arms",
        ),
        (
            lambda c: c["phases"][0]["accuracy"]["small"].pop("chat"),
            "phases[0].accuracy.small.chat must be in [0, 1], got null",
        ),
        (
            lambda c: c["categories"]["chat"].update(templates=["about {x}"]),
            "categories.chat.templates must be texts with no field but {a} {b} {n} {m}",
        ),
        (lambda c: c["categories"]["chat"].update(share=-1), "categories.chat.share must be"),
    ],
)
def test_a_bad_config_is_refused_in_a_line_and_nothing_written(
    change: Callable[[dict[str, Any]], object],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each was a traceback (KeyError, numpy's ValueError), some after the file was begun."""
    config = _config()
    change(config)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "out.jsonl"
    assert generate.main([str(path), str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert generate.main([str(tmp_path / "missing.json"), str(out)]) == 2
    assert "No such file or directory" in capsys.readouterr().err


def test_a_set_whose_file_is_missing_is_named_with_how_to_make_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The simulations' scripts (change_points, tabular, ...) ended in a FileNotFoundError
    traceback for drift before `generate` was run, or for a misspelt set."""
    from simulations import robust_eval

    monkeypatch.setattr(robust_eval, "DRIFT", tmp_path / "drift.jsonl")
    with pytest.raises(SystemExit, match=r"set 'drift': no .*simulations\.generate"):
        next(robust_eval.replays(["drift"], ["default"]))
    with pytest.raises(SystemExit, match=r"set 'nosuch': no .*the public sets are mmlu_pro_"):
        next(robust_eval.replays(["nosuch"], ["default"]))  # before any public set is read
