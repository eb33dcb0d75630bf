"""Warm start: `bandit-router train` from a replay file or an exported log, restored into a
service that then serves what history taught it; and `simulate --warm-start`."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bandit_router import inputs
from bandit_router.cli.main import main
from bandit_router.rewards import RewardConfig
from bandit_router.settings import Settings
from bandit_router.sim import dataset, replay
from tests.conftest import ClientFactory, SettingsFactory, use_settings

ARMS = "small,large"
# Words count only under the key they were hashed with: the trainer and the deployments share one.
HASH_KEY = "shared by the history and the deployments"
CODE = "def merge(a, b): return sorted(a + b)  # fix this python function"
CHAT = "what would you cook for a rainy sunday dinner with friends"


def _planted(path: Path, rows: int, seed: int = 3) -> Path:
    """A replay file with a planted rule: the large arm answers code, the small one chat."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for i in range(rows):
            code = bool(rng.random() < 0.5)
            right, wrong = ("large", "small") if code else ("small", "large")
            outcomes = {
                right: {"accuracy": float(rng.random() < 0.9)},
                wrong: {"accuracy": float(rng.random() < 0.1)},
            }
            query = f"{CODE if code else CHAT} #{i}"
            f.write(json.dumps({"id": str(i), "query": query, "outcomes": outcomes}) + "\n")
    return path


