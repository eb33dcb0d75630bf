"""``make bench``: measure the service beside its references and write BENCHMARKS.md.

Starts its own redis-server, the service (1 and 2 workers, and 1 worker beside a learner
process) and a bare FastAPI app on loopback, drives each with wrk for a fixed time, runs the
in-process figures, and writes every figure as the median and spread of several runs; a figure
with a reference is the ratio of two measurements taken back to back in the same repetition.

    python -m benchmarks.run [--reps 5] [--seconds 5] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from benchmarks import inproc
from benchmarks.openloop import OpenLoad
from benchmarks.servers import (
    ROOT,
    Load,
    Server,
    bare,
    cpu_probe,
    learner,
    request,
    run_open,
    run_wrk,
    service,
    wrk_command,
)
from tests.conftest import RedisProcess, _free_port


@dataclass
class Figure:
    name: str
    unit: str
    target: str = ""
    ok: str = ""  # "<= 5", ">= 0.7": how the median is judged against the target
    values: list[float] = field(default_factory=list)
    note: str = ""
    table: str = "main"  # "open": a cell of the open-loop table, not a row of the main one

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def met(self) -> str:
        if not self.ok or not self.values:
            return ""
        op, bound = self.ok.split()
        good = self.median >= float(bound) if op == ">=" else self.median <= float(bound)
        return "yes" if good else "**no**"


def _learned(server: Server) -> tuple[int, int]:
    """(model version, rewards accepted) of ``server``, once the version has caught up with the
    rewards (it follows a learner apart by up to a publish and a refresh: with the defaults,
    1000 events or 10 s, then 2 s), or after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        version = request(server.port, "GET", "/healthz")[1]["model_version"]
        accepted = request(server.port, "GET", "/stats")[1]["rewards_accepted"]
        if version >= accepted or time.monotonic() > deadline:
            return version, accepted
        time.sleep(0.1)


def _pairs(server: Server, seconds: float) -> tuple[Load, int, int, int]:
    """wrk with ``pairs.lua``: (the run, rewards learned, rewards accepted, rewards dropped)."""
    v0, st0 = _learned(server)
    pairs = run_wrk(server.port, "pairs.lua", seconds=seconds, server=server)
    time.sleep(0.5)
    v1, st1 = _learned(server)
    # A reward answered 2xx must be stored and learned; a few more may be in flight when
    # wrk stops (sent, stored and learned, but never read), which is not a loss.
    learned, accepted = v1 - v0, st1 - st0
    failed = pairs.failures + pairs.counts.get("failed", 0)
    rewarded = pairs.counts.get("rewards", 0)
    return pairs, learned, accepted, failed + max(0, rewarded - learned) + abs(accepted - learned)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def _count(v: float) -> str:
    return f"{v:.0f}"


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# Open-loop offered rates, as shares of the bare app's closed-loop capacity in the same repetition.
OPEN_SHARES = (0.25, 0.5, 0.75)
OPEN_TARGET_SHARE = 0.5  # where `/choose` CPU per request is judged against the bare app's
OPEN_METRICS = (  # (key, column of the open-loop table)
    ("offered", "offered (req/s)"),
    ("achieved", "achieved (req/s)"),
    ("p50_ms", "p50 (ms)"),
    ("p99_ms", "p99 (ms)"),
    ("errors", "errors"),
    ("cpu_us", "server CPU per request (us)"),
)


