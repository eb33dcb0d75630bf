"""Throttle: a repeated warning said at once, then at most once a period, with a count of the
ones not said between, so that a failure that repeats on every call or period (an upstream that
is down, slow clients, Redis unavailable) is a few lines in the log, not a flood."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Due:
    """A warning to say now, with what was not said since the last one of its key."""

    unsaid: Counter[str] = field(default_factory=Counter)  # by kind
    after_s: float = math.inf  # since the last one said (inf: none was)

    @property
    def count(self) -> int:
        return sum(self.unsaid.values())


class Throttle:
    """Which warnings to say: a key's first at once, then at most one every period; those
    between are counted by kind, for the next one said to report."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._said: dict[str, float] = {}
        self._unsaid: dict[str, Counter[str]] = {}

    def due(self, every_s: float, key: str = "", kind: str = "") -> Due | None:
        """A ``Due`` when ``key``'s warning is to be said now; None (and it counted under
        ``kind``) when one was said less than ``every_s`` seconds ago."""
        now = self._clock()
        after_s = now - self._said.get(key, -math.inf)
        if after_s < every_s:
            self._unsaid.setdefault(key, Counter())[kind] += 1
            return None
        self._said[key] = now
        return Due(self._unsaid.pop(key, Counter()), after_s)

    def forget(self, key: str = "") -> Due:
        """Let ``key``'s next warning be said at once; what was not said since its last one."""
        after_s = self._clock() - self._said.pop(key, -math.inf)
        return Due(self._unsaid.pop(key, Counter()), after_s)
