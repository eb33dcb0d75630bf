"""The service process: what stops it while it starts, and when its supervisor dies."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from bandit_router.http.requestlog import bound_request_log

log = logging.getLogger("bandit_router")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_HANDLER = "bandit_router"  # the handler configure_logging adds: the process's logging is ours


def configure_logging(level: str = "info") -> None:
    """The service's log lines at ``level`` (``BANDIT_LOG_LEVEL``; uvicorn's ``trace`` is
    ``debug`` here) and above, each with its time and level; the handler is added unless this
    process's logging is configured already. A worker uvicorn spawns (``--workers`` above 1) is
    a new interpreter that the command's own configuration never reached: there the info lines
    (a learner taking the lease, a policy switch, a promotion) were dropped, and the warnings
    printed bare, with no time or level. uvicorn's lines for each request are bounded
    (``requestlog``)."""
    bound_request_log()
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        root.handlers[0].set_name(LOG_HANDLER)
    if any(handler.get_name() == LOG_HANDLER for handler in root.handlers):
        # Ours to set; an app embedding the service, or a test harness, sets its own.
        log.setLevel(logging.DEBUG if level == "trace" else level.upper())


class StartStopped(Exception):
    """A signal stopped the process while it started."""


@contextmanager
def stoppable_start() -> Iterator[asyncio.Event]:
    """Let SIGTERM and SIGINT stop the start-up: uvicorn only takes note of them until start-up
    ends, so a process waiting for Redis would wait out BANDIT_STARTUP_WAIT_S first. A stop
    uvicorn noted before the block (a signal while the app was imported) stops it too. The
    handlers in place still run (uvicorn then stops as it would), and are put back after. In
    the main thread only, where signals arrive.

    The start is cancelled, and the event yielded is set, for the replay of the log to look at
    between events (``load_model``): on Python 3.11 a cancel that comes while redis-py sends
    a command (its ``asyncio.wait_for``) is lost once the send is done, so a start that replays
    a long log went on to its end."""
    stopping = asyncio.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    caught: list[int] = []
    previous: dict[int, Any] = {}
    starting = [True]

    def cancel() -> None:
        if starting[0] and task is not None:  # else start-up ended first: uvicorn stops it
            stopping.set()
            task.cancel()

    def stop(signum: int, frame: Any) -> None:
        caught.append(signum)
        loop.call_soon_threadsafe(cancel)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)

    for each in (signal.SIGTERM, signal.SIGINT):
        previous[each] = signal.signal(each, stop)
    if _noted_stop(previous.values()):  # a signal before this block: while the app was imported
        caught.append(0)
        loop.call_soon(cancel)
    try:
        yield stopping
    except asyncio.CancelledError:
        if not caught:
            raise
        name = signal.Signals(caught[0]).name if caught[0] else "a signal"
        raise StartStopped(
            f"{name} while starting (waiting for Redis, or loading the model): stopped"
        ) from None
    finally:
        starting[0] = False
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def stop_noted(stopping: asyncio.Event) -> Iterator[None]:
    """Set ``stopping`` on SIGTERM or SIGINT while the service serves, for a request's long
    replay of the log (a policy switch's relearning: ``Learner.stopping``) to look at between
    events: uvicorn only takes note of them, then waits for the requests in flight (up to
    BANDIT_SHUTDOWN_TIMEOUT_S) before the lifespan ends and stops the learner. A stop uvicorn
    noted before the block sets it too; the handlers in place still run, and are put back after.
    In the main thread only, where signals arrive, and for the signals a handler takes (a
    signal left to its default action still ends the process at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def stop(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(stopping.set)
        previous[signum](signum, frame)

    for each in (signal.SIGTERM, signal.SIGINT):
        if callable(signal.getsignal(each)):
            previous[each] = signal.signal(each, stop)
    if _noted_stop(previous.values()):
        stopping.set()
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _noted_stop(handlers: Iterable[Any]) -> bool:
    """Whether the uvicorn server whose signal handler is in place has taken note of a stop:
    its ``should_exit``, public (users set it to stop a server), read through its bound
    handler, as the app is not given its server."""
    servers = (getattr(handler, "__self__", None) for handler in handlers)
    return any(getattr(server, "should_exit", False) is True for server in servers)


def stop_with_supervisor() -> None:
    """In a uvicorn worker (``--workers`` above 1, spawned by multiprocessing): ``stop_with``
    its supervisor."""
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        stop_with(parent.pid)


def stop_with(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when ``parent`` dies: uvicorn's supervisor
    killed (SIGKILL) would otherwise leave its workers serving, and holding the port. Linux
    only (``PR_SET_PDEATHSIG``)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("worker not tied to its supervisor: prctl failed (%s)", ctypes.get_errno())
        return
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)
