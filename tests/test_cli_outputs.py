"""What the operators' commands write: an output file is replaced whole or not at all, and a
path that is no regular file (a device, a link to one) is written to, never replaced."""

from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from bandit_router.cli.main import main
from bandit_router.http.app import create_app
from bandit_router.offline.export import to_dsjson
from bandit_router.service.backup import replacing, write_file
from tests.conftest import (
    ClientFactory,
    SettingsFactory,
    cli_env,
    rewarded_traffic,
    use_settings,
)
from tests.test_export import ARMS, EVENT

GOOD = "a good export from yesterday\n"


def _limited(limit: int) -> None:
    """In the child: no file grows past ``limit`` bytes (a disk that fills up)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_an_export_that_fails_leaves_the_previous_file(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings()
    rewarded_traffic(make_client(settings), 20)
    out = tmp_path / "events.dsjson"
    out.write_text(GOOD)
    env = {
        **os.environ,
        "BANDIT_REDIS_URL": settings.redis_url or "",
        "BANDIT_KEY_PREFIX": settings.key_prefix,
    }
    # The disk fills up mid-export: the 20 events take about 20 KB.
    done = subprocess.run(
        [sys.executable, "-m", "bandit_router.cli", "export", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: _limited(4096),
    )
    assert done.returncode == 1, done.stderr
    assert "File too large" in done.stderr and "Traceback" not in done.stderr
    assert f"cannot write {out}:" in done.stderr  # the file asked for, not its temporary
    assert out.read_text() == GOOD
    assert sorted(os.listdir(tmp_path)) == ["events.dsjson"]  # no temporary file left
    # Redis down: refused before anything is written.
    monkeypatch.setenv("BANDIT_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["export", "--out", str(out)]) == 1
    assert out.read_text() == GOOD
    # And a whole export replaces it.
    use_settings(monkeypatch, settings)
    assert main(["export", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 20
    assert sorted(os.listdir(tmp_path)) == ["events.dsjson"]


def test_an_output_that_is_a_link_is_written_through(tmp_path: Path) -> None:
    """A link to a device (/dev/null, /dev/stdout) stays one, and so does the device: as root,
    replacing the name put a regular file in place of /dev/null. A link to a file is written
    through, the link kept."""
    null = tmp_path / "null"
    null.symlink_to(os.devnull)
    write_file(null, {"format": "x"})
    assert null.is_symlink() and null.resolve() == Path(os.devnull).resolve()
    backups = tmp_path / "backups"
    backups.mkdir()
    latest = tmp_path / "latest.json"
    latest.symlink_to(backups / "model.json")
    write_file(latest, {"format": "y"})
    assert latest.is_symlink()
    assert (backups / "model.json").read_text() == '{"format": "y"}'
    assert sorted(os.listdir(backups)) == ["model.json"]


def test_commands_write_into_a_link_to_a_device(
    make_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, make_settings())
    null = tmp_path / "null"
    null.symlink_to(os.devnull)
    assert main(["snapshot", str(null)]) == 0
    assert main(["export", "--out", str(null)]) == 0
    assert null.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["null"]


def test_snapshot_makes_no_word_secret(
    make_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`snapshot` only reads, as `status` and `export` do: a mistyped BANDIT_KEY_PREFIX does not
    become a deployment with a secret, and a Redis that refuses writes is read all the same."""
    settings = make_settings()
    use_settings(monkeypatch, settings)
    file = tmp_path / "model.json"
    assert main(["snapshot", str(file)]) == 0
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        assert client.keys("{" + settings.key_prefix + "}:*") == []
    finally:
        client.close()
    assert json.loads(file.read_text())["word_key"] is None  # it learned no word under any key
    assert main(["restore", str(file)]) == 0  # and restores
    assert "model version 0" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["config"], ["config", "--json"]])
