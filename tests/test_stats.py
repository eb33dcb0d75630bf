"""GET /stats: totals, settings, and what the newest logged events say, through HTTP."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from typing import Any, cast

import httpx2 as httpx
import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from bandit_router.cli.main import main
from bandit_router.policies.base import Arm
from bandit_router.rewards import RewardParts
from bandit_router.service import estimates
from bandit_router.service.offloop import off_loop
from bandit_router.service.router import Router
from bandit_router.service.stats import QUEUED_DOCUMENTS, StatsCache
from bandit_router.settings import Settings
from bandit_router.store.keys import KEY_EVENTS
from bandit_router.store.records import Entry
from bandit_router.store.repository import RECENT_MAX_BYTES, Store
from bandit_router.store.transport import connect
from tests.conftest import ClientFactory, SettingsFactory, use_settings, wait_until
from tests.live import serve

__all__ = ["serve"]  # a fixture

REWARD = {"4b": 0.2, "7b": 0.5, "14b": 0.9}
LATENCY = {"4b": 300.0, "7b": 600.0, "14b": 1200.0}


def _traffic(client: TestClient, n: int) -> None:
    for i in range(n):
        d = client.post("/choose", json={"query": f"what is item {i}?"}).json()
        arm = d["arm"]
        body = {"event_id": d["event_id"], "reward": REWARD[arm], "latency_ms": LATENCY[arm]}
        if i % 2:
            body["rating"] = 4
        assert client.post("/reward", json=body).status_code == 200


def test_recent_window_per_arm_series_and_baselines(make_client: ClientFactory) -> None:
    client = make_client(policy="random")
    _traffic(client, 300)
    stats = client.get("/stats", params={"window": 300, "buckets": 6}).json()
    assert stats["decisions"] == stats["rewards_accepted"] == 300
    recent = stats["recent"]
    assert recent["events"] == 300
    assert recent["exploration_rate"] == 0  # uniform: every arm is (tied) greedy
    assert sum(a["share"] for a in recent["arms"].values()) == pytest.approx(1)
    for arm, a in recent["arms"].items():
        assert a["mean_reward"] == pytest.approx(REWARD[arm])
        assert a["latency_ms"] == pytest.approx(LATENCY[arm])
        assert a["rating"] == 4
        assert a["accuracy"] is None
    series = recent["series"]
    assert len(series["t"]) == len(series["reward"]) == len(series["events"]) == 6
    assert sum(series["events"]) == 300
    for i in range(6):
        shares = [series["share"][arm][i] for arm in REWARD]
        if series["events"][i]:  # time buckets: a pause in the traffic leaves one empty
            assert sum(shares) == pytest.approx(1)
        else:
            assert shares == [None, None, None]
    assert sum(1 for n in series["events"] if n) >= 2
    baselines = recent["baselines"]
    assert baselines["events"] == 300
    assert baselines["logged"]["value"] == pytest.approx(recent["mean_reward"])
    policies = baselines["policies"]
    assert set(policies) == {"random", "static", "fixed:arm=4b", "fixed:arm=7b", "fixed:arm=14b"}
    for arm, reward in REWARD.items():
        estimate = policies[f"fixed:arm={arm}"]
        assert estimate["snips"]["value"] == pytest.approx(reward)  # every logged p is 1/3
        assert estimate["ips"]["value"] == pytest.approx(reward, abs=0.15)
        assert estimate["ips"]["low"] < estimate["ips"]["value"] < estimate["ips"]["high"]
    # Uniform random is the logging policy itself: every estimator gives the logged mean.
    assert policies["random"]["snips"]["value"] == pytest.approx(recent["mean_reward"])


def test_the_baselines_replay_the_newest_events_up_to_their_cap(
    make_client: ClientFactory, make_settings: SettingsFactory
) -> None:
    """One more event than MAX_EVENTS: the oldest (the only one rewarded 0) is left out."""
    settings = make_settings(policy="random")
    client = make_client(settings)
    _traffic(client, 1)
    r = redis.Redis.from_url(settings.redis_url or "")
    ((_, fields),) = cast(
        list[Entry], r.xrange(KEY_EVENTS.format(p="{" + settings.key_prefix + "}"))
    )
    r.close()
    reward = orjson.loads(fields[b"r"])
    rows: list[Entry] = []
    for i in range(estimates.MAX_EVENTS + 1):
        value = 0.0 if i == 0 else 1.0
        given = {**fields, b"r": orjson.dumps({**reward, "reward": value})}
        rows.append((f"{i + 1}-0".encode(), given))
    arms = [Arm.from_spec(a) for a in settings.arms]
    got = asyncio.run(estimates.BaselineCache().get(rows, arms, window=len(rows)))
    assert got.events == 5000
    assert got.logged is not None and got.logged.value == 1.0


def test_window_is_the_newest_events(make_client: ClientFactory) -> None:
    client = make_client(policy="fixed:arm=7b")
    _traffic(client, 30)
    stats = client.get("/stats", params={"window": 10}).json()
    assert stats["recent"]["events"] == 10
    assert stats["recent"]["arms"]["7b"]["share"] == 1
    never = stats["recent"]["baselines"]["policies"]["fixed:arm=4b"]
    assert never["ips"]["value"] == 0  # the log never shows 4b: IPS sees no reward for it
    assert never["snips"]["value"] is None
    assert client.get("/stats", params={"window": 0}).json()["recent"]["events"] == 0


def test_settings_in_force(make_client: ClientFactory) -> None:
    client = make_client(policy="egreedy:epsilon=0.2", reward_weights="accuracy=1")
    settings = client.get("/stats").json()["settings"]
    assert settings["policy"] == "egreedy:epsilon=0.2"
    assert settings["policy_params"]["epsilon"] == 0.2
    assert settings["reward_weights"] == {"accuracy": 1.0}
    assert [a["name"] for a in settings["arms"]] == ["4b", "7b", "14b"]
    assert "redis_url" not in settings


def test_empty_log(client: TestClient) -> None:
    recent = client.get("/stats").json()["recent"]
    assert recent["events"] == 0
    assert recent["mean_reward"] is None
    assert recent["series"]["t"] == []
    assert recent["baselines"] == {"computed_at": None, "events": 0, "logged": None, "policies": {}}


def test_bad_window_is_refused(client: TestClient) -> None:
    response = client.get("/stats", params={"window": -1})
    assert response.status_code == 422
    assert response.json()["field"] == "query.window"


def test_skipped_no_reward_is_reported(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(reward_wait_s=1, sweep_s=0.2)
    client = make_client(settings)
    assert client.get("/stats", params={"window": 5}).json()["skipped_no_reward"] == 0
    for i in range(3):
        client.post("/choose", json={"query": f"never rewarded {i}"})
    rewarded = client.post("/choose", json={"query": "rewarded"}).json()
    client.post("/reward", json={"event_id": rewarded["event_id"], "accuracy": 1})

    def skipped() -> int:
        count: int = client.get("/stats", params={"window": 6}).json()["skipped_no_reward"]
        return count

    wait_until(lambda: skipped() == 3, 20, "the sweep skips the three silent windows")
    use_settings(monkeypatch, settings, ("redis_url", "data_dir", "key_prefix"))
    assert main(["status"]) == 0
    assert "skipped with no reward 3" in capsys.readouterr().out


async def _router_with_events(settings: Settings, n: int) -> Router:
    store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
    router = await Router.open(settings, store)
    for i in range(n):
        d = await router.choose(f"question number {i}")
        await router.reward(d.event_id, RewardParts(reward=0.5, latency_ms=100.0 + i))
    return router


def test_totals_count_each_arm_s_counters_once_whatever_its_name(
    make_settings: SettingsFactory,
) -> None:
    """``decisions`` and ``rewards_accepted`` add up the per-arm counters whose names start with
    theirs: an arm's name may hold another's (``:`` is allowed in it)."""
    arms = [{"name": f"rewards:{name}"} for name in ("4b", "7b", "14b")]

    async def scenario() -> None:
        router = await _router_with_events(make_settings(arms=arms), 2)
        for i in range(3):
            await router.choose(f"never rewarded {i}")
        stats = await router.stats()
        assert (stats["decisions"], stats["rewards_accepted"]) == (5, 2)
        await router.close()
        await router.store.close()

    asyncio.run(scenario())


def test_concurrent_stats_share_one_computation_and_reuse_it(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(policy="egreedy")

    async def scenario() -> None:
        router = await _router_with_events(settings, 30)
        cache = StatsCache(fresh_s=0.5)
        docs = await asyncio.gather(*(cache.get(router, 20, 5) for _ in range(8)))
        assert cache.computed == 1 and all(doc is docs[0] for doc in docs)
        assert docs[0].recent.events == 20
        assert await cache.get(router, 20, 5) is docs[0]  # reused while fresh
        other = await cache.get(router, 25, 5)  # another window: computed, after a pause
        assert cache.computed == 2 and other.recent.events == 25
        # A caller that goes away does not cancel the computation the others wait for.
        await asyncio.sleep(0.6)
        leaving = asyncio.create_task(cache.get(router, 20, 5))
        staying = asyncio.create_task(cache.get(router, 20, 5))
        await asyncio.sleep(0)
        leaving.cancel()
        fresh = await staying
        assert cache.computed == 3 and fresh is not docs[0]
        await router.close()
        await router.store.close()

    asyncio.run(scenario())


def test_a_big_window_is_read_in_chunks_in_order(make_settings: SettingsFactory) -> None:
    settings = make_settings(policy="egreedy")

    async def scenario() -> None:
        router = await _router_with_events(settings, 25)
        store = router.store
        whole = await store.recent_entries(20, chunk=1000)
        assert [row[0] for row in await store.recent_entries(20, chunk=7)] == [r[0] for r in whole]
        assert len(await store.recent_entries(100, chunk=7)) == 25
        everything = [e.stream_id async for e in store.events()]
        assert [row[0].decode() for row in whole] == everything[-20:]
        await router.close()
        await store.close()

    asyncio.run(scenario())


def test_heavy_work_runs_in_a_thread_without_the_collector() -> None:
    seen: list[tuple[bool, bool]] = []

    def work() -> None:
        seen.append((gc.isenabled(), threading.current_thread() is threading.main_thread()))

    asyncio.run(off_loop(work))
    assert seen == [(False, False)]
    assert gc.isenabled()


def test_distinct_windows_queue_a_bounded_number_of_computations(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Each window and buckets not computed yet queues a computation of its own (one at a time,
    paced), and a client that leaves does not cancel it: before the bound, 3,000 requests with
    distinct windows sent in 2.6 s, each abandoned, kept /stats from answering for over ten
    minutes. Past the bound another window is a 503 at once, naming the bound, and said in the
    log once, not per request; the windows queued are answered."""
    base = serve(policy="egreedy")
    asked = 4 * QUEUED_DOCUMENTS

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            return await asyncio.gather(
                *(http.get("/stats", params={"window": 1 + i, "buckets": 1}) for i in range(asked))
            )

    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        replies = asyncio.run(flood())
    said = [m for m in caplog.messages if m.startswith("/stats: ")]
    assert 1 <= len(said) <= 2, said  # at once, then at most once in 10 s with a count
    assert f"{QUEUED_DOCUMENTS} computations for other deployments" in said[0]
    refused = [r for r in replies if r.status_code == 503]
    assert len(refused) >= asked // 2  # all but the queue's room (which frees as they finish)
    assert sum(r.status_code == 200 for r in replies) + len(refused) == asked
    assert refused[0].json()["field"] == "window"
    assert f"{QUEUED_DOCUMENTS} /stats computations" in refused[0].json()["detail"]
    assert refused[0].headers["retry-after"] == "1"