class Bench:
    def __init__(
        self, reps: int, seconds: float, loop: str, baseline: str = "", parts: str = "http"
    ) -> None:
        self.parts = set(parts.split(","))
        self.baseline = baseline
        self.reps = reps
        self.seconds = seconds
        self.loop = loop
        self.figures: dict[str, Figure] = {}
        self.raw: list[str] = []
        self.probes: list[float] = []

    def fig(self, key: str, name: str, unit: str, target: str = "", ok: str = "") -> Figure:
        return self.figures.setdefault(key, Figure(name, unit, target, ok))

    def cell(self, share: float, who: str, metric: str) -> Figure:
        """One cell of the open-loop table: ``metric`` of ``who`` at ``share`` of capacity."""
        key = f"open_{share}_{who}_{metric}"
        return self.figures.setdefault(key, Figure(who, metric, table="open"))

    def http(self, redis_url: str) -> None:
        """The HTTP parts: closed loop (``http``: wrk against every server) and open loop
        (``openloop``: the bare app and the 1-worker service at shares of the bare app's
        closed-loop capacity, measured in the same repetition)."""
        closed = "http" in self.parts
        _log("starting the servers")
        servers: list[Server] = []
        try:
            ref = bare("bare", _free_port(), self.loop)
            servers.append(ref)
            one = service("svc1", _free_port(), redis_url, "bench-1w", 1, self.loop)
            servers.append(one)
            if closed:
                ref2 = bare("bare2", _free_port(), self.loop, workers=2)
                servers.append(ref2)
                two = service("svc2", _free_port(), redis_url, "bench-2w", 2, self.loop)
                servers.append(two)
                other = "asyncio" if self.loop in ("auto", "uvloop") else "uvloop"
                alt = service("svc1-" + other, _free_port(), redis_url, "bench-alt", 1, other)
                servers.append(alt)
                # DESIGN's scale-out shape: the API process appends rewards, a learner apart
                apart = service(
                    "svc1-apart",
                    _free_port(),
                    redis_url,
                    "bench-apart",
                    1,
                    self.loop,
                    learn_in_workers="false",
                )
                servers.append(apart)
                apart_learner = learner("learner-apart", redis_url, "bench-apart")
                servers.append(apart_learner)
            base = self._baseline(redis_url) if self.baseline else None
            if base is not None:
                servers.append(base)
            for s in servers:  # warm-up: imports, JIT-free caches, Redis scripts, VW
                if s.port:
                    run_wrk(s.port, seconds=1)
            for rep in range(self.reps):
                if closed:
                    capacity = self._http_rep(rep, (ref, ref2), one, two)
                    self._apart_rep(apart, apart_learner)
                    if rep % 2 == 0:  # repetitions 1, 3, 5: keeps make bench within its time
                        self._loop_rep(one, alt, other)
                else:
                    capacity = run_wrk(ref.port, seconds=self.seconds, server=ref).rps
                    _log(f"rep {rep + 1}: bare capacity {capacity:.0f}/s")
                if "openloop" in self.parts:
                    self._open_rep(rep, ref, one, capacity)
                if base is not None:
                    self._baseline_rep(rep, one, base, capacity)
        finally:
            for s in servers:
                s.stop()

    def _open_pair(self, rep: int, rate: float, ref: Server, one: Server) -> dict[str, OpenLoad]:
        """The bare app and ``/choose`` at the same offered rate, back to back; which goes first
        alternates between repetitions."""
        order = [("bare", ref), ("choose", one)]
        if rep % 2:
            order.reverse()
        return {who: run_open(s.port, rate, self.seconds, s) for who, s in order}

    def _open_rep(self, rep: int, ref: Server, one: Server, capacity: float) -> None:
        parts = []
        for share in OPEN_SHARES:
            got = self._open_pair(rep, share * capacity, ref, one)
            for who, load in got.items():
                for metric, _ in OPEN_METRICS:
                    self.cell(share, who, metric).values.append(float(getattr(load, metric)))
            pct = f"{share:.0%}"
            target = ("<= 2", "<= 2") if share == OPEN_TARGET_SHARE else ("", "")
            name = f"`/choose` CPU per request / bare FastAPI's, open loop at {pct} of its capacity"
            self.fig(f"open_cpu_{share}", name, "ratio", *target).values.append(
                got["choose"].cpu_us / got["bare"].cpu_us
            )
            parts.append(
                f"{pct} {share * capacity:.0f}/s: "
                + " | ".join(
                    f"{who} {x.achieved:.0f}/s p50 {x.p50_ms:.1f} p99 {x.p99_ms:.1f} "
                    f"max {x.max_ms:.0f}ms {x.cpu_us:.0f}us err {x.errors} "
                    f"(lag p50 {x.lag_p50_ms:.1f} p99 {x.lag_p99_ms:.1f}ms, queued "
                    f"{x.max_queued}, generator {x.client_cpu_us:.0f}us)"
                    for who, x in got.items()
                )
            )
        self.raw.append(f"  open loop, capacity {capacity:.0f}/s:")
        self.raw += [f"    {p}" for p in parts]
        _log("\n".join(self.raw[-1 - len(parts) :]))

    def _loop_rep(self, one: Server, alt: Server, other: str) -> None:
        """The same service on the other event loop, at 16 and at 64 connections."""
        s = self.seconds
        parts = []
        for conns in (16, 64):
            mine = run_wrk(one.port, connections=conns, seconds=s, server=one)
            theirs = run_wrk(alt.port, connections=conns, seconds=s, server=alt)
            name = f"`/choose` 1 worker, {conns} connections: {other} loop / `{self.loop}` loop"
            self.fig(f"loop{conns}", name, "ratio").values.append(theirs.rps / mine.rps)
            name = f"`/choose` p99, 1 worker, {conns} connections, `{self.loop}` loop"
            self.fig(f"loop{conns}_p99", name, "ms").values.append(mine.p99_ms)
            name = f"`/choose` p99, 1 worker, {conns} connections, {other} loop"
            self.fig(f"loop{conns}_p99o", name, "ms").values.append(theirs.p99_ms)
            parts.append(
                f"{conns} conns: {self.loop} {mine.rps:.0f}/s p99 {mine.p99_ms:.1f}ms, {other} "
                f"{theirs.rps:.0f}/s p99 {theirs.p99_ms:.1f}ms"
            )
        self.raw.append("  loops: " + " | ".join(parts))
        _log(self.raw[-1])

    def _baseline(self, redis_url: str) -> Server:
        """The service as it was at git revision ``self.baseline``, from a ``git archive``."""
        code = ROOT / ".bench" / "baseline"
        shutil.rmtree(code, ignore_errors=True)
        code.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", self.baseline, "bandit_router"], cwd=ROOT, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
        return service("base", _free_port(), redis_url, "bench-base", 1, self.loop, code=code)

    def _baseline_rep(self, rep: int, one: Server, base: Server, capacity: float) -> None:
        """The service now against the same at ``self.baseline``: closed loop, then open loop at
        half the bare app's capacity; which goes first alternates between repetitions."""
        s = self.seconds
        first, second = (base, one) if rep % 2 == 0 else (one, base)
        loads = {x.name: run_wrk(x.port, seconds=s, server=x) for x in (first, second)}
        old, new = loads[base.name], loads[one.name]
        rate = OPEN_TARGET_SHARE * capacity
        opened = {x.name: run_open(x.port, rate, s, x) for x in (first, second)}
        o_old, o_new = opened[base.name], opened[one.name]
        name = f"`/choose` 1 worker / the same at {self.baseline}"
        self.fig("base_r", name, "ratio").values.append(new.rps / old.rps)
        name = f"CPU per `/choose` at {self.baseline} / now"
        self.fig("base_cpu", name, "ratio").values.append(old.cpu_us / new.cpu_us)
        name = f"CPU per `/choose` at {self.baseline} / now, open loop at 50% of bare capacity"
        self.fig("base_ocpu", name, "ratio").values.append(o_old.cpu_us / o_new.cpu_us)
        name = f"`/choose` p99 at {self.baseline} / now, open loop at 50% of bare capacity"
        self.fig("base_op99", name, "ratio").values.append(o_old.p99_ms / o_new.p99_ms)
        line = (
            f"  baseline {self.baseline}: {old.rps:.0f}/s p99 {old.p99_ms:.1f}ms {old.cpu_us:.0f}us"
            f" | now {new.rps:.0f}/s p99 {new.p99_ms:.1f}ms {new.cpu_us:.0f}us"
            f" | open loop {rate:.0f}/s: {self.baseline} p50 {o_old.p50_ms:.1f} p99 "
            f"{o_old.p99_ms:.1f}ms {o_old.cpu_us:.0f}us err {o_old.errors}, now p50 "
            f"{o_new.p50_ms:.1f} p99 {o_new.p99_ms:.1f}ms {o_new.cpu_us:.0f}us err {o_new.errors}"
        )
        self.raw.append(line)
        _log(line)

    def _http_rep(self, rep: int, refs: tuple[Server, Server], one: Server, two: Server) -> float:
        """The closed-loop figures of one repetition; returns the bare app's capacity (req/s)."""
        s = self.seconds
        bare1, bare2 = refs
        b = run_wrk(bare1.port, seconds=s, server=bare1)
        c1 = run_wrk(one.port, seconds=s, server=one)
        probe = cpu_probe()
        c2 = run_wrk(two.port, seconds=s, server=two)
        b2 = run_wrk(bare2.port, seconds=s, server=bare2)
        pairs, learned, accepted, dropped = _pairs(one, s)
        rewarded = pairs.counts.get("rewards", 0)
        failed = pairs.failures + pairs.counts.get("failed", 0)
        self.probes.append(probe)
        self.fig("bare", "bare FastAPI POST, 1 worker, 16 connections", "req/s").values.append(
            b.rps
        )
        self.fig("c1", "`/choose`, 1 worker, 16 connections", "req/s").values.append(c1.rps)
        self.fig(
            "r1", "`/choose` 1 worker / bare FastAPI", "ratio", ">= 0.70", ">= 0.70"
        ).values.append(c1.rps / b.rps)
        self.fig(
            "p99", "`/choose` p99, 1 worker, 16 connections", "ms", "<= 5", "<= 5"
        ).values.append(c1.p99_ms)
        self.fig("cpu_b", "bare FastAPI: server CPU per request", "us").values.append(b.cpu_us)
        self.fig("cpu_1", "`/choose`: server CPU per request, 1 worker", "us").values.append(
            c1.cpu_us
        )
        self.fig(
            "cpu_r", "bare CPU per request / `/choose` CPU per request", "ratio"
        ).values.append(b.cpu_us / c1.cpu_us)
        self.fig("c2", "`/choose`, 2 workers, 16 connections", "req/s").values.append(c2.rps)
        self.fig(
            "r2",
            "`/choose` 2 workers / 1 worker",
            "ratio",
            ">= 1.7 (when the probe shows 2)",
            ">= 1.7",
        ).values.append(c2.rps / c1.rps)
        self.fig("probe", "CPU probe: 2 busy processes / 1", "cores").values.append(probe)
        self.fig("p99_2", "`/choose` p99, 2 workers, 16 connections", "ms").values.append(c2.p99_ms)
        self._machine(b, b2, c1, c2)
        pair_rate = rewarded / pairs.seconds
        pair_cpu = pairs.cpu_us * pairs.requests / max(rewarded, 1)
        self.fig("cpu_p", "pairs: server CPU per pair", "us").values.append(pair_cpu)
        self.fig("cpu_pr", "`/choose` CPU per request / CPU per pair", "ratio").values.append(
            c1.cpu_us / pair_cpu
        )
        self.fig(
            "pairs", "`/choose` + `/reward` pairs, learned inline, 1 worker", "pairs/s"
        ).values.append(pair_rate)
        self.fig("rp", "pairs / `/choose` alone", "ratio", ">= 0.5", ">= 0.5").values.append(
            pair_rate / c1.rps
        )
        self.fig(
            "dropped", "pairs: rewards failed, not stored or not learned", "count", "0", "<= 0"
        ).values.append(dropped)
        line = (
            f"rep {rep + 1}: bare {b.rps:.0f}/s p99 {b.p99_ms:.1f}ms {b.cpu_us:.0f}us | choose 1w "
            f"{c1.rps:.0f}/s {c1.cpu_us:.0f}us "
            f"p99 {c1.p99_ms:.1f}ms | probe {probe:.2f} | choose 2w {c2.rps:.0f}/s "
            f"{c2.cpu_us:.0f}us p99 {c2.p99_ms:.1f}ms | bare 2w {b2.rps:.0f}/s {b2.cpu_us:.0f}us "
            f"p99 {b2.p99_ms:.1f}ms | pairs {pair_rate:.0f}/s ({rewarded} answered, {learned} "
            f"learned, {accepted} stored, {failed} failed): dropped {dropped}"
        )
        self.raw.append(line)
        _log(line)
        return b.rps

    def _machine(self, b: Load, b2: Load, c1: Load, c2: Load) -> None:
        """What this machine allows: the bare app's own tail latency and 2-worker scaling, and
        how much more CPU a request takes when both workers run, for both apps."""
        fig = self.fig
        fig("p99_b", "bare FastAPI p99, 1 worker, 16 connections", "ms").values.append(b.p99_ms)
        fig("b2", "bare FastAPI, 2 workers, 16 connections", "req/s").values.append(b2.rps)
        name = "bare FastAPI 2 workers / 1 worker"
        fig("rb2", name, "ratio").values.append(b2.rps / b.rps)
        name = "`/choose` 2-worker scaling / bare FastAPI's"
        fig("rr2", name, "ratio").values.append((c2.rps / c1.rps) / (b2.rps / b.rps))
        name = "bare FastAPI: server CPU per request, 2 workers / 1 worker"
        fig("cpu_b2", name, "ratio").values.append(b2.cpu_us / b.cpu_us)
        name = "`/choose`: server CPU per request, 2 workers / 1 worker"
        fig("cpu_c2", name, "ratio").values.append(c2.cpu_us / c1.cpu_us)

    def _apart_rep(self, apart: Server, apart_learner: Server) -> None:
        """Pairs against /choose alone on the scale-out shape: one API process, a learner apart."""
        c = run_wrk(apart.port, seconds=self.seconds, server=apart)
        learner_cpu = apart_learner.cpu_s()
        pairs, learned, accepted, dropped = _pairs(apart, self.seconds)
        learner_cpu = apart_learner.cpu_s() - learner_cpu
        rewarded = pairs.counts.get("rewards", 0)
        rate = rewarded / pairs.seconds
        cpu = (pairs.cpu_us * pairs.requests / 1e6 + learner_cpu) / max(rewarded, 1) * 1e6
        self.fig(
            "ca", "`/choose`, 1 API worker, learner apart, 16 connections", "req/s"
        ).values.append(c.rps)
        self.fig(
            "pairs_a", "`/choose` + `/reward` pairs, 1 API worker, learner apart", "pairs/s"
        ).values.append(rate)
        self.fig(
            "cpu_pa", "pairs, learner apart: CPU per pair (API process + learner)", "us"
        ).values.append(cpu)
        self.fig(
            "rp_a", "pairs / `/choose` alone, learner apart", "ratio", ">= 0.5", ">= 0.5"
        ).values.append(rate / c.rps)
        self.fig(
            "dropped_a",
            "pairs, learner apart: rewards failed, not stored or not learned",
            "count",
            "0",
            "<= 0",
        ).values.append(dropped)
        line = (
            f"  learner apart: choose {c.rps:.0f}/s {c.cpu_us:.0f}us | pairs {rate:.0f}/s "
            f"({rewarded} answered, {learned} learned, {accepted} stored; learner "
            f"{learner_cpu / max(rewarded, 1) * 1e6:.0f}us a reward): dropped {dropped}"
        )
        self.raw.append(line)
        _log(line)

    def _vs(self, key: str, name: str, unit: str, got: float, ref: float, native: float) -> None:
        self.fig(key, name, unit).values.append(got)
        self.fig(
            key + "_ref", f"bare pyvw predict+learn, text API ({key})", "steps/s"
        ).values.append(ref)
        self.fig(key + "_nat", f"bare pyvw, native layer ({key})", "steps/s").values.append(native)
        self.fig(key + "_rn", f"{key} / bare pyvw native layer", "ratio").values.append(
            got / native
        )

    def memory(self, redis_url: str) -> None:
        _log("memory: 200k decisions on a fresh service")
        s = service("mem", _free_port(), redis_url, "bench-mem", 1, self.loop, reward_wait_s=120)
        try:
            rss = {}
            for target in (20_000, 200_000):
                while request(s.port, "GET", "/stats")[1]["decisions"] < target:
                    run_wrk(s.port, seconds=5)
                rss[target] = s.rss_mb()
                _log(f"memory after {target} decisions: {rss[target]:.1f} MB")
        finally:
            s.stop()
        self.fig("rss20", "service RSS after 20k decisions", "MB").values.append(rss[20_000])
        self.fig("rss200", "service RSS after 200k decisions", "MB").values.append(rss[200_000])
        self.fig(
            "rss", "RSS after 200k / after 20k decisions", "ratio", "<= 1.1", "<= 1.1"
        ).values.append(rss[200_000] / rss[20_000])

    def startup(self, redis_url: str) -> None:
        _log("start-up to the first answered /choose")
        for _ in range(self.reps):
            s = service(
                "start",
                _free_port(),
                redis_url,
                f"bench-start-{uuid.uuid4().hex[:6]}",
                1,
                self.loop,
            )
            s.stop()
            name = "start-up CPU time (user + system) to the first answered `/choose`"
            self.fig("start_cpu", name, "s").values.append(s.started_cpu_s)
            self.fig(
                "start", "start-up to the first answered `/choose`", "s", "<= 2", "<= 2"
            ).values.append(s.started_s)

    def in_process(self, redis_url: str) -> None:
        _log("learner vs bare pyvw")
        for got, ref, native in inproc.learner_ratios(redis_url, 3000, self.reps):
            self._vs(
                "learn", "learner: events learned from the stream", "events/s", got, ref, native
            )
            self.fig("rl", "learner / bare pyvw", "ratio", ">= 0.5", ">= 0.5").values.append(
                got / ref
            )
        _log("simulator loop vs bare pyvw")
        for _ in range(self.reps):
            got, ref, native, prep = inproc.simulator_ratio(3000)
            self._vs(
                "sim", "simulator steps (`replay.run`), `egreedy`", "steps/s", got, ref, native
            )
            self.fig("rs", "simulator / bare pyvw", "ratio", ">= 0.8", ">= 0.8").values.append(
                got / ref
            )
            self.fig("prep", "simulator: `replay.prepare` (extract, score outcomes)", "rows/s")
            self.figures["prep"].values.append(prep)
            both = 1 / (1 / got + 1 / prep)  # one policy, one seed: every row prepared for one run
            self.fig("rsp", "simulator with prepare, 1 policy x 1 seed / bare pyvw", "ratio")
            self.figures["rsp"].values.append(both / ref)
        _log("LinUCB vs MABWiser")
        for _ in range(self.reps):
            got, ref, ratio = inproc.linucb_ratio(1000)
            self.fig("lin", "LinUCB choose+learn, d = 64", "steps/s").values.append(got)
            self.fig("mab", "MABWiser LinUCB predict+partial_fit, d = 64", "steps/s").values.append(
                ref
            )
            self.fig("rlin", "LinUCB / MABWiser", "ratio", ">= 20", ">= 20").values.append(ratio)


