"""Redis's clock, as a process reads it: the one clock of a deployment's reward windows.

A decision's time, the end of its window, a reward's time and the sweep's "now" are compared
across processes (a part taken by one process for a decision another made, a window one process
closes for a decision another made), so they are all read off one clock, Redis's, whatever the
hosts' own clocks say: a host whose clock is off, or is stepped while the process runs, decides
and judges windows as the others do.
"""

from __future__ import annotations

import time
from functools import partial

# The time since a reading: monotonic, so a step of the host's clock is not in it, and on Linux
# counting the time the host was suspended too (CLOCK_MONOTONIC stops then).
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)
elapsed = time.monotonic if _BOOTTIME is None else partial(time.clock_gettime, _BOOTTIME)


class RedisClock:
    """Redis's time (``TIME``) at the last reading plus this process's monotonic time since
    (``elapsed``), so that a step of this host's clock (NTP, by hand) changes nothing. Read off
    within half a round trip. Until a first reading (Redis unreachable so far), the host's clock.
    """

    def __init__(self) -> None:
        self._offset: float | None = None  # Redis's time minus this process's ``elapsed``

    def now(self) -> float:
        """Redis's time now, in Unix seconds, as this process last read it."""
        if self._offset is None:
            return time.time()
        return elapsed() + self._offset

    def reading(self, redis_s: float, sent: float, back: float) -> None:
        """Take ``redis_s``, Redis's time read between the times ``sent`` and ``back`` (of
        ``elapsed``; taken as their middle). A reading says only that the offset lies between
        ``redis_s - back`` and ``redis_s - sent``: one the last reading gave that still does is
        kept, as a reading whose call waited (the event loop busy, a pool with no connection
        free) is wide, and its middle off by up to half the wait until the next sweep."""
        low, high = redis_s - back, redis_s - sent
        if self._offset is None or not low <= self._offset <= high:
            self._offset = (low + high) / 2

    def host_off(self) -> float:
        """How far this host's clock is ahead of Redis's (behind: negative), in seconds."""
        return time.time() - self.now()

    @property
    def read(self) -> bool:
        """Whether Redis's clock has been read yet."""
        return self._offset is not None
