"""Stats: the document ``GET /stats`` answers, which the dashboard and ``status`` show.

Totals come from the Redis counters; everything under ``recent`` is computed from the newest
events of the training log (decisions joined with their rewards), so it is deployment-wide and
survives restarts. The baselines are estimated off-policy from the logged propensities.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from bandit_router.errors import RouterError
from bandit_router.policies.base import Arm, ParamValue
from bandit_router.policies.registry import effective_params
from bandit_router.service.challengers import (
    CHALLENGERS_EXAMPLE,
    ChallengersView,
    challengers_view,
)
from bandit_router.service.estimates import BaselineCache, Baselines
from bandit_router.service.metrics import is_greedy
from bandit_router.service.offloop import REUSE_FACTOR, off_loop
from bandit_router.settings import ArmSpec
from bandit_router.store.records import Entry, Event, Logged, Unreadable, decode_entries
from bandit_router.throttle import Throttle

if TYPE_CHECKING:
    from bandit_router.service.router import Router

PARTS = ("accuracy", "latency_ms", "rating", "cost_usd")
MIN_BUCKET_EVENTS = 10  # fewer buckets than asked when the window is small: shares stay readable
log = logging.getLogger("bandit_router")
BUSY_SAID_EVERY_S = 10.0  # a /stats refused at the bound is said at most this often, with a count
KEPT_DOCUMENTS = 16  # /stats documents cached per process, one per deployment, window, buckets
# Computations queued or running per process, each for another deployment, window or buckets: a
# client that leaves does not cancel its own, so without a bound distinct values queue without
# end.
QUEUED_DOCUMENTS = 16


class ArmTotals(BaseModel):
    decisions: int = Field(description="decisions that chose this arm, ever", examples=[1200])
    rewards: int = Field(description="rewards received for this arm, ever", examples=[1100])
    mean_reward: float | None = Field(
        description="mean combined reward of this arm, ever; null before its first reward",
        examples=[0.71],
    )


class ArmRecent(BaseModel):
    events: int = Field(description="rewarded decisions of this arm in the window", examples=[80])
    share: float = Field(description="this arm's share of the window's events", examples=[0.4])
    mean_reward: float | None = Field(description="mean combined reward", examples=[0.74])
    accuracy: float | None = Field(description="mean accuracy reported (0..1)", examples=[0.9])
    latency_ms: float | None = Field(description="mean latency reported, ms", examples=[850.0])
    rating: float | None = Field(description="mean user rating reported (1..5)", examples=[4.2])
    cost_usd: float | None = Field(description="mean cost reported, USD", examples=[0.0004])


class Series(BaseModel):
    """The window cut into equal time buckets, oldest first; lists are aligned with ``t``."""

    t: list[float] = Field(description="start of each bucket, unix seconds", examples=[[1.7e9]])
    events: list[int] = Field(description="events in each bucket", examples=[[25]])
    share: dict[str, list[float | None]] = Field(
        description="each arm's share of the bucket's events (null for a bucket with none)",
        examples=[{"7b": [0.6]}],
    )
    reward: list[float | None] = Field(
        description="the policy's mean reward in each bucket", examples=[[0.7]]
    )
    exploration: list[float | None] = Field(
        description="share of each bucket's decisions that were not the greedy arm",
        examples=[[0.05]],
    )


class Recent(BaseModel):
    events: int = Field(
        description="events in the window (the newest of the log, within 64 MiB)", examples=[500]
    )
    since: float | None = Field(
        description="oldest decision in the window, unix s", examples=[1.7e9]
    )
    until: float | None = Field(
        description="newest decision in the window, unix s", examples=[1.7e9]
    )
    mean_reward: float | None = Field(
        description="the policy's mean reward over the window (on-policy)", examples=[0.72]
    )
    exploration_rate: float | None = Field(
        description="share of the window's decisions that were not the greedy arm",
        examples=[0.05],
    )
    unreadable_events: int = Field(
        default=0,
        description="entries of the window that are not usable events (a malformed record, a "
        "decision or reward value the service never writes): left out of everything here",
        examples=[0],
    )
    dropped_values: int = Field(
        default=0,
        description="values of the window's events left out as unreadable: reward parts that "
        "are not finite numbers within their bounds, app number features that are not finite",
        examples=[0],
    )
    arms: dict[str, ArmRecent] = Field(
        description="per arm, over the window",
        examples=[{"7b": {"events": 80, "share": 0.4, "mean_reward": 0.74}}],
    )
    series: Series = Field(description="the window in equal time buckets")
    baselines: Baselines = Field(
        description="off-policy estimates (IPS, SNIPS, DR with 95% intervals) of uniform random, "
        "the static rule and each arm alone over the window's events, from the logged "
        "propensities; cached 30 s or longer (see the Dashboard section of the README)"
    )


class SettingsView(BaseModel):
    policy: str = Field(description="the policy spec in force", examples=["egreedy:epsilon=0.1"])
    policy_params: dict[str, ParamValue] = Field(
        description="every parameter the policy runs with", examples=[{"epsilon": 0.1}]
    )
    epsilon: float = Field(description="BANDIT_EPSILON", examples=[0.05])
    linucb_alpha: float = Field(description="BANDIT_LINUCB_ALPHA", examples=[0.5])
    reward_weights: dict[str, float] = Field(
        description="BANDIT_REWARD_WEIGHTS", examples=[{"accuracy": 0.6, "latency": 0.2}]
    )
    latency_budget_ms: float = Field(description="BANDIT_LATENCY_BUDGET_MS", examples=[2000.0])
    cost_budget_usd: float = Field(description="BANDIT_COST_BUDGET_USD", examples=[0.001])
    arms: list[ArmSpec] = Field(
        description="BANDIT_ARMS", examples=[[{"name": "7b", "params_b": 7, "usd_per_mtok": 0.2}]]
    )


class StatsResponse(BaseModel):
    policy: str = Field(description="the policy spec in force", examples=["egreedy"])
    model_version: int = Field(description="rewards the served model has learned", examples=[42])
    arms: dict[str, ArmTotals] = Field(
        description="per configured arm, deployment-wide totals",
        examples=[{"7b": {"decisions": 1200, "rewards": 1100, "mean_reward": 0.71}}],
    )
    decisions: int = Field(description="decisions made, ever", examples=[1300])
    rewards_accepted: int = Field(description="rewards final and logged, ever", examples=[1200])
    events_learned: int = Field(
        description="events the learner had learned at its last published snapshot",
        examples=[1190],
    )
    skipped_no_reward: int = Field(
        description="events whose reward window closed with no reward part, not learned "
        "(BANDIT_DEFAULT_REWARD unset), ever",
        examples=[25],
    )
    decisions_dropped: int = Field(
        description="decisions lost because the local buffer overflowed while Redis was down",
        examples=[0],
    )
    buffered_decisions: int = Field(
        description="decisions this process holds while Redis is unreachable", examples=[0]
    )
    learner: bool = Field(
        description="whether this process holds the learner lease", examples=[True]
    )
    settings: SettingsView = Field(description="the settings that shape decisions and rewards")
    recent: Recent = Field(description="the newest `window` events of the training log")
    challengers: ChallengersView | None = Field(
        default=None,
        description="the challengers scored beside the serving policy, and every promotion",
        examples=[CHALLENGERS_EXAMPLE],
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _arm_recent(events: Sequence[Event], total: int) -> ArmRecent:
    parts = {
        p: [float(e.reward["parts"][p]) for e in events if p in e.reward["parts"]] for p in PARTS
    }
    return ArmRecent(
        events=len(events),
        share=len(events) / total if total else 0.0,
        mean_reward=_mean([float(e.reward["reward"]) for e in events]),
        **{p: _mean(v) for p, v in parts.items()},
    )


def _explored(event: Event) -> bool:
    return not is_greedy(event.decision["arm"], event.decision["probabilities"])


def series(events: Sequence[Event], names: Sequence[str], buckets: int) -> Series:
    """Cut the events into ``buckets`` equal spans of decision time (fewer for few events)."""
    if not events:
        return Series(t=[], events=[], share={n: [] for n in names}, reward=[], exploration=[])
    times = [float(e.decision["ts"]) for e in events]
    t0, t1 = min(times), max(times)
    n = max(1, min(buckets, len(events) // MIN_BUCKET_EVENTS))
    width = (t1 - t0) / n or 1.0
    groups: list[list[Event]] = [[] for _ in range(n)]
    for ts, event in zip(times, events, strict=True):
        groups[min(int((ts - t0) / width), n - 1)].append(event)
    counts = [len(g) for g in groups]
    chosen = [Counter(e.decision["arm"] for e in g) for g in groups]  # one pass, not one an arm
    return Series(
        t=[t0 + i * width for i in range(n)],
        events=counts,
        share={
            name: [c[name] / k if k else None for c, k in zip(chosen, counts, strict=True)]
            for name in names
        },
        reward=[_mean([float(e.reward["reward"]) for e in g]) for g in groups],
        exploration=[_mean([float(_explored(e)) for e in g]) for g in groups],
    )


def summarize(
    logged: Sequence[Logged],
    arms: Sequence[Arm],
    buckets: int = 30,
    baselines: Baselines | None = None,
) -> Recent:
    """What the window of ``logged`` events says about the arms and the policy; unreadable
    entries and values (see ``records.to_event``) are left out and counted."""
    events = [e for e in logged if not isinstance(e, Unreadable)]
    names = [a.name for a in arms]
    names += sorted({e.decision["arm"] for e in events} - set(names))
    # Grouped in one pass, not a pass over the window an arm: a log written by hand may name
    # thousands of arms (the service logs its own only).
    by_arm: dict[str, list[Event]] = {n: [] for n in names}
    for e in events:
        by_arm[e.decision["arm"]].append(e)
    times = [float(e.decision["ts"]) for e in events]
    return Recent(
        events=len(events),
        since=min(times, default=None),
        until=max(times, default=None),
        mean_reward=_mean([float(e.reward["reward"]) for e in events]),
        exploration_rate=_mean([float(_explored(e)) for e in events]),
        unreadable_events=len(logged) - len(events),
        dropped_values=sum(e.dropped for e in events),
        arms={n: _arm_recent(by_arm[n], len(events)) for n in names},
        series=series(events, names, buckets),
        baselines=baselines or Baselines(computed_at=None, events=0, logged=None, policies={}),
    )


def settings_view(router: Router) -> SettingsView:
    s = router.settings
    return SettingsView(
        policy=str(router.model.spec),
        policy_params=effective_params(router.model.spec, s),
        epsilon=s.epsilon,
        linucb_alpha=s.linucb_alpha,
        reward_weights=s.reward_weights,
        latency_budget_ms=s.latency_budget_ms,
        cost_budget_usd=s.cost_budget_usd,
        arms=s.arms,
    )


async def build_stats(
    router: Router, cache: BaselineCache, window: int = 1000, buckets: int = 30
) -> StatsResponse:
    """The whole /stats document: totals, settings, and the newest ``window`` events."""
    base = await router.stats()
    rows = await router.store.recent_entries(window) if window else []
    baselines = await cache.get(rows, router.arms, window)
    # Decoding and summarising a big window take far longer than a /choose: off the event loop,
    # and the decoded events live only there (see offloop).
    recent = await off_loop(summarize_entries, rows, router.arms, buckets, baselines)
    challengers = await challengers_view(router.learner)
    return StatsResponse(
        **base, settings=settings_view(router), recent=recent, challengers=challengers
    )


def summarize_entries(
    rows: Sequence[Entry], arms: Sequence[Arm], buckets: int, baselines: Baselines
) -> Recent:
    return summarize(decode_entries(rows), arms, buckets, baselines)


Key = tuple[str, int, int]  # the deployment's key prefix, window, buckets


class StatsBusy(RouterError):
    """Too many documents for other deployments, windows and buckets are waiting to be
    computed."""

    status_code = 503
    field = "window"
    retry_after_s = 1

    def __init__(self) -> None:
        super().__init__(
            f"{QUEUED_DOCUMENTS} /stats computations for other deployments, windows and buckets "
            "are queued, the limit: retry, or ask for a window and buckets asked already"
        )


class StatsCache:
    """The /stats documents of one process, every deployment's, so that any number of clients
    cost a bounded amount of work: concurrent calls for the same deployment, window and buckets
    share one computation, and its result answers the same question for ``fresh_s`` seconds (or
    ``REUSE_FACTOR`` times as long as it took, if that is longer); one computation runs at a
    time, and the next starts no sooner than ``REUSE_FACTOR - 1`` times as long as the last
    took, after it. At most ``QUEUED_DOCUMENTS`` computations wait or run at once: another key
    is ``StatsBusy``. One cache per deployment would multiply these bounds by the deployments."""

    def __init__(self, fresh_s: float) -> None:
        self.fresh_s = fresh_s
        self._baselines: dict[str, BaselineCache] = {}  # by the deployment's key prefix
        # Per key: when computed, how long it took, the document and its JSON.
        self._done: OrderedDict[Key, tuple[float, float, StatsResponse, bytes]] = OrderedDict()
        self._running: dict[Key, asyncio.Task[tuple[StatsResponse, bytes]]] = {}
        self._one = asyncio.Lock()
        self._next = 0.0  # when the next computation may start (monotonic)
        self.computed = 0  # documents computed
        self._said = Throttle()  # the bound reached

    async def get(self, router: Router, window: int, buckets: int) -> StatsResponse:
        return (await self._get(router, window, buckets))[0]

    async def get_json(self, router: Router, window: int, buckets: int) -> bytes:
        """The document as JSON: a reused answer costs no serialising either."""
        return (await self._get(router, window, buckets))[1]

    async def _get(self, router: Router, window: int, buckets: int) -> tuple[StatsResponse, bytes]:
        key = (router.settings.key_prefix, window, buckets)
        done = self._done.get(key)
        if done is not None:
            at, took, doc, body = done
            if time.monotonic() - at < max(self.fresh_s, REUSE_FACTOR * took):
                return doc, body
        task = self._running.get(key)
        if task is None:
            if len(self._running) >= QUEUED_DOCUMENTS:
                self._say_busy()
                raise StatsBusy()
            task = self._running[key] = asyncio.create_task(self._compute(router, key))
            task.add_done_callback(partial(self._finished, key))
        # A client that goes away does not cancel the computation the others wait for.
        return await asyncio.shield(task)

    def _say_busy(self) -> None:
        """Say a /stats refused at the bound: at once, then at most every BUSY_SAID_EVERY_S."""
        due = self._said.due(BUSY_SAID_EVERY_S)
        if due is not None:
            more = f" ({due.count} more since the last said)" if due.count else ""
            log.warning(
                "/stats: %d computations for other deployments, windows and buckets wait or "
                "run, its bound: a request for yet another is answered 503%s",
                QUEUED_DOCUMENTS,
                more,
            )

    async def _compute(self, router: Router, key: Key) -> tuple[StatsResponse, bytes]:
        async with self._one:
            await asyncio.sleep(self._next - time.monotonic())
            began = time.monotonic()
            baselines = self._baselines.setdefault(key[0], BaselineCache())
            doc = await build_stats(router, baselines, key[1], key[2])
            body = doc.model_dump_json().encode()
            self.computed += 1
            at = time.monotonic()
            self._next = at + (REUSE_FACTOR - 1) * (at - began)
        self._done[key] = (at, at - began, doc, body)
        self._done.move_to_end(key)
        while len(self._done) > KEPT_DOCUMENTS:
            self._done.popitem(last=False)
        return doc, body

    def _finished(self, key: Key, task: asyncio.Task[tuple[StatsResponse, bytes]]) -> None:
        self._running.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone
