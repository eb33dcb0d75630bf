"""The HTTP side of ``make bench``: servers started on loopback, wrk driving them, a CPU probe."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.openloop import OpenLoad

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CHOOSE_BODY = json.dumps({"query": "What is the capital of Australia?", "features": {"task": "qa"}})


@dataclass
class Load:
    """One wrk run: throughput, tail latency, failures, and what the Lua script counted."""

    rps: float
    p50_ms: float
    p99_ms: float
    seconds: float
    requests: int
    failures: int  # non-2xx responses plus socket errors
    counts: dict[str, int] = field(default_factory=dict)
    cpu_us: float = 0.0  # the server's CPU time per request, when it was given


def wrk_command(port: int, script: str, connections: int, seconds: float) -> list[str]:
    return [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(HERE / script),
        f"http://127.0.0.1:{port}",
    ]


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def _percentile(out: str, p: int) -> float:
    found = re.search(rf"^\s+{p}%\s+(\S+)\s*$", out, re.MULTILINE)
    assert found is not None, out
    return _ms(found.group(1))


def run_wrk(
    port: int,
    script: str = "choose.lua",
    connections: int = 16,
    seconds: float = 5,
    server: Server | None = None,
) -> Load:
    """Drive ``port`` for ``seconds`` with ``connections`` keep-alive connections (one thread).

    With ``server``, also the server's CPU time per request, which a busy machine inflates far
    less than it cuts requests per second.
    """
    cpu_before = server.cpu_s() if server is not None else 0.0
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    out = subprocess.run(
        wrk_command(port, script, connections, seconds),
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    assert done is not None, out
    secs = float(done.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failures = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in errors.groups()) if errors else 0
    )
    cpu = server.cpu_s() - cpu_before if server is not None else 0.0
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out.split("PAIRS")[-1])}
    return Load(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_percentile(out, 50),
        p99_ms=_percentile(out, 99),
        seconds=secs,
        requests=int(done.group(1)),
        failures=failures,
        counts=counts if "PAIRS" in out else {},
        cpu_us=cpu / max(int(done.group(1)), 1) * 1e6,
    )


def run_open(
    port: int, rate: float, seconds: float, server: Server, connections: int = 32
) -> OpenLoad:
    """``benchmarks.openloop`` at ``rate`` requests a second against ``port``, in a process of its
    own, charging ``server``'s processes' CPU to the requests they answered."""
    pids = ",".join(str(p) for p in server.pids())
    argv = [sys.executable, "-m", "benchmarks.openloop", "--port", str(port)]
    argv += ["--rate", f"{rate:.1f}", "--seconds", f"{seconds:g}"]
    argv += ["--connections", str(connections), "--pids", pids]
    out = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    return OpenLoad(**json.loads(out))


def request(port: int, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(c) for c in task.read_text().split()]
    return out


class Server:
    """A server process on loopback; ``started_s`` is the time to its first answered /choose."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], port: int, cwd: Path = ROOT
    ) -> None:
        """``port`` 0: a process that serves nothing (the learner), not waited for."""
        self.name = name
        self.port = port
        self.log = open(ROOT / ".bench" / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop)
        began = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self.log, stderr=self.log)
        deadline = began + 60
        while port:
            try:
                if request(port, "POST", "/choose", CHOOSE_BODY)[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see .bench/{name}.log")
            time.sleep(0.005)
        self.started_s = time.monotonic() - began
        self.started_cpu_s = self.cpu_s()  # what start-up cost, whatever the machine's load

    def pids(self) -> list[int]:
        """The server's process and its workers (uvicorn with one worker serves in its own)."""
        return [self.proc.pid, *_children(self.proc.pid)]

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server and its worker processes (user + system)."""
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def rss_mb(self) -> float:
        """Resident memory of the serving process (the uvicorn process with one worker)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = re.search(r"VmRSS:\s+(\d+) kB", status).group(1)  # type: ignore[union-attr]
        return int(kb) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def service(
    name: str,
    port: int,
    redis_url: str,
    prefix: str,
    workers: int,
    loop: str,
    code: Path | None = None,
    **settings: Any,
) -> Server:
    """``bandit-router serve``; with ``code``, the package found there (an older version)."""
    env = _env(redis_url, prefix, code, settings)
    if loop != "auto":  # an older version may not know the setting
        env["BANDIT_LOOP"] = loop
    argv = [sys.executable, "-m", "bandit_router.cli", "serve", "--port", str(port)]
    return Server(name, [*argv, "--workers", str(workers)], env, port, code or ROOT)


def learner(name: str, redis_url: str, prefix: str, **settings: Any) -> Server:
    """``bandit-router learn``: the learner in a process of its own."""
    argv = [sys.executable, "-m", "bandit_router.cli", "learn"]
    return Server(name, argv, _env(redis_url, prefix, None, settings), 0)


def _env(
    redis_url: str, prefix: str, code: Path | None, settings: dict[str, Any]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_")}
    if code is not None:  # `python -m` looks in its working directory first
        env["PYTHONPATH"] = str(code)
    values = {
        "redis_url": redis_url,
        "key_prefix": prefix,
        "log_level": "warning",
        "seed": 1,
        **settings,
    }
    env.update({f"BANDIT_{k.upper()}": str(v) for k, v in values.items()})
    return env


def bare(name: str, port: int, loop: str, workers: int = 1) -> Server:
    argv = [sys.executable, "-m", "uvicorn", "benchmarks.bare_app:create_app", "--factory"]
    argv += ["--workers", str(workers)]
    argv += ["--http", "httptools", "--loop", loop, "--port", str(port), "--log-level", "warning"]
    return Server(name, argv, dict(os.environ), port)


_PROBE = (
    "import time\nn=0\nend=time.perf_counter()+{s}\nwhile time.perf_counter()<end: n+=1\nprint(n)"
)


def cpu_probe(seconds: float = 1.0) -> float:
    """Cores this machine gives right now: work of 2 busy processes over that of 1, side by side."""

    def spin(k: int) -> int:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _PROBE.format(s=seconds)], stdout=subprocess.PIPE, text=True
            )
            for _ in range(k)
        ]
        return sum(int(p.communicate()[0]) for p in procs)

    one = spin(1)
    return spin(2) / one
