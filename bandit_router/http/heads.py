"""Request heads, and responses a client stops reading, in bounded time:
``BANDIT_HEAD_TIMEOUT_S`` and ``BANDIT_SEND_TIMEOUT_S``.

uvicorn bounds the idle time between requests (its keep-alive timeout, cancelled by the first
byte of the next request) but not the time a request line and its headers take to arrive, and
it sets no timer at all on a new connection: a client that trickles its heads, or opens
connections and sends nothing, holds them (and their file descriptors) as long as it likes.

``HeadDeadline`` is the protocol class given to uvicorn (``Config(http=...)``). It composes
uvicorn's own HTTP protocol, built with the arguments uvicorn passes, hands it every callback,
and follows the bytes it passes on with a small scan: the end of each head, then the body the
head declares (Content-Length or chunked), so that a keep-alive connection's next head is timed
too and a body never is (bodies are bounded by ``BANDIT_BODY_TIMEOUT_S``, in ``read_body``). A
head not complete in time has its connection closed, after a 408 when nothing else was asked
on the connection (so no response of uvicorn's can be under way there).

The scan follows the parser uvicorn runs. httptools (llhttp, uvicorn's default) ends HTTP at a
head that asks to switch protocols (a ``CONNECT``, or an ``Upgrade`` beside ``Connection:
upgrade``): it reads no body after it, and uvicorn, when it does not switch (anything but a
WebSocket), drops the rest of that read and parses the next one as a new request. Followed as
h11 reads it (the body its length declares), such a head would let a client's next heads go
untimed.

Nor does uvicorn bound the requests a client sends ahead of its answers (pipelined): httptools
parses every head of each read at once and queues each parsed request until its turn (a 24-byte
request became about 2 KiB held: 8 MB of them sent on one connection, 750 MB held by the
process), and reads more each time it answers one. A connection is closed, the rest of that read
not parsed, once the requests it has waiting (parsed and queued, or complete in the read) would
pass ``PIPELINED_LIMIT``.

uvicorn times no write either: a client that stops reading a long response (a gateway stream,
say) would hold its connection, and the call behind it (a gateway slot, an upstream's stream),
for as long as it liked. The transport tells its protocol when its buffer fills
(``pause_writing``) and drains (``resume_writing``): a connection whose buffer stays full for
the send timeout is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, ClassVar, cast

import orjson
from pydantic_settings import BaseSettings
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from bandit_router.settings import Settings
from bandit_router.throttle import Throttle

log = logging.getLogger("bandit_router")

SAID_EVERY_S = 10.0  # closed connections are said at most this often, with a count
HEAD_LIMIT = 65_536  # longest head followed (h11, uvicorn's other parser, refuses past 16 KiB)
PIPELINED_LIMIT = 64  # requests a connection may have waiting for their turn (module docstring)

# What the scan expects next on a connection.
HEAD, LENGTH, CHUNK_LINE, CHUNK, CHUNK_END, TRAILERS, OFF = range(7)

_END = re.compile(rb"\n\r?\n")  # the empty line that ends a head (parsers accept a bare LF)
_FRAMING = re.compile(rb"\n(content-length|transfer-encoding)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")
# What makes llhttp read a head as a switch of protocols: an Upgrade header with a value, and
# ``upgrade`` among the comma-separated tokens of a Connection (or Proxy-Connection) header.
_UPGRADE = re.compile(rb"\nupgrade[ \t]*:[ \t]*[^ \t\r\n]", re.IGNORECASE)
_CONNECTION = re.compile(rb"\n(?:proxy-)?connection[ \t]*:([^\r\n]*)", re.IGNORECASE)
_LINE_KEPT = 64  # of a chunk-size or trailer line, all the scan needs


def uvicorn_protocol(http: str) -> Callable[..., asyncio.Protocol]:
    """uvicorn's HTTP protocol class named as ``Config(http=...)`` names it: auto, h11,
    httptools (looked up as uvicorn's ``Config.load`` does)."""
    return cast(Callable[..., asyncio.Protocol], import_from_string(HTTP_PROTOCOLS[http]))


class HeadDeadline(asyncio.Protocol):
    """uvicorn's HTTP protocol, composed, with each request head bounded in time: from the
    connection's start for its first request, from its first byte for each next one."""

    protocol: ClassVar[Callable[..., asyncio.Protocol]]  # uvicorn's own
    switch_ends_read: ClassVar[bool] = False  # its parser is httptools (module docstring)
    timeout_s: ClassVar[float]
    stall_s: ClassVar[float]
    said: ClassVar[Throttle]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.inner = self.protocol(*args, **kwargs)  # with uvicorn's arguments, as they are
        self.deadline_s = self.head_timeout_s()
        self.stalled_s = self.send_timeout_s()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.stall: asyncio.TimerHandle | None = None  # while the transport's buffer is full
        self.state = HEAD
        self.head = bytearray()  # the head so far (from its request line)
        self.heard = False  # a byte of the head now timed has arrived
        self.line = b""  # the start of a chunk-size or trailer line
        self.left = 0  # bytes of the body or chunk still to come
        self.requests = 0  # heads complete on this connection

    @classmethod
    def head_timeout_s(cls) -> float:
        return cls.timeout_s

    @classmethod
    def send_timeout_s(cls) -> float:
        return cls.stall_s

    # asyncio.Protocol: each callback goes on to uvicorn's protocol.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.inner.connection_made(transport)
        self.arm()  # a connection that sends nothing is a head that never completes

    def data_received(self, data: bytes) -> None:
        if self.state != OFF:
            heads = self.requests
            self.scan(data)
            if self.transport is not None and self.transport.is_closing():
                return  # refused by the scan: uvicorn has nothing to parse
            # the requests httptools has parsed and queued (h11 parses none ahead)
            queued = len(getattr(self.inner, "pipeline", ()))
            if queued + self.requests - heads > PIPELINED_LIMIT:
                self.overrun(queued + self.requests - heads)
                return
        self.inner.data_received(data)
        transport = self.transport
        if transport is not None and transport.get_protocol() is not self:
            # uvicorn handed the connection over (a WebSocket): not HTTP any more, and its
            # callbacks (resume_writing, connection_lost) go to the new protocol from now on
            self.stop()
            self.unstall()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop()
        self.unstall()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()
        if self.stall is None:
            self.stall = asyncio.get_running_loop().call_later(self.stalled_s, self.stalled)

    def resume_writing(self) -> None:
        self.unstall()
        self.inner.resume_writing()

    # A response the client does not read.

    def unstall(self) -> None:
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def stalled(self) -> None:
        # A closing transport is aborted too: a close waits for the buffer to drain, and
        # uvicorn closes once a response is written (a `connection: close`, its keep-alive
        # timeout), its last piece perhaps still buffered.
        self.stall = None
        if self.transport is None:
            return
        self.say(f"response not read for {self.stalled_s:g} s (BANDIT_SEND_TIMEOUT_S)", "send")
        self.stop()
        self.transport.abort()  # what is buffered cannot be sent: close() would wait for it

    # The deadline.

    def arm(self) -> None:
        if self.timer is None and self.state != OFF:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.deadline_s, self.expired)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def stop(self) -> None:
        """No more timing of heads on this connection: closed, handed over, or its bytes not
        followed."""
        self.disarm()
        self.state = OFF
        self.head = bytearray()

    def expired(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.is_reading():  # uvicorn holds a pipelined request back: not the client
            self.arm()
            return
        self.refuse(
            408,
            f"request head not received within {self.deadline_s:g} s (BANDIT_HEAD_TIMEOUT_S)",
        )

    def overrun(self, waiting: int) -> None:
        """Close a connection with more than ``PIPELINED_LIMIT`` requests waiting: no answer,
        as answers go in order and the earlier ones are not all sent."""
        assert self.transport is not None
        self.say(f"{waiting} requests sent ahead of their answers, over {PIPELINED_LIMIT}", "ahead")
        self.transport.close()
        self.stop()

    def say(self, detail: str, kind: str) -> None:
        """Say that the connection was closed and why: each kind (``head``, ``send``, ``ahead``)
        at once, then at most every ``SAID_EVERY_S`` with the count of its own not said."""
        assert self.transport is not None
        due = self.said.due(SAID_EVERY_S, kind)
        if due is None:
            return
        peer = self.transport.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a client"
        more = f" ({due.count} more since the last said)" if due.count else ""
        log.warning("connection from %s closed: %s%s", where, detail, more)

    def refuse(self, status: int, detail: str) -> None:
        assert self.transport is not None
        self.say(detail, "head")
        if self.requests == 0 and self.heard:  # nothing answered or being answered on it yet
            self.transport.write(_response(status, f"{detail}; the connection is closed"))
        self.transport.close()
        self.stop()

    # The scan: where each head ends and how long its body is.

    def scan(self, data: bytes) -> None:
        at, size = 0, len(data)
        while at < size and self.state != OFF:
            state = self.state
            if state == HEAD:
                at = self.scan_head(data, at)
            elif state in (LENGTH, CHUNK):
                step = min(self.left, size - at)
                at += step
                self.left -= step
                if not self.left:
                    self.state = HEAD if state == LENGTH else CHUNK_END
            else:  # a line of chunked framing: its start is all that counts
                newline = data.find(b"\n", at)
                end = size if newline < 0 else newline
                if state == CHUNK_LINE and self.line in (b"", b"0"):
                    # the parsers take a size's leading zeros, as many as sent: one is kept,
                    # so the digits after them are what the line keeps
                    digits = data[at:end].lstrip(b"0")
                    if end - at > len(digits):
                        self.line, at = b"0", end - len(digits)
                if len(self.line) < _LINE_KEPT:
                    self.line += data[at : min(end, at + _LINE_KEPT)]
                if newline < 0:
                    return
                at = newline + 1
                line, self.line = self.line.strip(), b""
                self.chunk_line(state, line)
        if self.state == HEAD and self.heard:  # a head begun in this read, not complete in it
            self.arm()

    def scan_head(self, data: bytes, at: int) -> int:
        size = len(data)
        self.heard = True
        if self.head:  # the rest of a head begun in an earlier read
            before = len(self.head)
            self.head += data[at : at + HEAD_LIMIT + 1 - before]
            found = _END.search(self.head, max(before - 2, 0), HEAD_LIMIT)
            if found is not None:
                head, end = bytes(self.head[: found.end()]), at + found.end() - before
        else:
            while at < size and data[at] in b"\r\n":  # the parsers skip empty lines before one
                at += 1
            found = _END.search(data, at, at + HEAD_LIMIT)
            if found is not None:
                head, end = data[at : found.end()], found.end()
            else:
                self.head += data[at : at + HEAD_LIMIT + 1]
        if found is None:
            if len(self.head) > HEAD_LIMIT:
                self.refuse(431, f"request head longer than {HEAD_LIMIT} bytes")
            return size
        self.head = bytearray()
        if self.head_done(head):
            return size  # what is left of this read is dropped by uvicorn: the next read is a head
        return end

    def head_done(self, head: bytes) -> bool:
        """Follow the body ``head`` declares; True when the parser reads nothing more of this
        read (a switch of protocols under httptools: no body, the next read a new head)."""
        self.disarm()
        self.heard = False
        self.requests += 1
        if self.switch_ends_read and _switches(head):
            return True  # state stays HEAD
        lengths: set[int | None] = set()
        codings: list[bytes] = []
        for name, value in _FRAMING.findall(head):
            if name.lower() == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",")]
            else:
                lengths.update(_length(v) for v in value.split(b","))
        if codings:  # the parsers refuse a request whose last coding is not chunked
            self.state = CHUNK_LINE if codings[-1] == b"chunked" else OFF
        elif lengths:
            length = lengths.pop() if len(lengths) == 1 else None
            if length is None:  # refused by the parsers too: nothing more to follow
                self.state = OFF
            elif length:
                self.left = length
                self.state = LENGTH
        return False

    def chunk_line(self, state: int, line: bytes) -> None:
        if state == CHUNK_LINE:
            digits = line.split(b";", 1)[0].strip()
            size = digits.lstrip(b"0") or digits[:1]  # "000" is 0, "" no size
            if not _HEX.fullmatch(size):
                self.state = OFF
            elif int(size, 16):
                self.left = int(size, 16)
                self.state = CHUNK
            else:
                self.state = TRAILERS
        elif state == CHUNK_END:
            self.state = OFF if line else CHUNK_LINE
        elif not line:  # the empty line after the trailers ends the body
            self.state = HEAD


