"""The store on a real Redis Cluster: one deployment's keys in one slot, on that slot's master."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from bandit_router.errors import StoreUnavailable
from bandit_router.rewards import RewardParts
from bandit_router.service.router import Router
from bandit_router.settings import Settings
from bandit_router.store.cluster import node_url, plain_url, seed_nodes
from bandit_router.store.repository import open_store
from tests.cluster import ClusterNode, LocalCluster, PortTaken, _binary
from tests.cluster import _command as _command_of
from tests.conftest import _free_port, wait_until
from tests.live import Servers


def _settings(cluster: LocalCluster, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": cluster.url,
        "data_dir": str(tmp_path / "data"),
        "key_prefix": f"c-{uuid.uuid4().hex[:10]}",
        "seed": 3,
    }
    values.update(overrides)
    return Settings(**values)


def test_urls() -> None:
    assert plain_url("redis+cluster://:pw@h:7000/0") == "redis://:pw@h:7000/0"
    assert plain_url("redis://h:1") == "redis://h:1"
    named, others = seed_nodes("redis://u:pw@h1:7000,h2,[::1]:7002/0?x=1")
    assert named == "redis://u:pw@h1:7000/0?x=1"
    assert [(n.host, n.port) for n in others] == [("h2", 6379), ("::1", 7002)]
    assert node_url("rediss://u:pw@seed:1/0?ssl_ca_certs=/c", "10.0.0.2", 7001) == (
        "rediss://u:pw@10.0.0.2:7001/0?ssl_ca_certs=/c"
    )


def test_a_deployment_routes_and_learns_on_the_master_of_its_slot(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    settings = _settings(redis_cluster, tmp_path)

    async def run() -> tuple[dict[str, Any], str | None]:
        async with open_store(settings) as store:
            router = await Router.open(settings, store)
            try:
                for i in range(20):
                    chosen = await router.choose(f"query {i}", {"task": "qa"})
                    await router.reward(chosen.event_id, _parts(reward=0.5))
                stats = await router.stats()
                await router.learner.publish()
                assert store.route is not None
                return stats, store.route.master
            finally:
                await router.close()

    stats, master = asyncio.run(run())
    assert stats["rewards_accepted"] == 20 and stats["decisions"] == 20
    owner = redis_cluster.master_of("{" + settings.key_prefix + "}")
    assert master == owner.address
    client = owner.client()
    try:  # every key of the deployment is on that master
        keys = list(client.scan_iter(match="{" + settings.key_prefix + "}:*"))
        assert len(keys) >= 3
        assert client.xlen("{" + settings.key_prefix + "}:events") == 20
    finally:
        client.close()


def test_a_url_of_several_nodes_starts_while_its_first_is_down(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    """With one node in BANDIT_REDIS_URL, a process started while that node was down (a CLI
    command, a worker uvicorn respawned: it failed its start, and uvicorn stopped the whole
    service) waited and failed though the cluster served. Several seeds: any one that answers."""
    down = f"127.0.0.1:{_free_port()}"  # nothing listens there
    live = ",".join(n.address for n in redis_cluster.nodes[1:3])
    settings = _settings(redis_cluster, tmp_path, startup_wait_s=0)
    assert settings.redis_url is not None
    for url in (f"redis+cluster://{down},{live}/0", f"redis://{down},[::1]:1,{live}"):
        many = settings.model_copy(update={"redis_url": url, "redis_cluster": True})

        async def run(current: Settings = many) -> str | None:
            async with open_store(current) as store:
                assert await store.ping()
                assert store.route is not None
                return store.route.master

        master = asyncio.run(run())
        assert master == redis_cluster.master_of("{" + settings.key_prefix + "}").address
    with pytest.raises(ValueError, match="no host"):
        asyncio.run(_opened(settings.model_copy(update={"redis_url": f"redis+cluster://{live},"})))


async def _opened(settings: Settings) -> None:
    async with open_store(settings):
        pass


def _parts(**values: float) -> Any:
    from bandit_router.rewards import RewardParts

    return RewardParts.from_mapping(values)


# Several deployments through the HTTP service on the cluster.


def _spread_names(cluster: LocalCluster, prefix: str, count: int) -> list[str]:
    """Deployment names whose hash tags land on as many of the cluster's masters as possible."""
    names: list[str] = []
    masters: set[str] = set()
    for i in range(200):
        name = f"app{i}"
        master = cluster.master_of("{" + f"{prefix}:{name}" + "}").address
        if master not in masters or len(masters) == len(cluster.nodes) // 2:
            masters.add(master)
            names.append(name)
        if len(names) == count:
            return names
    raise AssertionError("no spread of deployment names found")


