"""The soak's mixed traffic (``python -m tests.soak --mixed``): everything at once, for long.

Against ``serve --workers 2`` on a redis-server of its own, with a deployments file (``default``
and ``support``), challengers with automatic promotion, and the gateway's arms on real upstreams
(the replay upstream, and a scripted one that fails now and then): choose/reward traffic on both
deployments (rewards whole, in parts, or never), the official openai SDK on the gateway (streamed
and not, some streams left early), and readers of ``/stats`` and ``/metrics``, while the faults of
``tests.soak`` run. Every ``--sample-every`` seconds it samples each worker's RSS, open fds,
threads, asyncio tasks and most numerous objects (``tests/soak_probe``), Redis's memory and keys,
the logs, pending sets and consumer groups, the journal files and the metrics' series, and prints
them as a table. At the end: every acknowledged reward must be in the log once, every logged event
learned, no 5xx but the documented 503s (within a fault's reach), and no traceback in the log.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import json
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import orjson
import redis

from tests.conftest import RedisProcess, _free_port, cli_process, wait_until
from tests.live import Servers
from tests.soak import PREFIX, fault, service_env
from tests.upstreams import (
    ARMS,
    BREAK,
    DONE,
    SLICE,
    SLICE_ARMS,
    Script,
    Scripted,
    arm,
    arms_json,
    chunk,
    rows,
)

DEPLOYMENTS = {"default": "{" + PREFIX + "}", "support": "{" + PREFIX + ":support}"}
PROBE = Path(__file__).resolve().parent / "soak_probe"
FAULT_REACH_S = 15.0  # a 503 this long after a fault began is the fault's


@dataclass
class Mixed:
    acked: dict[str, set[str]] = field(default_factory=lambda: {d: set() for d in DEPLOYMENTS})
    status: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    late_5xx: list[str] = field(default_factory=list)  # 5xx not within a fault's reach
    sdk_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: int = 0
    fault_at: float = 0.0
    seen: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: {d: collections.Counter() for d in DEPLOYMENTS}
    )
    after: dict[str, str] = field(default_factory=lambda: {d: "-" for d in DEPLOYMENTS})

    def note(self, what: str, code: int) -> None:
        self.status[(what, code)] += 1
        if code >= 500 and not (code == 503 and time.monotonic() - self.fault_at < FAULT_REACH_S):
            self.late_5xx.append(f"{time.monotonic() - self.fault_at:.0f}s {what} {code}")


def _scripted_70b() -> Scripted:
    """llama2-70b's upstream: answers well mostly, and now and then fails as a provider does."""
    turn = itertools.count()
    usage = {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43}

    def script(request: dict[str, Any]) -> Script:
        n = next(turn) % 10
        if n == 7:
            return Script((b'{"error": {"message": "overloaded"}}',), 500, "application/json")
        if request.get("stream"):
            end = orjson.dumps(
                {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "llama2-70b",
                    "choices": [],
                    "usage": usage,
                }
            )
            if n == 8:
                return Script((chunk("The", "llama2-70b"), 0.01, BREAK))
            return Script(
                (
                    chunk("The", "llama2-70b"),
                    0.005,
                    chunk(" answer is (A).", "llama2-70b"),
                    b"data: " + end + b"\n\n",
                    DONE,
                )
            )
        body = {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "llama2-70b",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "The answer is (A)."},
                }
            ],
            "usage": usage,
        }
        return Script((orjson.dumps(body),), 200, "application/json")

    return Scripted({"llama2-70b": script})