def _open_table(bench: Bench) -> list[str]:
    """The open-loop figures: one row per offered rate and server, median (min - max) a cell."""
    if not any(f.table == "open" for f in bench.figures.values()):
        return []
    lines = [
        "",
        "Open loop (requests sent at fixed times; latency from each one's due time):",
        "",
        "| offered rate | server | " + " | ".join(c for _, c in OPEN_METRICS) + " |",
        "|---|---|" + "---|" * len(OPEN_METRICS),
    ]
    names = {"bare": "bare FastAPI", "choose": "`/choose`"}
    for share in OPEN_SHARES:
        for who in ("bare", "choose"):
            cells = []
            for metric, _ in OPEN_METRICS:
                v = bench.cell(share, who, metric).values
                fmt = _count if metric == "errors" else _fmt
                cells.append(f"{fmt(statistics.median(v))} ({fmt(min(v))} - {fmt(max(v))})")
            row = f"| {share:.0%} of bare capacity | {names[who]} | " + " | ".join(cells)
            lines.append(row + " |")
    return lines


def _machine(load_start: str) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = ", ".join(
        f"{p} {metadata.version(p)}"
        for p in (
            "fastapi",
            "uvicorn",
            "uvloop",
            "httptools",
            "redis",
            "hiredis",
            "vowpalwabbit",
            "numpy",
            "mabwiser",
        )
    )
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return [
        f"- CPU: {os.cpu_count()} x {cpu}; {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; {versions}; {wrk.strip()}",
        f"- load average at start: {load_start} "
        "(the machine is shared: other engineers' tests and simulations run meanwhile)",
    ]


