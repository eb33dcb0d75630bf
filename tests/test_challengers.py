"""Champion and challengers on a seeded stream with known truth, through the real router, Redis
and HTTP.

Two contexts; in each, one arm pays with probability 0.8 and the others 0.2. The champion is
uniform `random` (true value 0.4, and it logs every arm with propensity 1/3); `linucb` learns the
best arm of each context within a few dozen events (true value near 0.8); `fixed:arm=7b` is never
the best arm (true value 0.2).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from bandit_router.cli.main import main
from bandit_router.errors import NotLearner, PolicyConflict, Stopping, StoreUnavailable
from bandit_router.features import extract
from bandit_router.policies.base import Arm
from bandit_router.policies.registry import build_policy, parse_policy_spec
from bandit_router.policies.vw import VWPolicy, adf_example
from bandit_router.rewards import RewardConfig, RewardParts
from bandit_router.service.challengers import (
    JUDGE_EVERY,
    Bench,
    Standing,
    Window,
    challengers_view,
    in_pool,
    scored,
    standing,
)
from bandit_router.service.router import Router
from bandit_router.settings import Settings
from bandit_router.sim.champion import parse_auto
from bandit_router.sim.dataset import Prepared, Replay, Row, prepare
from bandit_router.sim.replay import simulate
from bandit_router.sim.report import summary, table
from bandit_router.store.keys import KEY_CHALLENGERS, KEY_LEASE, KEY_PROMOTIONS
from bandit_router.store.records import Event
from bandit_router.store.repository import Store, open_store
from bandit_router.store.transport import Watched, connect
from tests.conftest import (
    PLANTED_QUERIES,
    ClientFactory,
    SettingsFactory,
    planted_replay,
    use_settings,
)

ADMIN = {"X-API-Key": "admin-secret"}
# The deployment of every test here, with the test's own Redis and prefix.
CHALLENGE: dict[str, Any] = {
    "policy": "random",
    "challengers": "linucb,fixed:arm=7b",
    "promote_min_events": 100,
    "challenger_window": 300,
    "snapshot_every": 50,
}


def _settings(make_settings: SettingsFactory, **overrides: Any) -> Settings:
    return make_settings(**{**CHALLENGE, **overrides})


async def _open(settings: Settings) -> Router:
    store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
    return await Router.open(settings, store)


async def _traffic(router: Router, n: int, seed: int) -> list[str]:
    """``n`` decisions rewarded from the truth; the policy that made each, in order."""
    rng = random.Random(seed)
    served = []
    for i in range(n):
        query, best = rng.choice(PLANTED_QUERIES)
        result = await router.choose(query)
        served.append(result.policy)
        paid = rng.random() < (0.8 if result.arm == best else 0.2)
        await router.reward(result.event_id, RewardParts(reward=float(paid)))
        if i % 20 == 19:
            await router.learner.step()  # what the learner's loop does between batches
    await router.learner.step()
    return served


def _standings(router: Router) -> dict[str, tuple[int, float, float, float]]:
    assert router.learner.bench is not None
    return {
        s.policy: (s.events, s.snips.value, s.dr.value, s.champion.value)
        for s in router.learner.bench.standings()
    }


def test_a_clearly_better_challenger_is_promoted_and_serves(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(make_settings, auto_promote=True)

    async def scenario() -> None:
        router = await _open(settings)
        with caplog.at_level(logging.INFO, logger="bandit_router"):
            served = await _traffic(router, 400, seed=1)
        assert router.model.spec.name == "linucb"
        first = served.index("linucb")
        assert 100 <= first <= 220  # after min events, as soon as a judgement finds it clears
        assert set(served[first:]) == {"linucb"}  # and it serves from then on
        assert await router.store.policy_override() == "linucb"  # workers load it
        promotions = await router.store.promotions()
        assert [(p["from_policy"], p["to_policy"], p["by"]) for p in promotions] == [
            ("random", "linucb", "auto")
        ]
        record = promotions[0]
        assert record["events"] >= 100
        assert record["snips"]["low"] > record["champion"]["value"]
        assert record["dr"]["low"] > record["champion"]["value"]
        assert abs(record["champion"]["value"] - 0.4) < 0.1  # random's true value
        # The old champion challenges now; the worse challenger is still there, never promoted.
        assert router.learner.bench is not None
        assert set(router.learner.bench.challengers) == {"random", "fixed:arm=7b"}
        messages = [r.getMessage() for r in caplog.records]
        assert any("challenger linucb clears champion random" in m for m in messages)
        assert any(m.startswith("promoted challenger linucb over random (auto)") for m in messages)
        await router.close()
        await router.store.close()

        # A restart keeps the promotion: the champion, its trained model and the record.
        again = await _open(settings)
        assert again.model.spec.name == "linucb"
        assert again.version == router.version
        assert len(await again.store.promotions()) == 1
        assert again.learner.bench is not None
        assert set(again.learner.bench.challengers) == {"random", "fixed:arm=7b"}
        await again.store.close()

    asyncio.run(scenario())


def test_a_worse_challenger_is_never_promoted(make_settings: SettingsFactory) -> None:
    settings = _settings(make_settings, challengers="fixed:arm=7b", auto_promote=True)

    async def scenario() -> None:
        router = await _open(settings)
        served = await _traffic(router, 400, seed=2)
        assert set(served) == {"random"}
        assert await router.store.promotions() == []
        (s,) = router.learner.bench.standings() if router.learner.bench else []
        assert s.events == 300 and not s.clears
        assert s.snips.high < s.champion.value  # clearly worse: 0.2 against 0.4
        await router.store.close()

    asyncio.run(scenario())


def test_with_auto_promote_off_it_is_reported_not_promoted(make_settings: SettingsFactory) -> None:
    settings = _settings(make_settings)

    async def scenario() -> None:
        router = await _open(settings)
        served = await _traffic(router, 300, seed=3)
        assert set(served) == {"random"}
        assert await router.store.promotions() == []
        assert router.learner.bench is not None
        clears = {s.policy: s.clears for s in router.learner.bench.standings()}
        assert clears == {"linucb": True, "fixed:arm=7b": False}
        await router.store.close()

    asyncio.run(scenario())


def test_scores_survive_a_learner_restart(make_settings: SettingsFactory) -> None:
    """Challengers are snapshotted with the champion; after a crash the log after the snapshot
    is replayed to them, so their scores are what an uninterrupted learner has."""
    settings = _settings(make_settings, challengers="linucb,egreedy:epsilon=0.2")

    async def scenario() -> None:
        router = await _open(settings)
        await _traffic(router, 230, seed=4)  # snapshots every 50: 30 events only in the log
        before = _standings(router)
        assert before["linucb"][0] == 230
        await router.store.release_lease(router.learner.name)  # its lease expired
        await router.store.close()  # a crash: no final snapshot

        restarted = await _open(settings)
        assert _standings(restarted) == before
        # And they go on from there as if nothing happened: compare with a twin that never
        # stopped, fed the same events.
        await _traffic(restarted, 50, seed=5)
        twin = await _open(_settings(make_settings, challengers="linucb,egreedy:epsilon=0.2"))
        async for event in restarted.store.events():
            twin.learner._learn(event)
        assert _standings(twin) == _standings(restarted)
        await restarted.store.close()
        await twin.store.close()

    asyncio.run(scenario())


def _drive(client: Any, n: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        query, best = rng.choice(PLANTED_QUERIES)
        chosen = client.post("/choose", json={"query": query}).json()
        paid = rng.random() < (0.8 if chosen["arm"] == best else 0.2)
        reward = {"event_id": chosen["event_id"], "reward": float(paid)}
        assert client.post("/reward", json=reward).status_code == 200


def test_stats_metrics_and_the_admin_endpoint(
    make_client: ClientFactory, make_settings: SettingsFactory
) -> None:
    client = make_client(_settings(make_settings, admin_key="admin-secret"))
    _drive(client, 120, seed=6)
    client.post("/admin/snapshot", headers=ADMIN)

    section = client.get("/stats", params={"window": 10}).json()["challengers"]
    assert section["champion"] == "random" and section["auto_promote"] is False
    assert section["min_events"] == 100 and section["window"] == 300
    rows = {c["policy"]: c for c in section["challengers"]}
    assert set(rows) == {"linucb", "fixed:arm=7b"}
    assert rows["linucb"]["events"] == 120
    assert rows["linucb"]["clears"] is True and rows["fixed:arm=7b"]["clears"] is False
    for row in rows.values():
        for method in ("snips", "dr"):
            assert row[method]["low"] <= row[method]["value"] <= row[method]["high"]
    assert section["promotions"] == []

    text = client.get("/metrics").text
    assert 'bandit_challenger_events{challenger="linucb"} 120.0' in text
    assert 'bandit_challenger_clears{challenger="linucb"} 1.0' in text
    assert 'bandit_challenger_clears{challenger="fixed:arm=7b"} 0.0' in text
    assert 'bandit_challenger_estimate{bound="low",challenger="linucb",estimator="snips"}' in text

    # Not a running challenger: 422 naming the running ones; no admin key: refused.
    missing = client.post("/admin/promote", json={"policy": "egreedy"}, headers=ADMIN)
    assert (
        missing.status_code == 422 and "running challengers: linucb, fixed:arm=7b" in missing.text
    )
    assert client.post("/admin/promote", json={"policy": "linucb"}).status_code in (401, 403)

    promoted = client.post("/admin/promote", json={"policy": "fixed:arm=7b"}, headers=ADMIN)
    assert promoted.status_code == 200, promoted.text
    body = promoted.json()
    assert body["from_policy"] == "random" and body["by"] == "admin"
    assert body["to_policy"] == "fixed:arm=7b"
    chosen = client.post("/choose", json={"query": PLANTED_QUERIES[0][0]}).json()
    assert chosen["policy"] == "fixed:arm=7b" and chosen["arm"] == "7b"

    # (another window: /stats reuses a document for BANDIT_STATS_CACHE_S)
    section = client.get("/stats", params={"window": 11}).json()["challengers"]
    assert section["champion"] == "fixed:arm=7b"
    assert {c["policy"] for c in section["challengers"]} == {"linucb", "random"}
    assert all(c["events"] == 0 for c in section["challengers"])  # windows restart
    assert [p["to_policy"] for p in section["promotions"]] == ["fixed:arm=7b"]
    assert "bandit_promotions_total 1.0" in client.get("/metrics").text


def test_promotion_records_and_a_summary_written_by_hand_do_not_break_stats(
    make_client: ClientFactory, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries that are not what the learner writes are left out of /stats and /metrics, as the
    hostile log's entries are; the others still show."""
    settings = _settings(make_settings, admin_key="admin-secret")
    client = make_client(settings)
    _drive(client, 120, seed=6)
    assert client.post("/admin/promote", json={"policy": "linucb"}, headers=ADMIN).is_success

    async def vandalise() -> None:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 1000)
        await store.redis.rpush(store.key(KEY_PROMOTIONS), b"garbage", b"[1]", b'{"ts": "x"}')
        await store.close()

    asyncio.run(vandalise())
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        for _ in range(3):  # the dashboard reads every 5 s, Prometheus every 15
            stats = client.get("/stats", params={"window": 12})
            assert stats.status_code == 200, stats.text
            assert client.get("/metrics").status_code == 200
    assert [p["to_policy"] for p in stats.json()["challengers"]["promotions"]] == ["linucb"]
    # each left out, said once, not at every read
    said = [r.getMessage() for r in caplog.records if "promotion record" in r.getMessage()]
    assert len(said) == 3, said