def _use(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    use_settings(monkeypatch, settings)
    monkeypatch.setenv("BANDIT_ARMS", ARMS)
    monkeypatch.setenv("BANDIT_REWARD_WEIGHTS", "accuracy=1")
    monkeypatch.setenv("BANDIT_HASH_KEY", HASH_KEY)


def _right_share(client: TestClient, n: int = 40) -> float:
    right = 0
    for i in range(n):
        code = i % 2 == 0
        query = f"{CODE if code else CHAT} #{1000 + i}"
        d = client.post("/choose", json={"query": query}).json()
        right += d["arm"] == ("large" if code else "small")
    return right / n


def test_a_model_trained_on_a_replay_file_serves_what_it_learned(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings = make_settings(arms=ARMS, reward_weights="accuracy=1", hash_key=HASH_KEY)
    _use(monkeypatch, settings)
    replay_file = _planted(tmp_path / "history.jsonl", 600)
    snapshot = tmp_path / "trained.json"
    assert main(["train", str(replay_file), "--out", str(snapshot)]) == 0
    doc = json.loads(snapshot.read_text())
    assert doc["model_version"] == 1200  # 600 rows, both arms' outcomes
    assert [a["name"] for a in doc["arms"]] == ["large", "small"]

    cold = make_client(make_settings(arms=ARMS, reward_weights="accuracy=1", hash_key=HASH_KEY))
    assert _right_share(cold) < 0.8  # knows nothing yet
    assert main(["restore", str(snapshot)]) == 0
    warm = make_client(settings)
    assert warm.get("/healthz").json()["model_version"] == 1200
    assert _right_share(warm) >= 0.9


def test_a_model_trained_on_an_exported_log(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Logged by a service exploring uniformly; trained with the logged propensities."""
    source = make_settings(
        arms=ARMS, reward_weights="accuracy=1", hash_key=HASH_KEY, policy="random"
    )
    client = make_client(source)
    rng = np.random.default_rng(5)
    for i in range(300):
        code = i % 2 == 0
        d = client.post("/choose", json={"query": f"{CODE if code else CHAT} #{i}"}).json()
        right = d["arm"] == ("large" if code else "small")
        accuracy = float(rng.random() < (0.9 if right else 0.1))
        client.post("/reward", json={"event_id": d["event_id"], "accuracy": accuracy})
    _use(monkeypatch, source)
    log = tmp_path / "events.dsjson"
    assert main(["export", "--out", str(log)]) == 0
    target = make_settings(
        arms=ARMS, reward_weights="accuracy=1", hash_key=HASH_KEY, policy="squarecb"
    )
    _use(monkeypatch, target)
    snapshot = tmp_path / "trained.json"
    assert main(["train", str(log), "--out", str(snapshot), "--arms", str(log)]) == 2
    assert main(["train", str(log), "--out", str(snapshot)]) == 0
    assert json.loads(snapshot.read_text())["model_version"] == 300
    assert main(["restore", str(snapshot)]) == 0
    assert _right_share(make_client(target)) >= 0.9


def test_train_names_a_bad_input(
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _use(monkeypatch, make_settings())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "outcomes": {"a": {"accuracy": 7}}}\n')
    assert main(["train", str(bad), "--out", str(tmp_path / "x.json")]) == 2
    assert "accuracy must be 0..1" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    assert main(["train", str(bad), "--out", "x", "--policy", "nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text('{"query": "q", "outcomes": {"a": {"accuracy": 1}}}\n')
    out = tmp_path / "fixed.json"
    assert main(["train", str(good), "--out", str(out), "--policy", "fixed:arm=b"]) == 2
    assert "policy fixed: arm 'b' is not an arm; valid: a" in capsys.readouterr().err
    assert not out.exists()  # it was written, for a restore to refuse or serve an arm not there


@pytest.mark.parametrize("name", ["-", "/dev/stdin"])
def test_train_reads_a_pipe_whole(name: str, tmp_path: Path) -> None:
    """Piped in, the first row arriving alone: every row is learned. `train` read the file twice
    (its first row says DSJSON or replay), and a pipe opened again went on after the first
    reader's buffer: /dev/stdin trained without its first row, unsaid; `-` was no file."""
    rows = _planted(tmp_path / "history.jsonl", 50).read_bytes().splitlines(keepends=True)
    out = tmp_path / "trained.json"
    env = {**os.environ, "BANDIT_ARMS": ARMS, "BANDIT_REWARD_WEIGHTS": "accuracy=1"}
    command = [sys.executable, "-m", "bandit_router.cli", "train", name, "--out", str(out)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, env=env, text=False) as train:
        assert train.stdin is not None
        train.stdin.write(rows[0])
        train.stdin.flush()
        time.sleep(1)  # the first reader finds one row in the pipe
        train.stdin.write(b"".join(rows[1:]))
        train.stdin.close()
        assert train.wait(timeout=120) == 0
    assert json.loads(out.read_text())["model_version"] == 100  # 50 rows, both arms' outcomes


def test_a_pipe_is_copied_within_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pipe is copied to disk to be read twice, at most MAX_PIPED_BYTES: unbounded, an endless
    one (/dev/zero behind a FIFO) filled the disk."""
    monkeypatch.setattr(inputs, "MAX_PIPED_BYTES", 10_000)
    fifo = tmp_path / "endless"
    os.mkfifo(fifo)

    def endless() -> None:  # 100 times the bound: a bound that broke fails, not fills the disk
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as f:
            for _ in range(1_000_000 // 4096):
                f.write(b"\0" * 4096)

    writer = threading.Thread(target=endless, daemon=True)
    writer.start()
    out = tmp_path / "x.json"
    assert main(["train", str(fifo), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"bandit-router train: {fifo}: longer than 10000 bytes, the most read from a pipe; "
        "write it to a file and give its name\n"
    )
    assert not out.exists()
    writer.join(timeout=10)


@pytest.mark.parametrize("extra", [0, 1])
def test_a_pipe_of_the_bound_is_copied_whole_and_one_byte_more_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: int
) -> None:
    monkeypatch.setattr(inputs, "MAX_PIPED_BYTES", 10_000)
    fifo = tmp_path / "rows"
    os.mkfifo(fifo)
    data = b"x" * (10_000 + extra)

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as f:
            f.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    if extra:
        with (
            pytest.raises(ValueError, match="longer than 10000 bytes"),
            inputs.reopenable(str(fifo)),
        ):
            pass
    else:
        with inputs.reopenable(str(fifo)) as copy:
            assert copy.read_bytes() == data
    writer.join(timeout=10)


def test_a_bad_piped_row_is_named_by_the_name_given(tmp_path: Path) -> None:
    out = tmp_path / "trained.json"
    command = [sys.executable, "-m", "bandit_router.cli", "train", "-", "--out", str(out)]
    done = subprocess.run(
        command, input=b'{"query": 5}\n', capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 2
    assert done.stderr.decode().startswith(
        "bandit-router train: -:1: query must be a non-empty string"
    )
    assert not out.exists()


TASKS = {
    "a": "def merge(a, b): return sorted(a + b)  # fix this python function",
    "b": "what would you cook for a rainy sunday dinner with friends",
    "c": "solve for x: 3x + 7 = 22, then compute the integral of x^2",
    "d": "who was the first president of the united states and when",
}


def _four_tasks(path: Path, rows: int, seed: int = 4) -> Path:
    """Four kinds of query, four arms: each kind has its own right arm."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for i in range(rows):
            right = str(rng.choice(list(TASKS)))
            outcomes = {
                arm: {"accuracy": float(rng.random() < (0.9 if arm == right else 0.1))}
                for arm in TASKS
            }
            query = f"{TASKS[right]} #{i}"
            f.write(json.dumps({"id": str(i), "query": query, "outcomes": outcomes}) + "\n")
    return path


def test_a_warm_start_lifts_the_first_steps_over_a_cold_one(tmp_path: Path) -> None:
    data = dataset.load(_four_tasks(tmp_path / "r.jsonl", 3000))
    prepared = dataset.prepare(data, RewardConfig({"accuracy": 1.0}))
    names = ["squarecb", "cold:squarecb", "linucb", "cold:linucb"]
    runs = replay.simulate(names, prepared, [0, 1, 2, 3], warm_start=0.5)
    early = {name: np.mean([r.reward[:100].mean() for r in rs]) for name, rs in runs.items()}
    for name in ("squarecb", "linucb"):
        assert len(runs[name][0].reward) == 1500  # the other half trained it
        assert early[name] > early[f"cold:{name}"] + 0.05, early
    with pytest.raises(ValueError, match=r"warm_start must be in \[0, 1\)"):
        replay.simulate(names, prepared, [0], warm_start=1.0)
