"""The gateway's connections: a kept-alive connection the upstream closes as the gateway reuses
it (an upstream speaking HTTP/1.1 over a raw socket: uvicorn's apps cannot choose when their
connection closes), and a stream in flight when `serve` is stopped. The app under uvicorn (in
a thread, or `serve` in a process of its own), real Redis; Redis gone while the gateway
answers."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from tests.conftest import (
    RedisProcess,
    SettingsFactory,
    _free_port,
    cli_env,
    cli_process,
    healthy,
    wait_until,
)
from tests.live import close_sdk_clients, sdk_client, serve
from tests.upstreams import Script, Scripted, scripted

__all__ = ["close_sdk_clients", "scripted", "serve"]  # the fixtures, imported

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
            self.answered += 1  # before the answer: the test may read it as soon as it has it
            conn.sendall(HEAD % len(ANSWER) + ANSWER)
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


@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
def test_a_stopping_serve_cancels_a_stream_that_would_never_end_after_its_shutdown_timeout(
    make_settings: SettingsFactory,
    scripted: Callable[[dict[str, Script]], tuple[str, Scripted]],
    tmp_path: Path,
) -> None:
    """A stream whose upstream sends a keep-alive comment within every timeout_s never ends of
    itself. uvicorn, stopping, waits for the requests in flight: without a bound a SIGTERM
    held `serve` (its port closed to new requests) for as long as the stream ran. After
    BANDIT_SHUTDOWN_TIMEOUT_S the stream is cancelled: the client's connection is closed without
    [DONE], the upstream call closed, and `serve` exits."""
    forever = Script(tuple(part for _ in range(10_000) for part in (b": keep-alive\n\n", 0.2)))
    url, upstream = scripted({"m": forever})
    settings = make_settings()
    arms = [{"name": "m", "upstream": {"base_url": url, "model": "m"}}]
    env = cli_env(
        redis_url=settings.redis_url,
        key_prefix=settings.key_prefix,
        data_dir=tmp_path / "data",
        arms=orjson.dumps(arms).decode(),
        shutdown_timeout_s=1,
    )
    port = _free_port()
    log = tmp_path / "serve.log"
    with cli_process(["serve", "--port", str(port), "--workers", "2"], env, log) as service:
        wait_until(lambda: healthy(f"http://127.0.0.1:{port}"), 60, "the service to start")
        hi = [{"role": "user", "content": "hi"}]
        body = orjson.dumps({"model": "m", "messages": hi, "stream": True})
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        with socket.create_connection(("127.0.0.1", port), timeout=60) as client:
            client.sendall(request)
            received = client.recv(65536)
            assert received.startswith(b"HTTP/1.1 200"), received
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError("serve still running 60 s after SIGTERM") from None
            while chunk := client.recv(65536):
                received += chunk
    assert b"keep-alive" in received and b"[DONE]" not in received
    wait_until(lambda: upstream.left == 1, 10, "the upstream call to be closed")
    assert "timeout graceful shutdown exceeded" in log.read_text()


@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)  # its own Redis, killed
def test_parts_not_recorded_while_redis_is_down_are_said_once_a_period_not_every_call(
    serve: Serve,
    scripted: Callable[[dict[str, Script]], tuple[str, Scripted]],
    redis_process: RedisProcess,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While Redis is down the gateway still answers (its decisions degraded), and the parts it
    measured cannot be stored: a warning each call flooded the log, at the rate of the calls.
    The first is said, the next ones within FAILURES_SAID_EVERY_S counted, then said with the
    count."""
    from bandit_router.http import gateway

    monkeypatch.setattr(gateway, "FAILURES_SAID_EVERY_S", 3600.0)
    url, _ = scripted({"m": Script((ANSWER,), content_type="application/json")})
    arms = [{"name": "m", "upstream": {"base_url": url, "model": "m"}}]
    base = serve(arms=orjson.dumps(arms).decode(), api_keys=KEY, redis_url=redis_process.url)
    client = sdk_client(base, KEY)

    def answered() -> None:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.parse().choices[0].message.content == "hi"

    answered()
    redis_process.kill()
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            answered()
        monkeypatch.setattr(gateway, "FAILURES_SAID_EVERY_S", 0.0)  # the period is over
        answered()
    said = [m for m in caplog.messages if "not recorded" in m]
    assert len(said) == 2, said
    assert "unavailable" in said[0] and "more" not in said[0]
    assert said[1].endswith("(4 more not recorded since the last said)"), said[1]
