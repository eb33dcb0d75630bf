"""Hosts whose clocks disagree, on one Redis: every process judges reward windows by Redis's clock.

A process's wall clock is shifted for real (``time.time``, ``time.time_ns``, ``datetime.now``)
by a ``sitecustomize`` first on its PYTHONPATH, as a host whose NTP is broken, or that steps its
clock while the process runs; ``time.monotonic`` is left alone, as it is per host anyway.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2 as httpx
import redis

from tests.conftest import RedisProcess, cli_env, served

WAIT_S = 5

# The shift, in seconds, is the content of the file CLOCK_SHIFT_FILE names, read at every call,
# so a test steps a running process's clock by writing the file.
SITECUSTOMIZE = """
import datetime
import os
import time

_file = os.environ["CLOCK_SHIFT_FILE"]
_time, _time_ns = time.time, time.time_ns


def _shift():
    try:
        with open(_file) as f:
            return float(f.read())
    except (OSError, ValueError):
        return 0.0


time.time = lambda: _time() + _shift()
time.time_ns = lambda: _time_ns() + int(_shift() * 1e9)


class _Shifted(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls.fromtimestamp(time.time(), tz)


datetime.datetime = _Shifted
"""


def _shifted(env: dict[str, str], directory: Path, seconds: float) -> tuple[dict[str, str], Path]:
    """``env`` with its process's clock ``seconds`` ahead; the file that holds the shift."""
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    shift = directory / "shift"
    shift.write_text(str(seconds))
    pythonpath = [str(directory), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": ":".join(pythonpath), "CLOCK_SHIFT_FILE": str(shift)}, shift


def _choose(base: str) -> str:
    answer = httpx.post(f"{base}/choose", json={"query": "what is a cat"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["event_id"])


def _reward(base: str, event_id: str, **parts: Any) -> httpx.Response:
    return httpx.post(f"{base}/reward", json={"event_id": event_id, **parts}, timeout=10)


def test_a_host_whose_clock_is_off_judges_windows_by_redis_clock(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    """Before, each process read the windows by its own clock: a host 30 s ahead refused (404)
    a reward sent 1 s after another host's decision, and its sweep closed that host's windows
    at once, so parts sent in time were 409; its own decisions took rewards 30 s too long."""
    prefix = f"clocks-{uuid.uuid4().hex[:8]}"
    env = cli_env(
        redis_url=redis_process.url,
        key_prefix=prefix,
        reward_wait_s=WAIT_S,
        sweep_s=0.2,
        seed=7,
        data_dir=tmp_path / "data",
    )
    env_a = {**env, "BANDIT_BUFFER_DIR": str(tmp_path / "buffer_a")}
    b_log = tmp_path / "b.log"
    env_b, shift_b = _shifted(
        {**env, "BANDIT_BUFFER_DIR": str(tmp_path / "buffer_b")}, tmp_path / "clock", 30
    )
    with (
        served(env_a, tmp_path / "a.log") as a,
        served(env_b, b_log) as b,
    ):
        # A reward sent 1 s after A's decision, to B (30 s ahead): taken.
        sent_to_b = _choose(a)
        time.sleep(1)
        answer = _reward(b, sent_to_b, reward=0.7)
        assert answer.status_code == 200 and answer.json()["status"] == "final", answer.text

        # Parts of an A decision, to A, while B sweeps every 0.2 s: the window stays open.
        in_parts = _choose(a)
        assert _reward(a, in_parts, latency_ms=500).json()["status"] == "pending"
        time.sleep(1.5)
        answer = _reward(a, in_parts, accuracy=1, rating=4)
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["parts"]) == {"latency_ms", "accuracy", "rating"}

        # A decision of B's, rewarded at A after its window closed (by any clock but B's own).
        late = _choose(b)
        time.sleep(WAIT_S + 1)
        answer = _reward(a, late, reward=0.7)
        assert answer.status_code == 404, answer.text

        # B's clock stepped back 10 minutes while it runs: its decisions' windows stay whole.
        shift_b.write_text(str(30 - 600))
        stepped = _choose(b)
        time.sleep(1)
        answer = _reward(a, stepped, reward=0.7)
        assert answer.status_code == 200 and answer.json()["status"] == "final", answer.text

    logged: Any = redis.Redis.from_url(redis_process.url).xrange(f"{{{prefix}}}:events")
    assert len(logged) == 3  # the three rewarded in time, each once; the late one skipped
    # B says how far its clock is off, at start and after the step; A, in step, says nothing.
    said = re.findall(
        r"this host's clock is ([0-9.]+) s (ahead of|behind) Redis's", b_log.read_text()
    )
    assert [(round(float(s)), way) for s, way in said] == [(30, "ahead of"), (570, "behind")]
    assert "this host's clock" not in (tmp_path / "a.log").read_text()


def test_decisions_journalled_by_a_host_behind_are_written_by_another(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    """Decisions a host 15 minutes behind answered degraded, journalled and left at its stop,
    written by a process on a host in step: before, that process judged their age by its own
    clock against theirs, found them older than their keys' lifetime (60 s + 600 s) and let them
    all go, so their rewards were 404. Now both are Redis's clock: written, rewarded."""
    prefix = f"clocks-{uuid.uuid4().hex[:8]}"
    env = cli_env(
        redis_url=redis_process.url,
        key_prefix=prefix,
        reward_wait_s=60,
        seed=7,
        data_dir=tmp_path / "data",
        buffer_dir=tmp_path / "buffer",
    )
    behind, _ = _shifted(env, tmp_path / "clock", -900)
    with served(behind, tmp_path / "a.log") as a:
        redis_process.kill()
        event_ids = []
        for _ in range(3):
            answer = httpx.post(f"{a}/choose", json={"query": "what is a cat"}, timeout=10)
            assert answer.status_code == 200 and answer.json()["degraded"], answer.text
            event_ids.append(answer.json()["event_id"])
    redis_process.start()
    with served(env, tmp_path / "b.log") as b:
        for event_id in event_ids:
            answer = _reward(b, event_id, reward=0.5)
            assert answer.status_code == 200 and answer.json()["status"] == "final", answer.text
    assert "wrote 3 decisions" in (tmp_path / "b.log").read_text()


def test_a_reading_whose_call_waited_does_not_move_a_clock_a_prompt_one_set() -> None:
    """Each sweep read Redis's clock as the middle of its call: a call whose answer waited (the
    event loop busy 2 s: a large model published, a long collection) set the clock 1 s behind
    Redis's until the next sweep. A reading consistent with the last one keeps it now."""
    from bandit_router.store.clock import RedisClock, elapsed

    clock, offset = RedisClock(), 1_000_000.0  # Redis's time minus this process's elapsed()
    clock.reading(10.001 + offset, sent=10.0, back=10.002)  # prompt: answered in 2 ms
    clock.reading(20.001 + offset, sent=20.0, back=22.001)  # answered at once, read 2 s later
    assert abs(clock.now() - elapsed() - offset) < 0.002
    clock.reading(30.001 + offset + 10, sent=30.0, back=30.002)  # Redis's clock stepped 10 s
    assert abs(clock.now() - elapsed() - offset - 10) < 0.002
