"""``bandit-router serve`` as users run it: a real uvicorn on loopback, the embedded Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import pytest

from bandit_router.cli import main
from tests.conftest import SettingsFactory, _free_port, cli_env, cli_process, wait_until


@contextmanager
def _serve(data_dir: Path, port: int, *extra: str) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_")}
    env |= {"BANDIT_DATA_DIR": str(data_dir), "BANDIT_POLICY": "linucb", "BANDIT_SEED": "1"}
    log = (data_dir.parent / f"serve-{port}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bandit_router.cli", "serve", "--port", str(port), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.name and Path(log.name).read_text(errors="replace")
                raise RuntimeError(f"serve did not start:\n{text[-3000:]}")
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_serve_learns_and_survives_a_restart(tmp_path: Path) -> None:
    port = _free_port()
    with _serve(tmp_path / "data", port) as base, httpx.Client(base_url=base) as http:
        for i in range(40):
            d = http.post("/choose", json={"query": f"hello {i}"}).json()
            reward = 1.0 if d["arm"] == "14b" else 0.0
            r = http.post("/reward", json={"event_id": d["event_id"], "reward": reward})
            assert r.status_code == 200
        version = http.get("/healthz").json()["model_version"]
        assert version == 40
    with _serve(tmp_path / "data", port) as base, httpx.Client(base_url=base) as http:
        assert http.get("/healthz").json()["model_version"] == version
        assert http.get("/stats").json()["rewards_accepted"] == 40


def test_bad_settings_stop_start_up_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANDIT_POLICY", "egredy")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "BANDIT_POLICY" in err
    assert "unknown policy 'egredy'; valid: egreedy, squarecb" in err


def test_a_crashed_service_comes_back_with_everything_it_learned(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(snapshot_every=30)
    env = cli_env(redis_url=settings.redis_url, key_prefix=settings.key_prefix, learner_lease_s=1)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    serve = ["serve", "--port", str(port)]
    with cli_process(serve, env, tmp_path / "a.log") as first:
        wait_until(lambda: _healthy(base), 30, "the service to start")
        with httpx.Client(base_url=base) as http:
            for i in range(100):
                d = http.post("/choose", json={"query": f"q{i}"}).json()
                http.post("/reward", json={"event_id": d["event_id"], "reward": 1.0})
        first.send_signal(signal.SIGKILL)  # no final snapshot: the last one is at 90
        first.wait()
    with cli_process(serve, env, tmp_path / "b.log"):
        wait_until(lambda: _healthy(base), 30, "the service to restart")
        health = httpx.get(f"{base}/healthz").json()
        assert health["model_version"] == 100  # snapshot at 90 plus the 10 logged after it
        wait_until(lambda: httpx.get(f"{base}/healthz").json()["learner"], 10, "the lease")


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