def write(bench: Bench, out: Path, started: str, loads: tuple[str, str], argv: list[str]) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks.run`); the measured part is generated.",
        "",
        f"Run {started}, {bench.reps} repetitions of {bench.seconds:g} s per HTTP figure, "
        f"uvicorn loop `{bench.loop}`; http: uvicorn's `httptools` for both the service "
        f"(its routing door is ASGI middleware) and the bare app. Command: `{' '.join(argv)}`.",
        "",
        *_machine(loads[0]),
        f"- load average at the end: {loads[1]}",
        "",
        "| figure | median | spread (min - max) | target | met |",
        "|---|---|---|---|---|",
    ]
    for f in bench.figures.values():
        if f.table != "main":
            continue
        spread = f"{_fmt(min(f.values))} - {_fmt(max(f.values))}" if f.values else ""
        median = _fmt(f.median) if f.values else ""
        lines.append(f"| {f.name} ({f.unit}) | {median} | {spread} | {f.target} | {f.met()} |")
    probe = statistics.median(bench.probes) if bench.probes else 0.0
    # As written in the report: the script's path relative to the repository, no machine paths.
    command = " ".join(wrk_command(0, "choose.lua", 16, bench.seconds))
    command = command.replace(str(Path(__file__).resolve().parent), "benchmarks")
    lines += _open_table(bench)
    lines += [
        "",
        "Ratios are computed per repetition from two measurements taken back to back, then the "
        "median and spread of those ratios are given."
        + (
            " The 2-worker scaling is judged only when the CPU probe shows two cores: probe "
            f"median {probe:.2f}."
            if bench.probes
            else ""
        ),
        "",
        "How each figure is measured:",
        "",
        f"- HTTP: `{command.replace(':0', ':PORT')}`"
        " against, in turn, `benchmarks/bare_app.py` (uvicorn, same request and response models),"
        " `bandit-router serve --workers 1` and `--workers 2` (the default policy, squarecb; a"
        " real redis-server on loopback, no persistence), then the bare app with `--workers 2`."
        " `benchmarks/choose.lua` rotates six realistic bodies. The bare app's rows are what"
        " this machine allows a FastAPI POST endpoint with no work behind it: its own p99 and"
        " 2-worker scaling, and how a request's CPU grows when both cores are busy.",
        "- Pairs: `benchmarks/pairs.lua` sends `/reward` (every weighted part) for each answered"
        " `/choose`; the single process learns each reward before answering. Dropped = non-2xx"
        " + socket errors + |rewards answered - model_version increase| + |rewards answered -"
        " rewards_accepted increase|, read once the model version has caught up (at most 30 s).",
        "- Learner apart: the same two runs (`/choose` alone, then pairs) against DESIGN's"
        " scale-out shape, one `bandit-router serve --workers 1` with `BANDIT_LEARN_IN_WORKERS="
        "false` and one `bandit-router learn` beside it, default settings (the service loads"
        " each model the learner publishes, so its `model_version` follows the learner's). Its"
        " CPU per pair charges the learner's CPU too; dropped is counted as above.",
        "- Learner: 3000 events logged through the router; a leading `Learner.step()` loop reads"
        " them through the consumer group (XREADGROUP, XPENDING, snapshots every 1000) and"
        " learns them; reference: pyvw `predict(lines)` + `learn(lines)` on the same examples as"
        " prebuilt text, alternated with it.",
        "- Simulator: `bandit-router simulate`'s own functions on a 3000-row replay of the"
        " synthetic stream (every arm's outcome from a planted reward): `replay.prepare` extracts"
        " each row's features once (timed apart: the CLI shares it between all policies and"
        " seeds), then `replay.run` plays the rows in a seed's shuffled order through"
        " `make_stepper('egreedy')`: `choose`, `RewardConfig.combine` of the chosen arm's"
        " outcome, `learn`, the per-step record; reference: the bare pyvw loop on the examples it"
        " produced, alternated with it in chunks of 250. 'with prepare' charges every row's"
        " preparation to a single policy and seed.",
        "- LinUCB: 1000 steps of `choose` + `learn` at d = 64, against MABWiser's"
        " `LinUCB(alpha=0.5)` `predict` + `partial_fit`, each side building `dense_vector` from"
        " the same `Features` (as the simulator's peer does), in alternated chunks of 100.",
        "- Open loop: `python -m benchmarks.openloop` (uvloop, 32 keep-alive connections, the"
        " bodies of `choose.lua`) sends requests at fixed times, `i / rate` apart, for the same"
        " duration, at 25%, 50% and 75% of the rate the bare app served closed loop (its"
        " first row) in the same repetition, to the bare app and to `bandit-router serve"
        " --workers 1` back to back at each rate (which goes first alternates). A request due"
        " while every connection waits for an answer queues in the generator; each latency is"
        " measured from the request's due time, not from when it was written (no coordinated"
        " omission). Achieved = 2xx answers / (first due time to last answer); errors = non-2xx,"
        " lost connections and answers not back 5 s after the last due time. Server CPU per"
        " request = utime + stime (`/proc/PID/stat`) of the uvicorn process over the run /"
        " answered requests, so it also charges a server's idle work (timers, the learner's"
        " polls) to the requests, more so at lower rates. The generator's own lag (written"
        " after the due time) and CPU per request are in the lines per repetition.",
        "- Memory: VmRSS of a fresh single-worker service after 20k and 200k `/choose`.",
        "- Start-up: `bandit-router serve` spawned until the first `/choose` answers 200.",
        "",
        "Per repetition:",
        "",
        "```",
        *bench.raw,
        "```",
    ]
    notes = Path(__file__).resolve().parent / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    out.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--loop", default=os.environ.get("BANDIT_LOOP", "auto"))
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument(
        "--only",
        default="http,openloop,memory,startup,inproc",
        help="comma-separated parts: http (closed loop), openloop, memory, startup, inproc; "
        "baseline (with --baseline: only the bare app's capacity and that comparison)",
    )
    parser.add_argument("--baseline", default="", help="also measure /choose at this git rev")
    args = parser.parse_args()
    (ROOT / ".bench").mkdir(exist_ok=True)
    load_start = _load()  # read now: _machine runs when the report is written
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    bench = Bench(args.reps, args.seconds, args.loop, args.baseline, args.only)
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(Path(tmp), binary="redis-server" if _has("redis-server") else None)
        redis.start()
        try:
            only = args.only.split(",")
            if {"http", "openloop", "baseline"} & set(only):
                bench.http(redis.url)
            if "inproc" in only:
                bench.in_process(redis.url)
            if "startup" in only:
                bench.startup(redis.url)
            if "memory" in only:
                bench.memory(redis.url)
        finally:
            redis.kill()
    load_end = _load()
    write(
        bench,
        Path(args.out),
        started,
        (load_start, load_end),
        ["python", "-m", "benchmarks.run", *sys.argv[1:]],
    )
    _log(f"wrote {args.out}")
    return 0


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _has(binary: str) -> bool:
    return shutil.which(binary) is not None


if __name__ == "__main__":
    sys.exit(main())
