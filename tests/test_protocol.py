"""``protocol.HttpProtocol`` under a real uvicorn on loopback, spoken to over raw sockets.

The fast door answers in one write with its headers in its own order (content-type, then
content-length); FastAPI's door, the other way round. The tests use that to tell which door
answered, and check that both give the same answers, in order, on any connection.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from uvicorn.logging import AccessFormatter

from tests.live import serve

__all__ = ["serve"]  # the fixture, imported

FAST = "fast"
ROUTED = "routed"


class Conn:
    """One keep-alive connection: raw requests out, parsed responses in, in order."""

    def __init__(self, base: str) -> None:
        url = urlsplit(base)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=10)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], Any, str]:
        """Status, headers, JSON body, and which door answered."""
        while b"\r\n\r\n" not in self.buffer:
            assert self._more(), "connection closed before a response"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        names = [line.split(":", 1)[0].lower() for line in lines]
        headers = {n: line.split(":", 1)[1].strip() for n, line in zip(names, lines, strict=True)}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            assert self._more(), "connection closed inside a body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        door = FAST if names.index("content-type") < names.index("content-length") else ROUTED
        return int(status_line.split()[1]), headers, json.loads(body), door

    def closed(self) -> bool:
        return not self.buffer and not self._more()


def post(
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
    version: str = "1.1",
    content_type: str = "application/json",
) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"POST {path} HTTP/{version}", "Host: test", f"Content-Type: {content_type}"]
    lines += [f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


ROUTED_TYPE = "application/vnd.api+json"  # JSON to FastAPI; the fast door does not take it


@pytest.fixture
def conn(serve: Callable[..., str]) -> Iterator[Callable[..., Conn]]:
    connections: list[Conn] = []

    def connect(**settings: Any) -> Conn:
        c = Conn(serve(**settings))
        connections.append(c)
        return c

    yield connect
    for c in connections:
        c.close()


def test_choose_and_reward_take_the_fast_door(conn: Callable[..., Conn]) -> None:
    c = conn()
    for i in range(3):  # one keep-alive connection, request after request
        c.send(post("/choose", {"query": f"What is {i}+{i}?", "features": {"task": "math"}}))
        status, headers, decision, door = c.response()
        assert (status, door) == (200, FAST)
        assert headers["content-type"] == "application/json"
        assert {"date", "server"} <= headers.keys()  # uvicorn's default headers, as routed
        c.send(post("/reward", {"event_id": decision["event_id"], "reward": 1}))
        status, _, reward, door = c.response()
        assert (status, door) == (200, FAST)
        assert reward["status"] == "final" and reward["model_version"] == i + 1


class _Lines(logging.Handler):
    """uvicorn's access lines, formatted by its own formatter; a failure to format is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s'))
        self.lines: list[str] = []
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception as e:
            self.errors.append(e)


def test_access_lines_are_uvicorns_through_either_door(conn: Callable[..., Conn]) -> None:
    """At the CLI's default log level every request writes an access line; the fast door's must
    be uvicorn's own, not a formatting error per request."""
    c = conn(log_level="info")
    lines = _Lines()
    access = logging.getLogger("uvicorn.access")
    access.addHandler(lines)
    try:
        c.send(post("/choose", {"query": "hi"}))
        assert c.response()[3] == FAST
        c.send(post("/choose", {"query": "hi"}, content_type=ROUTED_TYPE))
        assert c.response()[3] == ROUTED
        c.send(post("/choose", {"query": 5}))  # declined by the fast path: FastAPI's 422
        assert c.response()[0] == 422
        deadline = time.monotonic() + 5
        while len(lines.lines) + len(lines.errors) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        access.removeHandler(lines)
    assert lines.errors == []
    client = lines.lines[0].split(" - ")[0]
    assert client.startswith("127.0.0.1:")
    ok, invalid = f'{client} - "POST /choose HTTP/1.1" 200 OK', "422 Unprocessable"
    assert lines.lines[:2] == [ok, ok]
    assert lines.lines[2].startswith(f'{client} - "POST /choose HTTP/1.1" {invalid}')


