"""Decisions answered while Redis is down outlive the process that answered them: its journal."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from bandit_router.features import WordKey, extract
from bandit_router.http.app import create_app
from bandit_router.rewards import RewardParts
from bandit_router.service.journal import DEBRIS_AFTER_S, TEMPORARY, Journal
from bandit_router.service.router import Router
from bandit_router.settings import Settings
from bandit_router.store.records import dumps
from tests.conftest import (
    RedisProcess,
    SettingsFactory,
    _free_port,
    cli_env,
    cli_process,
    healthy,
    read_only,
    wait_until,
)
from tests.test_faults import _open_router, _running
from tests.test_limits import _files_limited, _service


def _decision(event_id: str, arm: str = "a") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "features": extract("What is 2+2?", None, WordKey("secret")).to_json(),
        "arms": ["a", "b"],
        "arm": arm,
        "probability": 0.5,
        "probabilities": {"a": 0.5, "b": 0.5},
        "policy": "squarecb",
        "model_version": 0,
        "ts": 1.0,
    }


def _orphaned(directory: Path, prefix: str) -> list[list[str]]:
    """The event ids of each journal of ``prefix`` whose process let it go."""
    return [[r["event_id"] for r in o.records()] for o in Journal(directory, prefix).orphans()]


def test_a_live_journal_is_never_taken_and_a_released_one_is(tmp_path: Path) -> None:
    owner = Journal(tmp_path, "bandit")
    owner.append(dumps(_decision("e1")))
    owner.append(dumps(_decision("e2")))
    assert _orphaned(tmp_path, "bandit") == []  # locked: its process is alive
    kept = owner.release()
    assert kept is not None and kept.exists()
    assert _orphaned(tmp_path, "bandit") == [["e1", "e2"]]
    # Other deployments' journals are theirs, a prefix that starts alike included.
    assert _orphaned(tmp_path, "bandit:x") == []
    assert _orphaned(tmp_path, "band") == []


def test_a_journal_keeps_only_what_the_buffer_still_holds(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "bandit")
    for event_id in ("e1", "e2", "e3"):
        journal.append(dumps(_decision(event_id)))
    journal.keep_only([_decision("e3")])  # e1 and e2 written to Redis
    journal.append(dumps(_decision("e4")))
    journal.release()
    assert _orphaned(tmp_path, "bandit") == [["e3", "e4"]]

    emptied = Journal(tmp_path, "other")
    emptied.append(dumps(_decision("e5")))
    path = emptied.path
    emptied.keep_only([])
    assert path is not None and not path.exists() and emptied.release() is None


def test_a_journal_counts_the_bytes_of_its_lines(tmp_path: Path) -> None:
    """``size`` is what bounds the journal against the buffer (``Router._keep``): the bytes of
    its lines, newlines included, after appends and after a rewrite alike."""
    journal = Journal(tmp_path, "bandit")
    for event_id in ("e1", "e2", "e3"):
        journal.append(dumps(_decision(event_id)))
    assert journal.path is not None
    assert journal.size == journal.path.stat().st_size
    journal.keep_only([_decision("e3")])
    assert journal.size == journal.path.stat().st_size == len(dumps(_decision("e3"))) + 1
    journal.append(dumps(_decision("e4")))
    assert journal.size == journal.path.stat().st_size
    journal.release()


def test_a_rewrite_that_fails_leaves_the_journal_as_it_was_and_no_temporary_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rewrite whose new file cannot take the journal's name (here a directory has taken it)
    keeps the journal it had, and deletes the file it made: it would be debris for a minute."""
    journal = Journal(tmp_path, "bandit")
    journal.append(dumps(_decision("e1")))
    path = journal.path
    assert path is not None
    path.unlink()
    path.mkdir()
    (path / "in-the-way").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        assert not journal.keep_only([_decision("e1")])
    assert any("was not rewritten" in m for m in caplog.messages), caplog.messages
    assert list(tmp_path.glob(f"*{TEMPORARY}")) == []
    assert journal.path == path
    journal.release()
    shutil.rmtree(path)