def test_the_bound_on_queued_computations_is_the_process_s_not_each_deployment_s(
    serve: Any, tmp_path: Any
) -> None:
    """Each deployment had a /stats cache of its own, with its own bound, lock and pace: with
    three deployments 48 distinct windows queued at once (three computed at a time), none
    refused. The bound is the process's, whatever deployments the requests name."""
    deployments = tmp_path / "deployments.toml"
    deployments.write_text('[deployments.support]\narms = "small,large"\n')
    base = serve(policy="egreedy", deployments_file=str(deployments))

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            return await asyncio.gather(
                *(
                    http.get("/stats", params={"window": 1 + i, "buckets": 1, "deployment": d})
                    for d in ("default", "support")
                    for i in range(QUEUED_DOCUMENTS)
                )
            )

    replies = asyncio.run(flood())
    refused = [r for r in replies if r.status_code == 503]
    assert len(refused) >= QUEUED_DOCUMENTS // 2  # all but the queue's room, as it frees
    assert sum(r.status_code == 200 for r in replies) + len(refused) == 2 * QUEUED_DOCUMENTS


def test_a_window_of_big_events_is_cut_to_a_bounded_size(
    make_settings: SettingsFactory, make_client: ClientFactory
) -> None:
    """Events as big as a request may make them (a long query kept with its decision, 64 long
    features): /stats?window=20000 of 51 kB events read a gigabyte and took 2.3 GB of memory.
    The window is cut to its newest entries within RECENT_MAX_BYTES."""
    settings = make_settings(policy="egreedy", store_query_text=True)
    client = make_client(settings)
    features = {f"f{i:02d}" + "k" * 60: "v" * 256 for i in range(64)}
    d = client.post("/choose", json={"query": "word " * 6000, "features": features}).json()
    assert client.post("/reward", json={"event_id": d["event_id"], "reward": 0.5}).is_success
    r = redis.Redis.from_url(settings.redis_url or "")
    key = KEY_EVENTS.format(p="{" + settings.key_prefix + "}")
    logged: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange(key)  # type: ignore[assignment]
    ((_, fields),) = logged
    size = sum(len(k) + len(v) for k, v in fields.items())
    fit = RECENT_MAX_BYTES // size
    window = fit + 200
    pipe = r.pipeline()
    for _ in range(window - 1):  # the same entry again, as the service logged it
        pipe.xadd(key, fields)  # type: ignore[arg-type]
    pipe.execute()
    r.close()
    recent = client.get("/stats", params={"window": window}).json()["recent"]
    assert recent["events"] == fit


def test_the_newest_entries_within_the_bytes_are_kept(make_settings: SettingsFactory) -> None:
    settings = make_settings(policy="egreedy")

    async def scenario() -> None:
        router = await _router_with_events(settings, 25)
        store = router.store
        whole = await store.recent_entries(25)
        sizes = [sum(len(k) + len(v) for k, v in fields.items()) for _, fields in whole]
        budget = sum(sizes[-10:])  # exactly the newest ten
        for chunk in (3, 7, 1000):
            cut = await store.recent_entries(20, chunk=chunk, max_bytes=budget)
            assert [row[0] for row in cut] == [row[0] for row in whole[-10:]], chunk
            less = await store.recent_entries(20, chunk=chunk, max_bytes=budget - 1)
            assert [row[0] for row in less] == [row[0] for row in whole[-9:]], chunk
        for _ in range(3):  # entries of no size, written by hand, read first
            await store.redis.xadd(store.key(KEY_EVENTS), {"": ""})
        assert len(await store.recent_entries(20, chunk=3)) == 20
        await router.close()
        await store.close()

    asyncio.run(scenario())
