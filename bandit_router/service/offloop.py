"""Heavy reads off the event loop: in a thread, with the garbage collector paused meanwhile.

Decoding a big window of the log makes hundreds of thousands of dicts and lists. Each few
hundred of them start a collection, and some of those a full one over the whole heap, in
whichever thread allocates: with the GIL held, so the event loop (every ``/choose``) waits for
it. A thread moves the work off the loop but not the collections. Paused, no collection runs
while the work does; what it made is freed by reference counting when it returns (none of it
is cyclic), which also takes back the allocation counts that would start a collection later.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
# A heavy result is reused, and the next heavy computation waits, this many times as long as it
# took: whatever the clients ask, such work keeps a process busy a tenth of the time at most.
REUSE_FACTOR = 10
T = TypeVar("T")


class _Pause:
    """The collector paused while any thread asks; enabled again (if it was) when none does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads = 0
        self._was_enabled = True

    def __enter__(self) -> None:
        with self._lock:
            if self._threads == 0:
                self._was_enabled = gc.isenabled()
            self._threads += 1
            gc.disable()

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._threads -= 1
            if self._threads == 0 and self._was_enabled:
                gc.enable()


_paused = _Pause()


def without_gc(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` with the garbage collector paused."""
    with _paused:
        return fn(*args, **kwargs)


async def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a thread, with the garbage collector paused meanwhile."""

    def run() -> T:
        with _paused:
            return fn(*args, **kwargs)

    return await asyncio.to_thread(run)
