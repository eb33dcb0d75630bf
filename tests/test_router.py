"""The loop without HTTP: restart from snapshot plus log, policy switches, version tracking."""

from __future__ import annotations

import asyncio
import random

from bandit_router.features import extract
from bandit_router.rewards import RewardParts
from bandit_router.router import Router
from bandit_router.settings import Settings
from bandit_router.store import Store, connect
from tests.conftest import SettingsFactory

MARKED = "please summarise this zebra report"
PLAIN = "prove the theorem about primes"


async def _open(settings: Settings) -> Router:
    store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
    return await Router.open(settings, store)


async def _train(router: Router, rounds: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    for _ in range(rounds):
        marked = rng.random() < 0.5
        result = await router.choose(MARKED if marked else PLAIN)
        good = result.arm == ("4b" if marked else "14b")
        await router.reward(result.event_id, RewardParts(reward=1.0 if good else 0.0))


def _pmf(router: Router, query: str) -> dict[str, float]:
    return dict(router.policy.choose(extract(query), router.arms).probabilities)


def _greedy(pmf: dict[str, float]) -> str:
    return max(pmf, key=lambda k: pmf[k])


def test_restart_replays_the_log_after_the_snapshot(make_settings: SettingsFactory) -> None:
    settings = make_settings(snapshot_every=100)

    async def scenario() -> None:
        router = await _open(settings)
        await _train(router, 250)  # snapshots at 100 and 200; 50 events only in the log
        snapshot = await router.store.load_snapshot()
        assert snapshot is not None and snapshot.version == 200
        await router.store.close()  # a "crash": no final snapshot is written

        restored = await _open(settings)
        assert restored.version == router.version == 250
        assert restored.stream_id == router.stream_id
        assert _pmf(restored, MARKED) == _pmf(router, MARKED)
        assert _greedy(_pmf(restored, MARKED)) == "4b"
        await restored.store.close()

    asyncio.run(scenario())


def test_policy_switch_relearns_from_the_whole_log(make_settings: SettingsFactory) -> None:
    settings = make_settings(snapshot_every=50)

    async def scenario() -> None:
        router = await _open(settings)
        await _train(router, 300)
        await router.snapshot()
        await router.store.close()

        switched = await _open(settings.model_copy(update={"policy": "linucb"}))
        assert switched.spec.name == "linucb"
        assert switched.version == 300  # every logged event learned by the new policy
        assert _greedy(_pmf(switched, PLAIN)) == "14b"
        await switched.store.close()

    asyncio.run(scenario())


def test_decisions_record_the_model_version(make_settings: SettingsFactory) -> None:
    async def scenario() -> None:
        router = await _open(make_settings())
        first = await router.choose("hello")
        await router.reward(first.event_id, RewardParts(accuracy=1.0))
        second = await router.choose("hello")
        assert (first.model_version, second.model_version) == (0, 1)
        await router.store.close()

    asyncio.run(scenario())
