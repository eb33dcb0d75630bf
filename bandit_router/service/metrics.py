"""Metrics: the Prometheus families the service exposes on ``GET /metrics``.

Each process keeps its own registry (no global one), so every app built by ``create_app`` and
every test starts from zero. Counters move as the router works; the gauges that describe the
deployment (model version, learner lag) are refreshed from the router and Redis at each scrape.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

if TYPE_CHECKING:
    from bandit_router.service.challengers import ChallengersView

REWARD_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
EXPLORATION_WINDOW = 1000  # decisions the exploration-rate gauge looks back over
TIMED_PATHS = {"/choose": "choose", "/reward": "reward"}


def is_greedy(arm: str, probabilities: Mapping[str, float]) -> bool:
    """Whether ``arm`` is (one of) the most probable arms: the policy's greedy choice."""
    return probabilities.get(arm, 0.0) >= max(probabilities.values(), default=0.0) - 1e-9


class Metrics:
    """The metric families of one process, and the calls that move them."""

    def __init__(self, arms: Iterable[str] = (), policy: str = "") -> None:
        self.registry = r = CollectorRegistry()
        by_arm_policy = ["arm", "policy"]
        self.decisions = Counter(
            "bandit_decisions",
            "Decisions made, by chosen arm and policy",
            by_arm_policy,
            registry=r,
        )
        self.exploratory = Counter(
            "bandit_exploratory_decisions",
            "Decisions whose arm was not the greedy (most probable) one",
            by_arm_policy,
            registry=r,
        )
        self.rewards_received = Counter(
            "bandit_rewards_received", "Rewards accepted by POST /reward", ["arm"], registry=r
        )
        self.rewards_learned = Counter(
            "bandit_rewards_learned",
            "Rewards this process's learner learned from the log, the catch-up when it takes the "
            "lease included (not the start-up replay, nor a policy switch's relearning)",
            ["arm"],
            registry=r,
        )
        self.reward_value = Histogram(
            "bandit_reward", "Combined reward values", ["arm"], buckets=REWARD_BUCKETS, registry=r
        )
        self.request_seconds = Histogram(
            "bandit_request_duration_seconds",
            "Time to answer POST /choose and POST /reward, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "bandit_gateway_upstream_seconds",
            "Gateway calls to an arm's upstream: to the first streamed event, and to the last byte",
            ["arm", "measure"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream_failures = Counter(
            "bandit_gateway_upstream_failures",
            "Gateway calls to an arm's upstream that failed, by arm and kind",
            ["arm", "kind"],
            registry=r,
        )
        self._init_gauges(r)
        # labels() validates and locks on every call: each series is looked up once
        self._series: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._recent: deque[bool] = deque(maxlen=EXPLORATION_WINDOW)
        self._explored = 0  # how many of _recent are True
        for arm in arms:  # every arm's series exists (at 0) from the start
            self.decisions.labels(arm, policy)
            self.exploratory.labels(arm, policy)
            self.rewards_received.labels(arm)
            self.rewards_learned.labels(arm)
            self.reward_value.labels(arm)
        for endpoint in TIMED_PATHS.values():
            self.request_seconds.labels(endpoint)

    def _init_gauges(self, r: CollectorRegistry) -> None:
        self.exploration_rate = Gauge(
            "bandit_exploration_rate",
            f"Share of this process's last {EXPLORATION_WINDOW} decisions that were not greedy",
            registry=r,
        )
        self.model_version = Gauge(
            "bandit_model_version", "Rewards learned by the model this process serves", registry=r
        )
        self.learner_lag = Gauge(
            "bandit_learner_lag_events",
            "Logged rewards less those the model this process serves has learned (below 0 for a "
            "model restored from another log)",
            registry=r,
        )
        self.degraded = Gauge(
            "bandit_degraded", "1 while the service runs in degraded mode, else 0", registry=r
        )
        self.redis_errors = Counter(
            "bandit_redis_errors", "Redis operations that failed", ["operation"], registry=r
        )
        self._init_challenger_gauges(r)

    def _init_challenger_gauges(self, r: CollectorRegistry) -> None:
        """Per running challenger (service.challengers), refreshed at each scrape."""
        self.challenger_events = Gauge(
            "bandit_challenger_events",
            "Events the challenger is scored on (its window)",
            ["challenger"],
            registry=r,
        )
        self.challenger_estimate = Gauge(
            "bandit_challenger_estimate",
            "Off-policy estimate of the challenger's mean reward, with its 95% interval",
            ["challenger", "estimator", "bound"],
            registry=r,
        )
        self.challenger_champion = Gauge(
            "bandit_challenger_champion_estimate",
            "The champion's mean logged reward over the challenger's events",
            ["challenger"],
            registry=r,
        )
        self.challenger_clears = Gauge(
            "bandit_challenger_clears",
            "1 while the challenger clears the champion (see Champion and challengers)",
            ["challenger"],
            registry=r,
        )
        self.promotions = Counter(
            "bandit_promotions", "Challengers this process's learner promoted", registry=r
        )

    def decided(self, arm: str, policy: str, probabilities: Mapping[str, float]) -> None:
        """A new decision (not a repeat of an existing event_id)."""
        self.series(self.decisions, arm, policy).inc()
        explored = not is_greedy(arm, probabilities)
        if explored:
            self.series(self.exploratory, arm, policy).inc()
        if len(self._recent) == self._recent.maxlen:
            self._explored -= self._recent[0]  # leaves the window with the append below
        self._recent.append(explored)
        self._explored += explored  # a running count: summing the window cost O(window)
        self.exploration_rate.set(self._explored / len(self._recent))

    def rewarded(self, arm: str, reward: float | None) -> None:
        """A reward call accepted; ``reward`` is the combined value once final, else None."""
        self.series(self.rewards_received, arm).inc()
        if reward is not None:
            self.series(self.reward_value, arm).observe(reward)

    def learned(self, arm: str, version: int) -> None:
        """The policy learned one reward; ``version`` is the model version after it."""
        self.series(self.rewards_learned, arm).inc()
        self.model_version.set(version)

    def series(self, family: Counter | Histogram, *labels: str) -> Any:
        """``family.labels(*labels)``, kept after the first call (label values are arm, policy
        and endpoint names: a bounded set)."""
        key = (id(family), labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = family.labels(*labels)
        return child

    def redis_error(self, operation: str) -> None:
        self.redis_errors.labels(operation).inc()

    def challengers(self, view: ChallengersView) -> None:
        """Scrape-time gauges of the challengers: the series of one no longer running go."""
        families = (
            self.challenger_events,
            self.challenger_estimate,
            self.challenger_champion,
            self.challenger_clears,
        )
        for family in families:
            family.clear()
        nan = float("nan")
        for c in view.challengers:
            self.challenger_events.labels(c.policy).set(c.events)
            for method in ("snips", "dr"):
                interval = getattr(c, method)
                for bound in ("value", "low", "high"):
                    value = getattr(interval, bound)
                    series = self.challenger_estimate.labels(c.policy, method, bound)
                    series.set(nan if value is None else value)
            champion = c.champion.value
            self.challenger_champion.labels(c.policy).set(nan if champion is None else champion)
            self.challenger_clears.labels(c.policy).set(int(c.clears))

    def promoted(self, record: Mapping[str, Any]) -> None:
        self.promotions.inc()

    def refresh(self, version: int, logged: int | None) -> None:
        """Scrape-time gauges: the model version and, when Redis answered, the learner lag (not
        held at 0: below it, a model restored from another log, it still grows as events wait)."""
        self.model_version.set(version)
        if logged is not None:
            self.learner_lag.set(logged - version)
