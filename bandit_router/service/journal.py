"""Journal: the decision buffer's copy on disk, so a process that stops or dies while Redis is
down does not take the decisions it answered with it.

Each process of a deployment appends the decisions it buffers, one JSON line each, to a file of
its own that it holds an exclusive ``flock`` on for as long as the file is its own. The kernel
drops the lock when the process ends, however it ends, so a journal whose lock another process
can take belongs to a process that is gone: that process writes its decisions to Redis (writing
a decision twice keeps the first) and deletes the file. Lines are written as the decisions are
answered, so they survive the process at once; they are synced to the disk each second (``sync``),
so a machine that goes down loses a second of them at most, as the embedded Redis's append-only
file does (``appendfsync everysec``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from bandit_router.store.records import dumps, read_choice

log = logging.getLogger("bandit_router")
SUFFIX = ".jsonl"
# A journal before it takes its name: what it holds is in a journal of its owner's too (empty
# when new, the buffer's contents when rewritten), so one left by a crash is debris once its
# lock is free and it is older than any creation takes.
TEMPORARY = ".new"
DEBRIS_AFTER_S = 60.0


class Journal:
    """The journals of one deployment (``prefix``) in ``directory``: this process's, and those
    of processes that are gone."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.directory = directory
        # Every file of the deployment starts so: a digest, as prefixes may start alike.
        digest = hashlib.sha256(prefix.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        self._stem = f"{digest}.{quote(prefix, safe='')}."
        self._file: IO[bytes] | None = None  # this process's journal, locked, while it has one
        self.path: Path | None = None  # its name
        self.size = 0  # bytes of its lines, the buffer's and those it has let go since
        self._failed = False  # said once: the directory cannot be written
        self._unsynced = False  # lines appended since the last sync
        self._renamed = False  # a journal named since the last sync: its directory to sync
        self._sync_failed = False  # said once
        # Gone processes' journals written to Redis that could not be deleted (a directory
        # become read-only): not written again by this process at each flush.
        self._written: set[tuple[int, int]] = set()

    def append(self, encoded: bytes) -> bool:
        """Add a buffered decision, ``dumps`` of its record; False when the journal cannot take
        it (a read-only or full disk): the decision is then in memory only, said once in the
        log. A line cut short by a full disk is cut off, so the journal holds whole lines."""
        try:
            if self._file is None:
                self._file, self.path = self._create(b"")
            fd = self._file.fileno()
            end = os.fstat(fd).st_size
            try:
                _write_all(fd, encoded + b"\n")
            except OSError:
                os.ftruncate(fd, end)  # appended at the end (O_APPEND): what came before stays
                raise
            self.size += len(encoded) + 1
            self._unsynced = True
            return True
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.error(
                    "decisions answered while Redis is down that the journal in %s cannot take "
                    "(%s; BANDIT_BUFFER_DIR) are kept in memory only: a stop before Redis "
                    "returns loses them",
                    self.directory,
                    e,
                )
            return False

    def keep_only(self, records: Iterable[dict[str, Any]]) -> bool:
        """Make this process's journal hold ``records`` only (what the buffer still holds after
        a flush, or after it let decisions go); none: delete it. False when it could not, the
        journal left as it was."""
        if self._file is None or self.path is None:
            return False
        data = b"".join(dumps(r) + b"\n" for r in records)
        self.size = len(data)  # failed, tried again after as many more lines
        try:
            if data:
                new, _ = self._create(data, self.path)  # renamed over the old one
            else:
                os.unlink(self.path)
                new, self.path = None, None
        except OSError as e:
            log.warning("the decision journal %s was not rewritten: %s", self.path, e)
            return False
        self._file.close()
        self._file = new
        return True

    async def sync(self) -> None:
        """Have the disk hold the lines appended, and the journal's name, since the last sync:
        run each second while the journal is in use."""
        if self._file is None or not (self._unsynced or self._renamed):
            return
        fd = os.dup(self._file.fileno())  # a rewrite may close the file meanwhile
        renamed, self._unsynced, self._renamed = self._renamed, False, False
        try:
            await asyncio.to_thread(_sync_and_close, fd, self.directory if renamed else None)
        except OSError as e:
            self._said_unsynced(e)

    def deleted(self) -> bool:
        """Whether this process's journal has lost its name (deleted by hand, or by a cleaner of
        its directory): its lines would die with the process."""
        if self._file is None:
            return False
        try:
            return os.fstat(self._file.fileno()).st_nlink == 0
        except OSError:
            return False

    def release(self) -> Path | None:
        """Let the journal go as the process stops, synced: what it holds stays for another
        process of the deployment to write. Its path, if it has one (none: deleted meanwhile,
        so nothing stays)."""
        path = None if self.deleted() else self.path
        if self._file is not None:
            if self._unsynced or self._renamed:
                try:
                    _sync(self._file.fileno(), self.directory if self._renamed else None)
                except OSError as e:
                    self._said_unsynced(e)
            self._file.close()  # unlocks it
        self._file, self.path = None, None
        self._unsynced = self._renamed = False
        return path

    def _said_unsynced(self, error: OSError) -> None:
        if not self._sync_failed:
            self._sync_failed = True
            log.error(
                "the decision journal %s cannot be synced to disk (%s): its decisions survive "
                "this process, not the machine",
                self.path,
                error,
            )

    def orphans(self) -> Iterator[Orphan]:
        """The journals of the deployment's processes that are gone, each locked while it is
        handled; none when the directory does not exist."""
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return
        for name in names:
            path = self.directory / name
            if name.startswith(self._stem) and name.endswith(TEMPORARY):
                _delete_debris(path)
                continue
            if not (name.startswith(self._stem) and name.endswith(SUFFIX)) or path == self.path:
                continue
            try:
                handle = open(path, "rb")  # noqa: SIM115 (held locked until handled)
            except OSError:  # its owner deleted it meanwhile
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its owner is alive
                handle.close()
                continue
            with contextlib.closing(handle):
                stat = os.fstat(handle.fileno())
                written = (stat.st_dev, stat.st_ino) in self._written
                if _same_file(path, handle) and not written:  # else rewritten by its owner
                    yield Orphan(path, handle, self._written)

    def _create(self, data: bytes, path: Path | None = None) -> tuple[IO[bytes], Path]:
        """A journal holding ``data`` (lines) at ``path`` (default: a new name), locked before it
        takes its name, so that a process scanning for orphans never sees it unlocked."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{self._stem}{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        path = path or self.directory / (name + SUFFIX)
        temporary = self.directory / (name + TEMPORARY)
        # Readable by the service's user only, as the decisions in Redis are by its clients.
        # Unbuffered, appending: a write that fails leaves nothing in a buffer to fail again at
        # close, and what it wrote of a line is at the end, to cut off.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        handle = open(fd, "wb", buffering=0)  # noqa: SIM115 (the journal from now on)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, data)
            if data:  # a rewrite: its lines on disk before it replaces the journal that holds them
                os.fsync(handle.fileno())
            os.replace(temporary, path)
            self._renamed = True
        except BaseException:
            handle.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return handle, path


class Orphan:
    """A gone process's journal, locked by this one: its decisions, then ``done``."""

    def __init__(self, path: Path, handle: IO[bytes], written: set[tuple[int, int]]) -> None:
        self.path = path
        self._handle = handle
        self._written = written

    def records(self) -> Iterator[dict[str, Any]]:
        """Its decisions; a line that is no decision (cut short by a crash, edited) is skipped
        with a warning."""
        self._handle.seek(0)
        for number, line in enumerate(self._handle, 1):
            try:
                yield read_choice(line)
            except ValueError as e:
                log.warning("%s line %d is not a decision, skipped: %s", self.path, number, e)

    def done(self) -> None:
        """Every decision is in Redis: the journal goes. One that cannot (its directory no
        longer writable) stays, said in the log, and this process does not write it again."""
        if not _same_file(self.path, self._handle):
            return
        try:
            os.unlink(self.path)
        except OSError as e:
            stat = os.fstat(self._handle.fileno())
            self._written.add((stat.st_dev, stat.st_ino))
            log.error(
                "the decision journal %s, written to Redis, cannot be deleted (%s): delete it "
                "once its directory is writable (BANDIT_BUFFER_DIR)",
                self.path,
                e,
            )


def _delete_debris(path: Path) -> None:
    """Delete ``path``, a journal's temporary file, if its creation ended long ago unfinished.
    One younger is not opened: its creator may not have locked it yet, and locked here it would
    find it taken and fail."""
    try:
        if time.time() - os.stat(path).st_mtime < DEBRIS_AFTER_S:
            return
        with open(path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # its creator is done with it
            stat = os.fstat(handle.fileno())
            if time.time() - stat.st_mtime >= DEBRIS_AFTER_S and _same_file(path, handle):
                os.unlink(path)
    except OSError:  # locked (being created), gone, or undeletable: left as it is
        pass


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``: a write may take only part of it (a disk filling up)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if not written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def _sync(fd: int, directory: Path | None) -> None:
    """Sync the file ``fd`` and, if given, ``directory`` (the names in it)."""
    os.fsync(fd)
    if directory is not None:
        handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _sync_and_close(fd: int, directory: Path | None) -> None:
    """``_sync``, then close ``fd``: in the thread that uses it, so a caller cancelled meanwhile
    closes nothing under it."""
    try:
        _sync(fd, directory)
    finally:
        os.close(fd)


def _same_file(path: Path, handle: IO[bytes]) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(handle.fileno()))
    except FileNotFoundError:
        return False