def test_a_summary_written_by_hand_is_not_read(make_settings: SettingsFactory) -> None:
    """A process that does not lead shows the learner's last summary; garbage there is left
    out, not a 500."""
    settings = _settings(make_settings, learn_in_workers=False)

    async def scenario() -> None:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 1000)
        router = await Router.open(settings, store)
        for garbage in (b'{"x":', b"[1]", b'{"challengers": [{"policy": 1}]}'):
            await store.redis.hset(store.key(KEY_CHALLENGERS), "summary", garbage)
            view = await challengers_view(router.learner)
            assert view.challengers == [] and view.champion == "random"
        await router.close()
        await store.close()

    asyncio.run(scenario())


def test_each_event_is_scored_before_the_challenger_learns_it() -> None:
    """Progressive validation: the probability of the logged arm comes from the challenger as
    it was before the event; learning first would score it on what it has just been told."""
    arms = [Arm("4b"), Arm("7b"), Arm("14b")]
    bench = Bench(parse_policy_spec("random"), [parse_policy_spec("linucb")], seed=1)
    x = extract(PLANTED_QUERIES[0][0])
    for _ in range(3):
        bench.observe(x, arms, "4b", 1 / 3, 1.0)
    target = bench.challengers["linucb"].window.rows()[:, 0]
    assert target[0] == pytest.approx(1 / 3)  # it knew nothing: ties split evenly
    assert list(target[1:]) == [1.0, 1.0]  # then it had learned that 4b pays here


def test_a_bench_judges_every_judge_every_events() -> None:
    arms = [Arm("4b"), Arm("7b"), Arm("14b")]
    bench = Bench(parse_policy_spec("random"), [parse_policy_spec("linucb")], seed=1)
    x = extract(PLANTED_QUERIES[0][0])
    for _ in range(2):
        for _ in range(JUDGE_EVERY - 1):
            bench.observe(x, arms, "4b", 1 / 3, 1.0)
        assert not bench.due
        bench.observe(x, arms, "4b", 1 / 3, 1.0)
        assert bench.due
        bench.judge()
    assert bench.reward_model.predict(x, ["4b"])["4b"] > 0.9  # DR's model learns every event


def test_a_bench_learns_an_event_once() -> None:
    """An event at or below the watermark is not observed again, unless learned late."""
    arms = {name: Arm(name) for name in ("4b", "7b", "14b")}
    bench = Bench(parse_policy_spec("random"), [parse_policy_spec("linucb")], seed=1)
    decision = {
        "arms": list(arms),
        "arm": "4b",
        "probability": 1 / 3,
        "features": extract(PLANTED_QUERIES[0][0]).to_json(),
    }
    event = Event("5-0", decision, {"reward": 1.0})
    assert bench.learn(event, arms)
    assert not bench.learn(event, arms)
    assert not bench.learn(Event("4-0", decision, {"reward": 1.0}), arms)
    assert bench.challengers["linucb"].window.rows().shape[0] == 1
    assert bench.learn(event, arms, late=True)
    assert bench.challengers["linucb"].window.rows().shape[0] == 2


def test_a_bench_sees_the_arms_as_configured() -> None:
    """The logged decision names its arms; the bench's challengers see them with their sizes
    and prices (the static rule's pick is the smallest), not bare names."""
    arms = {"14b": Arm("14b", 14.0), "4b": Arm("4b", 4.0)}
    bench = Bench(parse_policy_spec("random"), [parse_policy_spec("static")], seed=1)
    decision = {
        "arms": ["14b", "4b"],
        "arm": "4b",
        "probability": 0.5,
        "features": extract(PLANTED_QUERIES[0][0]).to_json(),
    }
    assert bench.learn(Event("5-0", decision, {"reward": 1.0}), arms)
    assert bench.challengers["static"].window.rows()[0][0] == 1.0  # static's p of the logged arm


def test_a_bench_without_settings_takes_the_settings_defaults() -> None:
    bench = Bench(parse_policy_spec("random"), [])
    assert bench.min_events == Settings.model_fields["promote_min_events"].default
    assert bench.size == Settings.model_fields["challenger_window"].default