def test_a_reader_that_stops_early_gets_no_traceback(command: list[str]) -> None:
    """`bandit-router config | head -1`: the pipe closes before the output is written; it ended
    in a BrokenPipeError traceback (or, for an output the buffer held, Python's "Exception
    ignored" at exit, code 120)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bandit_router.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "BANDIT_API_KEYS": "k" * 64},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_an_export_into_a_reader_that_stops_early_says_nothing(
    make_settings: SettingsFactory, make_client: ClientFactory
) -> None:
    """`bandit-router export | head -1`: export said "[Errno 32] Broken pipe" (its own handler
    of a failed write took the reader's going for one)."""
    settings = make_settings()
    rewarded_traffic(make_client(settings), 300)  # more than a pipe holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "bandit_router.cli", "export"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["_label_cost"] is not None
    proc.stdout.close()  # the reader is gone after the first line
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == "", err


def test_two_writers_of_one_file_each_write_their_own_temporary(tmp_path: Path) -> None:
    """Two exports (or snapshots) to one name at once, a cron job's and an operator's: with one
    temporary name for both, the second truncated the first's file and renamed it, the first
    went on writing into what was then the output, and its rename failed."""
    path = tmp_path / "events.dsjson"
    with replacing(path) as first:
        first.write("first, part 1\n")
        with replacing(path) as second:
            second.write("second, whole\n")
        assert path.read_text() == "second, whole\n"
        first.write("first, part 2\n")
    assert path.read_text() == "first, part 1\nfirst, part 2\n"
    assert sorted(os.listdir(tmp_path)) == ["events.dsjson"]


def test_a_temporary_name_taken_by_a_link_is_not_followed(tmp_path: Path) -> None:
    """A link planted under the temporary name (a shared folder) is not written through."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / ".model.json.tmp").symlink_to(victim)
    write_file(tmp_path / "model.json", {"format": "x"})
    assert victim.read_text() == "precious\n"
    assert json.loads((tmp_path / "model.json").read_text()) == {"format": "x"}


def test_snapshot_into_a_directory_says_so_before_reading_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As for a missing directory: said before the log is replayed, not after."""
    monkeypatch.setenv("BANDIT_REDIS_URL", "redis://127.0.0.1:1/0")  # not reached
    assert main(["snapshot", str(tmp_path)]) == 1
    assert f"{tmp_path} is a directory; give a file name" in capsys.readouterr().err


def test_a_backup_restored_after_the_log_rolled_past_it_learns_what_the_log_holds(
    make_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """BANDIT_STREAM_MAXLEN trimmed the log past the backup's watermark: restore took it for
    another environment's file, moved its watermark to the end of the log, and the model never
    learned the events still in the log after it."""
    settings = make_settings()
    use_settings(monkeypatch, settings)
    file = tmp_path / "backup.json"
    with TestClient(create_app(settings)) as client:
        rewarded_traffic(client, 10)
        assert main(["snapshot", str(file)]) == 0
        rewarded_traffic(client, 10)
    watermark = json.loads(file.read_text())["stream_id"]
    r = redis.Redis.from_url(settings.redis_url or "")
    try:
        events = "{" + settings.key_prefix + "}:events"
        rows: Any = r.xrange(events)
        ids = [i.decode() for i, _ in rows]
        assert ids.index(watermark) == 9
        # What MAXLEN trims: the watermark and the two events after it.
        r.xtrim(events, minid=ids[12], approximate=False)
        assert r.xlen(events) == 8
    finally:
        r.close()
    capsys.readouterr()
    assert main(["restore", str(file)]) == 0
    assert "model version 10 (this log: events after it are learned)" in capsys.readouterr().out
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json()["model_version"] == 18  # the 8 the log still holds


def test_a_snapshot_written_to_stdout_is_not_mixed_with_the_summary(tmp_path: Path) -> None:
    """`train LOG --out /dev/stdout > model.json`: the summary printed after it landed in the
    file too, which then was no JSON document."""
    log = tmp_path / "log.dsjson"
    log.write_text(json.dumps(to_dsjson(EVENT, ARMS)) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "bandit_router.cli", "train", str(log), "--out", "/dev/stdout"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["format"] == "bandit-router-snapshot"
    assert '"examples_learned": 1' in done.stderr


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    """An export or snapshot an operator made private (0600) became world-readable (0644 under
    the usual umask) once written again, its temporary file taking the name."""
    path = tmp_path / "model.json"
    path.write_text("{}")
    path.chmod(0o600)
    write_file(path, {"format": "x"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("command", [["config"], ["config", "--json"], ["status"]])
def test_an_output_on_a_full_disk_is_said_in_a_line(
    command: list[str], make_client: ClientFactory, make_settings: SettingsFactory
) -> None:
    """`bandit-router status > FILE` on a full disk (/dev/full): a line saying so, code 1; it
    ended in an OSError traceback (or, for an output the buffer held, Python's "Exception
    ignored" at exit, code 120)."""
    settings = make_settings()
    rewarded_traffic(make_client(settings), 5)
    env = {
        **os.environ,
        "BANDIT_REDIS_URL": settings.redis_url or "",
        "BANDIT_KEY_PREFIX": settings.key_prefix,
    }
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "bandit_router.cli", *command],
            stdout=full,
            stderr=subprocess.PIPE,
            env=env,
            timeout=120,
        )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "cannot write its output" in err and "No space left" in err, err
