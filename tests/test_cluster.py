"""The store on a real Redis Cluster: one deployment's keys in one slot, on that slot's master."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from bandit_router.service.router import Router
from bandit_router.settings import Settings
from bandit_router.store.cluster import node_url, plain_url
from bandit_router.store.repository import open_store
from tests.cluster import LocalCluster


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


def _parts(**values: float) -> Any:
    from bandit_router.rewards import RewardParts

    return RewardParts.from_mapping(values)
