"""Files no reader expects: `train`, `simulate`, `evaluate` and the deployments file refuse each
with a message naming the file, the line and the field, before any training, instead of a
traceback, an endless read, a poisoned model or a snapshot `restore` refuses."""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from bandit_router import inputs
from bandit_router.cli.main import main
from bandit_router.service.backup import write_file
from bandit_router.settings import Settings
from bandit_router.sim import dataset
from tests.conftest import DATA, read_only

GOOD_ROW: dict[str, Any] = {
    "query": "What is 2+2?",
    "context": {"tier": "pro", "n": 3},
    "outcomes": {"a": {"accuracy": 1, "latency_ms": 300}, "b": {"accuracy": 0.0}},
}
GOOD_EVENT: dict[str, Any] = {
    "_label_cost": -0.5,
    "_label_probability": 0.5,
    "_label_Action": 1,
    "_labelIndex": 0,
    "a": [1, 2],
    "p": [0.5, 0.5],
    "c": {
        "Q": {"chars": 0.1},
        "N": {"x": 1.0},
        "C": {"tier": "pro"},
        "_multi": [
            {"A": {"id": "4b"}, "_arm": {"name": "4b", "params_b": 4}},
            {"A": {"id": "7b"}, "_arm": {"name": "7b", "params_b": 7}},
        ],
    },
    "EventId": "e1",
    "Timestamp": "2026-01-01T00:00:00.000000Z",
}
DEEP = "[" * 100_000 + "]" * 100_000


