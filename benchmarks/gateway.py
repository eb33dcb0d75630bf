"""What the gateway adds to an LLM call, beside what LiteLLM's proxy adds, in the same run.

    python -m benchmarks.gateway [--rate 5] [--seconds 40] [--reps 3]

One replay upstream (``bandit-router upstream`` at a speed that makes it answer at once, so
only the proxies' time is measured) serves three targets on loopback: the upstream itself
(direct), ``bandit-router serve`` with three arms on that upstream (``model: auto``: features,
the policy's choice, the decision and the measured parts stored in Redis, the forwarding), and
LiteLLM's proxy with the upstream as its one model. Each is driven open-loop at a fixed rate
(a request every 1/rate s, whatever the answers do) with non-streaming and streaming chat
completions over the same questions, by an aiohttp client; targets take turns within each
repetition. The figure is a target's percentile minus the direct call's in the same repetition,
the median over repetitions; the ratio is the gateway's added time over LiteLLM's. LiteLLM
lives in a virtual env of its own under ``.bench/`` (made on first use: ``pip install
'litellm[proxy]'``), so its pins never touch the service's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import RedisProcess, _free_port

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
SLICE = ROOT / "examples" / "mmlu_pro_llama2_slice.jsonl"
SLICE_ARMS = ROOT / "examples" / "mmlu_pro_llama2_slice.arms.json"
LITELLM_VENV = BENCH / "litellm-venv"
MODEL = "llama2-7b"  # the upstream model every target ends at
TARGETS = ("direct", "gateway", "litellm")


def _log(text: str) -> None:
    print(f"[gateway bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Proc:
    """A server process on loopback, up once ``ready_path`` answers 200."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], port: int, ready_path: str
    ) -> None:
        self.name = name
        self.log = open(BENCH / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2):
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see .bench/{name}.log")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def litellm_binary() -> Path:
    """LiteLLM's proxy, installed in its own virtual env on first use."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        _log("installing litellm[proxy] into .bench/litellm-venv (once)")
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet"]
        subprocess.run([*pip, "litellm[proxy]>=1.50"], check=True)
    return binary


@dataclass
class Sample:
    total_ms: list[float]
    first_ms: list[float]  # to the first body chunk
    failures: int


async def drive(
    url: str, key: str, model: str, stream: bool, rate: float, seconds: float
) -> Sample:
    """Open loop: a request every 1/rate s for ``seconds``, each timed to its last byte."""
    queries = [json.loads(line)["query"] for line in SLICE.read_text().splitlines()]
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    total: list[float] = []
    first: list[float] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal failures
            messages = [{"role": "user", "content": queries[i % len(queries)]}]
            body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
            start = time.perf_counter()
            try:
                async with session.post(url, data=json.dumps(body), headers=headers) as response:
                    seen = None
                    async for _ in response.content.iter_any():
                        seen = seen or time.perf_counter()
                    if response.status != 200:
                        failures += 1
                        return
            except aiohttp.ClientError:
                failures += 1
                return
            end = time.perf_counter()
            total.append((end - start) * 1000)
            first.append(((seen or end) - start) * 1000)

        for i in range(10):  # warm the connections and the servers' code paths
            await one(i)
        total.clear()
        first.clear()
        n = int(rate * seconds)
        began = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return Sample(total, first, failures)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(p / 100 * len(ordered)), len(ordered) - 1)]


def run(rate: float, seconds: float, reps: int) -> dict[str, Any]:
    BENCH.mkdir(exist_ok=True)
    binary = litellm_binary()
    key = "sk-bench-" + secrets.token_hex(16)
    procs: list[Proc] = []
    results: dict[str, dict[str, list[Sample]]] = {
        mode: {t: [] for t in TARGETS} for mode in ("json", "stream")
    }
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(Path(tmp))
        redis.start()
        try:
            up_port, gw_port, ll_port = _free_port(), _free_port(), _free_port()
            upstream = f"http://127.0.0.1:{up_port}/v1"
            argv = [sys.executable, "-m", "bandit_router.cli", "upstream", str(SLICE)]
            argv += ["--arms", str(SLICE_ARMS), "--port", str(up_port), "--speed", "1e9"]
            procs.append(Proc("upstream", argv, dict(os.environ), up_port, "/v1/models"))
            arms = [
                {
                    "name": name,
                    "usd_per_mtok": 0.2,
                    "upstream": {"base_url": upstream, "model": MODEL},
                }
                for name in ("small", "medium", "large")
            ]
            env = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_")}
            env |= {
                "BANDIT_REDIS_URL": redis.url,
                "BANDIT_KEY_PREFIX": "bench-gateway",
                "BANDIT_ARMS": json.dumps(arms),
                "BANDIT_API_KEYS": key,
                "BANDIT_LOG_LEVEL": "warning",
                "BANDIT_SEED": "1",
            }
            argv = [sys.executable, "-m", "bandit_router.cli", "serve", "--port", str(gw_port)]
            procs.append(Proc("gateway", argv, env, gw_port, "/healthz"))
            config = BENCH / "litellm.yaml"
            config.write_text(
                "model_list:\n"
                f"  - model_name: {MODEL}\n"
                "    litellm_params:\n"
                f"      model: openai/{MODEL}\n"
                f"      api_base: {upstream}\n"
                "      api_key: none\n"
            )
            env = dict(os.environ, LITELLM_MASTER_KEY=key, LITELLM_LOCAL_MODEL_COST_MAP="True")
            argv = [str(binary), "--config", str(config), "--host", "127.0.0.1"]
            argv += ["--port", str(ll_port)]
            procs.append(Proc("litellm", argv, env, ll_port, "/health/liveliness"))
            urls = {
                "direct": (f"{upstream}/chat/completions", MODEL),
                "gateway": (f"http://127.0.0.1:{gw_port}/v1/chat/completions", "auto"),
                "litellm": (f"http://127.0.0.1:{ll_port}/v1/chat/completions", MODEL),
            }
            for rep in range(reps):
                for mode in ("json", "stream"):
                    for target in TARGETS:
                        url, model = urls[target]
                        sample = asyncio.run(
                            drive(url, key, model, mode == "stream", rate, seconds)
                        )
                        results[mode][target].append(sample)
                        _log(
                            f"rep {rep + 1}/{reps} {mode:6s} {target:8s} "
                            f"p50 {percentile(sample.total_ms, 50):7.2f} ms "
                            f"p99 {percentile(sample.total_ms, 99):7.2f} ms "
                            f"failures {sample.failures}"
                        )
        finally:
            for proc in reversed(procs):
                proc.stop()
            redis.kill()
    return summarize(results, rate, seconds, reps)


def summarize(
    results: dict[str, dict[str, list[Sample]]], rate: float, seconds: float, reps: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"rate": rate, "seconds": seconds, "reps": reps, "modes": {}}
    for mode, by_target in results.items():
        direct = by_target["direct"]
        row: dict[str, Any] = {}
        for target in ("gateway", "litellm"):
            for p in (50, 99):
                for kind in ("total", "first"):
                    added = [
                        percentile(getattr(s, f"{kind}_ms"), p)
                        - percentile(getattr(d, f"{kind}_ms"), p)
                        for s, d in zip(by_target[target], direct, strict=True)
                    ]
                    row[f"{target}_{kind}_p{p}"] = statistics.median(added)
                    row[f"{target}_{kind}_p{p}_spread"] = (min(added), max(added))
            row[f"{target}_failures"] = sum(s.failures for s in by_target[target])
        for p in (50, 99):
            row[f"direct_total_p{p}"] = statistics.median(percentile(d.total_ms, p) for d in direct)
        out["modes"][mode] = row
    return out


def table(summary: dict[str, Any]) -> str:
    lines = [
        f"Added latency over calling the upstream directly, ms (median of {summary['reps']} "
        f"repetitions of {summary['seconds']:g} s at {summary['rate']:g} requests/s, open loop; "
        "min..max over repetitions)",
        "",
        "| request | measure | direct | bandit-router gateway | LiteLLM proxy | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for mode, row in summary["modes"].items():
        label = "non-streaming" if mode == "json" else "streaming"
        for p in (50, 99):
            kinds = ("total",) if mode == "json" else ("total", "first")
            for kind in kinds:
                measure = f"p{p} {'to last byte' if kind == 'total' else 'to first chunk'}"
                g, lite = row[f"gateway_{kind}_p{p}"], row[f"litellm_{kind}_p{p}"]
                gs, ls = row[f"gateway_{kind}_p{p}_spread"], row[f"litellm_{kind}_p{p}_spread"]
                direct = f"{row[f'direct_total_p{p}']:.2f}" if kind == "total" else ""
                ratio = f"{g / lite:.2f}" if lite > 0 else "n/a"
                lines.append(
                    f"| {label} | {measure} | {direct} | +{g:.2f} ({gs[0]:.2f}..{gs[1]:.2f}) "
                    f"| +{lite:.2f} ({ls[0]:.2f}..{ls[1]:.2f}) | {ratio} |"
                )
    failures = {
        f"{m} {t}": r[f"{t}_failures"]
        for m, r in summary["modes"].items()
        for t in ("gateway", "litellm")
    }
    lines += ["", "failed requests: " + ", ".join(f"{k} {v}" for k, v in failures.items())]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # LiteLLM's proxy spent about 33 ms of CPU per call here: 5/s keeps it out of saturation on
    # a shared 2-core machine, so the figures compare the proxies' own time, not a queue's.
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=40.0, help="per target and mode")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(BENCH / "gateway.md"), help="the table, markdown")
    args = parser.parse_args()
    summary = run(args.rate, args.seconds, args.reps)
    text = table(summary)
    print(text)
    Path(args.out).write_text(text + "\n")
    (BENCH / "gateway.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
