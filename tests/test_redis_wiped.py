"""Redis loses its data under a running service: FLUSHALL by mistake, or a restart without
persistence (AWS ElastiCache's default). What the processes hold in memory comes back."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import pytest
import redis

from bandit_router.errors import UnknownEvent
from bandit_router.rewards import RewardParts
from bandit_router.service.router import Router
from bandit_router.settings import Settings
from bandit_router.store.keys import KEY_LEASE
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect
from tests.conftest import RedisProcess

LOST = "Redis holds no model"


def _settings(redis: RedisProcess, tmp_path: Path) -> Settings:
    """A deployment with a challenger on the test's own Redis, which it flushes or restarts."""
    return Settings(
        redis_url=redis.url,
        data_dir=str(tmp_path / "data"),
        key_prefix=f"test-{uuid.uuid4().hex[:12]}",
        seed=7,
        challengers=["linucb"],
    )


async def _open(settings: Settings) -> Router:
    store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
    return await Router.open(settings, store)


async def _close(*routers: Router) -> None:
    for router in routers:
        await router.close()
        await router.store.close()


async def _serve(router: Router, n: int) -> list[str]:
    """``n`` choices, each rewarded 1; their event ids."""
    ids = []
    for i in range(n):
        d = await router.choose(f"query {i % 3}")
        await router.reward(d.event_id, RewardParts(reward=1.0))
        ids.append(d.event_id)
    return ids


async def _promoted(router: Router) -> list[str]:
    """25 events learned, ``linucb`` promoted over squarecb after the first 20, published."""
    ids = await _serve(router, 20)
    await router.learner.promote("linucb")
    ids += await _serve(router, 5)
    await router.learner.publish()
    assert str(router.model.spec) == "linucb" and router.version == 25
    return ids


def test_a_promoted_model_is_published_again_after_a_flushall(
    redis_process: RedisProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """FLUSHALL under a learner whose policy was promoted: the policy override went with the
    model, so the learner, leading anew, served BANDIT_POLICY untrained (version 0) while its
    log line said its model, version 25, was published again."""
    settings = _settings(redis_process, tmp_path)

    async def scenario() -> None:
        a = await _open(settings)
        ids = await _promoted(a)
        waiting = (await a.choose("before")).event_id
        await a.store.redis.flushall()
        assert await a.learner.lead()
        assert (str(a.model.spec), a.version) == ("linucb", 25)
        assert await a.store.policy_override() == "linucb"
        await a.learner.step()  # published at once, not after BANDIT_PUBLISH_S
        head = await a.store.snapshot_head()
        assert head is not None and head[:2] == ("linucb", 25)
        # a reward for a decision Redis lost is unknown, one already taken too: learned once
        for event_id in (ids[-1], waiting):
            with pytest.raises(UnknownEvent):
                await a.reward(event_id, RewardParts(reward=1.0))
        await _serve(a, 1)
        assert a.version == 26
        await a.close()
        await a.store.close()

    with caplog.at_level(logging.INFO, logger="bandit_router"):
        asyncio.run(scenario())
    said = [m for m in caplog.messages if LOST in m]
    assert len(said) == 1 and "version 25" in said[0] and "linucb" in said[0], said
    assert not [m for m in caplog.messages if "lease had lapsed" in m]  # not what happened


def test_a_follower_that_takes_the_lease_after_redis_restarted_empty_publishes_its_model(
    redis_process: RedisProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`serve --workers 2`: Redis restarts empty and the worker that only followed takes the
    free lease first. It led from nothing without a word: the promoted model (followed, in its
    memory) was replaced by an untrained BANDIT_POLICY, which the other worker then loaded."""
    settings = _settings(redis_process, tmp_path)

    async def scenario() -> None:
        a, b = await _open(settings), await _open(settings)
        assert a.learner.leading and not b.learner.leading
        await _promoted(a)
        assert await b.refresh()
        redis_process.kill()
        redis_process.start()  # empty, on the same port
        assert await b.learner.lead()
        assert (str(b.model.spec), b.version) == ("linucb", 25)
        assert not await a.learner.lead()  # b holds the lease
        await b.learner.step()
        assert not await a.refresh()  # the same model: nothing newer to load
        assert (str(a.model.spec), a.version) == ("linucb", 25)
        await _close(a, b)

    with caplog.at_level(logging.INFO, logger="bandit_router"):
        asyncio.run(scenario())
    said = [m for m in caplog.messages if LOST in m]
    assert len(said) == 1 and "version 25" in said[0], said


def test_a_learner_with_another_policy_than_the_lost_models_does_not_set_that_one_in_force(
    redis_process: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling restart that changes BANDIT_POLICY, and Redis loses its data meanwhile: the
    new process that takes the lease serves its own policy, as it would have (no admin or
    promotion set the old one), and stores no policy override that would outlast restarts."""
    old = _settings(redis_process, tmp_path)
    new = old.model_copy(update={"policy": "linucb"})

    async def scenario() -> None:
        a, b = await _open(old), await _open(new)
        await _serve(a, 10)
        await a.learner.publish()
        assert await b.refresh() and str(b.model.spec) == "squarecb"
        await a.store.redis.flushall()
        assert await b.learner.lead()
        assert (str(b.model.spec), b.version) == ("linucb", 0)
        assert await b.store.policy_override() is None
        await _close(a, b)

    with caplog.at_level(logging.INFO, logger="bandit_router"):
        asyncio.run(scenario())
    said = [m for m in caplog.messages if LOST in m]
    assert len(said) == 1 and "squarecb at version 10, is not" in said[0], said


def test_a_loss_is_said_once_when_the_lease_lapses_while_the_learner_leads_anew(
    redis_process: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis loses its data, then the learner's lease lapses while it replays the log logged
    since (the process stalled, another learner took the lease): the loss was said again when
    it led anew, two lines for one loss. A second loss later is said again."""
    settings = _settings(redis_process, tmp_path).model_copy(update={"learner_lease_s": 0.6})
    lease = KEY_LEASE.format(p="{" + settings.key_prefix + "}")
    other = redis.Redis.from_url(redis_process.url)

    async def scenario() -> None:
        a, b = await _open(settings), await _open(settings)
        assert a.learner.leading and not b.learner.leading
        await _serve(a, 10)
        await a.learner.publish()
        await a.store.redis.flushall()
        await _serve(b, 5)  # logged since the loss, replayed by a when it leads anew
        learned = a.learner.on_learned

        def stall(arm: str, version: int) -> None:
            """The process freezes past the lease, and another learner takes it."""
            a.learner.on_learned = learned
            time.sleep(settings.learner_lease_s / 3 + 0.05)
            other.set(lease, "another", px=60_000)

        a.learner.on_learned = stall
        assert not await a.learner.lead()  # its lease lapsed while it led anew
        other.delete(lease)  # the other learner stopped
        assert await a.learner.lead()
        assert a.version == 15
        await a.learner.step()  # published at once
        head = await a.store.snapshot_head()
        assert head is not None and head[1] == 15
        assert len([m for m in caplog.messages if LOST in m]) == 1, caplog.messages
        await a.store.redis.flushall()  # a loss of its own
        assert await a.learner.lead()
        await _close(a, b)

    try:
        with caplog.at_level(logging.INFO, logger="bandit_router"):
            asyncio.run(scenario())
    finally:
        other.close()
    said = [m for m in caplog.messages if LOST in m]
    assert len(said) == 2 and "version 10" in said[0] and "version 15" in said[1], said
    assert [m for m in caplog.messages if "lapsed while it caught up" in m]