def test_the_pool_is_the_policy_and_the_challengers(
    make_settings: SettingsFactory,
) -> None:
    """After an admin switch, the old champion challenges on only when it is in the pool."""
    settings = _settings(make_settings)
    for inside in ("random", "linucb", "fixed:arm=7b"):
        assert in_pool(parse_policy_spec(inside), settings), inside
    for outside in ("egreedy", "fixed:arm=4b"):
        assert not in_pool(parse_policy_spec(outside), settings), outside


def test_simulator_auto_syntax() -> None:
    settings = Settings(policy="squarecb", challengers=["linucb", "egreedy"])
    champion, challengers = parse_auto("auto", settings)
    assert (str(champion), [str(c) for c in challengers]) == ("squarecb", ["linucb", "egreedy"])
    champion, challengers = parse_auto(
        "auto:champion=egreedy:epsilon=0.1:challengers=linucb:alpha=1+squarecb", settings
    )
    assert str(champion) == "egreedy:epsilon=0.1"
    assert [str(c) for c in challengers] == ["linucb:alpha=1.0", "squarecb"]
    for bad in ("auto:champion", "auto:foo=1", "automatic", "auto:challengers=nope"):
        with pytest.raises(ValueError):
            parse_auto(bad, settings)
    with pytest.raises(ValueError, match=r"no challenger \(BANDIT_CHALLENGERS is empty\)"):
        parse_auto("auto", Settings(policy="squarecb"))
    # It said "BANDIT_CHALLENGERS is empty" for challengers named in the spec too.
    with pytest.raises(ValueError, match=r"no challenger \(every challenger is the champion lin"):
        parse_auto("auto:champion=linucb:challengers=linucb", settings)
    with pytest.raises(ValueError, match=r"no challenger \(challengers= names none\)"):
        parse_auto("auto:champion=linucb:challengers=", settings)


def _replay(n: int, seed: int) -> Prepared:
    return planted_replay(n, seed, RewardConfig({"accuracy": 1.0}, 2000, 0.001))


def test_the_simulator_promotes_with_the_same_bench() -> None:
    prepared = _replay(600, seed=7)
    settings = Settings(promote_min_events=100, challenger_window=300)
    names = ["auto:champion=random:challengers=linucb+fixed:arm=7b", "random", "linucb"]
    runs = simulate(names, prepared, [0, 1], settings=settings)
    for run in runs[names[0]]:
        assert run.promotions is not None
        assert run.promotions[0][1:] == ("random", "linucb")  # and never to fixed:arm=7b
        assert all(to != "fixed:arm=7b" for _, _, to in run.promotions)
        at = run.promotions[0][0]
        assert 100 <= at <= 300
        # Before the promotion it is random, bit for bit; after it, linucb's choices pay.
        assert run.reward[at:].mean() > 0.7
    random_run = runs["random"][0]
    auto_run = runs[names[0]][0]
    at = auto_run.promotions[0][0] if auto_run.promotions else 0
    assert list(auto_run.arm[:at]) == list(random_run.arm[:at])
    assert runs["random"][0].promotions is None
    result = summary(runs, prepared, {"seeds": [0, 1]})
    assert result["policies"][names[0]]["promotions"][0][0][1:] == ("random", "linucb")
    assert f"seed 0: random -> linucb at step {at}" in table(result)


def test_policies_of_equal_value_never_flap() -> None:
    """On a stream where every arm pays alike, automatic promotion does not swap the champion
    back and forth on the estimates' noise: a challenger must clear with its lower bounds. (On
    this stream, promoting on the estimates themselves swaps 6 to 20 times a run.)"""
    rng = random.Random(5)
    rows = []
    for i in range(4000):
        query, _ = rng.choice(PLANTED_QUERIES)
        outcomes = {a: RewardParts(accuracy=float(rng.random() < 0.5)) for a in ("4b", "7b", "14b")}
        rows.append(Row(i + 1, query, {}, outcomes))
    prepared = prepare(
        Replay(rows, [Arm("4b"), Arm("7b"), Arm("14b")]),
        RewardConfig({"accuracy": 1.0}, 2000, 0.001),
    )
    settings = Settings(promote_min_events=100, challenger_window=300)
    name = "auto:champion=random:challengers=linucb+egreedy"
    runs = simulate([name], prepared, [0, 1, 2, 3, 4], settings=settings)
    assert [run.promotions for run in runs[name]] == [[]] * 5


# Queries of five tasks (as benchmarks.inproc's); per task, every arm's reward, without noise.
_TASKS = {
    "code": ("Write a Python function that {w} and returns the sorted {v}", True),
    "qa": ("What is the {w} of {v}?", False),
    "reasoning": ("Explain step by step why {w} happens, and compare it with {v}.", True),
    "math": ("Solve the equation {n}x + 7 = {m} for the {w}", True),
    "translate": ("Translate to French: the {w} is moved to {v}", False),
}
_WORDS = ["capital", "river", "merge", "tree", "sunset", "meeting", "graph", "price", "queue"]


def _noiseless(n: int, seed: int) -> Prepared:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task = rng.choice(list(_TASKS))
        text, big = _TASKS[task]
        w, v = rng.choice(_WORDS), rng.choice(_WORDS)
        query = text.format(w=w, v=v, n=rng.randint(2, 9), m=rng.randint(10, 99))
        pays = {"4b": 0.3 if big else 0.9, "7b": 0.6, "14b": 0.9 if big else 0.4}
        outcomes = {a: RewardParts(accuracy=r) for a, r in pays.items()}
        rows.append(Row(i + 1, query, {"task": task}, outcomes))
    return prepare(
        Replay(rows, [Arm("4b"), Arm("7b"), Arm("14b")]),
        RewardConfig({"accuracy": 1.0}, 2000, 0.001),
    )


def test_policies_that_learned_the_best_arm_of_noiseless_rewards_do_not_flap() -> None:
    """Rewards without noise: linucb and squarecb both learn the best arm of each task. Each,
    challenging, scores an interval of width about 0 at the best reward, above the champion's
    mean, which its own exploration lowers: before a replaced champion had to clear the
    champion's interval, they swapped places 10 times here (every 100 to 300 events at times)."""
    prepared = _noiseless(20_000, seed=2)
    settings = Settings(promote_min_events=100, challenger_window=1000)
    name = "auto:champion=linucb:challengers=squarecb"
    (run,) = simulate([name], prepared, [0], in_order=True, settings=settings)[name]
    assert run.promotions is not None
    assert [(old, new) for _, old, new in run.promotions] == [("linucb", "squarecb")]
    assert run.reward[-5000:].mean() > 0.899  # the best arm, 0.9, nearly always


def _rows(n: int, explored: int, replaced: bool, weight: float = 1.0) -> tuple[Window, Standing]:
    """A deterministic champion (propensity 1) that picks an arm paying 0.6 on ``explored`` of
    ``n`` events and one paying 0.9 on the others, where the challenger picks the 0.9 arm on
    every event (with probability ``weight``): its SNIPS and DR are 0.9 with intervals of
    width 0."""
    rows = np.array(
        [(0.0, 1.0, 0.6, 0.6, 0.9)] * explored + [(weight, 1.0, 0.9, 0.9, 0.9)] * (n - explored)
    )
    window = Window(n)
    for row in rows:
        window.add(tuple(row))
    return window, standing("linucb", rows, 100, replaced)


@pytest.mark.parametrize("weight", [1.0, 1e-200])
def test_a_replaced_champion_clears_only_above_the_champions_interval(weight: float) -> None:
    """A challenger clears above the champion's estimate; one a promotion replaced as champion
    only above the champion's interval, so it comes back on evidence, not on the champion's
    exploration alone. Weights too small to sum (``Moments.exact``) are scored from the rows:
    the same rule."""
    for explored, replaced, clears in [(2, False, True), (2, True, False), (8, True, True)]:
        window, s = _rows(200, explored, replaced, weight)
        assert window.moments().exact == (weight == 1.0)
        assert s.snips.low == pytest.approx(0.9) and s.dr.low == pytest.approx(0.9)
        assert s.champion.value < 0.9
        assert (s.champion.high > 0.9) == (explored == 2)  # 0.8970 [0.8929, 0.9011] with 2
        assert s.clears == clears, (explored, replaced)
        assert scored("linucb", window, 100, replaced).clears == clears  # from the sums, the same


