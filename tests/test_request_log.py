"""What a client's requests write to `serve`'s log: bounded lines, and a bounded number of them.

uvicorn's access line quoted a request's target whole, and the client address a loopback
client names in ``X-Forwarded-For``: a 60,000-character path was a 60 KB line. Its warning
about a request it cannot parse was a line for each. Here a real ``bandit-router serve`` (its
log level ``info``, as by default) takes such requests and its log file is read.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import SettingsFactory, cli_env, served

ONE_REDIS = pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
LONG = 60_000  # characters of a path or header (uvicorn's parser takes about 65,000)
WEBSOCKET_LONG = 5_000  # the websockets library answers 414 to a request line past 8 KiB
LINE_BYTES = 1_000  # the most a request's access line may take


def _raw(base: str, request: bytes) -> bytes:
    """Send ``request`` on a connection of its own; what comes back until it closes."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
        return reply


@ONE_REDIS
def test_a_request_writes_a_bounded_access_line(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings()
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix, log_level="info")
    log = tmp_path / "serve.log"
    with served(env, log) as base:
        before = log.stat().st_size
        long_path = httpx.get(f"{base}/{'p' * LONG}")
        long_query = httpx.get(f"{base}/livez?{'q' * LONG}")
        forwarded = httpx.get(f"{base}/livez", headers={"x-forwarded-for": "f" * LONG})
        websocket = _raw(  # uvicorn logs its line for one to uvicorn.error, not uvicorn.access
            base,
            f"GET /{'w' * WEBSOCKET_LONG} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n"
            "connection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "sec-websocket-version: 13\r\n\r\n".encode(),
        )
        assert websocket.startswith(b"HTTP/1.1 403"), websocket[:200]
        assert (long_path.status_code, long_query.status_code) == (404, 200)
        assert forwarded.status_code == 200
        written = log.read_bytes()[before:]
    lines = [line for line in written.splitlines() if b'"GET /' in line or b'"WebSocket /' in line]
    assert len(lines) == 4, written[:3000]
    for line in lines:
        assert len(line) < LINE_BYTES, line[:300]
    assert lines[0].endswith(b'...(60001 characters) HTTP/1.1" 404 Not Found')
    assert b"/livez?qqqq" in lines[1] and b"...(60007 characters)" in lines[1]
    assert b"ffff...(" in lines[2]
    assert b'"WebSocket /wwww' in lines[3] and b"...(5001 characters)" in lines[3]


@ONE_REDIS
def test_requests_uvicorn_cannot_parse_are_said_once(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """At ``warning``, no access log: the warning is the only line such a request wrote."""
    settings = make_settings()
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix, log_level="warning")
    log = tmp_path / "serve.log"
    with served(env, log) as base:
        before = log.stat().st_size
        for _ in range(20):
            assert _raw(base, b"GET /livez?\x1b[31m HTTP/1.1\r\nhost: x\r\n\r\n").startswith(
                b"HTTP/1.1 400"
            )
        assert httpx.get(f"{base}/livez").status_code == 200
        written = log.read_bytes()[before:].decode()
    said = [line for line in written.splitlines() if "Invalid HTTP request received." in line]
    # Said at once, then at most once in 10 s (the 20 requests take well under that here).
    assert 1 <= len(said) <= 2, written
    assert said[0].endswith("Invalid HTTP request received.")
