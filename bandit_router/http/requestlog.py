"""The lines uvicorn logs for each request, bounded: what a client sends cannot make them long,
nor, for the warnings, many.

uvicorn's access line quotes the request target whole, and the client's address, which it takes
from ``X-Forwarded-For`` on a connection from a trusted proxy (loopback, by default): a client
could have each request write 60 KB to the log (a 64 KiB head holds that much). Its warnings about
a request it cannot serve (a malformed one, an upgrade it does not speak) are a line per request,
at ``warning``, so a client could fill the disk at its request rate even with the access log off.
"""

from __future__ import annotations

import logging

from bandit_router.throttle import Throttle

ACCESS_LOGGER = "uvicorn.access"
ERROR_LOGGER = "uvicorn.error"  # where uvicorn's HTTP protocols log
ACCESS_CHARS = 256  # of a request target or client address an access line keeps
SAID_EVERY_S = 10.0  # a warning below is said at once, then at most this often, with a count
# uvicorn's warnings (httptools and h11 alike) about one request a client sent.
PER_REQUEST = frozenset(
    {
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
        "No supported WebSocket library detected. Please use \"pip install 'uvicorn[standard]'\","
        " or install 'websockets' or 'wsproto' manually.",
    }
)


def cut(text: str) -> str:
    """``text`` within ACCESS_CHARS, saying how long it was when cut."""
    if len(text) <= ACCESS_CHARS:
        return text
    return f"{text[:ACCESS_CHARS]}...({len(text)} characters)"


class AccessLine(logging.Filter):
    """An access line's client address and request target cut to ACCESS_CHARS each."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's: '%s - "%s %s HTTP/%s" %d', address, method, target, version, status.
        if isinstance(args, tuple) and len(args) == 5:
            address, method, target, version, status = args
            if isinstance(address, str) and isinstance(target, str):
                record.args = (cut(address), method, cut(target), version, status)
        return True


class ErrorLine(logging.Filter):
    """uvicorn's warnings about a client's request, each said at once, then at most once every
    SAID_EVERY_S with the count of those not said; a WebSocket request's line (uvicorn's access
    line for one, logged here) cut as an access line is."""

    def __init__(self) -> None:
        super().__init__()
        self.said = Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            if isinstance(record.msg, str) and record.msg.startswith('%s - "WebSocket %s"'):
                record.args = tuple(cut(a) if isinstance(a, str) else a for a in args)
            return True
        if record.msg not in PER_REQUEST:
            return True
        due = self.said.due(SAID_EVERY_S, record.msg)
        if due is None:
            return False
        if due.count:
            record.msg = f"{record.msg} ({due.count} more since the last said)"
        return True


def bound_request_log() -> None:
    """Put the filters on uvicorn's loggers, once a process (uvicorn's logging configuration,
    which it applies before the app starts, keeps a logger's filters)."""
    for name, kind in ((ACCESS_LOGGER, AccessLine), (ERROR_LOGGER, ErrorLine)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
