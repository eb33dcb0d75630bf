"""Request heads in bounded time (BANDIT_HEAD_TIMEOUT_S): the app under a real uvicorn on
loopback, h11 and httptools, raw sockets as a slow or hostile client writes them."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import pickle
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.config import HTTP_PROTOCOLS

from bandit_router.http import heads
from bandit_router.http.heads import (
    HEAD_LIMIT,
    PIPELINED_LIMIT,
    HeadDeadline,
    ServedHeads,
    head_deadline,
)
from tests.conftest import SettingsFactory, cli_env, served, wait_until
from tests.live import Servers, close_sdk_clients, sdk_client, serve
from tests.upstreams import DONE, Script, Scripted, chunk, scripted

__all__ = ["close_sdk_clients", "scripted", "serve"]  # the fixtures, imported

Serve = Callable[..., str]
Start = Callable[[dict[str, Script]], tuple[str, Scripted]]
PARSERS = pytest.mark.parametrize("http", ["h11", "httptools"])
# Heads never reach Redis: one backend is enough (the others run both).
ONE_REDIS = pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
FAST = 0.5  # BANDIT_HEAD_TIMEOUT_S in these tests
WAIT_S = 10.0  # how long a test waits for what should come within about FAST
KEY = "service-key-1"
# A head whose trickle at one byte every 0.1 s would take 7.5 s: 15 times FAST.
SLOW_HEAD = (
    b"GET /healthz HTTP/1.1\r\nhost: x\r\nuser-agent: slow\r\naccept: */*\r\nx-pad: abcd\r\n\r\n"
)
GET = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"


class Raw:
    """A client's connection, byte for byte: what it sends, and the responses read off it in
    order (a read may bring the start of the next one: it is kept)."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conn = socket.create_connection((host, int(port)), timeout=WAIT_S)
        self.kept = b""

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def send(self, data: bytes) -> None:
        self.conn.send(data)

    def response(self) -> tuple[int, bytes]:
        """The next response, of known length, on a connection kept open: status and body."""
        while b"\r\n\r\n" not in self.kept:
            self._read()
        head, _, self.kept = self.kept.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if b"content-length" in line)
        while len(self.kept) < length:
            self._read()
        body, self.kept = self.kept[:length], self.kept[length:]
        return int(head.split()[1]), body

    def _read(self) -> None:
        chunk = self.conn.recv(65536)
        assert chunk, f"closed after {self.kept!r}"
        self.kept += chunk

    def until_closed(self) -> bytes:
        """What the server sends until it closes; ``<reset>`` ends a reset connection."""
        reply, self.kept = self.kept, b""
        try:
            while chunk := self.conn.recv(65536):
                reply += chunk
        except ConnectionResetError:
            reply += b"<reset>"
        except TimeoutError:
            reply += b"<still open>"
        return reply

    def trickle(self, head: bytes, every: float = 0.1) -> tuple[int, bytes]:
        """Send ``head`` a byte every ``every`` seconds until the server answers or closes: how
        many bytes went, and what came back until the connection closed."""
        for sent in range(len(head)):
            try:
                self.conn.send(head[sent : sent + 1])
            except OSError:  # reset: the server had closed
                return sent, self.until_closed()
            if select.select([self.conn], [], [], every)[0]:
                return sent + 1, self.until_closed()
        return len(head), self.until_closed()


def _head_408(reply: bytes) -> None:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply
    assert b"connection: close" in head.lower()
    assert json.loads(body) == {
        "detail": f"request head not received within {FAST:g} s (BANDIT_HEAD_TIMEOUT_S); "
        "the connection is closed",
        "field": "head",
    }


def _answered_then_timed(conn: Raw, request: bytes) -> None:
    """``request`` answered on ``conn``, then a head trickled on it: cut off at the head
    timeout, not answered."""
    conn.send(request)
    assert conn.response()[0] == 200
    sent, reply = conn.trickle(SLOW_HEAD)
    assert sent < len(SLOW_HEAD), reply
    assert reply in (b"", b"<reset>")


# The first head of a connection


@pytest.mark.parametrize(
    ("http", "head"),
    [
        ("h11", SLOW_HEAD),
        ("httptools", SLOW_HEAD),
        ("httptools", b"\r\n" * 40),  # empty lines, which httptools skips before a request
    ],
)
@ONE_REDIS
def test_a_first_head_trickled_is_cut_short(serve: Serve, http: str, head: bytes) -> None:
    """A byte every 0.1 s (each within uvicorn's timers and this one's alike): the deadline runs
    from the connection's start and no byte moves it, so the head never completes."""
    base = serve(head_timeout_s=FAST, http=http)
    with Raw(base) as conn:
        sent, reply = conn.trickle(head)
    assert sent < len(head), reply
    if reply != b"<reset>":  # a byte that crossed the close resets it, the 408 lost in flight
        _head_408(reply)


@PARSERS
@ONE_REDIS
def test_a_first_head_left_unfinished_is_answered_408(serve: Serve, http: str) -> None:
    base = serve(head_timeout_s=FAST, http=http)
    with Raw(base) as conn:
        conn.send(b"POST /choose HTTP/1.1\r\nhost: x\r\ncontent-")
        _head_408(conn.until_closed())


