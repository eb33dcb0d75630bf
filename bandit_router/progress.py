"""Progress on stderr for commands that take more than a moment; silent when not a terminal."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

WIDTH = 30  # characters of the bar


class Progress:
    """A progress bar (with ``total``) or a running count (without), redrawn in place.

    Written only when the stream is a terminal, so logs and pipes stay clean; the final line
    says how many were done and how long it took.
    """

    def __init__(
        self, label: str, total: int | None = None, unit: str = "", stream: TextIO | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.done = 0
        self._live = self.stream.isatty()
        self._start = self._drawn = time.monotonic()

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self._live and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def advance(self, by: int = 1) -> None:
        self.update(self.done + by)

    def _draw(self, now: float, end: str = "") -> None:
        self.stream.write(f"\r{self.render(now - self._start)}{end}")
        self.stream.flush()

    def render(self, elapsed_s: float) -> str:
        count = f"{self.done}{f'/{self.total}' if self.total else ''} {self.unit}".rstrip()
        if not self.total:
            what = f"{count} " if self.unit else ""  # no unit: a phase, not a count
            return f"{self.label}: {what}{elapsed_s:.1f}s"
        share = min(self.done / self.total, 1.0)
        bar = "#" * round(share * WIDTH) + "-" * (WIDTH - round(share * WIDTH))
        return f"{self.label} [{bar}] {share:4.0%} {count} {elapsed_s:.1f}s"

    def __enter__(self) -> Progress:
        if self._live:
            self._draw(time.monotonic())
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live:
            self._draw(time.monotonic(), end="\n" if kind is None else " (stopped)\n")
