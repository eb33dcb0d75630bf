"""What the operators' commands read: a file or an argument they cannot use is refused in a
line naming it, with a non-zero exit, before any work and without a traceback."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bandit_router.cli.main import main
from bandit_router.offline.export import to_dsjson
from bandit_router.policies.base import Arm
from bandit_router.service import backup
from tests.conftest import ClientFactory, SettingsFactory, rewarded_traffic, use_settings
from tests.test_export import ARMS, EVENT


def test_evaluate_refuses_a_fixed_arm_the_log_never_offered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt arm was estimated as the first arm of each event, under the misspelt name."""
    path = tmp_path / "log.dsjson"
    path.write_text(json.dumps(to_dsjson(EVENT, ARMS)) + "\n")
    assert main(["evaluate", str(path), "--policies", "fixed:14B"]) == 2
    assert "fixed:14B: arm '14B' is in no event of the log; valid: 4b, 14b, new" in (
        capsys.readouterr().err
    )
    assert main(["evaluate", str(path), "--policies", "fixed"]) == 2
    assert "fixed: names no arm; valid: 4b, 14b, new" in capsys.readouterr().err
    assert main(["evaluate", str(path), "--policies", "fixed:14b,fixed:arm=new"]) == 0


def test_restore_refuses_a_file_too_large_for_a_snapshot_before_reading_it(
    make_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A model is one Redis string (512 MiB at most), so no snapshot file is larger than its
    base64 plus the header; a larger one (a wrong file, a full disk image) is refused by its
    size, where it was read whole into memory first."""
    use_settings(monkeypatch, make_settings())
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(backup.MAX_FILE_BYTES + 1)  # sparse: takes no disk
    assert main(["restore", str(huge)]) == 1
    assert f"{huge}: longer than {backup.MAX_FILE_BYTES} bytes" in capsys.readouterr().err


def test_restore_reads_a_stream_no_further_than_the_limit(
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A device or a pipe that does not end (/dev/zero) was read until memory ran out, ending
    in a MemoryError traceback."""
    use_settings(monkeypatch, make_settings())
    monkeypatch.setattr(backup, "MAX_FILE_BYTES", 1 << 20)
    assert main(["restore", "/dev/zero"]) == 1
    assert f"/dev/zero: longer than {1 << 20} bytes" in capsys.readouterr().err


def test_train_names_each_arm_once_when_its_price_changed_in_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BANDIT_ARMS changed between two events (a new price, as Adding and removing arms allows):
    the arm was listed twice, in the summary and in the file's arms, and `restore` said so."""
    first = to_dsjson(EVENT, ARMS)
    repriced = to_dsjson(EVENT, {**ARMS, "4b": Arm("4b", 4, 0.05)})
    log = tmp_path / "log.dsjson"
    log.write_text(json.dumps(first) + "\n" + json.dumps(repriced) + "\n")
    out = tmp_path / "trained.json"
    assert main(["train", str(log), "--out", str(out), "--policy", "egreedy"]) == 0
    assert json.loads(capsys.readouterr().out)["arms"] == ["4b", "14b", "new"]
    arms = json.loads(out.read_text())["arms"]
    assert [a["name"] for a in arms] == ["4b", "14b", "new"]
    assert arms[0]["usd_per_mtok"] == 0.05  # the newest configuration


def test_a_forced_restore_says_the_running_learner_will_publish_over_it(
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The learner that holds the lease goes on with the model it has and publishes it over
    the restored one: `restore --force` said only "restored", exit 0."""
    client = make_client()
    rewarded_traffic(client, 3)
    use_settings(monkeypatch, client.app.state.settings)  # type: ignore[attr-defined]
    file = tmp_path / "model.json"
    assert main(["snapshot", str(file)]) == 0
    capsys.readouterr()
    assert main(["restore", "--force", str(file)]) == 0
    captured = capsys.readouterr()
    assert "restored" in captured.out
    assert (
        "a learner holds the lease: it goes on with its own model and publishes it over this one"
    ) in captured.err


def test_an_event_that_offers_an_arm_twice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service offers each arm once (it drops a request's repeats); an event that offered
    one twice was read, and fixed:4b scored 0 on it (its pmf became {4b: 0})."""
    event = to_dsjson(EVENT, ARMS)
    event["c"]["_multi"] = [event["c"]["_multi"][1]] * 2 + event["c"]["_multi"][2:]
    event["_labelIndex"], event["_label_Action"] = 0, 1
    log = tmp_path / "log.dsjson"
    log.write_text(json.dumps(to_dsjson(EVENT, ARMS)) + "\n" + json.dumps(event) + "\n")
    assert main(["evaluate", str(log), "--policies", "fixed:14b"]) == 2
    message = "line 2: not an exported DSJSON event (c._multi[1] offers the arm '14b' again)"
    assert message in capsys.readouterr().err
    assert main(["train", str(log), "--out", str(tmp_path / "x.json")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [["status"], ["snapshot", "{tmp}/m.json"], ["export"], ["restore", "{tmp}/m.json"]]
)
def test_a_redis_that_is_no_cluster_is_named_without_a_traceback(
    make_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    """BANDIT_REDIS_CLUSTER set for a Redis that is not one: every command ended in a
    ValueError traceback."""
    use_settings(monkeypatch, make_settings())
    assert main(["snapshot", f"{tmp_path}/m.json"]) == 0
    monkeypatch.setenv("BANDIT_REDIS_CLUSTER", "true")
    capsys.readouterr()
    assert main([c.format(tmp=tmp_path) for c in command]) == 2
    err = capsys.readouterr().err
    assert f"bandit-router {command[0]}: " in err and "Redis Cluster node" in err
    assert "Traceback" not in err


class _Stats(http.server.BaseHTTPRequestHandler):
    body = b"{}"
    code = 200

    def do_GET(self) -> None:
        self.send_response(self.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("body", [b'{"policy": "x"}', b"[1]", b'{"recent": 1, "arms": []}'])
def test_status_of_a_url_that_answers_no_stats_document_says_so(
    body: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL of another service (or a proxy's JSON page): KeyError or TypeError traceback."""
    handler = type("Handler", (_Stats,), {"body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert main(["status", "--url", url]) == 1
        assert main(["status", "--url", url, "--json"]) == (1 if body == b"[1]" else 0)
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert f"bandit-router status: {url}/stats answered no /stats document" in err


@pytest.mark.parametrize(
    ("code", "body", "said"),
    [
        (401, b"<html>401 Authorization Required</html>", "401: Unauthorized; pass the key with"),
        (502, b"", "HTTP Error 502: Bad Gateway\n"),
        (403, b'["denied"]', "HTTP Error 403: Forbidden\n"),
    ],
)
def test_status_of_a_url_refused_by_something_else_says_its_status(
    code: int, body: bytes, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A proxy's refusal (HTML, nothing, JSON of another shape): its status, no detail."""
    handler = type("Handler", (_Stats,), {"body": body, "code": code})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert main(["status", "--url", url]) == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert f"bandit-router status: cannot read {url}/stats: HTTP Error {code}" in err, err
    assert said in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("arm", "message"),
    [
        ({"name": "4b\x1b[31m\nrestored OK"}, r"arms[0] name '4b\x1b[31m\nrestored OK': String"),
        ({"name": "x" * 65}, "arms[0] name 'xxxxxxxxxx"),
        ({"name": "4b", "params_b": -1}, "arms[0] params_b"),
        ({"name": "4b", "usd_per_mtok": "0.1"}, "arms[0] usd_per_mtok must be a number"),
    ],
)
def test_restore_refuses_arms_a_deployment_could_not_have(
    make_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arm: dict[str, object],
    message: str,
) -> None:
    """The file's arms are printed (the arms the model learned): a name with a terminal's
    escape codes and a line break reached the terminal as it was, after a restore that went
    through."""
    use_settings(monkeypatch, make_settings())
    file = tmp_path / "model.json"
    assert main(["snapshot", str(file)]) == 0
    doc = json.loads(file.read_text())
    doc["arms"] = [arm]
    file.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["restore", str(file)]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


@pytest.mark.parametrize("host", ["", " "])
def test_an_empty_host_is_refused_not_bound_to_every_interface(
    host: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`BANDIT_HOST=${HOST}` with HOST unset, or `serve --host ""`: uvicorn bound the empty
    address, every interface (0.0.0.0 and [::]), where the default is loopback only."""
    monkeypatch.setenv("BANDIT_HOST", host)
    assert main(["config"]) == 2
    assert "host (BANDIT_HOST)" in capsys.readouterr().err


SLICE = Path(__file__).parents[1] / "examples" / "mmlu_pro_llama2_slice.jsonl"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speed", "0"], "argument --speed: a finite number above 0 is needed, got '0'"),
        (["--speed", "-1"], "argument --speed: a finite number above 0 is needed"),
        (["--speed", "nan"], "argument --speed: a finite number above 0 is needed"),
        (["--speed", "inf"], "argument --speed: a finite number above 0 is needed"),
        (["--speed", "fast"], "argument --speed: a finite number above 0 is needed, got 'fast'"),
        (["--arm", "nope"], "upstream: arm 'nope' is not in "),
        (["--arms", "/nonexistent/a.json"], "No such file or directory: '/nonexistent/a.json'"),
        (["--port", "99999"], "argument --port: 99999 is out of range: 0 to 65535"),
        (["--limit", "0"], "argument --limit: 0 is out of range: 1 or more"),
        (["--host", ""], "argument --host: an address to bind is needed"),
        (["--api-key-env", "BANDIT_TEST_UNSET_KEY"], "BANDIT_TEST_UNSET_KEY is not set"),
    ],
)
def test_upstream_refuses_arguments_it_cannot_serve_with(args: list[str], message: str) -> None:
    """They started the server: --speed 0 answered every request 500 (a division by 0),
    --speed -1 or inf answered at once, --host "" listened on every interface, and
    --api-key-env naming a variable that is not set served with no key at all."""
    env = {k: v for k, v in os.environ.items() if k != "BANDIT_TEST_UNSET_KEY"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bandit_router.cli", "upstream", str(SLICE), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("upstream started serving")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_train_refuses_to_write_over_its_own_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train events.dsjson --out events.dsjson`: the export trained on was replaced by the
    snapshot."""
    log = tmp_path / "events.dsjson"
    text = json.dumps(to_dsjson(EVENT, ARMS)) + "\n"
    log.write_text(text)
    link = tmp_path / "link.dsjson"
    link.symlink_to(log)
    for out in (log, link):
        assert main(["train", str(log), "--out", str(out)]) == 2
        assert "is the file trained on" in capsys.readouterr().err
    assert log.read_text() == text