@PARSERS
@ONE_REDIS
def test_a_connection_that_sends_nothing_is_closed(serve: Serve, http: str) -> None:
    """uvicorn sets no timer on a new connection (its keep-alive timer starts after a
    response): one that never sends a byte was held for ever. Closed, with no answer to a
    request never made."""
    base = serve(head_timeout_s=FAST, http=http)
    with Raw(base) as conn:
        assert conn.until_closed() == b""


# The next heads of a kept-alive connection


@PARSERS
@ONE_REDIS
def test_a_next_head_trickled_on_a_kept_alive_connection_is_cut_short(
    serve: Serve, http: str
) -> None:
    """uvicorn's keep-alive timer stops at the next request's first byte; this deadline starts
    there. No 408: after a request, a response of uvicorn's could be under way."""
    base = serve(head_timeout_s=FAST, http=http)
    with Raw(base) as conn:
        _answered_then_timed(conn, GET)


@PARSERS
@ONE_REDIS
def test_the_gap_between_requests_is_left_to_uvicorns_keep_alive(serve: Serve, http: str) -> None:
    """Idle for three deadlines after a response (within uvicorn's keep-alive, 5 s), the
    connection still serves: the deadline starts at a next head's first byte, not before."""
    base = serve(head_timeout_s=FAST, http=http)
    with Raw(base) as conn:
        conn.send(GET)
        assert conn.response()[0] == 200
        time.sleep(3 * FAST)
        conn.send(GET)
        assert conn.response()[0] == 200


@PARSERS
@ONE_REDIS
def test_a_head_in_pieces_leaves_no_deadline_behind(serve: Serve, http: str) -> None:
    """A first head in two reads, answered, then idle past the deadline: the deadline ended with
    the head, whichever read armed it, and the next request is served."""
    base = serve(head_timeout_s=FAST, http=http)
    with Raw(base) as conn:
        for piece in (GET[:10], GET[10:]):
            conn.send(piece)
            time.sleep(FAST / 5)
        assert conn.response()[0] == 200
        time.sleep(2 * FAST)
        conn.send(GET)
        assert conn.response()[0] == 200


@PARSERS
@ONE_REDIS
def test_pipelined_requests_with_bodies_are_answered_and_the_next_head_timed(
    serve: Serve, http: str
) -> None:
    """A head in pieces, then heads and bodies (by length, chunked with extensions and
    trailers) back to back in one write: all answered. The scan found each head where the
    parser did: the next head left unfinished is timed."""
    base = serve(head_timeout_s=FAST, http=http)
    body = b'{"query": "hello there"}'
    chunked = b"5;x=y\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:]
    with Raw(base) as conn:
        for piece in (b"GET /arms HTTP/1.1\r\n", b"host: x\r\n", b"\r\n"):
            conn.send(piece)
            time.sleep(FAST / 5)
        assert conn.response()[0] == 200
        conn.send(
            b"POST /choose HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s"
            % (len(body), body)
            + b"POST /choose HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + chunked + b"\r\n0\r\nx-trailer: 1\r\n\r\n" + GET
        )
        answers = [conn.response() for _ in range(3)]
        assert [status for status, _ in answers] == [200, 200, 200], answers
        conn.send(b"GET /")  # fewer bytes than any body above: read as one, it would not be timed
        assert conn.until_closed() == b""


# Heads that ask to switch protocols


SWITCHES = [  # heads httptools takes as the end of HTTP: it reads no body after them
    b"GET /livez HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: foo\r\n"
    b"content-length: 100000\r\n\r\n",  # within BANDIT_MAX_BODY_BYTES: not a 413
    b"GET /livez HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, Upgrade\r\nupgrade: h2c\r\n"
    b"transfer-encoding: chunked\r\n\r\n",
    b"GET /livez HTTP/1.1\r\nhost: x\r\nproxy-connection: upgrade\r\nupgrade: foo\r\n"
    b"content-length: 100000\r\n\r\n",  # within BANDIT_MAX_BODY_BYTES: not a 413
]


@pytest.mark.parametrize("head", SWITCHES)
@pytest.mark.parametrize("http", ["auto", "httptools"])
@ONE_REDIS
def test_a_head_asking_to_switch_protocols_leaves_the_next_head_timed(
    serve: Serve, http: str, head: bytes
) -> None:
    """httptools reads no body after an Upgrade (or CONNECT) head, and uvicorn, not switching,
    parses the next read as a new request: followed as a body of its declared length, the
    client's next heads were never timed (one trickled for 40 s was answered)."""
    base = serve(head_timeout_s=FAST, http=http)
    with Raw(base) as conn:
        conn.send(head)
        assert conn.response()[0] == 200
        conn.send(GET)  # a head, not body: answered
        assert conn.response()[0] == 200
        _answered_then_timed(conn, head)