class Synced:
    """The files and directories ``os.fsync`` was called on (device, inode), in order; the call
    itself is made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[int, int]] = []
        real = os.fsync

        def fsync(fd: Any) -> None:
            stat = os.fstat(fd)
            self.seen.append((stat.st_dev, stat.st_ino))
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def of(self, path: Path) -> bool:
        stat = os.stat(path)
        return (stat.st_dev, stat.st_ino) in self.seen


def test_a_journal_is_synced_to_disk_lines_and_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written lines survive the process; synced, the machine: the file's lines and, once it
    is named, its directory's entry. A rewrite is on disk before it replaces the journal."""
    synced = Synced(monkeypatch)
    journal = Journal(tmp_path / "buffer", "bandit")
    journal.append(dumps(_decision("e1")))
    assert journal.path is not None and synced.seen == []  # appended: written, not synced
    asyncio.run(journal.sync())
    assert synced.of(journal.path) and synced.of(tmp_path / "buffer")
    synced.seen.clear()
    asyncio.run(journal.sync())
    assert synced.seen == []  # nothing new
    journal.append(dumps(_decision("e2")))
    asyncio.run(journal.sync())
    assert synced.of(journal.path) and not synced.of(tmp_path / "buffer")

    synced.seen.clear()
    old = os.stat(journal.path).st_ino
    journal.keep_only([_decision("e2")])
    assert len(synced.seen) == 1 and synced.of(journal.path)  # the new file, before its rename
    assert os.stat(journal.path).st_ino != old
    asyncio.run(journal.sync())
    assert synced.of(tmp_path / "buffer")  # its name

    synced.seen.clear()
    journal.append(dumps(_decision("e3")))
    kept = journal.release()  # a process that stops syncs what it leaves
    assert kept is not None and synced.of(kept) and not synced.of(tmp_path / "buffer")
    assert _orphaned(tmp_path / "buffer", "bandit") == [["e2", "e3"]]