async def _choose_reward(base: str, m: Mixed, stop: float, n: int, deployment: str) -> None:
    """One app on ``deployment``: a choice, then (by turn) a whole reward, two parts, a part
    alone (its window closes it), or nothing; about ``rate`` choices a second."""
    rng = random.Random(n)
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        i = 0
        while time.monotonic() < stop:
            i += 1
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            body: dict[str, Any] = {
                "query": f"soak {deployment} {n} {i % 97}",
                "features": {"tier": rng.choice(["free", "pro"])},
            }
            if deployment != "default":
                body["deployment"] = deployment
            try:
                d = await client.post("/choose", json=body)
            except httpx.HTTPError:
                continue
            m.note("choose", d.status_code)
            if d.status_code != 200:
                continue
            event_id = d.json()["event_id"]
            kind = i % 10
            if kind == 9:
                continue  # never rewarded: the sweep lets it go
            if kind == 8:
                await _send(client, m, deployment, {"event_id": event_id, "latency_ms": 300}, stop)
                continue  # a part alone: the sweep learns it when its window closes
            if kind >= 5:
                part = {"event_id": event_id, "latency_ms": rng.uniform(50, 1500)}
                if not await _send(client, m, deployment, part, stop):
                    continue
                last = {"event_id": event_id, "accuracy": rng.random(), "final": True}
                await _send(client, m, deployment, last, stop, final=True)
                continue
            whole = {"event_id": event_id, "reward": rng.random()}
            await _send(client, m, deployment, whole, stop, final=True)


async def _send(
    client: httpx.AsyncClient,
    m: Mixed,
    deployment: str,
    body: dict[str, Any],
    stop: float,
    final: bool = False,
) -> bool:
    """POST /reward until Redis takes it, as the soak's app does; whether it was taken."""
    tried = False
    while time.monotonic() < stop + 60:
        try:
            r = await client.post("/reward", json=body)
        except httpx.HTTPError:
            r = None
        if r is not None:
            m.note("reward", r.status_code)
        if r is not None and r.status_code == 200:
            if final and r.json()["status"] == "final":
                m.acked[deployment].add(body["event_id"])
            return True
        if r is not None and r.status_code == 409 and tried:
            if final:
                m.acked[deployment].add(body["event_id"])
            return True
        if r is not None and r.status_code in (404, 409, 422):
            m.note(f"reward refused {r.status_code}", 0)
            return False
        tried = r is not None
        await asyncio.sleep(0.2)
    return False


async def _gateway(base: str, m: Mixed, stop: float, n: int, questions: list[str]) -> None:
    """An SDK app on the gateway: streamed and not, one stream in eight left early; each answer
    then rewarded with the app's accuracy (a failure was final at once: 409)."""
    rng = random.Random(1000 + n)
    sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)
    async with sdk, httpx.AsyncClient(base_url=base, timeout=10) as client:
        i = 0
        while time.monotonic() < stop:
            i += 1
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            stream = i % 2 == 0
            model = "auto" if i % 5 else rng.choice(ARMS)
            messages: list[Any] = [{"role": "user", "content": rng.choice(questions)}]
            try:
                raw = await sdk.chat.completions.with_raw_response.create(
                    model=model,
                    messages=messages,
                    stream=stream,
                    metadata={"app": "soak"},
                )
                event_id = raw.headers.get("x-bandit-event-id")
                m.note("gateway", raw.status_code)
                parsed = raw.parse()
                if stream:
                    k = 0
                    async for _ in parsed:  # type: ignore[union-attr]
                        k += 1
                        if i % 8 == 0 and k == 1:
                            break  # the client leaves mid-stream
                    await parsed.close()  # type: ignore[union-attr]
                    if i % 8 == 0:
                        continue
            except openai.APIStatusError as e:
                # a 502 is documented where every arm tried failed: the arm named, or 70b then
                # another arm (the replay does not fail, so only a named 70b should)
                m.note(
                    "gateway"
                    if (e.status_code, model) != (502, "llama2-70b")
                    else "gateway 70b named",
                    e.status_code if e.status_code != 502 or model != "llama2-70b" else 0,
                )
                continue
            except openai.APIError as e:
                m.sdk_errors[type(e).__name__] += 1
                continue
            if event_id is None:
                continue
            body = {
                "event_id": event_id,
                "accuracy": float(rng.random() < 0.5),
                "rating": 4,
                "final": True,
            }
            await _send(client, m, "default", body, stop, final=True)