def _deployments_file(tmp_path: Path, names: list[str]) -> str:
    path = tmp_path / "deployments.toml"
    tables = [f'[deployments.{n}]\narms = "a{i},b{i},c{i}"\n' for i, n in enumerate(names)]
    path.write_text("\n".join(tables))
    return str(path)


@contextmanager
def _served(settings: Settings) -> Iterator[str]:
    """The app under uvicorn on a free loopback port."""
    servers = Servers()
    try:
        port = servers.start_service(settings, log_level="warning")
        yield f"http://127.0.0.1:{port}"
    finally:
        servers.stop()


@dataclass
class Tally:
    """What one deployment's traffic saw."""

    acked: list[str] = field(default_factory=list)  # events whose reward got a 2xx, final
    statuses: Counter[int] = field(default_factory=Counter)  # every reward answer's status
    degraded: int = 0  # /choose answers with degraded: true
    choose_failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _traffic(base: str, names: list[str], stop: threading.Event, tallies: dict[str, Tally]) -> None:
    """choose + reward pairs round the deployments until ``stop``; a reward answered 503 is sent
    again (a client's retry) until it gets another answer, for at most 20 s."""
    with httpx.Client(base_url=base, timeout=10) as http:
        i = 0
        while not stop.is_set():
            name = names[i % len(names)]
            tally = tallies[name]
            i += 1
            try:
                r = http.post("/choose", json={"query": f"q {i}", "deployment": name})
            except httpx.HTTPError:
                tally.choose_failed += 1
                continue
            if r.status_code != 200:
                with tally.lock:
                    tally.choose_failed += 1
                continue
            decision = r.json()
            if decision["degraded"]:
                with tally.lock:
                    tally.degraded += 1
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                body = {"event_id": decision["event_id"], "reward": (i % 10) / 10}
                got = http.post("/reward", json=body)
                with tally.lock:
                    tally.statuses[got.status_code] += 1
                    if got.status_code == 200 and got.json()["status"] == "final":
                        tally.acked.append(decision["event_id"])
                if got.status_code != 503:
                    break
                time.sleep(0.05)


@contextmanager
def _traffic_running(
    base: str,
    names: list[str],
    tallies: dict[str, Tally],
    threads: int = 4,
    also: tuple[Callable[[threading.Event], None], ...] = (),
) -> Iterator[None]:
    """``threads`` threads of ``_traffic``, and one for each of ``also`` (given the stop
    event), running until the block ends; joined before it is left."""
    stop = threading.Event()
    running = [
        threading.Thread(target=_traffic, args=(base, names, stop, tallies)) for _ in range(threads)
    ]
    running += [threading.Thread(target=task, args=(stop,)) for task in also]
    for t in running:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in running:
            t.join(timeout=60)


def _logged(cluster: LocalCluster, prefix: str) -> list[str]:
    """The event ids in a deployment's training log, read from the master of its slot."""
    client = cluster.master_of("{" + prefix + "}").client()
    try:
        rows: Any = client.xrange("{" + prefix + "}:events")
        return [orjson.loads(fields[b"d"])["event_id"] for _, fields in rows]
    finally:
        client.close()


