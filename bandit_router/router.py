"""Router: the request loop of DESIGN.md (extract, choose, store; reward, combine, learn, log)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bandit_router.errors import InvalidArm, InvalidReward, RouterError
from bandit_router.features import AppValue, Features, extract
from bandit_router.metrics import Metrics
from bandit_router.policies import (
    Arm,
    Policy,
    PolicySpec,
    build_policy,
    load_policy,
    parse_policy_spec,
)
from bandit_router.rewards import RewardConfig, RewardParts
from bandit_router.settings import Settings
from bandit_router.store import Event, Snapshot, Store

log = logging.getLogger("bandit_router")


@dataclass(frozen=True, slots=True)
class ChooseResult:
    event_id: str
    arm: str
    probability: float
    probabilities: dict[str, float]
    policy: str
    model_version: int


@dataclass(frozen=True, slots=True)
class RewardResult:
    event_id: str
    arm: str
    reward: float
    parts: dict[str, float]
    model_version: int


def reward_config(settings: Settings) -> RewardConfig:
    return RewardConfig(
        settings.reward_weights, settings.latency_budget_ms, settings.cost_budget_usd
    )


class Router:
    """Holds the policy and the store; one instance per process."""

    def __init__(self, settings: Settings, store: Store, policy: Policy, spec: PolicySpec) -> None:
        self.settings = settings
        self.store = store
        self.policy = policy
        self.spec = spec
        self.arms = [Arm.from_spec(a) for a in settings.arms]
        self._arms_by_name = {a.name: a for a in self.arms}
        self.rewards = reward_config(settings)
        self.version = 0  # rewards learned by this model, across restarts
        self.stream_id = "0-0"  # the newest logged event this model has learned
        self._learn_lock = asyncio.Lock()
        self.metrics = Metrics([a.name for a in self.arms], str(spec))

    @classmethod
    async def open(cls, settings: Settings, store: Store) -> Router:
        """Restore the newest snapshot, then learn every logged event that came after it."""
        spec = parse_policy_spec(settings.policy)
        router = cls(settings, store, build_policy(spec, settings, settings.seed), spec)
        snapshot = await store.load_snapshot()
        if snapshot is not None:
            router._restore(snapshot)
        replayed = 0
        async for event in store.events(after=router.stream_id):
            router._learn_event(event)
            replayed += 1
        log.info(
            "policy %s at model version %d (%d logged events replayed)",
            spec,
            router.version,
            replayed,
        )
        return router

    def _restore(self, snapshot: Snapshot) -> None:
        if parse_policy_spec(snapshot.policy).name != self.spec.name:
            log.warning(
                "snapshot is of policy %s, settings ask for %s: learning %s from the whole log",
                snapshot.policy,
                self.spec,
                self.spec.name,
            )
            return
        try:
            self.policy = load_policy(self.spec, snapshot.data, self.settings, self.settings.seed)
        except ValueError as e:
            log.warning("snapshot not loadable (%s): learning from the whole log", e)
            return
        self.version = snapshot.version
        self.stream_id = snapshot.stream_id

    def eligible(self, names: Sequence[str] | None) -> list[Arm]:
        if names is None:
            return self.arms
        if not names:
            raise InvalidArm("", [a.name for a in self.arms])
        unknown = [n for n in names if n not in self._arms_by_name]
        if unknown:
            raise InvalidArm(unknown[0], [a.name for a in self.arms])
        return [self._arms_by_name[n] for n in dict.fromkeys(names)]

    def _check_request(self, query: str, features: Mapping[str, AppValue] | None) -> None:
        limit = self.settings.max_query_chars
        if not query.strip():
            raise RouterError("query must contain text, got only whitespace", field="query")
        if len(query) > limit:
            raise RouterError(
                f"query is {len(query)} characters; the limit is {limit} (BANDIT_MAX_QUERY_CHARS)",
                field="query",
            )
        if features and len(features) > self.settings.max_features:
            raise RouterError(
                f"{len(features)} features sent; the limit is {self.settings.max_features} "
                "(BANDIT_MAX_FEATURES)",
                field="features",
            )

    async def choose(
        self,
        query: str,
        features: Mapping[str, AppValue] | None = None,
        arms: Sequence[str] | None = None,
        event_id: str | None = None,
    ) -> ChooseResult:
        self._check_request(query, features)
        eligible = self.eligible(arms)
        try:
            x = extract(query, features)
        except ValueError as e:
            raise RouterError(str(e), field="features") from e
        decision = self.policy.choose(x, eligible)
        event_id = event_id or uuid.uuid4().hex
        record: dict[str, Any] = {
            "event_id": event_id,
            "features": x.to_json(),
            "arms": [a.name for a in eligible],
            "arm": decision.arm,
            "probability": decision.probability,
            "probabilities": dict(decision.probabilities),
            "policy": str(self.spec),
            "model_version": self.version,
            "ts": time.time(),
        }
        existing = await self.store.save_decision(event_id, record)
        if existing is None:
            self.metrics.decided(decision.arm, record["policy"], record["probabilities"])
        return _choose_result(existing or record)

    async def reward(self, event_id: str, parts: RewardParts) -> RewardResult:
        try:
            value = self.rewards.combine(parts)
        except ValueError as e:
            raise InvalidReward(str(e)) from e
        reward = {"parts": parts.present(), "reward": value, "ts": time.time()}
        # One at a time, so the snapshot's stream id is exactly what the model has learned.
        async with self._learn_lock:
            decision, stream_id = await self.store.add_reward(event_id, reward, value)
            self.metrics.rewarded(decision["arm"], value)
            self._learn_event(Event(stream_id, decision, reward))
            if self.version % self.settings.snapshot_every == 0:
                await self.snapshot()
        return RewardResult(event_id, decision["arm"], value, parts.present(), self.version)

    def _learn_event(self, event: Event) -> None:
        d = event.decision
        arms = [self._arms_by_name.get(n) or Arm(n) for n in d["arms"]]
        x = Features.from_json(d["features"])
        self.policy.learn(x, arms, d["arm"], float(d["probability"]), float(event.reward["reward"]))
        self.version += 1
        self.stream_id = event.stream_id
        self.metrics.learned(d["arm"], self.version)

    async def snapshot(self) -> int:
        """Write the model to Redis; returns its version."""
        data = self.policy.dumps()
        await self.store.save_snapshot(Snapshot(str(self.spec), self.version, self.stream_id, data))
        return self.version

    async def stats(self) -> dict[str, Any]:
        counters = await self.store.counters()
        per_arm = {}
        for arm in self.arms:
            rewards = counters.get(f"rewards:{arm.name}", 0.0)
            total = counters.get(f"reward_sum:{arm.name}", 0.0)
            per_arm[arm.name] = {
                "decisions": int(counters.get(f"decisions:{arm.name}", 0)),
                "rewards": int(rewards),
                "mean_reward": total / rewards if rewards else None,
            }
        return {
            "policy": str(self.spec),
            "model_version": self.version,
            "arms": per_arm,
            "decisions": sum(a["decisions"] for a in per_arm.values()),
            "rewards_accepted": sum(a["rewards"] for a in per_arm.values()),
        }


def _choose_result(record: Mapping[str, Any]) -> ChooseResult:
    return ChooseResult(
        event_id=record["event_id"],
        arm=record["arm"],
        probability=record["probability"],
        probabilities=record["probabilities"],
        policy=record["policy"],
        model_version=record["model_version"],
    )