async def _reader(base: str, m: Mixed, stop: float) -> None:
    """A dashboard and a scraper: /stats of each deployment and /metrics, a read a second."""
    paths = ["/stats", "/stats?deployment=support", "/metrics", "/healthz"]
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        for path in itertools.cycle(paths):
            if time.monotonic() >= stop:
                return
            await asyncio.sleep(0.25)
            try:
                r = await client.get(path)
            except httpx.HTTPError:
                continue
            m.note(path.split("?")[0] + ("" if "?" not in path else "?d"), r.status_code)


# Sampling


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return sorted(out)


def _proc(pid: int) -> dict[str, int]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return {}
    rss = re.search(r"VmRSS:\s+(\d+)", status)
    threads = re.search(r"Threads:\s+(\d+)", status)
    if rss is None or threads is None:  # a process exiting
        return {}
    return {"rss_mb": int(rss.group(1)) // 1024, "fds": fds, "threads": int(threads.group(1))}


def _probe_line(directory: Path, pid: int) -> dict[str, Any]:
    path = directory / f"objs.{pid}.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return dict(json.loads(lines[-1])) if lines else {}


def _metrics(base: str) -> dict[str, Any]:
    try:
        text = httpx.get(f"{base}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    values: dict[str, float] = {}
    for line in series:
        name, _, value = line.rpartition(" ")
        for want in ("bandit_learner_lag_events", "bandit_model_version", "bandit_degraded"):
            if name.startswith(want):
                values[name] = float(value)
    return {"series": len(series), "values": values}


def sample(server: RedisProcess, serve_pid: int, data: Path, base: str) -> dict[str, Any]:
    row: dict[str, Any] = {"t": time.time(), "workers": {}}
    for pid in _children(serve_pid):
        row["workers"][pid] = {
            **_proc(pid),
            **{k: v for k, v in _probe_line(data, pid).items() if k in ("tasks", "by_coro")},
        }
    row["serve"] = _proc(serve_pid)
    row["journal"] = (
        sorted(p.name for p in (data / "buffer").glob("*")) if (data / "buffer").exists() else []
    )
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    try:
        info: Any = client.info("memory")
        row["redis_used_mb"] = round(info["used_memory"] / 2**20, 1)
        row["keys"] = client.dbsize()
        kinds: collections.Counter[str] = collections.Counter()
        for key in client.scan_iter(count=2000):
            tag, _, rest = key.decode(errors="replace").partition("}:")
            kinds[f"{tag}}}:{rest.split(':')[0]}"] += 1  # {prefix}:decision, {prefix}:done, ...
        row["kinds"] = dict(kinds.most_common(12))
        for name, p in DEPLOYMENTS.items():
            groups: Any = client.xinfo_groups(f"{p}:events") if client.exists(f"{p}:events") else []
            row[name] = {
                "xlen": client.xlen(f"{p}:events"),
                "pending_zset": client.zcard(f"{p}:pending"),
                "group_pel": sum(g["pending"] for g in groups),
                "consumers": sum(g["consumers"] for g in groups),
                "promotions": client.llen(f"{p}:promotions"),
            }
        if server.proc is not None:
            row["redis_rss_mb"] = _proc(server.proc.pid).get("rss_mb")
    except redis.RedisError as e:
        row["redis_error"] = str(e)
    finally:
        client.close()
    row["metrics"] = _metrics(base)
    return row


def read_log(server: RedisProcess, m: Mixed) -> None:
    """Read the new entries of each deployment's log: each event id seen, counted."""
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    try:
        for name, p in DEPLOYMENTS.items():
            while True:
                start = "-" if m.after[name] == "-" else "(" + m.after[name]
                batch: Any = client.xrange(f"{p}:events", start, "+", count=5000)
                if not batch:
                    break
                for sid, fields in batch:
                    m.seen[name][orjson.loads(fields[b"d"])["event_id"]] += 1
                    m.after[name] = sid.decode()
    except redis.RedisError:
        pass  # Redis down: the next reading catches up
    finally:
        client.close()


def _line(row: dict[str, Any], start: float) -> str:
    workers = " ".join(
        f"{pid}:{w.get('rss_mb')}M/{w.get('fds')}fd/{w.get('threads')}th/{w.get('tasks', '?')}t"
        for pid, w in row["workers"].items()
    )
    d, s = row.get("default", {}), row.get("support", {})
    return (
        f"[sample {(row['t'] - start) / 60:5.1f} min] {workers} | redis "
        f"{row.get('redis_used_mb')}M rss {row.get('redis_rss_mb')}M keys {row.get('keys')} | "
        f"xlen {d.get('xlen')}/{s.get('xlen')}"
        f" pending {d.get('pending_zset')}/{s.get('pending_zset')} pel {d.get('group_pel')}/"
        f"{s.get('group_pel')} consumers {d.get('consumers')}/{s.get('consumers')} promotions "
        f"{d.get('promotions')}/{s.get('promotions')} | journal {len(row['journal'])} | series "
        f"{row['metrics'].get('series')}"
    )


async def _sampler(
    server: RedisProcess,
    serve_pid: int,
    data: Path,
    base: str,
    m: Mixed,
    stop: float,
    every: float,
    out: Path,
    start: float,
) -> None:
    while True:
        row = await asyncio.to_thread(sample, server, serve_pid, data, base)
        await asyncio.to_thread(read_log, server, m)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(_line(row, start), file=sys.stderr, flush=True)
        if time.monotonic() >= stop:
            return
        await asyncio.sleep(min(every, max(stop - time.monotonic(), 0) + 0.1))


async def _faults(server: RedisProcess, m: Mixed, stop: float, every: float, kinds: str) -> None:
    """tests.soak's faults in turn; ``kinds`` "redis": Redis restarts only, so that the workers
    live the whole run and what grows in them shows."""
    turn = 0
    while time.monotonic() + every < stop:
        await asyncio.sleep(every)
        turn += 1
        m.faults += 1
        m.fault_at = time.monotonic()
        if kinds == "redis":
            print(f"[fault] redis-server killed for 3 s (turn {turn})", file=sys.stderr)
            server.kill()
            await asyncio.sleep(3)
            await asyncio.to_thread(server.start)
        else:
            await fault(server, turn)
        m.fault_at = time.monotonic()


def _learned(url: str, p: str) -> tuple[int, int]:
    client = redis.Redis.from_url(url)
    stats: Any = client.hgetall(f"{p}:stats")
    client.close()
    accepted = sum(int(v) for k, v in stats.items() if k.startswith(b"rewards:"))
    return accepted, int(stats.get(b"events_learned", 0))


def run_mixed(args: Any) -> int:
    m = Mixed()
    questions = [row["query"] for row in rows()]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        redis_binary = args.redis_server or None
        server = RedisProcess(
            data, binary=redis_binary, args=["--appendonly", "yes", "--appendfsync", "always"]
        )
        server.start()
        upstreams = Servers()
        replay_app = __import__("bandit_router.sim.upstream", fromlist=["ReplayUpstream"])
        replay = replay_app.ReplayUpstream.load(SLICE, SLICE_ARMS, speed=50.0)
        replay_port = upstreams.start(
            replay, "the replay upstream", log_level="critical", lifespan="off"
        )
        scripted = _scripted_70b()
        scripted_port = upstreams.start(
            scripted, "the scripted upstream", log_level="critical", lifespan="off"
        )
        replay_url = f"http://127.0.0.1:{replay_port}/v1"
        arms = arms_json(
            arm("llama2-7b", replay_url),
            arm("llama2-13b", replay_url),
            arm("llama2-70b", f"http://127.0.0.1:{scripted_port}/v1", timeout_s=2),
        )
        deployments = data / "deployments.toml"
        deployments.write_text(
            '[deployments.support]\narms = "4b:4:0.1,14b:14:0.4"\n'
            "reward_weights = {accuracy = 0.7, latency = 0.3}\n"
        )
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        env = service_env(
            server.url,
            tmp,
            arms=arms,
            deployments_file=str(deployments),
            challengers="linucb,egreedy:epsilon=0.2",
            auto_promote="true",
            promote_min_events=300,
            challenger_window=2000,
            reward_wait_s=args.reward_wait_s,
            sweep_s=2,
            stream_maxlen=args.stream_maxlen,
            log_level="warning",
        )
        env["SOAK_PROBE_DIR"] = tmp
        env["SOAK_PROBE_S"] = str(min(args.sample_every, 60))
        env["PYTHONPATH"] = os.pathsep.join([str(PROBE), env.get("PYTHONPATH", "")])
        serve = ["serve", "--port", str(port), "--workers", "2"]
        log = data / "serve.log"
        samples = Path(args.samples) if args.samples else data / "samples.jsonl"
        ok = True
        try:
            with cli_process(serve, env, log) as proc:
                wait_until(lambda: _up(base), 90, "the service to start")
                start = time.monotonic()
                stop = start + args.minutes * 60

                async def run() -> None:
                    apps = [
                        _choose_reward(base, m, stop, n, "default") for n in range(args.clients)
                    ]
                    apps += [
                        _choose_reward(base, m, stop, 100 + n, "support")
                        for n in range(args.clients)
                    ]
                    apps += [_gateway(base, m, stop, n, questions) for n in range(args.gateway)]
                    apps += [_reader(base, m, stop)]
                    sampler = _sampler(
                        server,
                        proc.pid,
                        data,
                        base,
                        m,
                        stop,
                        args.sample_every,
                        samples,
                        time.time(),
                    )
                    await asyncio.gather(
                        _faults(server, m, stop, args.fault_every, args.faults), sampler, *apps
                    )

                asyncio.run(run())
                for p in DEPLOYMENTS.values():
                    settled = functools.partial(_settled, server.url, p)
                    wait_until(settled, 180, f"{p}'s learner to learn every logged event")
                time.sleep(2)
                read_log(server, m)
                final = sample(server, proc.pid, data, base)
                print(_line(final, time.time() - args.minutes * 60), file=sys.stderr)
                counts = {p: _learned(server.url, p) for p in DEPLOYMENTS.values()}
        finally:
            upstreams.stop()
            server.kill()
            text = log.read_text(errors="replace") if log.exists() else ""
            if args.keep_log:
                Path(args.keep_log).write_text(text)
        print(f"faults injected     {m.faults}")
        for (what, code), k in sorted(m.status.items()):
            print(f"  {what:24} {code}  {k}")
        print(f"sdk errors          {dict(m.sdk_errors)}")
        for name, p in DEPLOYMENTS.items():
            accepted, learned = counts[p]
            seen = m.seen[name]
            missing = [e for e in m.acked[name] if seen[e] == 0]
            twice = [e for e, k in seen.items() if k > 1]
            print(
                f"{name}: acknowledged {len(m.acked[name])}, logged {sum(seen.values())} "
                f"(Redis counts {accepted}), learned {learned}, acknowledged not logged "
                f"{len(missing)}, logged twice {len(twice)}"
            )
            ok &= not missing and not twice and accepted == learned == sum(seen.values())
        tracebacks = text.count("Traceback")
        print(f"5xx outside faults  {len(m.late_5xx)} {m.late_5xx[:10]}")
        print(f"tracebacks in log   {tracebacks}; log lines {len(text.splitlines())}")
        for line in text.splitlines():
            if "Traceback" in line or "ERROR" in line:
                print("  log:", line[:200])
        ok &= not m.late_5xx and not tracebacks
    return 0 if ok else 1


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _settled(url: str, p: str) -> bool:
    accepted, learned = _learned(url, p)
    return accepted == learned