def _changed(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the dotted ``path`` set to ``value``."""
    out = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = value
    return out


def _lines(path: Path, *lines: Any) -> Path:
    """Write each line: bytes or a str as is, anything else as JSON (Python's, which writes NaN
    and Infinity and integers of any size)."""
    path.write_bytes(
        b"".join(
            (x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode())
            + b"\n"
            for x in lines
        )
    )
    return path


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BANDIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BANDIT_REWARD_WEIGHTS", "accuracy=1")
    monkeypatch.delenv("BANDIT_DEPLOYMENTS_FILE", raising=False)
    monkeypatch.delenv("BANDIT_MAX_FEATURES", raising=False)


# -- replay files --------------------------------------------------------------------------------

MANY_KEYS = {f"k{i}": i for i in range(Settings().max_features + 1)}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({**GOOD_ROW, "outcomes": {f"m{i}": {"accuracy": 1} for i in range(65)}}, "limit is 64"),
        (_changed(GOOD_ROW, "context.x", 10**400), r"context\.x must be a finite number"),
        (_changed(GOOD_ROW, "context.x", 1e308), r"context\.x must be a finite number"),
        (_changed(GOOD_ROW, "context.x", float("inf")), r"context\.x must be a finite number"),
        (_changed(GOOD_ROW, "outcomes.a.latency_ms", 10**400), r"latency_ms must be 0\.\."),
        (_changed(GOOD_ROW, "outcomes.a.accuracy", "1"), r"accuracy must be a number, got a str"),
        (_changed(GOOD_ROW, "outcomes.a.accuracy", True), r"accuracy must be a number, got a bool"),
        ({**GOOD_ROW, "outcomes": {"": {"accuracy": 1}}}, "outcomes arm name"),
        ({**GOOD_ROW, "outcomes": {"a b": {"accuracy": 1}}}, "outcomes arm name"),
        (_changed(GOOD_ROW, "query", "caf\ud800"), "query holds a lone surrogate"),
        ({**GOOD_ROW, "context": MANY_KEYS}, r"context has 65 features.*BANDIT_MAX_FEATURES"),
        (DEEP, "nested too deeply"),
        ("[1, 2]", "a row must be a JSON object"),
        (_changed(GOOD_ROW, "outcomes.a", 1), r"outcomes\.a must be an object"),
        # json.loads keeps the last: replayed with a's second outcome, silently
        (
            '{"query": "q", "outcomes": {"a": {"accuracy": 1}, "a": {"accuracy": 0}}}',
            "the key 'a' twice in one object",
        ),
    ],
)
def test_a_hostile_replay_row_is_refused_by_its_line(
    tmp_path: Path, bad: Any, message: str
) -> None:
    path = _lines(tmp_path / "r.jsonl", GOOD_ROW, bad, GOOD_ROW)
    with pytest.raises(dataset.ReplayError, match=rf"r\.jsonl:2: .*{message}"):
        dataset.read_rows(path, max_features=Settings().max_features)


def test_invalid_utf8_names_its_line_and_can_be_skipped(tmp_path: Path) -> None:
    path = _lines(tmp_path / "r.jsonl", GOOD_ROW, " ", b'{"query": "\xff"}')  # a blank line
    with pytest.raises(dataset.ReplayError, match=r"r\.jsonl:3: not UTF-8"):
        dataset.read_rows(path)
    assert dataset.read_rows(path, skip_bad=True)[1] == 1
    only = _lines(tmp_path / "bad.jsonl", b'{"query": "\xff"}', "")
    with pytest.raises(dataset.ReplayError, match=r"^.*bad\.jsonl: no usable rows$"):
        dataset.read_rows(only, skip_bad=True)


def test_a_gzip_file_is_named_as_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It was "line 1: not UTF-8 (invalid start byte at byte 1)", and with --skip-bad every
    line of compressed bytes skipped, one by one."""
    rows = tmp_path / "r.jsonl.gz"
    rows.write_bytes(gzip.compress(json.dumps(GOOD_ROW).encode() + b"\n"))
    with pytest.raises(dataset.ReplayError, match=r"r\.jsonl\.gz:1: gzip-compressed; decompress"):
        dataset.read_rows(rows, skip_bad=True)
    log = tmp_path / "log.json.gz"
    log.write_bytes(gzip.compress(json.dumps(GOOD_EVENT).encode() + b"\n"))
    assert main(["evaluate", str(log)]) == 2
    assert "line 1: gzip-compressed; decompress it first" in capsys.readouterr().err


def test_a_line_over_the_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with path.open("wb") as f:
        f.write(json.dumps(GOOD_ROW).encode() + b"\n")
        f.write(b" " * (inputs.MAX_LINE_BYTES + 10))  # no newline, as /dev/zero
    with pytest.raises(dataset.ReplayError, match=r"r\.jsonl:2: longer than 4194304 bytes"):
        dataset.read_rows(path, skip_bad=True)  # not skippable: the rest is never read


def test_a_line_of_the_limit_is_read_and_one_byte_more_is_refused() -> None:
    limit = inputs.MAX_LINE_BYTES
    at = b"1" * (limit - 1) + b"\n"  # the newline counts
    assert [n for n, _ in inputs.numbered_lines(io.BytesIO(at + b"2\n"))] == [1, 2]
    with pytest.raises(inputs.LineError, match="line 1: longer than 4194304 bytes"):
        list(inputs.numbered_lines(io.BytesIO(b"1" + at)))


def test_a_whole_file_of_the_limit_is_read_and_one_byte_more_is_refused() -> None:
    limit = inputs.MAX_LINE_BYTES
    assert len(inputs.read_bounded(io.BytesIO(b"1" * limit), "the file")) == limit
    with pytest.raises(ValueError, match="the file is longer than 4194304 bytes"):
        inputs.read_bounded(io.BytesIO(b"1" * (limit + 1)), "the file")
    with pytest.raises(
        ValueError, match=r"^the file is not UTF-8 \(invalid start byte at byte 1\)$"
    ):
        inputs.read_bounded(io.BytesIO(b"1\xff"), "the file")


KINDS = [(None, "null"), (1.5, "a number"), (3, "a number"), ("1", "a string"), (True, "a boolean")]


@pytest.mark.parametrize(("value", "name"), [*KINDS, ([1], "an array"), ({}, "an object")])
def test_a_message_names_the_json_type_found(value: Any, name: str) -> None:
    assert inputs.kind(value) == name


def test_a_message_shows_a_number_as_a_float_and_its_bounds_as_written() -> None:
    with pytest.raises(ValueError, match=r"^x params_b must be 0\.\.1e\+15, got -1\.0$"):
        inputs.arm("x", "a", -1)
    with pytest.raises(ValueError, match=r"^x name must be a string, got a number$"):
        inputs.arm("x", 5)
    with pytest.raises(ValueError, match=r"^x must be 0\.5\.\.2, got 3\.0$"):
        inputs.number("x", 3, 0.5, 2.0)
    with pytest.raises(ValueError, match=r"^latency_ms must be 0\.\.86400000, got -1\.0$"):
        inputs.number("latency_ms", -1, 0.0, 86_400_000.0)
    with pytest.raises(ValueError, match=r"^n must be 0\.\.10, got 11\.0$"):  # int bounds too
        inputs.number("n", 11, 0, 10)


def test_a_message_cuts_a_value_past_40_characters() -> None:
    for length, shown in [(38, "'" + "k" * 38 + "'"), (39, "'" + "k" * 36 + "...")]:
        with pytest.raises(
            ValueError, match=rf"^not JSON this reader accepts \(the key {shown} tw"
        ):
            inputs.parse_json(f'{{"{"k" * length}": 1, "{"k" * length}": 2}}')


def test_app_facts_at_their_bounds_are_taken_and_one_past_them_refused() -> None:
    inputs.app_features("context", {"k" * 64: "v" * 256, "n": 1.0}, 2)
    refused: list[tuple[dict[str, Any], str]] = [
        ({"a": 1, "b": 2, "c": 3}, r"context has 3 features; the limit is 2"),
        ({"": 1}, r"context keys are 1-64 characters"),
        ({"k" * 65: 1}, r"context keys are 1-64 characters"),
        ({"k": "v" * 257}, r"context\.k is 257 characters; the limit is 256"),
        ({"caf\ud800": 1}, r"a context key holds a lone surrogate"),
        ({"k": "caf\ud800"}, r"context\.k holds a lone surrogate"),
    ]
    for values, message in refused:
        with pytest.raises(ValueError, match=rf"^{message}"):
            inputs.app_features("context", values, 2)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_train_refuses_dev_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "/dev/zero", "--out", str(tmp_path / "x.json")]) == 2
    assert "/dev/zero:1: longer than" in capsys.readouterr().err