def test_every_acknowledged_reward_of_every_deployment_is_learned_exactly_once(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    prefix = f"x{uuid.uuid4().hex[:8]}"
    names = _spread_names(redis_cluster, prefix, 4)
    masters = {redis_cluster.master_of("{" + f"{prefix}:{n}" + "}").address for n in names}
    assert len(masters) == 3  # the deployments spread over the three masters
    settings = _settings(
        redis_cluster,
        tmp_path,
        key_prefix=prefix,
        deployments_file=_deployments_file(tmp_path, names),
    )
    tallies = {n: Tally() for n in names}
    with _served(settings) as base:
        with _traffic_running(base, names, tallies, threads=6):
            time.sleep(4)
        stats = {n: httpx.get(f"{base}/stats?deployment={n}&window=0").json() for n in names}
    for name in names:
        tally = tallies[name]
        assert len(tally.acked) >= 20, (name, tally)
        assert set(tally.statuses) == {200}, (name, tally.statuses)
        logged = _logged(redis_cluster, f"{prefix}:{name}")
        assert len(logged) == len(set(logged)) == len(tally.acked)
        assert set(logged) == set(tally.acked)
        # learned exactly once: the model learned every logged event, no more
        assert stats[name]["model_version"] == len(tally.acked)
        assert stats[name]["rewards_accepted"] == len(tally.acked)
        arms = set(stats[name]["arms"])
        assert all(arm[-1] == str(names.index(name)) for arm in arms)


def _caught_up(base: str, name: str, logged: int) -> dict[str, Any]:
    """/stats of deployment ``name`` once its model has learned ``logged`` events (a learner
    that lost its lease in an outage takes it again and relearns from the snapshot and the log);
    as it stands after 30 s otherwise."""
    deadline = time.monotonic() + 30
    while True:
        stats: dict[str, Any] = httpx.get(f"{base}/stats?deployment={name}&window=0").json()
        if stats["model_version"] >= logged or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_a_master_killed_mid_traffic_fails_over_and_the_service_recovers(
    own_cluster: LocalCluster, tmp_path: Path, wait_replicas: int
) -> None:
    """Kill the master of one deployment's slot mid-traffic: its replica is promoted, the
    service finds it by itself (503 for rewards and degraded /choose meanwhile), the other
    deployment never notices; then count acknowledged rewards against logged ones."""
    prefix = f"f{uuid.uuid4().hex[:8]}"
    victim, bystander = names = _spread_names(own_cluster, prefix, 2)
    tag = "{" + f"{prefix}:{victim}" + "}"
    file = _deployments_file(tmp_path, names)
    settings = _settings(
        own_cluster,
        tmp_path,
        key_prefix=prefix,
        deployments_file=file,
        redis_wait_replicas=wait_replicas,
    )
    tallies = {n: Tally() for n in names}
    with _served(settings) as base:
        with _traffic_running(base, names, tallies):
            time.sleep(2)
            master = own_cluster.master_of(tag)
            before = len(tallies[victim].acked)
            killed = time.monotonic()
            master.kill()
            # one choice while the slot has no master, whatever the traffic is waiting on
            # (every traffic thread can be retrying a reward through a short outage)
            probe = httpx.post(f"{base}/choose", json={"query": "probe", "deployment": victim})
            wait_until(lambda: own_cluster.master_of(tag) is not master, 30, "a replica promoted")
            promoted = time.monotonic() - killed
            master.start()  # back as the new master's replica, as an operator would restart it
            own_cluster.wait_ok()
            wait_until(lambda: len(tallies[victim].acked) > before + 20, 60, "rewards again")
            time.sleep(1)
        logged = _logged(own_cluster, f"{prefix}:{victim}")
        stats = _caught_up(base, victim, len(logged))
    tally = tallies[victim]
    lost = set(tally.acked) - set(logged)
    print(
        f"\nFAILOVER wait_replicas={wait_replicas}: promoted after {promoted:.1f} s; "
        f"rewards acknowledged {len(tally.acked)}, logged {len(logged)}, acknowledged but lost "
        f"{len(lost)}; learned {stats['model_version']}; reward answers {dict(tally.statuses)}; "
        f"degraded /choose {tally.degraded}"
    )
    assert len(logged) == len(set(logged))  # nothing logged twice
    assert tally.statuses[503] > 0  # the outage was seen by the rewards, and survived
    assert probe.status_code == 200 and probe.json()["degraded"], probe.text  # and by /choose
    assert set(tallies[bystander].statuses) == {200} and tallies[bystander].degraded == 0
    assert stats["model_version"] >= len(logged)
    if wait_replicas:
        assert not lost  # a write a replica confirmed survives its master's death
        assert stats["model_version"] == len(logged)  # learned exactly once


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_what_a_lagging_replica_never_had_is_lost_unless_writes_wait_for_it(
    own_cluster: LocalCluster, tmp_path: Path, wait_replicas: int
) -> None:
    """The loss asynchronous replication allows, made to happen: the replica of one
    deployment's master is stopped and its replication link cut, traffic goes on, then the
    master dies and the replica, which never got those writes, is promoted. Without WAIT the
    rewards acknowledged meanwhile are lost; with WAIT 1 none was acknowledged (503 instead)."""
    prefix = f"l{uuid.uuid4().hex[:8]}"
    victim, bystander = names = _spread_names(own_cluster, prefix, 2)
    tag = "{" + f"{prefix}:{victim}" + "}"
    file = _deployments_file(tmp_path, names)
    settings = _settings(
        own_cluster,
        tmp_path,
        key_prefix=prefix,
        deployments_file=file,
        redis_wait_replicas=wait_replicas,
    )
    master = own_cluster.master_of(tag)
    replica = own_cluster.replica_of(master)
    tallies = {n: Tally() for n in names}
    with _served(settings) as base:
        with _traffic_running(base, names, tallies):
            try:
                time.sleep(1.5)
                before = len(tallies[victim].acked)
                replica.pause()  # the replica lags: it reads nothing more from its master
                client = master.client()
                try:
                    _command_of(client, "CLIENT", "KILL", "TYPE", "replica")  # and the link is cut
                finally:
                    client.close()
                time.sleep(1.5)  # the master alone has what it acknowledges now
                window = len(tallies[victim].acked) - before
                master.kill()
                replica.resume()
                wait_until(
                    lambda: own_cluster.master_of(tag) is replica, 30, "the replica promoted"
                )
                master.start()  # back as the new master's replica
                own_cluster.wait_ok()
                after = len(tallies[victim].acked)
                wait_until(lambda: len(tallies[victim].acked) > after + 20, 60, "rewards again")
            finally:
                replica.resume()
        logged = _logged(own_cluster, f"{prefix}:{victim}")
        stats = _caught_up(base, victim, len(logged))
    tally = tallies[victim]
    lost = set(tally.acked) - set(logged)
    print(
        f"\nLAGGING REPLICA wait_replicas={wait_replicas}: rewards acknowledged "
        f"{len(tally.acked)} ({window} while the replica lagged), logged {len(logged)}, "
        f"acknowledged but lost {len(lost)}; learned {stats['model_version']}; reward answers "
        f"{dict(tally.statuses)}"
    )
    assert len(logged) == len(set(logged))
    assert set(tallies[bystander].statuses) == {200}
    if wait_replicas:
        assert not lost  # nothing was acknowledged that no replica had
        assert stats["model_version"] == len(logged)  # learned exactly once
    else:
        # what the master alone acknowledged (its four clients' calls in flight at the pause
        # included), and no more
        assert lost and len(lost) <= window + 4


def test_the_cluster_flag_needs_a_cluster(tmp_path: Path, redis_process: Any) -> None:
    with pytest.raises(ValueError, match="needs BANDIT_REDIS_URL"):
        Settings(redis_cluster=True, data_dir=str(tmp_path))
    settings = Settings(redis_url=redis_process.url, redis_cluster=True, startup_wait_s=0)

    async def run() -> None:
        async with open_store(settings):
            pass

    with pytest.raises(ValueError, match="is not a Redis Cluster node"):
        asyncio.run(run())


def test_a_process_started_before_the_cluster_answers_waits_for_it(tmp_path: Path) -> None:
    """A cluster no node of which answers yet (started after the service, restarting) is Redis
    unavailable: the start waits BANDIT_STARTUP_WAIT_S for it, as for one Redis. It was a
    ValueError at once, saying the URL named no Redis Cluster node."""
    url = f"redis+cluster://127.0.0.1:{_free_port()}/0"
    settings = Settings(redis_url=url, startup_wait_s=1, data_dir=str(tmp_path))

    async def run() -> None:
        async with open_store(settings):
            pass

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="Redis Cluster cannot be connected"):
        asyncio.run(run())
    assert time.monotonic() - started >= 0.7  # it waited


