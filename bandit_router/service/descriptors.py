"""File descriptors: a process at its limit (RLIMIT_NOFILE) fails in ways that say little. Its
event loop (uvloop, libuv) closes each new connection unanswered, and says nothing; a new Redis
connection, a temporary file (the model's save: "No usable temporary directory") and the
journal fail. So the service counts its open files each second and says, as an error, when
they reach the limit."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource

from bandit_router.throttle import Throttle

log = logging.getLogger("bandit_router")
SAID_EVERY_S = 60.0
FDS = "/proc/self/fd"  # Linux; elsewhere nothing is counted


def open_files(limit: int) -> int | None:
    """How many files this process has open (``limit`` when it has no room left to list them);
    None where the system does not tell."""
    try:
        return len(os.listdir(FDS)) - 1  # less the one listing it
    except OSError as e:
        return limit if e.errno == errno.EMFILE else None


class DescriptorWatch:
    """Says, at most once a minute, that the process has as many open files as it may."""

    def __init__(self) -> None:
        self._throttle = Throttle()

    async def check(self) -> None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY:
            return
        count = await asyncio.to_thread(open_files, limit)  # a long listing, off the event loop
        if count is None or count < limit - max(1, limit // 100):
            return
        due = self._throttle.due(SAID_EVERY_S, kind="at the limit")
        if due is None:
            return
        log.error(
            "this process has %d open files, at its limit of %d (RLIMIT_NOFILE, ulimit -n): a "
            "new connection is closed unanswered, and new Redis connections, temporary files "
            "and journals fail; raise the limit (systemd: LimitNOFILE=), or have clients open "
            "fewer connections%s",
            count,
            limit,
            f" (at the limit {due.count} more times since the last said)" if due.count else "",
        )
