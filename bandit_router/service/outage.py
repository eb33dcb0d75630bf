"""Outage: what a process's background jobs say in the log while Redis is unavailable."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from bandit_router.throttle import Throttle

log = logging.getLogger("bandit_router")
# Said at once, then at most once in this many seconds with the failures not said: every job
# fails every period of an outage (the learner each second), and a line each would flood the log.
SAID_EVERY_S = 60.0


def _counts(unsaid: Counter[str]) -> str:
    return ", ".join(f"{job} {n}" for job, n in sorted(unsaid.items()))


class Outage:
    """The background jobs' failures to reach Redis, said in the log at a bounded rate, and
    its end, once said to have begun (at most once in ``SAID_EVERY_S`` too: a Redis that comes
    and goes is a few lines a minute). An outage after an end said is said at once.

    It ends when every job that failed in it has since succeeded: a Redis that refuses writes
    answers reads, so one job's read passing says nothing of the others' writes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._throttle = Throttle(clock)
        self._began: float | None = None  # this outage, when one of its failures was said
        self._ended = False  # the log's last word was that Redis is back
        self._failing: set[str] = set()  # the jobs whose last run failed
        self._back: float | None = None  # when the outage said ended, if its end is not said yet
        self.where = ""  # which deployment's, where a process serves several ("support: ")

    def failed(self, job: str, error: Exception) -> None:
        self._failing.add(job)
        self._back = None
        if self._ended:
            self._throttle.forget("down")
            self._ended = False
        due = self._throttle.due(SAID_EVERY_S, "down", job)
        if due is None:
            return
        if self._began is None:
            self._began = self._clock()
        more = ""
        if due.unsaid:
            more = f" (failures not said in the last {due.after_s:.0f} s: {_counts(due.unsaid)})"
        log.warning("%s%s waiting for Redis: %s%s", self.where, job, error, more)

    def reached(self, job: str) -> None:
        """``job`` ran without failing: the outage said, if any, is over once no job fails."""
        self._failing.discard(job)
        if self._began is None or self._failing:
            return
        now = self._clock()
        if self._back is None:
            self._back = now
        if self._throttle.due(SAID_EVERY_S, "back") is None:
            return  # said when next due, so that the log never ends on an outage that is over
        began, back, self._began, self._back = self._began, self._back, None, None
        unsaid = self._throttle.forget("down").unsaid
        more = f" (failures not said: {_counts(unsaid)})" if unsaid else ""
        if now - back >= 1:
            more += f" ({now - back:.0f} s ago: one such line a minute at most)"
        log.warning(
            "%sRedis reachable again, %.0f s after it was said not to be%s",
            self.where,
            back - began,
            more,
        )
        self._ended = True
