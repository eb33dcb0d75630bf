"""Outage: what a process's background jobs say in the log while Redis is unavailable."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger("bandit_router")
# Said at once, then at most once in this many seconds with the failures not said: every job
# fails every period of an outage (the learner each second), and a line each would flood the log.
SAID_EVERY_S = 60.0


class Outage:
    """The background jobs' failures to reach Redis, said in the log at a bounded rate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._said = -math.inf
        self._unsaid: Counter[str] = Counter()

    def failed(self, job: str, error: Exception) -> None:
        now = self._clock()
        if now - self._said < SAID_EVERY_S:
            self._unsaid[job] += 1
            return
        more = ""
        if self._unsaid:
            counts = ", ".join(f"{name} {n}" for name, n in sorted(self._unsaid.items()))
            more = f" (failures not said in the last {now - self._said:.0f} s: {counts})"
        self._said, self._unsaid = now, Counter()
        log.warning("%s waiting for Redis: %s%s", job, error, more)