def _bench_of_known_windows() -> Bench:
    """Three challengers scored on the same four events (propensity 1/2, rewards 1, 0, 1, 0: the
    champion's estimate 0.5). linucb and fixed:arm=7b pick the paying arm on the two events that
    paid (SNIPS exactly 1, interval width 0) under a perfect reward model (DR's terms are its
    direct term: 0.9 and 0.7 on every event); fixed:arm=4b never picks a logged arm (SNIPS
    undefined), so it never clears."""
    specs = [parse_policy_spec(s) for s in ("linucb", "fixed:arm=7b", "fixed:arm=4b")]
    bench = Bench(parse_policy_spec("random"), specs, seed=1)
    bench.min_events = 3  # fewer than the 4 events held: the record shows the events
    known = [("linucb", 1.0, 0.9), ("fixed:arm=7b", 1.0, 0.7), ("fixed:arm=4b", 0.0, 0.3)]
    for name, pick, direct in known:
        for r in (1.0, 0.0, 1.0, 0.0):
            bench.challengers[name].window.add((pick * r, 0.5, r, r, direct))
    return bench


def test_judging_picks_the_widest_margin_and_logs_each_change_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Of two challengers that clear, the one whose lower bounds are furthest above the champion
    is promoted; each start of clearing is logged once, and stored with the challengers."""
    bench = _bench_of_known_windows()
    with caplog.at_level(logging.INFO, logger="bandit_router"):
        best = bench.judge()
        again = bench.judge()
    assert best is not None and again is not None
    assert (best.policy, again.policy) == ("linucb", "linucb")
    assert best.margin == pytest.approx(0.9 - 0.5)  # min(SNIPS 1, DR 0.9) over 0.5
    changes = [r.getMessage() for r in caplog.records if " clears champion " in r.getMessage()]
    assert [m.split()[1] for m in changes] == ["linucb", "fixed:arm=7b"]  # once, not per judging
    assert [name for name, c in bench.challengers.items() if c.clearing] == [
        "linucb",
        "fixed:arm=7b",
    ]
    meta = json.loads(bench.fields(b"{}")["meta"])
    assert meta["clearing"] == ["linucb", "fixed:arm=7b"]


def test_a_promotion_records_the_estimates_it_was_made_on() -> None:
    """The record of a promotion holds the window's event count and the promoted challenger's
    SNIPS and DR and the champion's estimate, each as computed by hand."""
    bench = _bench_of_known_windows()
    old = build_policy(parse_policy_spec("random"), None, 1)
    _, record = bench.promote(parse_policy_spec("linucb"), old, "admin", 7)
    half = 1.959963984540054 * math.sqrt(1 / 3) / math.sqrt(4)  # rewards 1, 0, 1, 0: s^2 = 1/3
    assert (record["from_policy"], record["to_policy"], record["by"]) == (
        "random",
        "linucb",
        "admin",
    )
    assert (record["events"], record["model_version"]) == (4, 7)
    assert record["snips"] == pytest.approx({"value": 1.0, "low": 1.0, "high": 1.0, "n": 4})
    assert record["dr"] == pytest.approx({"value": 0.9, "low": 0.9, "high": 0.9, "n": 4})
    assert record["champion"] == pytest.approx(
        {"value": 0.5, "low": 0.5 - half, "high": 0.5 + half, "n": 4}
    )


def test_a_promotion_marks_the_champion_it_replaced_and_a_restart_keeps_the_mark() -> None:
    settings = Settings(policy="random", challengers=["linucb", "fixed:arm=7b"], seed=1)
    random_spec, linucb = parse_policy_spec("random"), parse_policy_spec("linucb")
    bench = Bench(random_spec, [linucb, parse_policy_spec("fixed:arm=7b")], settings, 1)
    assert not bench.was_replaced(random_spec)
    bench.promote(linucb, build_policy(random_spec, settings, 1), "auto", 10)
    assert bench.was_replaced(random_spec) and not bench.was_replaced(linucb)
    restored = Bench.restore(bench.fields(b"{}"), linucb, settings, bench.stream_id)
    assert restored.was_replaced(parse_policy_spec("random"))
    assert not restored.was_replaced(linucb)
    fresh = Bench.restore({}, linucb, settings, bench.stream_id)  # a reset forgets it
    assert fresh.replaced == []


def test_every_champion_a_promotion_replaced_stays_marked_once_however_written() -> None:
    """Each champion replaced is marked, once however often it is replaced, and a restart keeps
    every mark; ``squarecb:gamma_scale=20`` (its default) is ``squarecb``."""
    settings = Settings(policy="squarecb", challengers=["linucb", "random"], seed=1)
    squarecb, linucb, rnd = (parse_policy_spec(s) for s in ("squarecb", "linucb", "random"))
    bench = Bench(squarecb, [linucb, rnd], settings, 1)
    for new, old in [(linucb, squarecb), (rnd, linucb), (squarecb, rnd), (linucb, squarecb)]:
        bench.promote(new, build_policy(old, settings, 1), "auto", 1)
    assert [str(s) for s in bench.replaced] == ["squarecb", "linucb", "random"]
    restored = Bench.restore(bench.fields(b"{}"), linucb, settings, bench.stream_id)
    for b in (bench, restored):
        assert b.was_replaced(parse_policy_spec("squarecb:gamma_scale=20"))
        assert b.was_replaced(linucb) and b.was_replaced(rnd)


def test_stored_replaced_champions_that_do_not_read_are_left_out_or_start_afresh() -> None:
    """A meta written before the rule (no ``replaced``) keeps the windows; a replaced champion
    that no longer parses is left out, the others kept; a ``replaced`` of another type is
    written by another hand: the challengers start afresh, as for ``clearing``."""
    settings = Settings(policy="random", challengers=["linucb"], seed=1)
    random_spec, linucb = parse_policy_spec("random"), parse_policy_spec("linucb")
    bench = Bench(random_spec, [linucb], settings, 1)
    bench.challengers["linucb"].window.add((0.5, 0.5, 1.0, 0.5, 0.5))
    stored = bench.fields(b"{}")
    meta = json.loads(stored["meta"])
    for replaced, kept, marked in [
        (None, 1, []),
        (["nonsense", "linucb", "linucb:alpha=x"], 1, ["linucb"]),
        ("linucb", 0, []),
        ([["linucb"]], 0, []),
    ]:
        meta.pop("replaced", None)
        if replaced is not None:
            meta["replaced"] = replaced
        fields = {**stored, "meta": json.dumps(meta).encode()}
        restored = Bench.restore(fields, random_spec, settings, bench.stream_id)
        assert len(restored.challengers["linucb"].window.rows()) == kept, replaced
        assert [str(s) for s in restored.replaced] == marked, replaced


def test_only_the_learner_runs_challengers_and_workers_load_a_promotion(
    make_settings: SettingsFactory,
) -> None:
    settings = _settings(make_settings, auto_promote=True)

    async def scenario() -> None:
        leader = await _open(settings)
        worker = await _open(settings)
        assert leader.learner.leading and not worker.learner.leading
        assert worker.learner.bench is None  # an API worker scores nothing
        await _traffic(leader, 300, seed=8)
        assert leader.model.spec.name == "linucb"
        assert await worker.refresh()  # the worker loads the promoted, trained model
        assert worker.model.spec.name == "linucb" and worker.version == leader.version
        query = PLANTED_QUERIES[1][0]
        assert (await worker.choose(query)).arm == (await leader.choose(query)).arm == "14b"
        # The worker shows what the learner published with its last snapshot.
        seen = await challengers_view(worker.learner)
        assert seen.champion == "linucb" and seen.computed_at is not None
        assert {c.policy for c in seen.challengers} == {"random", "fixed:arm=7b"}
        assert [p.to_policy for p in seen.promotions] == ["linucb"]
        await leader.store.close()
        await worker.store.close()

    asyncio.run(scenario())