def test_either_door_gives_the_same_answers(conn: Callable[..., Conn]) -> None:
    """A body the fast path declines is answered by FastAPI on the same connection; an error
    the router raises, by the fast path; both as the routed door answers them."""
    c = conn()

    def both(path: str, body: Any, same: bool = True) -> tuple[Any, Any]:
        c.send(post(path, body))
        fast = c.response()
        c.send(post(path, body, content_type=ROUTED_TYPE))
        routed = c.response()
        assert routed[3] == ROUTED
        assert not same or (fast[0], fast[2]) == (routed[0], routed[2])
        return fast, routed

    fast, _ = both("/choose", {"query": "What is 2+2?", "event_id": "either-door"})
    assert (fast[0], fast[3]) == (200, FAST)
    for bad in ({"query": ""}, {"query": "q", "x": 1}, [1, 2]):
        fast, _ = both("/choose", bad)
        assert (fast[0], fast[3]) == (422, ROUTED), fast  # declined: FastAPI's answer
    fast, _ = both("/choose", {"query": "q", "arms": ["70b"]})
    assert (fast[0], fast[3]) == (422, FAST)  # the router's error, from the fast path
    c.send(post("/choose", b'{"query": "q",'))  # not JSON
    status, _, answer, door = c.response()
    assert (status, door) == (422, ROUTED) and "JSON" in answer["detail"]
    fast, _ = both("/reward", {"event_id": "never-chosen", "reward": 1})
    assert (fast[0], fast[3]) == (404, FAST)  # the router's error, from the fast path
    fast, routed = both("/reward", {"event_id": "either-door", "accuracy": 1}, same=False)
    assert fast[0] == 200 and fast[3] == FAST
    assert fast[2]["duplicates"] == [] and routed[2]["duplicates"] == ["accuracy"]


def test_pipelined_requests_are_answered_in_order(conn: Callable[..., Conn]) -> None:
    """Requests sent back to back before any answer: fast ones, declined ones and others each
    get their own answer, in the order sent."""
    c = conn()
    c.send(
        post("/choose", {"query": "first", "event_id": "pipe-1"})
        + post("/choose", {"query": ""})
        + b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
        + post("/reward", {"event_id": "pipe-1", "reward": 0.5})
        + post("/choose", {"query": "last", "event_id": "pipe-2"})
    )
    answers = [c.response() for _ in range(5)]
    assert [a[0] for a in answers] == [200, 422, 200, 200, 200]
    assert answers[0][2]["event_id"] == "pipe-1"
    assert answers[2][2]["status"] == "ok"
    assert answers[3][2]["event_id"] == "pipe-1" and answers[3][2]["reward"] == 0.5
    assert answers[4][2]["event_id"] == "pipe-2"
    assert answers[0][3] == FAST


def test_body_in_pieces_close_and_http_1_0(conn: Callable[..., Conn]) -> None:
    c = conn()
    request = post("/choose", {"query": "slowly sent", "event_id": "pieces"})
    head, body = request.split(b"\r\n\r\n", 1)
    for piece in (head + b"\r\n\r\n", body[:5], body[5:]):
        c.send(piece)
        time.sleep(0.05)
    status, _, decision, door = c.response()
    assert (status, door, decision["event_id"]) == (200, FAST, "pieces")
    c.send(post("/reward", {"event_id": "pieces", "reward": 1}, headers={"Connection": "close"}))
    status, headers, _, door = c.response()
    assert (status, door, headers["connection"]) == (200, FAST, "close")
    assert c.closed()  # the server closed it after answering
    old = conn()
    old.send(post("/choose", {"query": "from an old client"}, version="1.0"))
    status, _, _, door = old.response()
    assert (status, door) == (200, ROUTED)  # HTTP/1.0 is uvicorn's to answer
    assert old.closed()


def test_keys_are_checked_before_the_fast_door(conn: Callable[..., Conn]) -> None:
    c = conn(api_keys="k1")
    c.send(post("/choose", {"query": "no key"}))
    status, _, answer, door = c.response()
    assert (status, door) == (401, ROUTED) and "API key" in answer["detail"]
    c.send(post("/choose", {"query": "keyed"}, headers={"X-API-Key": "k1"}))
    assert c.response()[::3] == (200, FAST)
    c.send(post("/choose", {"query": "bearer"}, headers={"Authorization": "Bearer k1"}))
    assert c.response()[::3] == (200, FAST)