def _switches(head: bytes) -> bool:
    """Whether llhttp reads ``head`` as a switch of protocols (its rule, token for token)."""
    if head.startswith(b"CONNECT "):
        return True
    if _UPGRADE.search(head) is None:
        return False
    return any(
        token.strip(b" \t").lower() == b"upgrade"
        for value in _CONNECTION.findall(head)
        for token in value.split(b",")
    )


def _parses_with_httptools(protocol: Callable[..., asyncio.Protocol]) -> bool:
    try:
        httptools = uvicorn_protocol("httptools")
    except ImportError:  # not installed: uvicorn's parser is h11
        return False
    return isinstance(protocol, type) and issubclass(protocol, cast(type, httptools))


def _length(value: bytes) -> int | None:
    """A Content-Length value, or None when it is none (digits only, as the parsers take)."""
    digits = value.strip()
    if not digits.isdigit():
        return None
    digits = digits.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= 18 else None


def _response(status: int, detail: str) -> bytes:
    body = orjson.dumps({"detail": detail, "field": "head"})
    reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
    )


def head_deadline(
    timeout_s: float,
    http: str = "auto",
    send_timeout_s: float = Settings.model_fields["send_timeout_s"].default,
) -> type[HeadDeadline]:
    """A protocol class for ``uvicorn.Config(http=...)``: uvicorn's ``http`` protocol with heads
    bounded to ``timeout_s`` and unread responses to ``send_timeout_s``. Made at run time, it
    serves in this process only: uvicorn's worker processes import theirs by name
    (``ServedHeads``)."""
    bounded = cast(type[HeadDeadline], type("HeadDeadline", (HeadDeadline,), {}))
    bounded.protocol = uvicorn_protocol(http)
    bounded.switch_ends_read = _parses_with_httptools(bounded.protocol)
    bounded.timeout_s = timeout_s
    bounded.stall_s = send_timeout_s
    bounded.said = Throttle()
    return bounded