def test_a_worker_that_takes_the_lease_after_a_promotion_serves_the_promoted_model(
    make_settings: SettingsFactory,
) -> None:
    settings = _settings(make_settings)

    async def scenario() -> None:
        leader = await _open(settings)
        worker = await _open(settings)  # loaded the champion `random`; never refreshed since
        await _traffic(leader, 150, seed=11)
        await leader.learner.promote("linucb")
        await _traffic(leader, 60, seed=12)
        await leader.learner.publish()
        scores = _standings(leader)
        version = leader.version
        await leader.close()  # stopped: the lease is free
        await leader.store.close()

        assert await worker.learner.lead()
        # The promoted, trained model serves, and the challengers keep their scores.
        assert str(worker.model.spec) == "linucb" and worker.version == version
        assert worker.learner.bench is not None
        assert str(worker.learner.bench.champion) == "linucb"
        assert _standings(worker) == scores
        assert (await worker.choose(PLANTED_QUERIES[1][0])).arm == "14b"
        await worker.close()
        await worker.store.close()

        restarted = await _open(settings)  # and a restart after that keeps both
        assert str(restarted.model.spec) == "linucb" and restarted.version == version
        assert _standings(restarted) == scores
        await restarted.close()
        await restarted.store.close()

    asyncio.run(scenario())


def test_a_promotion_never_overwrites_a_pending_policy_switch(
    make_client: ClientFactory, make_settings: SettingsFactory
) -> None:
    # A long lease: the learner's loop renews it (and switches) only when the test asks.
    settings = _settings(make_settings, admin_key="admin-secret", learner_lease_s=600)
    learner_app = make_client(settings)
    worker_app = make_client(settings)
    leader: Router = learner_app.app.state.routers.default  # type: ignore[attr-defined]
    assert leader.learner.leading
    _drive(learner_app, 120, seed=13)

    # An admin switches the policy on a worker; the learner has not switched yet.
    switched = worker_app.post("/admin/policy", json={"policy": "egreedy"}, headers=ADMIN)
    assert switched.status_code == 200, switched.text
    promoted = learner_app.post("/admin/promote", json={"policy": "linucb"}, headers=ADMIN)
    assert promoted.status_code == 409 and promoted.json()["field"] == "policy"
    assert "egreedy" in promoted.json()["detail"]

    async def switch() -> None:
        await leader.learner.lead()  # what its loop does at the next renewal

    learner_app.portal.call(switch)  # type: ignore[union-attr]  # on the app's own loop
    assert str(leader.model.spec) == "egreedy"
    keys = redis.Redis.from_url(settings.redis_url or "")
    assert keys.get(f"{{{settings.key_prefix}}}:policy") == b"egreedy"
    assert keys.hget(f"{{{settings.key_prefix}}}:model", "policy") == b"egreedy"
    section = learner_app.get("/stats", params={"window": 12}).json()["challengers"]
    assert section["champion"] == "egreedy" and section["promotions"] == []
    # Once it serves, a promotion goes through and is what serves and is stored.
    promoted = learner_app.post("/admin/promote", json={"policy": "linucb"}, headers=ADMIN)
    assert promoted.status_code == 200 and promoted.json()["from_policy"] == "egreedy"
    assert keys.get(f"{{{settings.key_prefix}}}:policy") == b"linucb"
    assert keys.hget(f"{{{settings.key_prefix}}}:model", "policy") == b"linucb"
    keys.close()


def test_admin_requests_to_a_service_whose_learner_runs_apart_say_what_to_do(
    make_client: ClientFactory, make_settings: SettingsFactory
) -> None:
    """With BANDIT_LEARN_IN_WORKERS=false the learner is a `bandit-router learn`, which serves
    no HTTP: reset and promote answered 409 "ask the learner's process, or wait: it publishes
    every BANDIT_PUBLISH_S seconds", which cannot be done, and waiting resets nothing. The 409
    now says how (as the README says for promote); a policy switch is taken, the learner
    switches at its next renewal."""
    settings = _settings(make_settings, admin_key="admin-secret", learn_in_workers=False)
    client = make_client(settings)
    asks = {
        "/admin/reset": ("reset the model", None),
        "/admin/promote": ("promote a challenger", {"policy": "linucb"}),
    }
    for path, (asked, body) in asks.items():
        refused = client.post(path, json=body, headers=ADMIN)
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert f"to {asked}, stop it and send this request" in detail
        assert "BANDIT_LEARN_IN_WORKERS=true" in detail and "bandit-router learn" in detail
    refused = client.post("/admin/snapshot", headers=ADMIN)
    assert refused.status_code == 409
    assert "publishes every BANDIT_PUBLISH_S seconds and when it stops" in refused.json()["detail"]
    switched = client.post("/admin/policy", json={"policy": "egreedy"}, headers=ADMIN)
    assert switched.status_code == 200 and switched.json()["policy"] == "egreedy"
    # Workers compete for the lease: one that does not hold it names the one that does.
    learner = make_client(settings.model_copy(update={"learn_in_workers": True}))
    worker = make_client(settings.model_copy(update={"learn_in_workers": True}))
    assert learner.get("/healthz").json()["learner"]
    assert not worker.get("/healthz").json()["learner"]
    refused = worker.post("/admin/reset", headers=ADMIN)
    assert refused.status_code == 409
    assert '(its GET /healthz says "learner": true)' in refused.json()["detail"]


def test_after_an_admin_switch_the_configured_old_champion_still_challenges(
    make_settings: SettingsFactory,
) -> None:
    settings = _settings(make_settings)

    async def scenario() -> None:
        router = await _open(settings)
        await _traffic(router, 60, seed=14)
        await router.store.set_policy_override("egreedy")  # POST /admin/policy
        await router.learner.switch(parse_policy_spec("egreedy"))
        assert router.learner.bench is not None
        # `random` is BANDIT_POLICY: it challenges on, as after a restart.
        running = set(router.learner.bench.challengers)
        assert running == {"random", "linucb", "fixed:arm=7b"}
        await _traffic(router, 30, seed=15)
        scored = {s.policy: s.events for s in router.learner.bench.standings()}
        assert scored == {"random": 30, "linucb": 30, "fixed:arm=7b": 30}
        await router.close()
        await router.store.close()
        restarted = await _open(settings)
        assert restarted.learner.bench is not None
        assert set(restarted.learner.bench.challengers) == running
        await restarted.close()
        await restarted.store.close()

    asyncio.run(scenario())


