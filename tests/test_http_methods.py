"""HTTP methods as clients other than the SDKs send them: HEAD for a monitor's probe, methods a
route does not take, against the app under a real uvicorn."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx2 as httpx
import pytest

from tests.live import serve

__all__ = ["serve"]  # the fixture, imported
Serve = Callable[..., str]

OPS = {"x-api-key": "ops-1"}
# Every GET the service answers, with the key it needs.
GETS = [
    ("/livez", {}),
    ("/healthz", {}),
    ("/arms", {}),
    ("/stats", OPS),
    ("/deployments", OPS),
    ("/metrics", OPS),
    ("/dashboard", OPS),
    ("/openapi.json", {}),
    ("/docs", {}),
    ("/v1/models", {"x-api-key": "k1"}),
]


def _raw_head(base: str, path: str) -> bytes:
    """What the server sends for ``HEAD path`` until it closes the connection."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"HEAD {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return reply


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_every_get_answers_head_with_its_head_and_no_body(serve: Serve, http: str) -> None:
    """FastAPI's routes take GET alone: HEAD /healthz was a 405, so a monitor probing with HEAD
    (the default of some uptime checkers) saw the service down. RFC 9110 asks every
    general-purpose server to answer HEAD where it answers GET."""
    base = serve(api_keys="k1", ops_keys="ops-1", http=http)
    for path, key in GETS:
        got = httpx.get(f"{base}{path}", headers=key)
        head = httpx.head(f"{base}{path}", headers=key)
        assert got.status_code == head.status_code == 200, (path, head.status_code)
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.content == b"", path
    assert httpx.head(f"{base}/stats").status_code == 401  # the key still asked for
    raw = _raw_head(base, "/healthz")
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"\r\n\r\n"), raw  # no body sent


def test_a_method_a_route_does_not_take_is_405_naming_the_allowed_ones(serve: Serve) -> None:
    base = serve()
    for method, path, allowed in [
        ("HEAD", "/choose", "POST"),
        ("GET", "/reward", "POST"),
        ("PUT", "/healthz", "GET, HEAD"),
        ("DELETE", "/admin/reset", "POST"),
        ("OPTIONS", "/choose", "POST"),
        ("POST", "/static/dashboard.js", "GET, HEAD"),
    ]:
        answer = httpx.request(method, f"{base}{path}")
        assert answer.status_code == 405, (method, path)
        assert answer.headers["allow"] == allowed, (method, path)
        if method != "HEAD":  # (its body is not sent)
            said = f"{path} takes {allowed}, not {method}"
            assert answer.json() == {"detail": said, "field": "method"}, answer.text


def test_a_path_not_served_is_a_404_naming_the_path(serve: Serve) -> None:
    """Starlette's 404 said only "Not Found", with no field: a client that added a trailing
    slash or misspelt a path was not told which part was wrong."""
    base = serve()
    for method, path in [
        ("POST", "/choose/"),
        ("POST", "/CHOOSE"),
        ("GET", "/nowhere"),
        ("GET", "/static/none.js"),
    ]:
        answer = httpx.request(method, f"{base}{path}", json={"query": "hi"})
        assert answer.status_code == 404, path
        said = f"no such path: {path} (paths are exact; /openapi.json lists them)"
        assert answer.json() == {"detail": said, "field": "path"}, answer.text
    long = "/x" * 5000  # a path is quoted cut, as any value a client sent
    assert len(httpx.get(f"{base}{long}").json()["detail"]) < 300