def test_a_replay_arm_file_entry_is_checked(tmp_path: Path) -> None:
    rows = _lines(tmp_path / "r.jsonl", GOOD_ROW)
    arms = tmp_path / "r.arms.json"
    arms.write_text(json.dumps({"arms": [{"name": "a", "params_b": "huge"}]}))
    with pytest.raises(dataset.ReplayError, match=r"arms\[0\] params_b must be a number"):
        dataset.load(rows, arms)
    # Loaded, an arm listed twice had two columns: simulate's shares "1.00/1.00/0.00".
    arms.write_text(json.dumps({"arms": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}))
    with pytest.raises(dataset.ReplayError, match=r"\(arms\[2\] name 'a' is listed twice\)"):
        dataset.load(rows, arms)


def test_train_names_a_replay_row_and_says_how_the_file_was_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _lines(tmp_path / "r.jsonl", {"_label_probability": 0.5, "c": {}})
    assert main(["train", str(path), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "r.jsonl:1: query must be a non-empty string" in err
    assert "read as a replay file, since the first row has no _label_cost" in err


@pytest.mark.parametrize(
    ("first", "said"),
    [
        ('{"_label_cost": -1, "c": ', "log.json:2: not JSON"),
        ("[1, 2]", "log.json:2: got an array"),
        (b'{"_label_cost": "\xff"}', "log.json:2: not UTF-8"),
    ],
)
def test_a_first_line_that_is_no_json_object_says_what_either_format_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: str | bytes, said: str
) -> None:
    path = _lines(tmp_path / "log.json", "", first)  # a blank line is no first row
    assert main(["train", str(path), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert said in err and "a replay row" in err and "DSJSON event" in err, err


def test_an_empty_file_has_no_rows_to_train_or_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _lines(tmp_path / "log.json", "", " ")
    assert main(["train", str(path), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err == f"bandit-router train: {path}: no rows to train on (the file is empty or blank)\n"
    assert main(["evaluate", str(path), "--policies", "fixed:arm=a"]) == 2
    assert "the log has no events to evaluate" in capsys.readouterr().err


def test_simulate_refuses_a_context_number_that_would_poison_the_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _lines(tmp_path / "r.jsonl", GOOD_ROW, _changed(GOOD_ROW, "context.x", 1e308))
    assert main(["simulate", str(path), "--policies", "squarecb", "--no-skyline"]) == 2
    assert "r.jsonl:2: context.x must be a finite number" in capsys.readouterr().err


# -- DSJSON logs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            _changed(GOOD_EVENT, "c._multi", [{"A": {"id": f"m{i}"}} for i in range(65)]),
            "c._multi has 65 arms; the limit is 64",
        ),
        (_changed(GOOD_EVENT, "c.Q", [1]), r"c\.Q must be an object, got an array"),
        (_changed(GOOD_EVENT, "c.N", [1]), r"c\.N must be an object, got an array"),
        (_changed(GOOD_EVENT, "c.C", ["x"]), r"c\.C must be an object, got an array"),
        (_changed(GOOD_EVENT, "c._multi", ["x", "y"]), r"c\._multi\[0\] must be an object"),
        (_changed(GOOD_EVENT, "_labelIndex", 1e400), "_labelIndex must be an integer, got inf"),
        (_changed(GOOD_EVENT, "_labelIndex", 0.9), "_labelIndex must be an integer, got 0.9"),
        (_changed(GOOD_EVENT, "_label_probability", "0.5"), "_label_probability must be a num"),
        (_changed(GOOD_EVENT, "_label_cost", True), "_label_cost must be a number"),
        (_changed(GOOD_EVENT, "c.Q.chars", float("inf")), r"c\.Q\.chars must be a finite num"),
        (_changed(GOOD_EVENT, "c.N.x", 1e300), r"c\.N\.x must be a finite number"),
        (_changed(GOOD_EVENT, "c.C.tier", "\ud800"), r"c\.C\.tier holds a lone surrogate"),
        (_changed(GOOD_EVENT, "c.C.tier", 3), r"c\.C\.tier must be a string"),
        (_changed(GOOD_EVENT, "c.W", {"x": 1}), r"c\.W keys are word hashes"),
        (_changed(GOOD_EVENT, "c._multi.0._arm.params_b", "huge"), "params_b must be a number"),
        (_changed(GOOD_EVENT, "c._multi.0._arm.params_b", float("nan")), "params_b must be 0"),
        (_changed(GOOD_EVENT, "c._multi.0._arm.name", ""), r"_arm name '': String should"),
        (_changed(GOOD_EVENT, "c._multi.0._arm.name", 7), r"_arm name must be a string, got a n"),
        (_changed(GOOD_EVENT, "c._multi.0._arm.params_b", True), "params_b must be a number"),
        (_changed(GOOD_EVENT, "_label_cost", 0.5), r"\(-_label_cost\) must be in \[0, 1\], got -0"),
        (
            _changed(GOOD_EVENT, "c.N", dict(MANY_KEYS)),
            "c.N plus c.C has 66 features.*BANDIT_MAX_FEATURES",
        ),
        (DEEP, "nested too deeply"),
        (json.dumps(GOOD_EVENT)[:-1] + ', "_label_cost": -1}', "the key '_label_cost' twice"),
    ],
)
def test_train_refuses_a_hostile_dsjson_event_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: Any, message: str
) -> None:
    path = _lines(tmp_path / "log.json", GOOD_EVENT, bad)
    out = tmp_path / "x.json"
    assert main(["train", str(path), "--out", str(out), "--policy", "squarecb"]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "log.json: line 2: not an exported DSJSON event" in err
    assert re.search(message, err), err


def test_a_dsjson_line_that_is_not_utf8_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _lines(tmp_path / "log.json", GOOD_EVENT, b'{"_label_cost": "\xff"}')
    assert main(["train", str(path), "--out", str(tmp_path / "x.json")]) == 2
    assert "log.json: line 2: not UTF-8 (invalid start byte" in capsys.readouterr().err
    assert main(["evaluate", str(path), "--policies", "static"]) == 2
    assert f"evaluate: {path}: line 2: not UTF-8 (invalid start byte" in capsys.readouterr().err


def test_a_good_dsjson_log_still_trains(tmp_path: Path) -> None:
    path = _lines(tmp_path / "log.json", GOOD_EVENT, GOOD_EVENT)
    out = tmp_path / "x.json"
    assert main(["train", str(path), "--out", str(out), "--policy", "squarecb"]) == 0
    assert json.loads(out.read_text())["model_version"] == 2


def test_train_holds_one_event_of_a_dsjson_log_at_a_time(tmp_path: Path) -> None:
    """A DSJSON log is taught as it is read: memory does not grow with the log. Read whole
    first, its events took about twice the file in memory: gigabytes for the export of a full
    log (BANDIT_STREAM_MAXLEN, a million events)."""
    words = [str(i) for i in range(128)]  # each event with a query's worth of word hashes
    event = _changed(GOOD_EVENT, "c.W", dict.fromkeys(words, 1))

    def peak(events: int) -> int:
        path = _lines(tmp_path / f"log{events}.json", *[event] * events)
        tracemalloc.start()
        try:
            assert main(["train", str(path), "--out", str(tmp_path / "x.json")]) == 0
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(500)  # what the first run caches (imports, VW's first model) is not the log's
    small, large = peak(500), peak(4000)
    # Read whole, the 3500 more events took 7 MB more; the policy's own bounded caches, less.
    assert large - small < 2_000_000, (small, large)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_changed(GOOD_EVENT, "c._multi.0._arm.params_b", "huge"), "params_b must be a number"),
        (_changed(GOOD_EVENT, "c.Q.chars", float("inf")), r"c\.Q\.chars must be a finite"),
    ],
)
def test_evaluate_refuses_what_would_give_a_traceback_or_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: Any, message: str
) -> None:
    path = _lines(tmp_path / "log.json", GOOD_EVENT, bad)
    assert main(["evaluate", str(path), "--policies", "static"]) == 2
    captured = capsys.readouterr()
    assert "nan" not in captured.out
    assert f"evaluate: {path}: line 2: not an exported DSJSON event" in captured.err
    assert re.search(message, captured.err)