def test_promote_names_the_policy_however_written_and_refuses_clearly(
    make_client: ClientFactory, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # `linucb:alpha=0.5` is `linucb` (BANDIT_LINUCB_ALPHA is 0.5): one challenger, said so.
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        settings = _settings(
            make_settings,
            admin_key="admin-secret",
            challengers="linucb, fixed:arm=7b,linucb:alpha=0.5,random",
        )
    assert settings.challengers == ["linucb", "fixed:arm=7b", "random"]
    assert "linucb:alpha=0.5 is the same policy as linucb: listed once" in caplog.text
    client = make_client(settings)
    _drive(client, 30, seed=16)

    def promote(policy: str) -> Any:
        return client.post("/admin/promote", json={"policy": policy}, headers=ADMIN)

    champion = promote("random:")  # the champion itself, written otherwise
    assert champion.status_code == 422 and champion.json()["field"] == "policy"
    assert champion.json()["detail"] == (
        "policy 'random' is the champion; running challengers: linucb, fixed:arm=7b"
    )
    long = promote("x" * 5000)
    assert long.status_code == 422 and long.json()["field"] == "policy"
    assert len(long.text) < 300 and "valid: egreedy, squarecb" in long.text
    assert promote(" LinUCB ").status_code == 422  # names are lower case, as /admin/policy's

    promoted = promote(" linucb:alpha=0.50 ")  # the running `linucb`, written otherwise
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["to_policy"] == "linucb"
    section = client.get("/stats", params={"window": 13}).json()["challengers"]
    assert section["champion"] == "linucb"
    assert {c["policy"] for c in section["challengers"]} == {"random", "fixed:arm=7b"}


def test_a_promotion_refused_for_a_lost_lease_is_never_published_later(
    make_settings: SettingsFactory,
) -> None:
    settings = _settings(make_settings)

    async def scenario() -> None:
        router = await _open(settings)
        await _traffic(router, 120, seed=17)
        lease = router.store.key(KEY_LEASE)
        await router.store.redis.set(lease, "another-learner")  # it stalled past its lease
        with pytest.raises(NotLearner):
            await router.learner.promote("linucb")
        assert str(router.model.spec) == "random"  # at once: a follower serves what Redis holds
        await router.store.redis.delete(lease)  # the other one stopped: it leads again
        assert await router.learner.lead()
        assert str(router.model.spec) == "random"  # what Redis holds, not the refused promotion
        await _traffic(router, 20, seed=18)
        await router.learner.publish()
        assert await router.store.promotions(10) == []
        assert await router.store.policy_override() is None
        assert (await router.store.snapshot_head() or ("",))[0] == "random"
        await router.close()
        await router.store.close()

    asyncio.run(scenario())


def _switch_meanwhile(
    router: Router, switcher: Store, at: str, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Once the learner has decided a promotion (it found no switch pending), an admin switches
    the policy to egreedy on another process: ``switcher``, that process's store on connections
    of its own, writes it as its POST /admin/policy does, just before the promotion's
    transaction runs ``at``: "watch" (before the transaction starts) or "execute" (after its
    WATCH, just before its EXEC). The list returned says when the switch was made."""
    decided: list[Any] = []
    switched: list[str] = []
    decide = Bench.promote

    def deciding(bench: Bench, *args: Any, **kwargs: Any) -> Any:  # the promotion is decided
        decided.append(args)
        return decide(bench, *args, **kwargs)

    monkeypatch.setattr(Bench, "promote", deciding)
    # The publish's transaction: its WATCH (and reads) in ``read``, its EXEC in ``execute``.
    name = "read" if at == "watch" else "execute"
    step = getattr(Watched, name)

    async def switch_first(tx: Watched, *args: Any, **kwargs: Any) -> Any:
        if decided and not switched:
            switched.append(at)
            await switcher.set_policy_override("egreedy")
        return await step(tx, *args, **kwargs)

    monkeypatch.setattr(Watched, name, switch_first)
    return switched


async def _promote_while_switched(router: Router, switched: list[str], by: str) -> None:
    """Traffic, and a promotion of linucb (``by`` an admin after 120 events, or automatically
    once it clears) while the switch of ``_switch_meanwhile`` comes: the promotion is refused,
    and the learner makes the switch."""
    if by == "admin":
        await _traffic(router, 120, seed=19)
        with pytest.raises(PolicyConflict) as refused:
            await router.learner.promote("linucb")
        assert refused.value.status_code == 409 and refused.value.field == "policy"
        assert "egreedy" in refused.value.message
    else:
        for seed in range(20, 40):  # linucb clears after 100 to 220 events
            await _traffic(router, 20, seed)
            if switched:
                break
    assert switched


async def _the_switch_won(router: Router, other: Store) -> None:
    """The admin's switch to egreedy stands and serves, the promotion is not made; once the
    switch serves, a promotion goes through."""
    assert await other.policy_override() == "egreedy"
    assert await other.promotions() == []
    assert str(router.model.spec) == "egreedy"  # switched at once, as the learner's renewal would
    assert (await other.snapshot_head() or ("",))[0] == "egreedy"
    assert router.learner.bench is not None
    assert str(router.learner.bench.champion) == "egreedy"
    assert set(router.learner.bench.challengers) == {"random", "linucb", "fixed:arm=7b"}
    assert _promotions_counted(router) == 0  # the dropped one is no promotion
    record = await router.learner.promote("linucb")
    assert (record["from_policy"], record["to_policy"]) == ("egreedy", "linucb")
    assert await other.policy_override() == "linucb"
    assert (await other.snapshot_head() or ("",))[0] == "linucb"
    assert _promotions_counted(router) == 1


def _promotions_counted(router: Router) -> float | None:
    return router.metrics.registry.get_sample_value("bandit_promotions_total")


@pytest.mark.parametrize("by", ["admin", "auto"])
@pytest.mark.parametrize("at", ["watch", "execute"])
def test_a_switch_made_while_a_promotion_is_published_wins(
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    at: str,
    by: str,
) -> None:
    settings = _settings(make_settings, auto_promote=by == "auto")

    async def scenario() -> None:
        router = await _open(settings)
        other = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
        switched = _switch_meanwhile(router, other, at, monkeypatch)
        with caplog.at_level(logging.INFO, logger="bandit_router"):
            await _promote_while_switched(router, switched, by)
        await _the_switch_won(router, other)
        assert "promotion of linucb dropped: the policy was switched to egreedy" in caplog.text
        await router.close()
        await router.store.close()
        await other.close()

    asyncio.run(scenario())


def test_on_redis_cluster_a_switch_made_while_a_promotion_is_published_wins(
    redis_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        **CHALLENGE,
        redis_url=redis_cluster.url,
        data_dir=str(tmp_path / "data"),
        key_prefix=f"c-{uuid.uuid4().hex[:10]}",
        seed=7,
    )

    async def scenario() -> None:
        async with open_store(settings) as store, open_store(settings) as other:
            assert store.route is not None  # on the master of the deployment's slot
            router = await Router.open(settings, store)
            switched = _switch_meanwhile(router, other, "execute", monkeypatch)
            await _promote_while_switched(router, switched, "admin")
            await _the_switch_won(router, other)
            await router.close()

    asyncio.run(scenario())


def _window(*rows: tuple[float, ...]) -> bytes:
    return np.array(rows, dtype="<f8").tobytes()


# What a hand (or a bug) may leave in the challengers' hash, and what then starts afresh.
NOT_READ: dict[str, tuple[str | bytes, bytes, str]] = {
    "a propensity of 0": ("window:linucb", _window((0.5, 0.0, 1.0, 0.5, 0.5)), "window"),
    "a propensity over 1": ("window:linucb", _window((0.5, 2.0, 1.0, 0.5, 0.5)), "window"),
    "a NaN": ("window:linucb", _window((math.nan, 0.5, 1.0, 0.5, 0.5)), "window"),
    "a reward of 7": ("window:linucb", _window((0.5, 0.5, 7.0, 0.5, 0.5)), "window"),
    "a row cut short": ("window:linucb", _window((0.5, 0.5, 1.0, 0.5, 0.5))[:-8], "window"),
    "no stream id": ("meta", b'{"stream_id": "later", "clearing": []}', "all"),
    "clearing not a list": ("meta", b'{"stream_id": "0-0", "clearing": 5}', "all"),
    "clearing of lists": ("meta", b'{"stream_id": "0-0", "clearing": [[1]]}', "all"),
    "meta nested too deep": ("meta", b"[" * 100_000, "all"),
    "a reward model too narrow": ("reward_model", b'{"dim": 11, "l2": 1, "arms": []}\n', "model"),
    "a reward model nested too deep": ("reward_model", b"[" * 100_000 + b"\n", "model"),
    "a reward model of NaN": (
        "reward_model",
        b'{"dim": 64, "l2": 1, "arms": ["4b"]}\n' + np.full(64 * 65, np.nan).tobytes(),
        "model",
    ),
    "a field name not UTF-8": (b"window:\xff", _window((0.5, 0.5, 1.0, 0.5, 0.5)), "nothing"),
}


@pytest.mark.parametrize("case", list(NOT_READ))
def test_stored_challenger_state_that_does_not_read_starts_afresh(
    make_settings: SettingsFactory, make_client: ClientFactory, case: str
) -> None:
    """What the learner did not write there is not read: the part it spoils starts afresh. Read
    as it was, it stopped the service's start (a TypeError, a RecursionError in the lease's
    take-over), answered /stats with a 500 (propensities the estimators refuse) and, at each
    judgement, /reward with a 500 for a reward already stored."""
    field, garbage, spoils = NOT_READ[case]
    settings = _settings(make_settings, challengers="linucb")

    async def vandalise() -> None:
        router = await _open(settings)
        await _traffic(router, 120, seed=21)
        await router.close()  # publishes the challengers' state, hands the lease over
        await router.store.redis.hset(router.store.key(KEY_CHALLENGERS), field, garbage)
        await router.store.close()

    asyncio.run(vandalise())
    client = make_client(settings)  # starts, and its learner takes the lease
    _drive(client, 120, seed=22)  # judged at 100 events
    stats = client.get("/stats", params={"window": 10})
    assert stats.status_code == 200, stats.text
    (row,) = stats.json()["challengers"]["challengers"]
    assert row["events"] == (120 if spoils in ("window", "all") else 240)
    assert row["dr"]["value"] is not None  # a NaN reward model made every DR estimate NaN


# A summary the learner did not write, and what each made of /stats and /metrics before.
SUMMARIES = [
    b'{"at": "x"}',  # 500: computed_at is no number
    b'{"at": {"t": 1}, "challengers": []}',
    b"[" * 100_000,  # 500: RecursionError
]


def test_a_summary_or_promotion_written_by_hand_breaks_no_reader(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On a process that does not lead, /stats and /metrics read the learner's summary: one of
    another shape is left out whole, not a 500. A promotion whose time no date can hold is left
    out of /stats, and so of `bandit-router status`, which it stopped with a traceback."""
    settings = _settings(make_settings, learn_in_workers=False)
    client = make_client(settings)
    keys = redis.Redis.from_url(settings.redis_url or "")
    record = {
        "ts": 1.7e9,
        "from_policy": "random",
        "to_policy": "linucb",
        "by": "admin",
        "events": 0,
        "model_version": 0,
        **{k: {"value": None, "low": None, "high": None, "n": 0} for k in ("snips", "dr")},
        "champion": {"value": None, "low": None, "high": None, "n": 0},
    }
    for ts in (1e20, -1e20, 1e300):
        keys.rpush(client_key(settings, KEY_PROMOTIONS), json.dumps({**record, "ts": ts}))
    keys.rpush(client_key(settings, KEY_PROMOTIONS), json.dumps(record))
    for i, garbage in enumerate(SUMMARIES):
        keys.hset(client_key(settings, KEY_CHALLENGERS), "summary", garbage)
        stats = client.get("/stats", params={"window": 20 + i})
        assert stats.status_code == 200, stats.text
        section = stats.json()["challengers"]
        assert section["challengers"] == [] and section["computed_at"] is None
        assert [p["ts"] for p in section["promotions"]] == [1.7e9]
        assert client.get("/metrics").status_code == 200
    keys.close()
    use_settings(monkeypatch, settings)
    assert main(["status"]) == 0
    assert "promoted linucb over random (admin) at 2023-11-14" in capsys.readouterr().out


def client_key(settings: Settings, template: str) -> str:
    return template.replace("{p}", "{" + settings.key_prefix + "}")


@pytest.mark.parametrize("by", ["admin", "auto"])
def test_a_promotion_redis_refused_is_dropped_not_published_later(
    redis_process: Any, tmp_path: Path, by: str
) -> None:
    """Redis refuses the promotion's publish (out of memory here): the promotion is not made.
    The champion serves on at once, and once Redis takes writes again neither the promoted model
    nor its record or policy reach it. Kept, the promotion went out with the next snapshot,
    after the admin had been told 503 (retry later: a retry was then a 422, "the champion")."""
    settings = Settings(
        **CHALLENGE,
        auto_promote=by == "auto",
        redis_url=redis_process.url,
        data_dir=str(tmp_path / "data"),
        key_prefix="refused",
        seed=7,
    )
    server = redis.Redis.from_url(redis_process.url)

    async def scenario() -> None:
        router = await _open(settings)
        worker = await _open(settings)  # logs events the learner has not read yet
        await _traffic(router, 60, seed=23)
        if by == "auto":  # linucb clears after 100 to 220 events
            await _traffic(worker, 200, seed=25)
        server.config_set("maxmemory-policy", "noeviction")
        server.config_set("maxmemory", 1)  # every write refused from now on
        with pytest.raises(StoreUnavailable):
            if by == "admin":
                await router.learner.promote("linucb")
            else:  # the learner reads them: it judges, and its promotion's publish is refused
                while await router.learner.step():
                    pass
        assert str(router.model.spec) == "random"  # at once, not the promoted model
        server.config_set("maxmemory", 0)
        assert await router.learner.lead()  # what its loop does at the next renewal
        assert str(router.model.spec) == "random"
        await router.learner.publish()  # (no traffic: linucb may clear again, and be promoted)
        assert await router.store.promotions() == []
        assert await router.store.policy_override() is None
        assert (await router.store.snapshot_head() or ("",))[0] == "random"
        record = await router.learner.promote("linucb")  # and a promotion now is made
        assert (record["from_policy"], record["to_policy"]) == ("random", "linucb")
        await router.close()
        await router.store.close()
        await worker.store.close()

    asyncio.run(scenario())
    server.close()


def _cannot_choose(settings: Settings) -> bytes:
    """A squarecb model whose weights are NaN (VW taught an infinite cost): it loads, as its
    format is sound, but every choice it makes raises."""
    policy = build_policy("squarecb", settings, 7)
    assert isinstance(policy, VWPolicy)
    arms = [Arm("4b"), Arm("7b"), Arm("14b")]
    poison = "\n".join(adf_example(extract("what is a cat"), arms, 0, float("inf"), 0.5))
    for vw in policy.regressors:
        vw.learn(poison)
    return policy.dumps()


def test_a_challenger_that_cannot_choose_is_dropped_and_the_champion_learns_on(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A challenger's model in Redis that loads but cannot choose (written by hand, or by a bug)
    stops neither the champion's learning nor the other challengers': it is dropped, said in the
    log, and starts afresh at the next learner start. Before, its first event raised out of the
    learner's step: the learner's loop died, the lease lapsed and nothing more was learned."""
    settings = _settings(make_settings, challengers="squarecb,linucb")

    async def scenario() -> None:
        router = await _open(settings)
        await _traffic(router, 50, seed=26)
        await router.close()
        key = router.store.key(KEY_CHALLENGERS)
        await router.store.redis.hset(key, "policy:squarecb", _cannot_choose(settings))
        await router.store.close()

        learner = await _open(settings)  # takes the lease, and the challengers as stored
        worker = await _open(settings)  # logs events for the learner to read
        await _traffic(worker, 100, seed=27)
        with caplog.at_level(logging.ERROR, logger="bandit_router"):
            while await learner.learner.step():
                pass
        assert learner.version == 150  # the champion learned every event
        assert learner.learner.bench is not None
        assert set(learner.learner.bench.challengers) == {"linucb"}
        assert _standings(learner)["linucb"][0] == 150
        assert "challenger squarecb dropped" in caplog.text
        await learner.close()  # its snapshot leaves the dropped one out
        await learner.store.close()
        await worker.store.close()

        again = await _open(settings)
        assert again.learner.bench is not None
        assert set(again.learner.bench.challengers) == {"squarecb", "linucb"}  # afresh
        await _traffic(again, 20, seed=28)
        assert _standings(again)["squarecb"][0] == 20
        await again.close()
        await again.store.close()

    asyncio.run(scenario())


# A challenger slow to learn (LinUCB's matrices at their widest: milliseconds an event), so that
# replaying BACKLOG events to it outlasts LEASE_S several times over (about 5 s here), while a
# renewal every third of the lease leaves a second for the process to be late.
SLOW_CHALLENGER = "linucb:dim=1024"
BACKLOG = 1000
LEASE_S = 1.5


async def _logged_apart(settings: Settings, n: int) -> None:
    """``n`` rewarded decisions logged by a process that does not learn them (an API process
    while the learner apart is stopped): a backlog for the next learner."""
    router = await _open(settings.model_copy(update={"learn_in_workers": False}))
    rng = random.Random(31)
    for _ in range(n):
        query, best = rng.choice(PLANTED_QUERIES)
        result = await router.choose(query)
        paid = rng.random() < (0.8 if result.arm == best else 0.2)
        await router.reward(result.event_id, RewardParts(reward=float(paid)))
    await router.close()
    await router.store.close()


def test_a_catch_up_longer_than_the_lease_keeps_it(make_settings: SettingsFactory) -> None:
    """A learner that takes over a backlog replays it to its challengers (from their snapshot)
    holding the lease: it renews the lease meanwhile, as its loop does between steps. Before,
    the lease lapsed during the replay, the publish after it was refused as a lost lease, and
    the next lead replayed the same backlog again: with a learner apart stopped for a while
    under traffic (100,000 events, two challengers, 30 s a replay), it never published again."""
    settings = _settings(
        make_settings,
        challengers=SLOW_CHALLENGER,
        learner_lease_s=LEASE_S,
        snapshot_every=5000,
        publish_s=3600,
    )

    async def scenario() -> None:
        first = await _open(settings)  # leads, and publishes the challengers at the log's start
        await first.learner.publish()
        await first.close()
        await first.store.close()
        await _logged_apart(settings, BACKLOG)

        router = await _open(settings)  # catches up: the champion, then the challenger
        assert router.learner.leading
        assert await router.learner.publish() == BACKLOG  # before: NotLearner (lease lapsed)
        await router.close()
        await router.store.close()

    asyncio.run(scenario())


def test_a_switch_relearning_a_log_longer_than_the_lease_keeps_it(
    make_settings: SettingsFactory,
) -> None:
    """``POST /admin/policy`` relearns the whole log under the lease, renewing it meanwhile;
    before, the lease lapsed during a long relearning and the switched model was not published
    (another worker could take the lease and relearn the whole log in turn)."""
    settings = _settings(make_settings, challengers="", learner_lease_s=LEASE_S, publish_s=3600)

    async def scenario() -> None:
        await _logged_apart(settings, BACKLOG)
        router = await _open(settings)
        assert router.learner.leading
        await router.learner.switch(parse_policy_spec(SLOW_CHALLENGER), store=True)
        head = await router.store.snapshot_head()
        assert head is not None and head[:2] == (SLOW_CHALLENGER, BACKLOG)  # before: none
        assert router.learner.leading
        await router.close()
        await router.store.close()

    asyncio.run(scenario())


def test_a_switch_whose_lease_passes_to_another_learner_says_so(
    make_settings: SettingsFactory,
) -> None:
    """A learner that finds the lease another's while it relearns the log for a switch stops
    there and tells the admin (409), the switch stored for the learner that leads; before, it
    relearned to the end, its publish was refused, and the admin was answered as if switched."""
    settings = _settings(make_settings, challengers="", learner_lease_s=0.5, publish_s=3600)

    async def scenario() -> None:
        await _logged_apart(settings, 50)
        router = await _open(settings)
        assert router.learner.leading
        await router.store.redis.set(router.store.key(KEY_LEASE), "another-learner")
        await asyncio.sleep(0.2)  # past a third of the lease: the relearning renews it first
        with pytest.raises(NotLearner) as refused:
            await router.learner.switch(parse_policy_spec("egreedy"), store=True)
        assert refused.value.status_code == 409
        assert "the switch is stored" in refused.value.message
        assert await router.store.policy_override() == "egreedy"
        assert not router.learner.leading
        assert str(router.model.spec) == "random"  # not switched here: the leader switches
        assert (await router.store.snapshot_head() or ("",))[0] != "egreedy"
        await router.close()
        await router.store.close()

    asyncio.run(scenario())


def test_a_switch_the_process_s_stop_ends_switches_nothing(make_settings: SettingsFactory) -> None:
    """A stop during a switch's relearning (the process's, as signalled: ``Router.open``'s
    ``stopping``) ends it at the next event, replacing nothing: the old model serves on and is
    published as the process stops, and the admin is told (503) that the switch is stored for
    the next learner, which makes it; a relearning of the policy in force is not made."""
    settings = _settings(make_settings, challengers="", publish_s=3600)

    async def scenario() -> None:
        await _logged_apart(settings, 50)
        stopping = asyncio.Event()
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
        router = await Router.open(settings, store, stopping=stopping)
        assert router.learner.leading
        stopping.set()  # SIGTERM
        with pytest.raises(Stopping) as stopped:
            await router.learner.switch(parse_policy_spec("random"), store=True)
        assert stopped.value.status_code == 503
        assert "not made: send this request again once a learner leads" in stopped.value.message
        with pytest.raises(Stopping) as stopped:
            await router.learner.switch(parse_policy_spec("egreedy"), store=True)
        assert "the switch is stored, and the next learner to lead makes it" in (
            stopped.value.message
        )
        assert (str(router.model.spec), router.version) == ("random", 50)
        await router.close()
        assert (await store.snapshot_head() or ())[:2] == ("random", 50)
        assert await store.policy_override() == "egreedy"
        await store.close()
        router = await _open(settings)  # the next learner
        assert (str(router.model.spec), router.version) == ("egreedy", 50)
        await router.close()
        await router.store.close()

    asyncio.run(scenario())


def test_a_switch_left_unmade_to_other_parameters_is_relearned_as_one_made_live(
    make_settings: SettingsFactory,
) -> None:
    """A switch stopped before it was made, to the policy in force with other parameters, is
    relearned from the whole log by the next learner, as the switch made live would have been,
    not loaded from the old policy's snapshot; the settings' own policy, its parameters changed
    there, goes on from the snapshot. A reset (version 0 at the log's end) tells the two apart:
    relearned, the model learns the 50 logged events again."""
    settings = _settings(make_settings, policy="egreedy", challengers="", publish_s=3600)
    changed = settings.model_copy(update={"policy": "egreedy:epsilon=0.3"})

    async def scenario() -> None:
        await _logged_apart(settings, 50)
        router = await _open(settings)
        assert router.version == 50
        assert await router.learner.reset() == 0
        await router.close()
        await router.store.close()
        for each in (changed, settings):  # BANDIT_POLICY's parameters changed, and back
            router = await _open(each)
            assert (router.model.spec, router.version) == (parse_policy_spec(each.policy), 0)
            await router.close()
            await router.store.close()
        stopping = asyncio.Event()
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
        router = await Router.open(settings, store, stopping=stopping)
        stopping.set()  # SIGTERM
        with pytest.raises(Stopping):
            await router.learner.switch(parse_policy_spec("egreedy:epsilon=0.3"), store=True)
        await router.close()
        assert (await store.snapshot_head() or ())[:2] == ("egreedy", 0)
        await store.close()
        router = await _open(settings)  # the next learner makes the switch
        assert (str(router.model.spec), router.version) == ("egreedy:epsilon=0.3", 50)
        await router.close()
        await router.store.close()

    asyncio.run(scenario())
