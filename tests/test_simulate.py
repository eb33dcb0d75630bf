"""``bandit-router simulate`` as users run it: files written, errors, and --via equality."""

from __future__ import annotations

import csv
import json
import os
import pty
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bandit_router.cli.main import main
from tests.conftest import cli_env, served
from tests.test_progress import _read_all

SLICE = Path(__file__).parents[1] / "examples" / "mmlu_pro_llama2_slice.jsonl"
SLICE_ARMS = SLICE.with_suffix(".arms.json")
POLICIES = "egreedy:epsilon=0.1,linucb,random,static,fixed:llama2-7b,best-fixed,oracle,mabwiser"


@pytest.fixture(autouse=True)
def _no_bandit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("BANDIT_")]:
        monkeypatch.delenv(key)


def _simulate(*args: str) -> int:
    return main(["simulate", str(SLICE), "--arms", str(SLICE_ARMS), *args])


def test_summary_steps_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _simulate("--policies", POLICIES, "--seeds", "2", "--out", str(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert "best fixed arm" in out and "skyline" in out
    assert "\r" not in err  # no progress drawn in a pipe or a log
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["policies"]) == POLICIES.split(",")
    egreedy = summary["policies"]["egreedy:epsilon=0.1"]
    for key in ("mean_reward", "ci95", "accuracy", "latency_ms", "cost_usd", "arm_share"):
        assert key in egreedy
    assert sum(egreedy["arm_share"].values()) == pytest.approx(1.0)
    assert egreedy["per_seed"]["seed"] == [0, 1]
    assert len(egreedy["per_seed"]["mean_reward"]) == 2
    assert summary["policies"]["oracle"]["regret_oracle"] == pytest.approx(0.0)
    assert summary["policies"]["best-fixed"]["regret_best_fixed"] == pytest.approx(0.0)
    assert 0 < summary["skyline"]["second_half_reward"] < 1
    with (tmp_path / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["policy"] for r in rows} == set(POLICIES.split(","))
    assert {"step", "mean_reward", "window_reward", "share:llama2-70b"} <= set(rows[0])
    assert (tmp_path / "reward.png").stat().st_size > 1000
    assert (tmp_path / "arm_share.png").stat().st_size > 1000


def test_a_warm_start_names_the_steps_it_compares(capsys: pytest.CaptureFixture[str]) -> None:
    """Fewer than 1,000 rows replayed: the last line said "First 1000 steps" over 100."""
    args = ("--policies", "squarecb,cold:squarecb", "--seeds", "1", "--warm-start", "0.5")
    assert _simulate(*args, "--no-plots", "--no-skyline") == 0
    out = capsys.readouterr().out
    assert "First 100 steps: squarecb" in out and "First 1000 steps" not in out, out


def test_a_bad_row_stops_the_run_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = SLICE.read_text().splitlines()[:20]
    lines[6] = '{"query": "q", "outcomes": {"llama2-7b": {"latency_ms": -5}}}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    assert main(["simulate", str(bad), "--policies", "random", "--no-skyline"]) == 2
    assert "bad.jsonl:7: latency_ms must be 0..86400000, got -5.0" in capsys.readouterr().err
    args = ["simulate", str(bad), "--policies", "random", "--skip-bad", "--out", str(tmp_path)]
    assert main(args) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["skipped"] == 1


def test_an_unknown_policy_or_arm_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert _simulate("--policies", "egredy") == 2
    assert "unknown policy 'egredy'" in capsys.readouterr().err
    assert _simulate("--policies", "fixed:llama2-7B") == 2
    assert "unknown arm 'llama2-7B'; valid: llama2-7b, llama2-13b" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # A traceback each, from the run's first steps (the spec passed the checks before it).
        (["--policies", "fixed:"], "fixed:: names no arm (fixed:NAME or fixed:arm=NAME); valid"),
        # auto's challengers and champion are checked as the plain names are: a traceback each,
        # from building the bench, and a misspelt arm's fixed champion served the first arm.
        (
            ["--policies", "auto:champion=random:challengers=linucb+fixed"],
            "fixed: names no arm (fixed:NAME or fixed:arm=NAME); valid: llama2-7b",
        ),
        (
            ["--policies", "auto:champion=fixed:arm=llama2-7B:challengers=linucb"],
            "fixed:arm=llama2-7B: unknown arm 'llama2-7B'; valid: llama2-7b",
        ),
        (
            ["--policies", "auto:champion=random:challengers=linucb+squarecb:coarse=X"],
            "policy squarecb: coarse must name some of the shared namespaces",
        ),
        (["--policies", "mabwiser:alpha=-1"], "mabwiser: parameter alpha must be in [0, 100]"),
        (["--policies", "mabwiser:dim=1e9"], "mabwiser: parameter dim must be in [12, 1024]"),
        (["--policies", "mabwiser:l2_lambda=0"], "parameter l2_lambda must be in (0, 1000000]"),
        (["--policies", "mabwiser:alpha=x"], "mabwiser: parameter alpha must be a number, got 'x'"),
        (["--policies", "mabwiser:dim=20.5"], "mabwiser: parameter dim must be an integer"),
        # One row, the second run's.
        (["--policies", "random,static,random"], "--policies lists random twice"),
        # An empty table and exit code 0.
        (["--policies", " , "], "--policies ' , ' names no policy"),
        # The last of the two ran, silently.
        (["--add-arm", "llama2-7b@5", "--add-arm", "llama2-7b@9"], "llama2-7b is added twice"),
        # Every arm offered until the first joined, against what --add-arm says.
        (
            ["--add-arm", "llama2-7b@5", "--add-arm", "llama2-13b@5", "--add-arm", "llama2-70b@9"],
            "every arm joins after step 0; no arm could serve before",
        ),
        (["--add-arm", "llama2-7B@5"], "--add-arm: unknown arm 'llama2-7B'; valid: llama2-7b"),
        (
            ["--via", "http://127.0.0.1:9", "--seeds", "2"],
            "--via replays one seed, cold, through the service's own policy",
        ),
        # Seeds past BANDIT_SEED's range, run as if they were in it.
        (["--first-seed", "4294967295", "--seeds", "2"], "runs seeds past 4294967295"),
    ],
)
def test_a_policy_list_or_seeds_that_cannot_run_are_refused_in_a_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _simulate(*args, "--no-skyline") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--add-arm", "llama2-7b"], "--add-arm: ARM@STEP is needed, e.g. llama3-70b@4000; got"),
        (["--add-arm", "llama2-7b@-1"], "--add-arm: ARM@STEP is needed"),
        (["--warm-start", "half"], "--warm-start: a fraction in [0, 1) is needed, got 'half'"),
        (["--warm-start", "1"], "--warm-start: a fraction in [0, 1) is needed, got '1'"),
    ],
)
def test_an_argument_of_another_form_is_refused_naming_it(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _simulate(*args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_weights_no_row_can_score_are_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BANDIT_REWARD_WEIGHTS", "rating=1")  # the slice has no rating
    assert _simulate("--policies", "random", "--no-skyline") == 2
    err = capsys.readouterr().err
    assert f"{SLICE}: line 1: outcomes.llama2-7b: no weighted reward part present" in err, err
    assert _simulate("--policies", "random", "--no-skyline", "--skip-bad") == 2
    err = capsys.readouterr().err
    assert f"{SLICE}: no usable rows: no row has a reward part the weights count" in err, err


def test_one_seed_gives_no_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One seed printed "± 0.0000" for every policy and the skyline, and wrote ci95 0."""
    args = ("--policies", "random,static", "--seeds", "1", "--warm-start", "0.5", "--no-plots")
    assert _simulate(*args, "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "± 0.0000" not in out and "random " in out, out
    assert "one seed gives none" in out and "second-half reward" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["policies"]["random"]["ci95"] is None
    assert summary["policies"]["random"]["first_1000_ci95"] is None
    assert summary["skyline"]["ci95"] is None


def test_a_file_where_every_reward_is_0_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The best fixed arm earned 0: "vs best-fixed" ended the run in a ZeroDivisionError."""
    row = {"query": "q", "outcomes": {"a": {"accuracy": 0}, "b": {"accuracy": 0}}}
    path = tmp_path / "zero.jsonl"
    path.write_text((json.dumps(row) + "\n") * 30)
    args = ["--policies", "random,best-fixed", "--seeds", "2", "--out", str(tmp_path / "out")]
    assert main(["simulate", str(path), *args, "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "best fixed arm a 0.0000" in out and "nan" not in out.lower(), out
    assert (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("warm", ["0", "0.5"])
def test_a_csv_stride_past_the_last_step_writes_its_row(warm: str, tmp_path: Path) -> None:
    """--csv-every beyond the steps replayed ended in an IndexError after summary.json."""
    args = ("--policies", "random", "--limit", "30", "--csv-every", "20", "--warm-start", warm)
    assert _simulate(*args, "--no-plots", "--no-skyline", "--out", str(tmp_path)) == 0
    with (tmp_path / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["20" if warm == "0" else "15"]


HASH_KEY = "shared by the service and the simulator"


@contextmanager
def _service(tmp_path: Path, policy: str, seed: int) -> Iterator[str]:
    arms = json.loads(SLICE_ARMS.read_text())["arms"]
    env = cli_env(
        data_dir=tmp_path / "data",
        policy=policy,
        seed=seed,
        arms=json.dumps(arms),
        hash_key=HASH_KEY,  # the words hash alike in the service and the in-process replay
        log_level="warning",
    )
    with served(env, tmp_path / "serve.log") as base:
        yield base


@pytest.mark.parametrize("policy", ["egreedy", "linucb", "squarecb"])
def test_via_the_service_gives_the_same_numbers(
    tmp_path: Path, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end through HTTP and Redis, the same seed earns what the in-process replay does."""
    common = ["--limit", "120", "--first-seed", "4", "--no-plots", "--no-skyline"]
    monkeypatch.setenv("BANDIT_HASH_KEY", HASH_KEY)
    with _service(tmp_path, policy, seed=4) as url:
        assert _simulate("--via", url, "--out", str(tmp_path / "via"), *common) == 0
    assert _simulate("--policies", policy, "--out", str(tmp_path / "local"), *common) == 0
    via = json.loads((tmp_path / "via" / "summary.json").read_text())["policies"][policy]
    local = json.loads((tmp_path / "local" / "summary.json").read_text())["policies"][policy]
    assert via["mean_reward"] == pytest.approx(local["mean_reward"], abs=1e-9)
    assert via["arm_share"] == local["arm_share"]


def test_via_a_service_that_is_not_there_is_said_in_a_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A closed port ended in ConnectionRefusedError's traceback, a bad URL in ValueError's."""
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert _simulate("--via", url, "--limit", "5", "--no-skyline") == 1
    err = capsys.readouterr().err
    assert f"simulate: --via {url}: [Errno 111] Connection refused" in err, err
    assert _simulate("--via", "localhost:8000", "--limit", "5") == 1
    err = capsys.readouterr().err
    assert "--via must be an http(s) URL, got 'localhost:8000'" in err and "Traceback" not in err


def _simulate_without(module: str, policies: str, out: Path) -> subprocess.CompletedProcess[str]:
    """`simulate` on the slice in a real process in which ``module`` cannot be imported, as
    without the extra that installs it."""
    run = (
        f"import sys; sys.modules[{module!r}] = None; "
        "from bandit_router.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["simulate", str(SLICE), "--arms", str(SLICE_ARMS), "--policies", policies]
    return subprocess.run(
        [sys.executable, "-c", run, *args, "--no-skyline", "--out", str(out)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_mabwiser_its_peer_is_refused_by_name(tmp_path: Path) -> None:
    """Without the dev or bench extra: `--policies mabwiser` ended in ModuleNotFoundError's
    traceback after the replay was read."""
    done = _simulate_without("mabwiser", "random,mabwiser", tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "bandit-router simulate: policy mabwiser needs the MABWiser package, which is not "
        "installed: pip install mabwiser (or the bench extra)"
    )
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_without_matplotlib_the_results_are_written_and_the_hint_printed(tmp_path: Path) -> None:
    """Without the sim extra."""
    done = _simulate_without("matplotlib", "random,oracle", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "no plots: matplotlib is missing" in done.stderr
    # the command of an installed package, and of the checkout's venv
    assert "pip install 'bandit-router[sim]'" in done.stderr
    assert ".venv/bin/pip install -e '.[sim]'" in done.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == 200
    assert len((tmp_path / "steps.csv").read_text().splitlines()) > 2
    assert not list(tmp_path.glob("*.png"))


def test_progress_is_drawn_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w") as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            assert _simulate("--policies", "static", "--seeds", "2") == 0
        drawn = _read_all(master).decode()
    finally:
        os.close(master)
    assert "\rsimulate [" in drawn and "100% 400/400 steps" in drawn