@pytest.mark.parametrize("cut", ["killed", "stopped"])
def test_a_cluster_out_of_reach_is_an_outage_the_service_rides_out(
    own_cluster: LocalCluster, tmp_path: Path, cut: str
) -> None:
    """Every node of the cluster gone at once (a network cut, a restart of the cluster): the
    slot's topology cannot be read. That is Redis down: /choose answers degraded, /reward and
    the sweep meet StoreUnavailable (503), and the service serves again once the cluster is
    back. redis-py's RedisClusterException (no RedisError) reached each caller as itself: a
    500 for /choose and /reward, and a traceback for each background job. Nodes stopped
    (SIGSTOP: connections are taken and nothing answers, as in a cut that drops packets) held
    the topology read 5 s each, 30 s for six, under a lock every call waited on: a /choose went
    unanswered for minutes. Each call now waits for that read at most its own 5 s."""
    settings = _settings(own_cluster, tmp_path, buffer_dir="")

    async def run() -> None:
        async with open_store(settings) as store:
            router = await Router.open(settings, store)
            try:
                first = await router.choose("before")
                assert not first.degraded
                for node in own_cluster.nodes:
                    node.kill() if cut == "killed" else node.pause()
                for _ in range(3):  # the master found gone, then the topology unreadable
                    async with asyncio.timeout(20):  # 5 s a call at most; 30 s and more before
                        calls = [router.choose("during") for _ in range(4)]
                        assert all(c.degraded for c in await asyncio.gather(*calls))
                        with pytest.raises(StoreUnavailable):
                            await router.reward(first.event_id, RewardParts(accuracy=1.0))
                        with pytest.raises(StoreUnavailable):
                            await router.sweep()
                    await asyncio.sleep(0.25)  # past the route's refresh interval
                for node in own_cluster.nodes:
                    node.start() if cut == "killed" else node.resume()
                await asyncio.to_thread(own_cluster.wait_ok)
                deadline = time.monotonic() + 60
                while (await router.choose("after")).degraded:
                    assert time.monotonic() < deadline, "the store never followed the slot back"
                    await asyncio.sleep(0.2)
                if cut == "stopped":  # its data kept (killed nodes come back empty)
                    await router.reward(first.event_id, RewardParts(accuracy=1.0))
            finally:
                await router.close()

    asyncio.run(run())