class _Timeouts(BaseSettings):
    """BANDIT_HEAD_TIMEOUT_S and BANDIT_SEND_TIMEOUT_S alone, declared and checked as in
    ``Settings``."""

    model_config = Settings.model_config
    head_timeout_s: Annotated[float, Settings.model_fields["head_timeout_s"]] = (
        Settings.model_fields["head_timeout_s"].default
    )
    send_timeout_s: Annotated[float, Settings.model_fields["send_timeout_s"]] = (
        Settings.model_fields["send_timeout_s"].default
    )


@cache
def _served() -> _Timeouts:
    return _Timeouts()


class ServedHeads(HeadDeadline):
    """``bandit-router serve``'s protocol class, on uvicorn's default protocol. Each worker
    process imports it by name and reads BANDIT_HEAD_TIMEOUT_S and BANDIT_SEND_TIMEOUT_S from
    the environment, as its app
    reads its settings (``app_from_env``); ``serve`` has checked them all before."""

    protocol = uvicorn_protocol("auto")
    switch_ends_read = _parses_with_httptools(protocol)
    said = Throttle()

    @classmethod
    def head_timeout_s(cls) -> float:
        return _served().head_timeout_s

    @classmethod
    def send_timeout_s(cls) -> float:
        return _served().send_timeout_s