@PARSERS
@ONE_REDIS
@pytest.mark.parametrize("zeros", [17, 70, 5000])
def test_a_chunk_size_with_leading_zeros_leaves_the_next_head_timed(
    serve: Serve, http: str, zeros: int
) -> None:
    """Both parsers take a chunk size's leading zeros, as many as sent (h11 up to 20 digits):
    the scan took at most 16 digits, and gave up on the connection at more, so a client that
    sent one such body once could trickle every next head on it for as long as it liked."""
    base = serve(head_timeout_s=FAST, http=http)
    body = b'{"query": "leading zeros"}'
    with Raw(base) as conn:
        conn.send(
            b"POST /choose HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n%s%x\r\n%s\r\n0\r\n\r\n"
            % (b"0" * zeros, len(body), body)
        )
        if http == "h11" and zeros > 18:  # h11 refuses a size of more than 20 digits: 400
            assert conn.until_closed().startswith(b"HTTP/1.1 400")
            return
        assert conn.response()[0] == 200
        _answered_then_timed(conn, GET)


class _Transport(asyncio.Transport):
    """Where the scan under test writes: nothing is sent, only whether it closed is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> None:
        pass

    def is_reading(self) -> bool:
        return True


class _Parsed(asyncio.Protocol):
    """No parser behind the scan: the parsers' own answers are computed beside it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def _scanning(http: str) -> HeadDeadline:
    """The scan as ``head_deadline`` builds it for ``http``, its connection made (in a running
    loop)."""
    scan: HeadDeadline = type("Scan", (head_deadline(60, http),), {"protocol": _Parsed})()
    transport = _Transport()
    transport.get_protocol = lambda: scan  # type: ignore[method-assign]
    scan.connection_made(transport)
    return scan


async def _scan_counts(http: str, reads: list[bytes]) -> list[int]:
    """The heads the scan (as ``head_deadline`` builds it for ``http``) counts after each read."""
    scan = _scanning(http)
    counts = []
    for data in reads:
        scan.data_received(data)
        counts.append(scan.requests)
    scan.connection_lost(None)
    return counts


def _httptools_counts(reads: list[bytes]) -> list[int]:
    """The heads httptools completes after each read, fed as uvicorn feeds it: an upgrade it
    does not serve drops the rest of its read; a parse error ends the connection (400)."""
    import httptools

    class Heads:
        count = 0

        def on_headers_complete(self) -> None:
            self.count += 1

    heads_seen = Heads()
    parser = httptools.HttpRequestParser(heads_seen)
    parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn sets it
    counts = []
    for data in reads:
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            break
        counts.append(heads_seen.count)
    return counts