def test_a_node_whose_port_was_taken_starts_on_other_ports(tmp_path: Path) -> None:
    binary = _binary("redis-server")
    if binary is None:
        pytest.skip("redis-server is needed for a cluster node")
    node = ClusterNode(tmp_path / "node", binary)
    with socket.socket() as taken:  # another process got the node's bus port first
        taken.bind(("127.0.0.1", node.bus_port))
        taken.listen()
        with pytest.raises(PortTaken, match="exited"):
            node.start()
        node.first_start()
        try:
            assert node.answers()
            assert node.bus_port != taken.getsockname()[1]
        finally:
            node.kill()


def test_the_log_read_while_its_slot_moves_is_unavailable_then_follows_the_slot(
    own_cluster: LocalCluster, tmp_path: Path
) -> None:
    """A read of the training log (the learner's catch-up when it takes the lease, the offline
    export) meets ASK while the slot is half moved and MOVED once it has moved: 503-style
    ``StoreUnavailable`` both times, then the read follows the slot to its new master."""
    from redis.crc import key_slot

    from bandit_router.errors import StoreUnavailable
    from bandit_router.store.records import Event
    from tests.cluster import begin_move, migrate, move_slot

    settings = _settings(own_cluster, tmp_path)
    tag = "{" + settings.key_prefix + "}"
    source = own_cluster.master_of(tag)
    target = next(
        n for n in own_cluster.nodes if n.proc and n is not source and n.role() == "master"
    )

    async def logged(store: Any) -> list[str]:
        return [e.decision["event_id"] async for e in store.events() if isinstance(e, Event)]

    async def run() -> None:
        async with open_store(settings) as store:
            router = await Router.open(settings, store)
            try:
                ids = []
                for i in range(5):
                    chosen = await router.choose(f"query {i}", {"task": "qa"})
                    await router.reward(chosen.event_id, _parts(reward=0.5))
                    ids.append(chosen.event_id)
                assert await logged(store) == ids
                slot = key_slot(tag.encode())
                await asyncio.to_thread(begin_move, source, target, slot)
                await asyncio.to_thread(migrate, source, target, [f"{tag}:events"])
                with pytest.raises(StoreUnavailable, match="slot is moving: ASK "):
                    await logged(store)
                await asyncio.sleep(0.3)  # past the route's refresh interval
                assert await store.ping()  # the route read again: still the source's slot
                assert store.route is not None and store.route.master == source.address
                await asyncio.to_thread(move_slot, own_cluster, slot, target)
                with pytest.raises(StoreUnavailable, match="slot is moving: MOVED "):
                    await logged(store)
                await asyncio.sleep(0.3)
                assert await logged(store) == ids  # from the new master
                assert store.route.master == target.address
            finally:
                await router.close()

    asyncio.run(run())


