"""The service at the machine's limits (a full disk, a file size limit): what a client is told
and what the log says, with real processes, real Redis and real HTTP."""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import httpx2 as httpx
import redis

from bandit_router.settings import Settings
from tests.conftest import SettingsFactory, _free_port, cli_env, healthy, wait_until


def _files_limited(size: int) -> None:
    """In a child process: no file of its may grow past ``size`` bytes (a full disk, with no
    root to mount one); a write past it fails with EFBIG rather than SIGXFSZ killing it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def _descriptors_limited(count: int) -> None:
    """In a child process: at most ``count`` open files (sockets included)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


@contextmanager
def _service(
    settings: Settings, limit: Callable[[], None], **more: object
) -> Iterator[tuple[str, list[str]]]:
    """``serve`` on ``settings``' Redis and prefix, ``limit`` set in its process: its base URL,
    and a list that holds its output once it has stopped (SIGTERM)."""
    env = cli_env(
        redis_url=settings.redis_url,
        key_prefix=settings.key_prefix,
        data_dir=settings.data_dir,
        log_level="warning",
        **more,
    )
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    output: list[str] = []
    service = subprocess.Popen(  # its log to a pipe: a log file would meet the limit too
        [sys.executable, "-m", "bandit_router.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=limit,
    )
    try:
        wait_until(lambda: healthy(base), 60, "the service to answer /healthz")
        yield base, output
        service.send_signal(signal.SIGTERM)
        output.append(service.communicate(timeout=30)[0].decode())
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()


def test_a_reward_stored_is_a_200_though_the_learner_cannot_save_its_model(
    make_settings: SettingsFactory,
) -> None:
    """VW saves a model through a temporary file: on a full disk the learner cannot publish.
    A reward Redis took is still a 200 (a retry would be a 409), each logged once; the log says
    why the learner cannot publish, and where."""
    settings = make_settings()
    statuses: Counter[int] = Counter()
    with (
        _service(settings, partial(_files_limited, 1000), snapshot_every=1) as (base, output),
        httpx.Client() as client,
    ):
        for i in range(150):
            d = client.post(f"{base}/choose", json={"query": f"question {i} about topic {i % 7}"})
            assert d.status_code == 200, d.text
            r = client.post(f"{base}/reward", json={"event_id": d.json()["event_id"], "reward": 1})
            statuses[r.status_code] += 1
            assert "Traceback" not in r.text
    assert statuses == {200: 150}, statuses
    rows: Any = redis.Redis.from_url(str(settings.redis_url)).xrange(
        "{" + settings.key_prefix + "}:events"
    )
    logged = Counter(json.loads(fields[b"d"])["event_id"] for _, fields in rows)
    assert len(logged) == 150 and set(logged.values()) == {1}
    said = [line for line in output[0].splitlines() if "cannot save the model" in line]
    assert said and "temporary file" in said[0] and "disk full" in said[0], output[0][-3000:]


def test_a_process_out_of_file_descriptors_says_so_and_recovers_when_clients_go(
    make_settings: SettingsFactory,
) -> None:
    """Past RLIMIT_NOFILE uvicorn's loop (uvloop) closes each new connection unanswered, and
    says nothing: the service says it, naming the limit; once the clients go it serves again,
    its Redis connections and learner whole."""
    settings = make_settings()
    with _service(settings, partial(_descriptors_limited, 64)) as (base, output):
        idle = []
        for _ in range(80):  # more connections than the process can hold, none sending
            idle.append(socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))))
        time.sleep(2.5)  # the check runs each second
        for connection in idle:
            connection.close()
        with httpx.Client(base_url=base) as client:
            wait_until(lambda: healthy(base), 20, "the service to answer again")
            d = client.post("/choose", json={"query": "after the crowd"})
            assert d.status_code == 200 and not d.json()["degraded"], d.text
            r = client.post("/reward", json={"event_id": d.json()["event_id"], "reward": 1})
            assert r.status_code == 200 and r.json()["status"] == "final", r.text
    said = [line for line in output[0].splitlines() if "open files" in line]
    assert said and "RLIMIT_NOFILE" in said[0] and "64" in said[0], output[0][-3000:]
    assert "Traceback" not in output[0], output[0][-3000:]
