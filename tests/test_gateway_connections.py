"""The gateway's upstream connections: a kept-alive connection the upstream closes as the gateway
reuses it. The app under uvicorn, real Redis, and an upstream speaking HTTP/1.1 over a raw
socket (uvicorn's apps cannot choose when their connection closes)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import httpx2 as httpx
import orjson
import pytest

from tests.conftest import _free_port
from tests.live import close_sdk_clients, sdk_client, serve

__all__ = ["close_sdk_clients", "serve"]  # the fixtures, imported

Serve = Callable[..., str]
KEY = "service-key-1"
ANSWER = orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
)

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


class ClosesKeptAlive:
    """An upstream that answers the first request of each connection, keeping it alive, and
    closes the connection at the next request on it, unanswered: a provider whose idle timeout
    closed the connection as the gateway reused it. ``unread``: closed with the request unread
    (the kernel resets the connection), else read first (an orderly close)."""

    def __init__(self, unread: bool) -> None:
        self.unread = unread
        self.connections = 0
        self.answered = 0
        self.listener = socket.create_server(("127.0.0.1", _free_port()))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            if not _read_request(conn):
                return
            conn.sendall(HEAD % len(ANSWER) + ANSWER)
            self.answered += 1
            if self.unread:
                conn.recv(1, socket.MSG_PEEK)  # the next request has come: closed unread
            else:
                _read_request(conn)

    def close(self) -> None:
        self.listener.close()


def _read_request(conn: socket.socket) -> bool:
    """Read one request (its head, then its Content-Length body); False at the connection's end."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = conn.recv(65536)
        if not got:
            return False
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        got = conn.recv(65536)
        if not got:
            return False
        body += got
    return True


@pytest.fixture
def closes_kept_alive() -> Iterator[Callable[[bool], ClosesKeptAlive]]:
    started: list[ClosesKeptAlive] = []

    def start(unread: bool) -> ClosesKeptAlive:
        started.append(ClosesKeptAlive(unread))
        return started[-1]

    yield start
    for upstream in started:
        upstream.close()


@pytest.mark.parametrize("unread", [False, True])
def test_a_kept_alive_connection_the_upstream_closes_as_it_is_reused_is_no_failure(
    serve: Serve, closes_kept_alive: Callable[[bool], ClosesKeptAlive], unread: bool
) -> None:
    """An upstream closes a kept-alive connection when it has been idle for its keep-alive
    timeout (5 s by default under uvicorn): a request the gateway sends on it as it closes
    never reached the upstream's app. It is sent again on another connection, not answered 502
    nor recorded as the arm's failure (the openai SDK, calling the provider itself, retries it
    too); a new connection that fails is the arm's failure, as before."""
    upstream = closes_kept_alive(unread)
    arms = [{"name": "m", "upstream": {"base_url": upstream.url, "model": "m"}}]
    base = serve(arms=orjson.dumps(arms).decode(), api_keys=KEY, gateway_retries=0)
    client = sdk_client(base, KEY)
    for _ in range(3):  # each after the first on a kept-alive connection the upstream closes
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.parse().choices[0].message.content == "hi"
    assert upstream.answered == upstream.connections == 3
    metrics = httpx.get(f"{base}/metrics").text
    assert "bandit_gateway_upstream_failures_total{" not in metrics
