"""Many deployments, on one Redis and on a Redis Cluster: choose + reward pairs per second.

``python -m benchmarks.deployments [--seconds S] [--reps N] [--counts 1,4,16]
[--wait-replicas 0,1]`` starts its own Redis (one
``redis-server``, then a cluster of three masters and three replicas on loopback), and for each
count of deployments a ``bandit-router serve`` (one worker, the learner in it) with a deployments
file of that many (``default`` plus the rest), drives it with wrk (16 connections, each /choose
followed by the /reward of its decision, the decisions spread evenly over the deployments), and
prints a Markdown table: pairs per second and the CPU each process used, in percent of one core
(the service, Redis summed over its processes, wrk).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.servers import ROOT, service, wrk_command


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids``."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Row:
    backend: str
    deployments: int
    pairs_per_s: float
    failed: int
    service_cpu: float  # percent of one core
    redis_cpu: float
    wrk_cpu: float


def _deployments_file(directory: Path, count: int) -> tuple[str | None, list[str]]:
    names = ["default", *(f"app{i}" for i in range(1, count))]
    if count == 1:
        return None, names
    path = directory / f"deployments-{count}.toml"
    path.write_text("".join(f"[deployments.{n}]\n" for n in names[1:]))
    return str(path), names


def measure(
    backend: str,
    url: str,
    redis_pids: list[int],
    count: int,
    seconds: float,
    work: Path,
    wait_replicas: int = 0,
    reps: int = 1,
) -> Row:
    """One figure: the median by pairs per second of ``reps`` wrk runs on one service."""
    from tests.conftest import _free_port

    file, names = _deployments_file(work, count)
    extra: dict[str, Any] = {"deployments_file": file} if file else {}
    if wait_replicas:
        extra["redis_wait_replicas"] = wait_replicas
    port = _free_port()
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    server = service(f"deployments-{backend}-{count}", port, url, prefix, 1, "auto", **extra)
    try:
        _run(port, names, 1)  # warm up: models, connections
        rows = []
        for _ in range(reps):
            service0, redis0, wrk0 = server.cpu_s(), _cpu_of(redis_pids), _children_cpu()
            wall, counts = _run(port, names, seconds)
            rows.append(
                Row(
                    backend,
                    count,
                    counts.get("rewards", 0) / wall,
                    counts.get("failed", 0),
                    100 * (server.cpu_s() - service0) / wall,
                    100 * (_cpu_of(redis_pids) - redis0) / wall,
                    100 * (_children_cpu() - wrk0) / wall,
                )
            )
        return sorted(rows, key=lambda r: r.pairs_per_s)[len(rows) // 2]
    finally:
        server.stop()


def _run(port: int, names: list[str], seconds: float) -> tuple[float, dict[str, int]]:
    """wrk with the deployments' names as the script's arguments: its duration in seconds and
    the script's counts (chooses, rewards, failed)."""
    command = [*wrk_command(port, "pairs_deployments.lua", 16, seconds), "--", *names]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    done = re.search(r"requests in ([\d.]+)(ms|s|m)", out)
    assert done is not None and "PAIRS" in out, out
    wall = float(done.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(2)]
    return wall, {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out.split("PAIRS")[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deployments", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5, help="wrk duration per figure")
    parser.add_argument("--counts", default="1,4,16", help="numbers of deployments")
    parser.add_argument("--only", choices=["single", "cluster"], help="one backend")
    parser.add_argument(
        "--wait-replicas",
        default="0",
        help="BANDIT_REDIS_WAIT_REPLICAS values to measure on the cluster, back to back "
        "(e.g. 0,1: the cost of WAIT)",
    )
    parser.add_argument("--reps", type=int, default=1, help="wrk runs per figure (the median)")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    (ROOT / ".bench").mkdir(exist_ok=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-deployments-") as tmp:
        work = Path(tmp)
        if args.only in (None, "single"):
            from tests.conftest import RedisProcess

            single = RedisProcess(work, shutil.which("redis-server"))
            single.start()
            try:
                assert single.proc is not None
                for count in counts:
                    rows.append(
                        measure(
                            "one Redis",
                            single.url,
                            [single.proc.pid],
                            count,
                            args.seconds,
                            work,
                            reps=args.reps,
                        )
                    )
                    print(_line(rows[-1]), file=sys.stderr)
            finally:
                single.kill()
        if args.only in (None, "cluster"):
            from tests.cluster import LocalCluster

            cluster = LocalCluster(work / "cluster")
            cluster.start()
            try:
                pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
                for count in counts:
                    for wait in (int(w) for w in args.wait_replicas.split(",")):
                        name = "Redis Cluster (3+3)" + (f", WAIT {wait}" if wait else "")
                        rows.append(
                            measure(
                                name, cluster.url, pids, count, args.seconds, work, wait, args.reps
                            )
                        )
                        print(_line(rows[-1]), file=sys.stderr)
            finally:
                cluster.stop()
    print(_table(rows))
    return 0


HEADERS = [
    "Redis",
    "deployments",
    "pairs/s",
    "failed",
    "service CPU %",
    "service CPU µs/pair",
    "Redis CPU %",
    "wrk CPU %",
]


def _line(row: Row) -> str:
    return (
        f"| {row.backend} | {row.deployments} | {row.pairs_per_s:.0f} | {row.failed} | "
        f"{row.service_cpu:.0f} | {row.service_cpu * 1e4 / max(row.pairs_per_s, 1):.0f} | "
        f"{row.redis_cpu:.0f} | {row.wrk_cpu:.0f} |"
    )


def _table(rows: list[Row]) -> str:
    head = "| " + " | ".join(HEADERS) + " |\n|" + "---|" * len(HEADERS)
    return "\n".join([head, *(_line(r) for r in rows)])


if __name__ == "__main__":
    raise SystemExit(main())