def _h11_counts(reads: list[bytes]) -> list[int]:
    """The heads h11 completes after each read, each request answered at once (a 404: no
    switch of protocols) as uvicorn's h11 protocol answers them."""
    import h11

    conn = h11.Connection(h11.SERVER)
    count = 0
    counts = []
    for data in reads:
        conn.receive_data(data)
        try:
            while (event := conn.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
                if isinstance(event, h11.Request):
                    count += 1
                elif isinstance(event, h11.EndOfMessage):
                    conn.send(h11.Response(status_code=404, headers=[("content-length", "0")]))
                    conn.send(h11.EndOfMessage())
                    conn.start_next_cycle()
        except h11.RemoteProtocolError:
            break
        counts.append(count)
    return counts


_HEADER_LINES = [
    b"connection: upgrade",
    b"Connection: keep-alive, Upgrade",
    b"connection: upgrade close",
    b"Proxy-Connection: upgrade",
    b"upgrade: foo",
    b"Upgrade:  ",
    b"x-upgrade: foo",
    b"connection: keep-alive",
    b"x-pad: content-length: 9",
]


# A body's framing as a client may write it, the parsers' refusals too (the scan must stop
# following only where the parser refuses the request: else the next heads go untimed)
_LENGTHS: list[Callable[[int], list[bytes]]] = [
    lambda n: [b"content-length: %d" % n],
    lambda n: [b"content-length: 000%d " % n],
    lambda n: [b"content-length: %s%d" % (b"0" * 20, n)],  # zeros past the digits a length has
    lambda n: [b"content-length: %d, %d" % (n, n)],
    lambda n: [b"content-length: %d" % n, b"Content-Length: %d" % n],
    lambda n: [b"content-length: %d, %d" % (n, n + 1)],
    lambda n: [b"content-length: %d" % n, b"content-length: %d" % (n + 1)],
    lambda n: [b"content-length: +%d" % n],
    lambda n: [b"content-length: 0x%x" % n],
    lambda n: [b"content-length: %d" % n, b"transfer-encoding: chunked"],
]
_CODINGS = [
    b"transfer-encoding: chunked",
    b"Transfer-Encoding: CHUNKED",
    b"transfer-encoding: gzip, chunked",
    b"transfer-encoding: chunked, gzip",
    b"transfer-encoding: chunked\r\ncontent-length: 3",
]
_CHUNK_SIZES = [b"%x", b"%X", b"0x%x", b"+%x", b"%x ", b" %x"]


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    """A request as a client may write it: empty lines before it, a method that may be CONNECT,
    headers that may ask to switch protocols, a body by length or chunked (with extensions and
    trailers), or none."""
    method = draw(st.sampled_from([b"GET", b"POST", b"CONNECT"]))
    target = b"a:1" if method == b"CONNECT" else b"/x"
    lines = [b"%s %s HTTP/1.1" % (method, target), b"host: x"]
    lines += draw(st.lists(st.sampled_from(_HEADER_LINES), max_size=3))
    body = draw(st.binary(max_size=24) | st.sampled_from([b"\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    sent = b""
    if framing == "length":
        lines += draw(st.sampled_from(_LENGTHS))(len(body))
        sent = body
    elif framing == "chunked":
        lines.append(draw(st.sampled_from(_CODINGS)))
        cut = draw(st.integers(0, len(body)))
        for part in (body[:cut], body[cut:]):
            if part:
                zeros = b"0" * draw(st.sampled_from([0, 1, 17, 70]))
                size = draw(st.sampled_from(_CHUNK_SIZES)) % len(part)
                extension = draw(st.sampled_from([b"", b";a=b"]))
                sent += b"%s%s%s\r\n%s\r\n" % (zeros, size, extension, part)
        sent += b"0\r\n" + draw(st.sampled_from([b"", b"x-trailer: 1\r\n"])) + b"\r\n"
    lead = draw(st.sampled_from([b"", b"\r\n"]))
    return lead + b"\r\n".join(lines) + b"\r\n\r\n" + sent


@st.composite
def _streams(draw: st.DrawFn) -> list[bytes]:
    """Requests back to back, split into reads at any points."""
    stream = b"".join(draw(st.lists(_requests(), min_size=1, max_size=4)))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) if b > a]


@given(reads=_streams())
@settings(max_examples=300, deadline=None)
def test_the_scan_finds_each_head_where_uvicorns_parser_does(reads: list[bytes]) -> None:
    """After every read the scan has seen as many heads end as the parser uvicorn runs (while
    that parser accepts the stream): httptools, which ends HTTP at a head asking to switch
    protocols, and h11, which reads such a head's body."""
    for http, parsed in (("httptools", _httptools_counts), ("h11", _h11_counts)):
        want = parsed(reads)
        counts = asyncio.run(_scan_counts(http, reads))
        assert counts[: len(want)] == want, (http, reads)


def _framed(lines: list[bytes], body: bytes) -> bytes:
    return b"POST /x HTTP/1.1\r\nhost: x\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    "request_",
    [_framed(length(5), b"hello") for length in _LENGTHS]
    + [
        _framed([coding], size % 11 + b"\r\nhello world\r\n0\r\n\r\n")  # size b or B
        for coding in _CODINGS
        for size in _CHUNK_SIZES
    ]
    + [
        # zeros past the start of the line kept, one a read, are still zeros: the size is not
        # 0 (else the chunk's empty line would end the body and the rest be read as a head)
        _framed([_CODINGS[0]], b"0" * 70 + b"b\r\nhello\r\n\r\nwo\r\n0\r\n\r\n"),
        _framed([_CODINGS[0]], b"b\r\nhello world\r\n0\r\nx-a: 1\r\nx-b: 2\r\n\r\n"),
    ],
)
def test_the_scan_follows_each_framing_as_far_as_the_parser_does(request_: bytes) -> None:
    """Every framing of the table the property above draws from, followed by a request, in one
    read and a byte a read: the scan counts the second head wherever a parser reads it."""
    stream = request_ + b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n"
    for reads in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        for http, parsed in (("httptools", _httptools_counts), ("h11", _h11_counts)):
            want = parsed(reads)
            assert asyncio.run(_scan_counts(http, reads))[: len(want)] == want, http


async def _scanned(http: str, reads: list[bytes]) -> tuple[int, bool, int]:
    """After ``reads``: the heads the scan has counted, whether it has closed the connection,
    and how much of a chunk-size or trailer line it holds."""
    scan = _scanning(http)
    for data in reads:
        scan.data_received(data)
    assert scan.transport is not None
    return scan.requests, scan.transport.is_closing(), len(scan.line)


@PARSERS
def test_a_head_of_the_limit_is_followed_and_one_byte_longer_refused(http: str) -> None:
    """HEAD_LIMIT bytes, its empty line included, are followed; one byte more is refused
    (431), in one read or cut anywhere."""
    start = b"GET / HTTP/1.1\r\nx-big: "
    for length, counted in ((HEAD_LIMIT, 1), (HEAD_LIMIT + 1, 0)):
        head = start + b"a" * (length - len(start) - 4) + b"\r\n\r\n"
        for reads in ([head], [head[:100], head[100:]], [head[:-1], head[-1:]]):
            scanned = asyncio.run(_scanned(http, reads))
            assert scanned[:2] == (counted, not counted), (length, len(reads[0]))


@pytest.mark.parametrize("body", [b"b;e=" + b"e" * 100_000, b"0\r\nx-e: " + b"e" * 100_000])
def test_a_long_chunk_line_is_kept_no_further_than_its_start(body: bytes) -> None:
    """A chunk extension or a trailer as long as a client likes, in many reads: the scan holds
    the start of its line, all it needs of it, not the whole."""
    stream = _framed([_CODINGS[0]], body)
    reads = [stream[at : at + 1000] for at in range(0, len(stream), 1000)]
    assert asyncio.run(_scanned("httptools", reads))[2] <= 2 * heads._LINE_KEPT


# Bodies are the body timeout's


@PARSERS
@ONE_REDIS
def test_a_slow_body_is_left_to_the_body_timeout(serve: Serve, http: str) -> None:
    """A body that takes longer than a head may is read whole (by length and chunked, the
    connection reused after); one that never completes gets the body timeout's 408."""
    base = serve(head_timeout_s=FAST, body_timeout_s=4 * FAST, http=http)
    pause = 0.6 * FAST  # three or four of them: more than a head may take, less than a body
    body = b'{"query": "a slow body"}'
    with Raw(base) as conn:
        conn.send(
            b"POST /choose HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body)
        )
        for part in (body[:5], body[5:10], body[10:]):
            time.sleep(pause)
            conn.send(part)
        assert conn.response()[0] == 200
        conn.send(
            b"POST /choose HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for part in (b"%x\r\n" % len(body), body, b"\r\n0\r\n", b"\r\n"):
            time.sleep(pause)
            conn.send(part)
        assert conn.response()[0] == 200
        conn.send(GET)
        assert conn.response()[0] == 200
    with Raw(base) as conn:
        conn.send(
            b"POST /choose HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n" + body
        )
        head, _, answer = conn.until_closed().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(answer)["field"] == "body"


@PARSERS
@ONE_REDIS
def test_a_body_sent_with_a_get_is_bounded_too(serve: Serve, http: str) -> None:
    """No route of a GET reads a body, and uvicorn waits for the rest of one after the answer:
    trickled, it held the connection as long as the client liked. Read and bounded as any
    body, it is served when whole and gets the body timeout's 408 when not, by length or
    chunked."""
    base = serve(head_timeout_s=FAST, body_timeout_s=2 * FAST, http=http)
    with Raw(base) as conn:
        conn.send(b"GET /stats HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        assert conn.response()[0] == 200
        conn.send(GET)  # the connection is reused after it
        assert conn.response()[0] == 200
    for unfinished in (
        b"content-length: 100\r\n\r\n{}",
        b"transfer-encoding: chunked\r\n\r\n2\r\n{}",
    ):
        with Raw(base) as conn:
            conn.send(b"GET /stats HTTP/1.1\r\nhost: x\r\n" + unfinished)
            head, _, answer = conn.until_closed().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        assert json.loads(answer)["field"] == "body"


@PARSERS
@ONE_REDIS
@pytest.mark.parametrize("path", [b"/choose%0A", b"/choose%7F"])  # a newline, DEL
def test_a_body_sent_to_a_path_refused_unread_does_not_hold_the_connection(
    serve: Serve, http: str, path: bytes
) -> None:
    """A path with a control character is refused (404) before any body is read: its
    connection is closed after the answer, not left waiting for a body trickled in."""
    base = serve(head_timeout_s=FAST, body_timeout_s=2 * FAST, http=http)
    with Raw(base) as conn:
        conn.send(b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{}" % path)
        assert conn.response()[0] == 404
        for _ in range(int(6 * FAST / 0.1)):  # a byte every 0.1 s, past the body timeout
            time.sleep(0.1)
            try:
                conn.send(b" ")
            except OSError:
                break
        assert conn.until_closed() in (b"", b"<reset>")


# Responses: timed only while the client reads none of them


def _gateway(serve: Serve, scripted: Start, http: str) -> str:
    slow = Script((chunk("a"), FAST, chunk("b"), FAST, chunk("c"), FAST, chunk("d"), DONE))
    url, _ = scripted({"slow": slow})
    arms = [{"name": "slow", "upstream": {"base_url": url, "model": "slow"}}]
    return serve(arms=orjson.dumps(arms).decode(), api_keys=KEY, head_timeout_s=FAST, http=http)


@ONE_REDIS
def test_a_stream_longer_than_the_deadline_is_whole_and_its_connection_reused(
    serve: Serve, scripted: Start
) -> None:
    client = sdk_client(_gateway(serve, scripted, "auto"), KEY)
    for _ in range(2):  # the second on the connection the first kept alive
        stream = client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert [c.choices[0].delta.content for c in stream if c.choices] == ["a", "b", "c", "d"]


@ONE_REDIS
def test_a_request_pipelined_behind_a_gateway_stream_is_answered_after_it(
    serve: Serve, scripted: Start
) -> None:
    base = _gateway(serve, scripted, "auto")
    body = orjson.dumps(
        {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    with Raw(base) as conn:
        conn.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (KEY.encode(), len(body), body)
            + b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        reply = conn.until_closed()
    assert reply.count(b"HTTP/1.1 200") == 2, reply
    assert reply.index(b"data: [DONE]") < reply.rindex(b"HTTP/1.1 200")


async def _slow_stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Four parts FAST apart on /slow, without listening for the client meanwhile."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for part in (b"a", b"b", b"c", b"d") if scope["path"] == "/slow" else ():
        await send({"type": "http.response.body", "body": part, "more_body": True})
        await asyncio.sleep(FAST)
    await send({"type": "http.response.body", "body": b"end"})


@contextmanager
def _alone(app: Any, protocol: type[HeadDeadline], **config: Any) -> Iterator[uvicorn.Server]:
    """``app`` served alone by uvicorn on ``protocol`` (no lifespan), stopped after."""
    servers = Servers()
    try:
        servers.start(app, "uvicorn", http=protocol, log_level="warning", lifespan="off", **config)
        yield servers.running[-1]
    finally:
        servers.stop()


@PARSERS
def test_a_head_pipelined_behind_a_slow_stream_waits_its_turn(http: str) -> None:
    """Part of a next head behind a response longer than the deadline, the rest at once after:
    h11 reads nothing more until the response ends, which is not the client's delay."""
    with (
        _alone(_slow_stream, head_deadline(FAST, http)) as server,
        Raw(f"http://127.0.0.1:{server.config.port}") as conn,
    ):
        conn.send(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\nGET /next HTTP/1.1\r\n")
        time.sleep(FAST / 5)
        conn.send(b"host: x\r\nconnection: close\r\n\r\n")
        reply = conn.until_closed()
    assert reply.count(b"HTTP/1.1 200") == 2, reply
    assert reply.count(b"end") == 2 and b"1\r\nd\r\n" in reply, reply


def test_a_head_held_back_behind_a_slow_stream_is_timed_once_read() -> None:
    """Part of a next head behind a response longer than the deadline, never finished: h11
    reads nothing more until the response ends, and the deadline, put off meanwhile, closes the
    connection then (not uvicorn's keep-alive, made longer than the wait here)."""
    with (
        _alone(_slow_stream, head_deadline(FAST, "h11"), timeout_keep_alive=60) as server,
        Raw(f"http://127.0.0.1:{server.config.port}") as conn,
    ):
        conn.send(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\nGET /next HTTP/1.1\r\n")
        reply = conn.until_closed()
    assert reply.count(b"HTTP/1.1 200") == 1 and reply.endswith(b"3\r\nend\r\n0\r\n\r\n"), reply


BIG = 16 << 20  # more than the kernel's buffers hold for a client that reads none of it


async def _big(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """One response of BIG bytes, in one send: uvicorn writes it whole and the response is
    complete, the transport's buffer still full."""
    if scope["type"] != "http":
        return
    headers = [(b"content-length", b"%d" % BIG)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"x" * BIG})


@pytest.mark.parametrize("http", ["h11", "httptools"])
@pytest.mark.parametrize("connection", [b"close", b"keep-alive"])
def test_a_response_written_whole_and_not_read_is_let_go_once_closing_too(
    http: str, connection: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A response written in one piece is complete while the transport still buffers it;
    uvicorn then closes the connection (at once for `connection: close`, after its keep-alive
    timeout otherwise), and a close waits for the buffer to drain: for ever, for a client that
    reads none of it. Closing, the connection is aborted all the same at the send timeout."""
    with (
        _alone(
            _big,
            head_deadline(FAST, http, send_timeout_s=4 * FAST),
            timeout_keep_alive=1,  # before the send timeout's end, as uvicorn's 5 s before 30
        ) as server,
        caplog.at_level(logging.WARNING, logger="bandit_router"),
        socket.socket() as conn,
    ):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.connect(("127.0.0.1", server.config.port))
        conn.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: %s\r\n\r\n" % connection)
        open_ = server.server_state.connections  # uvicorn's, each until connection_lost
        wait_until(lambda: bool(open_), WAIT_S, "the connection made")
        wait_until(lambda: not open_, WAIT_S, "the connection let go")
    said = [m for m in caplog.messages if "BANDIT_SEND_TIMEOUT_S" in m]
    assert len(said) == 1, said


async def _big_or_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``_big`` over HTTP; over a WebSocket, each text message sent back."""
    if scope["type"] == "http":
        await _big(scope, receive, send)
        return
    if scope["type"] != "websocket" or (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})


def _text_frame(text: bytes) -> bytes:
    """A WebSocket text frame of a few bytes, masked as a client masks it."""
    mask = b"\x01\x02\x03\x04"
    return b"\x81%c%s%s" % (
        0x80 | len(text),
        mask,
        bytes(b ^ mask[i % 4] for i, b in enumerate(text)),
    )


WEBSOCKET = (
    b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
)


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_a_connection_handed_over_to_a_websocket_is_not_timed_after(http: str) -> None:
    """A response written whole, not read yet, then a WebSocket on the connection: from then
    on its callbacks, the buffer's drain included, go to the WebSocket's protocol, and a stall
    timer started before aborted the WebSocket at the send timeout, though all was read."""
    with (
        _alone(_big_or_echo, head_deadline(FAST, http, send_timeout_s=4 * FAST)) as server,
        socket.create_connection(("127.0.0.1", server.config.port), timeout=WAIT_S) as conn,
    ):
        conn.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        time.sleep(FAST)  # the response written, the transport's buffer full
        conn.sendall(WEBSOCKET)
        reply = b""
        while b"\r\n\r\n" not in reply[BIG:]:  # the response, then the WebSocket's head
            chunk = conn.recv(1 << 20)
            assert chunk, reply[-200:]
            reply += chunk
        assert b"HTTP/1.1 101 " in reply[BIG:], reply[BIG:]
        time.sleep(5 * FAST)  # past the send timeout from the response's stall
        conn.sendall(_text_frame(b"hi"))
        assert conn.recv(64) == b"\x81\x02hi"


@PARSERS
def test_bytes_after_a_websocket_head_in_its_read_are_not_timed_as_a_head(http: str) -> None:
    """A client that sends a frame in the read of its WebSocket head, not waiting for the 101:
    the frame is no request head, and the WebSocket is not closed at the head deadline."""
    with (
        _alone(_big_or_echo, head_deadline(FAST, http)) as server,
        socket.create_connection(("127.0.0.1", server.config.port), timeout=WAIT_S) as conn,
    ):
        conn.sendall(WEBSOCKET + _text_frame(b"hi"))
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = conn.recv(4096)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 101 "), reply
        time.sleep(2 * FAST)
        conn.sendall(_text_frame(b"ho"))
        while b"\x81\x02ho" not in reply:  # uvicorn may have dropped the first frame
            chunk = conn.recv(64)
            assert chunk, reply
            reply += chunk


# Limits and the log


@pytest.mark.parametrize("http", ["httptools"])  # h11 refuses past 16 KiB itself (400)
@ONE_REDIS
def test_a_head_past_the_limit_is_refused_431(serve: Serve, http: str) -> None:
    base = serve(head_timeout_s=60, http=http)
    with Raw(base) as conn:
        start = b"GET / HTTP/1.1\r\nx-big: "
        conn.send(start + b"a" * (HEAD_LIMIT + 1 - len(start)))  # one byte over
        head, _, body = conn.until_closed().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), head
    assert json.loads(body)["detail"].startswith(f"request head longer than {HEAD_LIMIT} bytes")


LIVEZ = b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n"


@PARSERS
@ONE_REDIS
def test_requests_sent_far_ahead_of_their_answers_close_the_connection(
    serve: Serve, http: str, caplog: pytest.LogCaptureFixture
) -> None:
    """httptools parsed every head of a read at once and queued each request (about 2 KiB
    held for a 24-byte request), reading more at each answer: 8 MB of requests sent on one
    connection held 750 MB. Up to PIPELINED_LIMIT waiting are answered in order; past it the
    connection is closed, the rest unparsed, and the service goes on answering."""
    base = serve(head_timeout_s=60, http=http)
    with Raw(base) as conn:
        conn.send(LIVEZ * PIPELINED_LIMIT)
        assert [conn.response()[0] for _ in range(PIPELINED_LIMIT)] == [200] * PIPELINED_LIMIT
        conn.send(LIVEZ)  # the connection goes on
        assert conn.response()[0] == 200
    sent = 5_000  # 170 KB: more than PIPELINED_LIMIT in a read, or waiting after it
    with caplog.at_level(logging.WARNING, logger="bandit_router"), Raw(base) as conn:
        with contextlib.suppress(OSError):  # reset: closed while sending
            conn.conn.sendall(LIVEZ * sent)
        answered = conn.until_closed().count(b"HTTP/1.1 200")
    assert answered < sent  # closed before they were all answered
    assert any("sent ahead of their answers, over" in m for m in caplog.messages)
    with Raw(base) as conn:
        conn.send(LIVEZ)
        assert conn.response()[0] == 200


def test_requests_queued_behind_a_slow_answer_count_toward_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """httptools queues the requests of a read behind the one under way, and reads again at
    each answer: a read of fewer than PIPELINED_LIMIT requests passes it with those still
    queued, and closes the connection (else each answer let in as many again)."""
    many = PIPELINED_LIMIT * 5 // 8  # under the limit alone, over it with most of another
    with (
        _alone(_slow_stream, head_deadline(FAST, "httptools")) as server,
        caplog.at_level(logging.WARNING, logger="bandit_router"),
        Raw(f"http://127.0.0.1:{server.config.port}") as conn,
    ):
        conn.send(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n" + GET * many)
        time.sleep(FAST)  # read when /slow is answered, its followers still queued
        conn.send(GET * many)
        reply = conn.until_closed()
    assert reply.count(b"HTTP/1.1 200") < 1 + 2 * many, reply
    assert any("sent ahead of their answers, over" in m for m in caplog.messages)


@pytest.mark.parametrize(
    ("http", "sent"),
    [
        ("httptools", b"GET /big HTTP/1.1\r\nx-big: " + b"a" * HEAD_LIMIT + b"\r\n\r\n"),
        ("h11", LIVEZ * (PIPELINED_LIMIT + 1)),
        ("httptools", LIVEZ * (PIPELINED_LIMIT + 1)),
    ],
)
def test_a_read_that_closes_the_connection_is_not_parsed(http: str, sent: bytes) -> None:
    """A read refused whole (a head past the limit with its end in it, or more requests than
    PIPELINED_LIMIT) is not handed to uvicorn: none of its requests reaches the app."""
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await _hello(scope, receive, send)

    with _alone(app, head_deadline(60, http)) as server:
        base = f"http://127.0.0.1:{server.config.port}"
        with Raw(base) as conn:
            conn.send(sent)
            reply = conn.until_closed()
            assert b"HTTP/1.1 200" not in reply and not reply.endswith(b"<still open>"), reply
        with Raw(base) as conn:  # after it, as the server took them
            conn.send(GET)
            assert conn.response()[0] == 200
    assert seen == ["/healthz"]


@ONE_REDIS
def test_closed_connections_are_said_once_then_with_a_count(
    serve: Serve, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = serve(head_timeout_s=FAST)
    monkeypatch.setattr(heads, "SAID_EVERY_S", 3600.0)
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        for _ in range(4):
            with Raw(base) as conn:
                assert conn.until_closed() == b""
        monkeypatch.setattr(heads, "SAID_EVERY_S", 0.0)  # the period is over
        with Raw(base) as conn:
            assert conn.until_closed() == b""
    said = [m for m in caplog.messages if "BANDIT_HEAD_TIMEOUT_S" in m]
    assert len(said) == 2, said
    assert said[0].startswith("connection from 127.0.0.1:") and "more since" not in said[0]
    assert said[0].endswith(
        f"closed: request head not received within {FAST:g} s (BANDIT_HEAD_TIMEOUT_S)"
    )
    assert said[1].endswith("(3 more since the last said)")


# `serve`, as users run it


@ONE_REDIS
def test_serve_bounds_heads_in_its_workers(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """Two worker processes, each importing ServedHeads and reading BANDIT_HEAD_TIMEOUT_S."""
    settings = make_settings()
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix, head_timeout_s=FAST)
    with served(env, tmp_path / "serve.log", "--workers", "2") as base:
        conns = [Raw(base) for _ in range(8)]  # spread over the workers by the kernel
        try:
            for conn in conns[::2]:
                conn.send(b"GET /healthz HTTP/1.1\r\n")
            for i, conn in enumerate(conns):
                reply = conn.until_closed()
                if i % 2:
                    assert reply == b""
                else:
                    _head_408(reply)
        finally:
            for conn in conns:
                conn.conn.close()
        with Raw(base) as conn:
            conn.send(GET)
            assert conn.response()[0] == 200


def test_served_heads_read_both_timeouts_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What each `serve` worker's protocol class reads, as its app reads its settings."""
    monkeypatch.setenv("BANDIT_HEAD_TIMEOUT_S", "3")
    monkeypatch.setenv("BANDIT_SEND_TIMEOUT_S", "7.5")
    heads._served.cache_clear()
    try:
        assert (ServedHeads.head_timeout_s(), ServedHeads.send_timeout_s()) == (3.0, 7.5)
    finally:
        heads._served.cache_clear()


# What the wrapper relies on in uvicorn, pinned: an upgrade that changes it fails here


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"hi"})


def test_uvicorn_builds_the_protocol_class_it_is_given_and_wraps_nothing_else() -> None:
    """``Config(http=CLASS)`` takes the class as is; ``http`` names map to uvicorn's own
    protocols, plain ``asyncio.Protocol``s whose callbacks are the ones the wrapper hands on."""
    assert inspect.signature(uvicorn.Config).parameters["http"].default == "auto"
    assert {"auto", "h11", "httptools"} <= set(HTTP_PROTOCOLS)
    bounded = head_deadline(1.0, "h11")
    config = uvicorn.Config(_hello, http=bounded)
    config.load()
    assert config.http_protocol_class is bounded
    callbacks = {m for m in dir(asyncio.Protocol) + dir(asyncio.BufferedProtocol) if m[0] != "_"}
    handed_on = {m for m in callbacks if m in vars(HeadDeadline)}
    assert handed_on == {
        "connection_made",
        "data_received",
        "eof_received",
        "connection_lost",
        "pause_writing",
        "resume_writing",
    }
    for name in ("auto", "h11", "httptools"):
        protocol = heads.uvicorn_protocol(name)
        assert isinstance(protocol, type) and issubclass(protocol, asyncio.Protocol)
        assert not issubclass(protocol, asyncio.BufferedProtocol)  # no get_buffer to hand on
        assert {m for m in callbacks if m in vars(protocol)} <= handed_on
    # `serve`'s workers are spawned with the config pickled: the class goes by name.
    assert pickle.loads(pickle.dumps(ServedHeads)) is ServedHeads
    served_config = uvicorn.Config(
        "bandit_router.http.app:app_from_env", http=ServedHeads, workers=2
    )
    assert pickle.loads(pickle.dumps(served_config)).http is ServedHeads


def test_uvicorn_closes_a_connection_idle_after_a_response_itself() -> None:
    """The gap between requests is uvicorn's keep-alive timeout, which the wrapper leaves be."""
    with (
        _alone(_hello, head_deadline(60, "h11"), timeout_keep_alive=1) as server,
        Raw(f"http://127.0.0.1:{server.config.port}") as conn,
    ):
        conn.send(GET)
        assert conn.response() == (200, b"hi")
        assert conn.until_closed() == b""