def test_a_journal_released_before_its_first_sync_is_synced_name_and_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that stops within a second of its journal's creation leaves it with its name
    on disk too, not its lines only."""
    synced = Synced(monkeypatch)
    journal = Journal(tmp_path / "buffer", "bandit")
    journal.append(dumps(_decision("e1")))
    kept = journal.release()
    assert kept is not None and synced.of(kept) and synced.of(tmp_path / "buffer")


def test_a_journal_deleted_under_its_process_is_not_said_kept(tmp_path: Path) -> None:
    """Its lines die with the process: ``release`` names no file for the next process."""
    journal = Journal(tmp_path, "bandit")
    journal.append(dumps(_decision("e1")))
    assert journal.path is not None and not journal.deleted()
    journal.path.unlink()
    assert journal.deleted()
    assert journal.release() is None


def test_a_sync_cancelled_midway_closes_nothing_under_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync's thread goes on once its task is cancelled (a stop): the descriptor it was
    given stays open until it is done with it."""
    began, go = threading.Event(), threading.Event()
    outcome: list[str] = []
    real = os.fsync

    def fsync(fd: Any) -> None:
        began.set()
        go.wait(10)
        try:
            real(fd)
            outcome.append("synced")
        except OSError as e:
            outcome.append(f"{e.strerror}")

    journal = Journal(tmp_path, "bandit")
    journal.append(dumps(_decision("e1")))
    monkeypatch.setattr(os, "fsync", fsync)

    async def cancelled() -> None:
        task = asyncio.create_task(journal.sync())
        await asyncio.to_thread(began.wait, 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        go.set()

    asyncio.run(cancelled())  # the loop's end waits for its threads
    assert outcome[:1] == ["synced"]
    journal.release()


def test_the_service_syncs_its_journal_each_second_while_redis_is_down(
    make_settings: SettingsFactory, redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(redis_url=redis_process.url)
    synced = Synced(monkeypatch)
    with TestClient(create_app(settings)) as client:
        redis_process.kill()
        assert _choose(client, "q1")["degraded"]
        (journal,) = (Path(settings.data_dir) / "buffer").glob("*.jsonl")
        wait_until(lambda: synced.of(journal), 5, "the journal synced")
        synced.seen.clear()
        assert _choose(client, "q2")["degraded"]
        wait_until(lambda: synced.of(journal), 5, "the journal synced again")


def test_the_journal_is_synced_each_second_while_a_flush_waits_for_a_redis_that_hangs(
    make_settings: SettingsFactory, redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that does not answer (frozen: a partition, a paused VM) holds each write for its
    timeout, one batch of writes after another, the flush job's among them. The sync ran in the
    flush job, before its flush: a decision answered while that flush waited was synced only
    once it gave up, seconds later, not within the second the README says."""
    settings = make_settings(redis_url=redis_process.url)
    synced = Synced(monkeypatch)

    async def synced_soon(path: Path) -> None:
        deadline = time.monotonic() + 2.5
        while not synced.of(path):
            assert time.monotonic() < deadline, "the journal not synced within 2.5 s"
            await asyncio.sleep(0.05)

    async def meanwhile(router: Router) -> None:
        assert redis_process.proc is not None and router.journal is not None
        redis_process.proc.send_signal(signal.SIGSTOP)
        try:
            first = asyncio.create_task(router.choose("q1"))
            await asyncio.sleep(1.5)
            second = asyncio.create_task(router.choose("q2"))  # in the batch after q1's
            assert (await first).degraded
            path = router.journal.path
            assert path is not None
            await synced_soon(path)  # then the flush job's write waits behind q2's batch
            synced.seen.clear()
            assert (await second).degraded
            await synced_soon(path)
        finally:
            redis_process.proc.send_signal(signal.SIGCONT)

    asyncio.run(_running(settings, meanwhile))


def test_a_temporary_file_left_by_a_crash_is_deleted_once_unlocked_and_old(
    tmp_path: Path,
) -> None:
    """A crash between a journal's creation and its rename leaves its ``.new`` file, whose lines
    are in a journal of its owner's too: debris, once no process holds it and it is old."""
    journal = Journal(tmp_path, "bandit")
    journal.append(dumps(_decision("e1")))
    assert journal.path is not None
    stem = journal.path.name.rsplit(".", 4)[0]  # digest.prefix.host.pid.uuid.jsonl
    old = time.time() - DEBRIS_AFTER_S - 1
    debris, fresh, held, theirs = (
        tmp_path / f"{stem}.{name}{TEMPORARY}" for name in ("debris", "fresh", "held", "theirs")
    )
    for path in (debris, fresh, held, theirs):
        path.write_bytes(dumps(_decision("e1")) + b"\n")
    for path in (debris, held, theirs):
        os.utime(path, (old, old))
    theirs = theirs.rename(tmp_path / theirs.name.replace(".bandit.", ".other."))
    with held.open("rb") as holding:
        fcntl.flock(holding, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a creation under way
        assert _orphaned(tmp_path, "bandit") == []
    assert not debris.exists()
    assert fresh.exists() and held.exists() and theirs.exists() and journal.path.exists()
    journal.release()


def test_a_live_journal_rewritten_as_another_process_opens_it_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process looking for gone processes' journals opens a live one just as its owner
    rewrites it: the file it opened is unlocked then (its owner holds the new one), and holds
    decisions written to Redis since. It is not taken."""
    owner = Journal(tmp_path, "bandit")
    owner.append(dumps(_decision("e1")))
    owner.append(dumps(_decision("e2")))
    real, rewritten = fcntl.flock, list[bool]()

    def flock(handle: Any, operation: int) -> None:
        if not rewritten and str(getattr(handle, "name", "")) == str(owner.path):
            rewritten.append(owner.keep_only([_decision("e2")]))  # e1 written to Redis
        real(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    assert _orphaned(tmp_path, "bandit") == []
    assert rewritten == [True]
    owner.release()
    assert _orphaned(tmp_path, "bandit") == [["e2"]]


def test_a_gone_process_journal_deleted_by_hand_while_it_is_written_is_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A journal written to Redis that a cleaner deleted meanwhile is gone already: not said as
    one that cannot be deleted, and not kept as written."""
    gone = Journal(tmp_path, "bandit")
    gone.append(dumps(_decision("e1")))
    gone.release()
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        for orphan in Journal(tmp_path, "bandit").orphans():
            assert [r["event_id"] for r in orphan.records()] == ["e1"]
            orphan.path.unlink()
            orphan.done()
    assert not caplog.messages, caplog.messages


def test_a_journal_being_created_is_never_locked_by_a_process_looking_for_debris(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A journal's temporary file exists unlocked for a moment, between its creation and its
    lock: another process of the deployment looking for debris then (each flush does) took its
    lock, and the creation failed, the decision kept in memory only and said as a journal that
    cannot be written. A temporary file too young to be debris is not opened at all."""
    looking = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from bandit_router.service.journal import Journal\n"
            "journal = Journal(Path(sys.argv[1]), 'bandit')\n"
            "while True: list(journal.orphans())",
            str(tmp_path),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        journal = Journal(tmp_path, "bandit")
        line = dumps(_decision("e1"))
        created, failed = 0, 0
        with caplog.at_level(logging.ERROR, logger="bandit_router"):
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                journal.append(line)  # a new journal each time
                if journal.path is None:
                    failed += 1
                else:
                    created += 1
                    journal.keep_only([])  # deleted: the next append creates one
        assert looking.poll() is None  # it looked all along
    finally:
        looking.kill()
        looking.wait()
    assert created and failed == 0, (created, failed)
    assert not caplog.messages, caplog.messages


def test_a_line_cut_short_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path, "bandit")
    journal.append(dumps(_decision("e1")))
    path = journal.release()
    assert path is not None
    with path.open("ab") as f:
        f.write(b'{"event_id": "e2", "arm"')  # a process killed mid-write
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        assert _orphaned(tmp_path, "bandit") == [["e1"]]
    assert any("line 2 is not a decision" in r.getMessage() for r in caplog.records)


def test_a_line_cut_short_by_a_full_disk_is_cut_off_and_the_next_one_follows_the_whole_ones(
    tmp_path: Path,
) -> None:
    """A disk that fills mid-line, then has room again: the part written is cut off, and the
    next decision's line starts where the last whole line ends (appended), not after a gap
    where the cut part was, which made it a line that is no decision."""
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from bandit_router.service.journal import Journal\n"
        "from tests.test_journal import _decision\n"
        "from bandit_router.store.records import dumps\n"
        "journal = Journal(Path(sys.argv[1]), 'bandit')\n"
        "assert journal.append(dumps(_decision('e1')))\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
        "full = journal.size + len(dumps(_decision('e2'))) // 2\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (full, hard))  # the disk fills mid-line\n"
        "assert not journal.append(dumps(_decision('e2')))\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # room again\n"
        "assert journal.append(dumps(_decision('e3')))\n"
        "journal.release()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert _orphaned(tmp_path, "bandit") == [["e1", "e3"]]


def test_a_journal_that_cannot_be_written_leaves_memory_only_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    journal = Journal(blocker / "buffer", "bandit")  # a directory under a file: never made
    with caplog.at_level(logging.ERROR, logger="bandit_router"):
        journal.append(dumps(_decision("e1")))
        journal.append(dumps(_decision("e2")))
    said = [r.getMessage() for r in caplog.records if "memory only" in r.getMessage()]
    assert len(said) == 1 and "BANDIT_BUFFER_DIR" in said[0]
    assert journal.release() is None


def _choose(client: TestClient | httpx.Client, query: str) -> dict[str, Any]:
    response = client.post("/choose", json={"query": query})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def test_a_stop_while_redis_is_down_leaves_the_buffer_for_the_next_process(
    make_settings: SettingsFactory,
    redis_process: RedisProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGTERM (the lifespan's end) while Redis is down: the buffered decisions stay in the
    journal, the log says where; the next process to reach Redis writes them before it serves,
    and their rewards are taken."""
    settings = make_settings(redis_url=redis_process.url)
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        with TestClient(create_app(settings)) as client:
            redis_process.kill()
            during = [_choose(client, f"q{i}") for i in range(4)]
            assert all(d["degraded"] for d in during)
        said = [r.getMessage() for r in caplog.records if "degraded=true" in r.getMessage()]
    assert len(said) == 1 and "4 decisions answered with degraded=true are kept in" in said[0]
    assert len(list((Path(settings.data_dir) / "buffer").glob("*.jsonl"))) == 1

    redis_process.start()  # empty: no persistence on this test server
    with TestClient(create_app(settings)) as client:
        assert client.get("/stats").json()["decisions"] == 4
        for d in during:
            r = client.post("/reward", json={"event_id": d["event_id"], "reward": 0.5})
            assert r.status_code == 200, r.text
            assert r.json()["arm"] == d["arm"]
    assert list((Path(settings.data_dir) / "buffer").iterdir()) == []


def test_a_journal_deleted_under_the_process_is_written_again(
    make_settings: SettingsFactory,
    redis_process: RedisProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cleaner empties BANDIT_BUFFER_DIR during an outage: the process went on appending to a
    file with no name, and its stop said the decisions were kept in a file that did not exist."""
    settings = make_settings(redis_url=redis_process.url)
    buffer = Path(settings.data_dir) / "buffer"
    with (
        caplog.at_level(logging.WARNING, logger="bandit_router"),
        TestClient(create_app(settings)) as client,
    ):
        redis_process.kill()
        during = [_choose(client, f"q{i}") for i in range(3)]
        shutil.rmtree(buffer)
        during.append(_choose(client, "q3"))
        wait_until(lambda: any(buffer.glob("*.jsonl")), 5, "the journal written again")
    said = [m for m in caplog.messages if "deleted while this process held it" in m]
    assert len(said) == 1 and "written again with the 4 decisions buffered" in said[0], said
    assert any("4 decisions answered with degraded=true are kept in" in m for m in caplog.messages)

    redis_process.start()
    with TestClient(create_app(settings)) as client:
        assert client.get("/stats").json()["decisions"] == 4
        for d in during:
            r = client.post("/reward", json={"event_id": d["event_id"], "reward": 0.5})
            assert r.status_code == 200, r.text


def test_a_process_killed_while_redis_is_down_loses_no_decision(
    make_settings: SettingsFactory, redis_process: RedisProcess, tmp_path: Path
) -> None:
    """SIGKILL, no lifespan's end: the journal was written as the decisions were answered, and
    the kernel drops its lock with the process."""
    settings = make_settings(redis_url=redis_process.url)
    env = cli_env(
        redis_url=settings.redis_url, key_prefix=settings.key_prefix, data_dir=settings.data_dir
    )
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with cli_process(["serve", "--port", str(port)], env, tmp_path / "serve.log") as service:
        wait_until(lambda: healthy(base), 60, "the service to answer /healthz")
        redis_process.kill()
        with httpx.Client(base_url=base) as client:
            during = [_choose(client, f"q{i}") for i in range(4)]
        assert all(d["degraded"] for d in during)
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=20)

    redis_process.start()
    with TestClient(create_app(settings)) as client:
        for d in during:
            r = client.post("/reward", json={"event_id": d["event_id"], "reward": 0.5})
            assert r.status_code == 200, r.text


def test_without_a_journal_a_stop_while_redis_is_down_says_what_is_lost(
    make_settings: SettingsFactory, redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """BANDIT_BUFFER_DIR empty: the buffer is in memory only, and a stop with Redis down says
    how many decisions are lost, and how many the full buffer had dropped (their count in
    ``decisions_dropped`` is lost with them)."""
    settings = make_settings(redis_url=redis_process.url, decision_buffer=3, buffer_dir="")
    with caplog.at_level(logging.ERROR, logger="bandit_router"):
        with TestClient(create_app(settings)) as client:
            redis_process.kill()
            assert all(_choose(client, f"q{i}")["degraded"] for i in range(5))
        said = [r.getMessage() for r in caplog.records if "degraded=true" in r.getMessage()]
    assert len(said) == 1, said
    assert "3 decisions answered with degraded=true are lost" in said[0]
    assert "2 more were dropped" in said[0]
    assert not (Path(settings.data_dir) / "buffer").exists()


def _journal_lines(settings: Settings) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in (Path(settings.data_dir) / "buffer").glob("*.jsonl")
        for line in path.read_bytes().splitlines()
    ]


def test_a_choose_repeated_at_once_while_redis_is_down_is_one_decision(
    make_settings: SettingsFactory, redis_process: RedisProcess
) -> None:
    """A client's retries of one event_id that meet the outage together (each waits on Redis
    before it is kept): every answer is the one decision kept, the journal holds it once, and
    the reward after Redis's return is for the arm answered."""
    settings = make_settings(redis_url=redis_process.url)

    async def scenario() -> None:
        router = await _open_router(settings)
        redis_process.kill()
        answers = await asyncio.gather(
            *(router.choose("What is 2+2?", event_id="same-event") for _ in range(8))
        )
        assert all(a.degraded for a in answers)
        assert len({(a.arm, a.probability) for a in answers}) == 1, answers
        assert [r["event_id"] for r in _journal_lines(settings)] == ["same-event"]
        assert router.buffered_bytes == len(dumps(_journal_lines(settings)[0]))
        redis_process.start()
        assert await router.flush() == 1
        assert router.buffered_bytes == 0
        taken = await router.reward("same-event", RewardParts(accuracy=1.0))
        assert taken.arm == answers[0].arm
        await router.close()
        await router.store.close()

    asyncio.run(scenario())


def test_a_gone_process_journal_in_a_directory_become_unwritable_stops_no_start(
    make_settings: SettingsFactory, redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A journal left by a gone process in a directory that became unwritable since (a disk
    remounted read-only): its decisions are written, the file cannot go, said in the log, and
    the process starts and serves, writing them once, not at every flush."""
    settings = make_settings(redis_url=redis_process.url)
    directory = Path(settings.data_dir) / "buffer"
    gone = Journal(directory, settings.key_prefix)
    decision = _decision("left-behind")
    decision["ts"] = time.time()
    gone.append(dumps(decision))
    path = gone.release()
    assert path is not None
    with read_only(directory), caplog.at_level(logging.WARNING, logger="bandit_router"):
        with TestClient(create_app(settings)) as client:
            r = client.post("/reward", json={"event_id": "left-behind", "reward": 0.5})
            assert r.status_code == 200, r.text
            router: Router = client.app.state.routers.default  # type: ignore[attr-defined]
            for _ in range(3):
                client.portal.call(router.flush)  # type: ignore[union-attr]
        said = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(said) == 2, said  # its decisions written, and that it cannot be deleted
    assert any("cannot be deleted" in s for s in said), said


def test_the_journal_stays_within_the_buffer_bound_through_a_long_outage(
    make_settings: SettingsFactory, redis_process: RedisProcess
) -> None:
    """The full buffer drops its oldest decisions (drop_oldest): the journal lets them go too,
    so a long outage fills neither the disk nor, after the process is gone, Redis, past twice
    what the buffer may hold."""
    settings = make_settings(redis_url=redis_process.url, decision_buffer=3)
    with TestClient(create_app(settings)) as client:
        redis_process.kill()
        during = [_choose(client, f"q{i}") for i in range(40)]
        lines = _journal_lines(settings)
        assert len(lines) <= 6, len(lines)
        assert [r["event_id"] for r in lines[-3:]] == [d["event_id"] for d in during[-3:]]
    redis_process.start()
    with TestClient(create_app(settings)) as client:
        assert client.get("/stats").json()["decisions"] <= 6
        for d in during[-3:]:
            r = client.post("/reward", json={"event_id": d["event_id"], "reward": 0.5})
            assert r.status_code == 200, r.text


def test_a_journalled_decision_older_than_its_keys_lifetime_is_let_go(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Its window is long closed, so no reward can join it, and it may have been written and
    learned already, its keys since expired: written again, its window would close anew."""
    settings = make_settings()
    journal = Journal(Path(settings.data_dir) / "buffer", settings.key_prefix)
    fresh, stale = _decision("fresh", "7b"), _decision("stale", "7b")
    for record in (fresh, stale):
        record.update(arms=["4b", "7b"], probabilities={"4b": 0.5, "7b": 0.5})
    fresh["ts"] = time.time()
    stale["ts"] = time.time() - 3 * 3600  # the keys live 2 hours by default
    journal.append(dumps(fresh))
    journal.append(dumps(stale))
    journal.release()
    with (
        caplog.at_level(logging.WARNING, logger="bandit_router"),
        TestClient(create_app(settings)) as client,
    ):
        assert client.get("/stats").json()["decisions"] == 1
        assert client.post("/reward", json={"event_id": "fresh", "reward": 1}).status_code == 200
        assert client.post("/reward", json={"event_id": "stale", "reward": 1}).status_code == 404
    said = [m for m in caplog.messages if "wrote 1 decisions from" in m]
    assert len(said) == 1 and "1 older than their keys' lifetime were let go" in said[0]


def test_a_journal_that_fills_its_disk_holds_whole_decisions_and_a_stop_says_what_is_lost(
    make_settings: SettingsFactory, redis_process: RedisProcess, tmp_path: Path
) -> None:
    """A journal that cannot take every decision (its disk full) keeps whole lines only; a stop
    while Redis is down says how many decisions it holds and how many are lost, with no
    traceback and the rest of the stop done; the next process writes those it holds."""
    settings = make_settings(redis_url=redis_process.url)
    with _service(settings, partial(_files_limited, 3000)) as (base, said_by_it):
        redis_process.kill()
        with httpx.Client(base_url=base) as client:
            during = [_choose(client, f"question number {i}") for i in range(10)]
        assert all(d["degraded"] for d in during)
    output = said_by_it[0]
    journals = list((Path(settings.data_dir) / "buffer").glob("*.jsonl"))
    assert len(journals) == 1
    held = [json.loads(line)["event_id"] for line in journals[0].read_bytes().splitlines()]
    assert 0 < len(held) < 10
    assert "Traceback" not in output and "shutdown failed" not in output, output
    said = [line for line in output.splitlines() if "degraded=true" in line]
    assert len(said) == 1, output
    assert f"{len(held)} decisions answered with degraded=true are kept in" in said[0]
    assert f"{10 - len(held)} more" in said[0] and "lost" in said[0], said[0]

    redis_process.start()
    with TestClient(create_app(settings)) as client:
        for d in during:
            r = client.post("/reward", json={"event_id": d["event_id"], "reward": 0.5})
            assert r.status_code == (200 if d["event_id"] in held else 404), r.text
    assert not journals[0].exists()