def test_a_slot_moved_mid_traffic_is_followed_and_every_reward_learned_once(
    own_cluster: LocalCluster, tmp_path: Path
) -> None:
    """Move one deployment's slot to another master mid-traffic, a few keys at a time as
    ``redis-cli --cluster reshard`` does: while it is half moved its writes meet ASK/TRYAGAIN
    (503 for rewards, degraded /choose), then the service follows it to the new master by
    itself; the learner's consumer group moved with the log, every acknowledged reward is in
    the log once and learned once, and the deployment on another master never notices."""
    from redis.crc import key_slot

    from tests.cluster import move_slot

    prefix = f"r{uuid.uuid4().hex[:8]}"
    victim, bystander = names = _spread_names(own_cluster, prefix, 2)
    tag = "{" + f"{prefix}:{victim}" + "}"
    file = _deployments_file(tmp_path, names)
    settings = _settings(own_cluster, tmp_path, key_prefix=prefix, deployments_file=file)
    tallies = {n: Tally() for n in names}
    health: Counter[int] = Counter()
    with _served(settings) as base:

        def poll_health(stop: threading.Event) -> None:
            while not stop.is_set():
                health[httpx.get(f"{base}/healthz", timeout=10).status_code] += 1
                time.sleep(0.1)

        with _traffic_running(base, names, tallies, also=(poll_health,)):
            time.sleep(1.5)
            source = own_cluster.master_of(tag)
            target = next(
                n for n in own_cluster.nodes if n.proc and n is not source and n.role() == "master"
            )
            before = len(tallies[victim].acked)
            moved = move_slot(own_cluster, key_slot(tag.encode()), target, 5, between_s=0.02)
            assert own_cluster.master_of(tag) is target
            wait_until(lambda: len(tallies[victim].acked) > before + 20, 60, "rewards again")
        logged = _logged(own_cluster, f"{prefix}:{victim}")
        stats = _caught_up(base, victim, len(logged))
    client = target.client()
    try:  # the consumer group came with the log, and has every event delivered
        groups: Any = client.xinfo_groups(tag + ":events")
    finally:
        client.close()
    tally = tallies[victim]
    print(
        f"\nRESHARD: {moved} keys moved; rewards acknowledged {len(tally.acked)}, logged "
        f"{len(logged)}; learned {stats['model_version']}; reward answers {dict(tally.statuses)};"
        f" degraded /choose {tally.degraded}; /healthz {dict(health)}"
    )
    assert moved > 0 and tally.statuses[503] > 0  # the move was met, and survived
    assert set(tally.statuses) == {200, 503} and tally.choose_failed == 0  # no 500
    assert len(logged) == len(set(logged)) == len(tally.acked)
    assert set(logged) == set(tally.acked)  # nothing acknowledged was lost
    assert stats["model_version"] == len(logged)  # learned exactly once
    assert len(groups) == 1 and groups[0]["last-delivered-id"].decode() == _newest(target, tag)
    assert set(tallies[bystander].statuses) == {200} and tallies[bystander].degraded == 0
    assert set(health) == {200}  # Redis answers all along: only the slot is away


def _newest(node: ClusterNode, tag: str) -> str:
    """The stream id of the newest event in the log of hash tag ``tag``, on ``node``."""
    client = node.client()
    try:
        rows: Any = client.xrevrange(tag + ":events", count=1)
        return str(rows[0][0].decode())
    finally:
        client.close()