# -- train --out ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out", "message"),
    [("missing/x.json", "no such directory"), (".", "is a directory")],
)
def test_train_checks_its_output_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str, message: str
) -> None:
    path = _lines(tmp_path / "r.jsonl", GOOD_ROW)
    assert main(["train", str(path), "--out", str(tmp_path / out)]) == 2
    assert message in capsys.readouterr().err
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_train_refuses_an_output_folder_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _lines(tmp_path / "r.jsonl", GOOD_ROW)
    folder = tmp_path / "models"
    folder.mkdir()
    with read_only(folder):
        assert main(["train", str(path), "--out", str(folder / "x.json")]) == 2
    assert f"--out {folder / 'x.json'}: not writable" in capsys.readouterr().err
    assert os.listdir(folder) == []


def test_a_snapshot_file_that_cannot_be_written_leaves_no_temporary_file(tmp_path: Path) -> None:
    """What `snapshot` and `train --out` write through: a write that fails (here the name is a
    directory; a full disk alike) raises, and its temporary file is gone."""
    taken = tmp_path / "model.json"
    taken.mkdir()
    with pytest.raises(OSError):
        write_file(taken, {"format": "x"})
    assert sorted(os.listdir(tmp_path)) == ["model.json"]


# -- the public replay files load exactly as before ----------------------------------------------

PUBLIC = [
    *sorted(DATA.glob("*.jsonl")),
    *sorted((Path(__file__).parents[1] / "examples").glob("*.jsonl")),
    *sorted((Path(__file__).parents[1] / "simulations" / "data").glob("*.jsonl")),
]


@pytest.mark.parametrize("path", PUBLIC or [Path("absent")], ids=lambda p: p.name)
def test_every_public_replay_file_loads_whole(path: Path) -> None:
    if not path.exists():
        pytest.skip("no replay file here")
    arms = path.with_suffix(".arms.json")
    data = dataset.load(path, arms if arms.exists() else None, False, None, Settings().max_features)
    with path.open(encoding="utf-8") as f:
        lines = sum(1 for line in f if line.strip())
    assert (len(data.rows), data.skipped) == (lines, 0)
