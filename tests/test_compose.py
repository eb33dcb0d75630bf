"""Composed replay sets: arms regrouped from the MMLU-Pro files, each outcome taken once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bandit_router.sim import dataset
from simulations.compose import SOURCES, bare, compose, main
from simulations.robust_eval import SETS


def _write(folder: Path, source: str, arms: list[str], rows: int = 4) -> None:
    specs = [{"name": a, "params_b": 7.0, "usd_per_mtok": 0.2} for a in arms]
    (folder / f"{source}.arms.json").write_text(json.dumps({"arms": specs}))
    with open(folder / f"{source}.jsonl", "w") as f:
        for i in range(rows):
            outcomes = {
                a: {"accuracy": float((i + j) % 2), "latency_ms": 100.0 * (j + 1)}
                for j, a in enumerate(arms)
            }
            f.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "query": f"question {i}",
                        "context": {"category": "math"},
                        "outcomes": outcomes,
                    }
                )
                + "\n"
            )


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    _write(tmp_path, SOURCES[0], ["a7", "a13"])
    _write(tmp_path, SOURCES[1], ["b7", "shared"])
    _write(tmp_path, SOURCES[2], ["c8", "shared"])
    for other in set(SETS) - set(SOURCES):
        _write(tmp_path, other, ["d7", "d70"])
    return tmp_path


def test_arms_from_several_files_meet_on_the_same_questions(sources: Path) -> None:
    rows, specs = compose(sources, ["a13", "shared", "c8"])
    assert [s["name"] for s in specs] == ["a13", "shared", "c8"]
    assert len(rows) == 4 and [r["id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    for row in rows:
        assert list(row["outcomes"]) == ["a13", "shared", "c8"]
        assert row["context"] == {"category": "math"}
    # "shared" is in two files: the first one's outcome is kept
    assert rows[0]["outcomes"]["shared"]["latency_ms"] == 200.0


def test_an_arm_no_file_has_is_named(sources: Path) -> None:
    with pytest.raises(ValueError, match="no source has arms \\['nope'\\]"):
        compose(sources, ["a7", "nope"])


def test_the_written_sets_load_as_replay_files(
    sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("simulations.compose.COMPOSED", {"mix": ["a7", "b7", "c8"]})
    out = tmp_path / "out"
    assert main([str(out), "--data", str(sources)]) == 0
    replay = dataset.load(out / "mix.jsonl", out / "mix.arms.json")
    assert [a.name for a in replay.arms] == ["a7", "b7", "c8"]
    assert len(replay.rows) == 4 and set(replay.rows[0].outcomes) == {"a7", "b7", "c8"}


def test_the_bare_sets_are_the_public_ones_without_app_facts(
    sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = bare(sources, SOURCES[0])
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    assert all("context" not in r for r in rows)
    monkeypatch.setattr("simulations.compose.COMPOSED", {})
    out = tmp_path / "out"
    assert main([str(out), "--data", str(sources)]) == 0
    for name in SETS:
        with_facts = dataset.load(sources / f"{name}.jsonl", sources / f"{name}.arms.json")
        without = dataset.load(out / f"{name}_bare.jsonl", out / f"{name}_bare.arms.json")
        assert [a.name for a in without.arms] == [a.name for a in with_facts.arms]
        assert [r.outcomes for r in without.rows] == [r.outcomes for r in with_facts.rows]
        assert {"math"} == {r.context.get("category") for r in with_facts.rows}
        assert all(not r.context for r in without.rows)
