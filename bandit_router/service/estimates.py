"""The dashboard's off-policy estimates of the baselines, from ``evaluate``, cached.

``evaluate.estimate_policies`` replays each baseline (uniform random, the static rule, each arm
alone) over the logged events and gives IPS, SNIPS and doubly robust estimates with 95%
intervals. Replaying 1000 events takes about a second, too long for every ``/stats`` call of a
dashboard that polls every few seconds, so each process keeps the newest result and recomputes
it, in a thread, only when the log has new events and the result is older than ``max_age_s``
(or than ``REUSE_FACTOR`` times as long as it took to compute, if that is longer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from pydantic import BaseModel, Field

from bandit_router.offline.estimators import Estimate
from bandit_router.offline.evaluate import (
    baseline_specs,
    estimate_policies,
    logged_value,
    record_from_event,
)
from bandit_router.policies.base import Arm
from bandit_router.service.offloop import REUSE_FACTOR, off_loop
from bandit_router.store.records import Entry, Event, decode_entries

MAX_AGE_S = 30.0
# Events the estimates replay at most, the newest of the window: replaying takes about a
# millisecond an event, which the process spends in a thread but under the GIL, beside /choose.
MAX_EVENTS = 5000


class Interval(BaseModel):
    value: float | None = Field(description="the estimate; null when undefined", examples=[0.61])
    low: float | None = Field(description="lower end of its 95% interval", examples=[0.55])
    high: float | None = Field(description="upper end of its 95% interval", examples=[0.67])
    n: int = Field(description="events it is computed from", examples=[1000])

    @classmethod
    def of(cls, estimate: Estimate) -> Interval:
        return cls.model_validate(estimate.to_json())


class PolicyEstimates(BaseModel):
    ips: Interval = Field(description="inverse propensity scoring (unbiased, noisy)")
    snips: Interval = Field(description="self-normalised IPS (a little bias, less variance)")
    dr: Interval = Field(description="doubly robust: IPS corrected by a learned reward model")


class Baselines(BaseModel):
    computed_at: float | None = Field(
        description="when the estimates were computed, unix s (they are cached)",
        examples=[1.7e9],
    )
    events: int = Field(
        description="logged events they were computed from: the newest of the window, at most "
        f"{MAX_EVENTS}",
        examples=[1000],
    )
    logged: Interval | None = Field(
        description="the serving policy's own mean reward over those events, on-policy",
        examples=[{"value": 0.72, "low": 0.7, "high": 0.74, "n": 1000}],
    )
    policies: dict[str, PolicyEstimates] = Field(
        description="per baseline spec (`random`, `static`, `fixed:arm=NAME`): what it would "
        "have earned on the same traffic",
        examples=[
            {
                "static": {
                    "ips": {"value": 0.6, "low": 0.5, "high": 0.7, "n": 1000},
                    "snips": {"value": 0.6, "low": 0.55, "high": 0.65, "n": 1000},
                    "dr": {"value": 0.61, "low": 0.57, "high": 0.65, "n": 1000},
                }
            }
        ],
    )


EMPTY = Baselines(computed_at=None, events=0, logged=None, policies={})


def estimate(events: Sequence[Event], arms: Sequence[Arm]) -> Baselines:
    """Estimate every baseline over ``events`` (slow: run it in a thread)."""
    if not events:
        return EMPTY
    records = [record_from_event(event, arms) for event in events]
    results = estimate_policies(records, baseline_specs(arms))
    return Baselines(
        computed_at=time.time(),
        events=len(records),
        logged=Interval.of(logged_value(records)),
        policies={
            spec: PolicyEstimates(**{m: Interval.of(e) for m, e in methods.items()})
            for spec, methods in results.items()
        },
    )


def estimate_entries(rows: Sequence[Entry], arms: Sequence[Arm]) -> Baselines:
    """``estimate`` of the readable events among the log entries ``rows`` (slow: in a thread)."""
    return estimate([e for e in decode_entries(rows) if isinstance(e, Event)], arms)


class BaselineCache:
    """The newest estimates of one process, keyed by the window and the log's newest event."""

    def __init__(self, max_age_s: float = MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self._key: tuple[int, str] | None = None
        self._value = EMPTY
        self._at = 0.0
        self._took = 0.0  # seconds the newest result took to compute
        self._lock = asyncio.Lock()

    async def get(self, rows: Sequence[Entry], arms: Sequence[Arm], window: int) -> Baselines:
        """The estimates over the log entries ``rows`` (the newest ``window``), or the newest
        ones while they are fresh or being computed."""
        key = (window, rows[-1][0].decode() if rows else "0-0")
        max_age = max(self.max_age_s, REUSE_FACTOR * self._took)
        fresh = time.monotonic() - self._at < max_age and self._key is not None
        if key == self._key or (fresh and self._key is not None and self._key[0] == window):
            return self._value
        if self._lock.locked() and self._key is not None:
            return self._value  # someone is computing: serve the previous result meanwhile
        async with self._lock:
            began = time.monotonic()
            self._value = await off_loop(estimate_entries, rows[-MAX_EVENTS:], arms)
            self._key, self._at = key, time.monotonic()
            self._took = self._at - began
        return self._value
