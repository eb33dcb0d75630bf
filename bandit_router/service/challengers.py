"""Champion and challengers: policies that learn the served traffic beside the champion, are
scored on it off-policy, and take its place when they clearly beat it.

The champion serves; each challenger (``BANDIT_CHALLENGERS``) learns every logged event the
champion learns, in the same order. Before it learns an event it gives its probability of the
logged arm (progressive validation, as ``offline.evaluate`` replays candidates), so each event
is scored by a model that has not seen it. Over the newest ``BANDIT_CHALLENGER_WINDOW`` scored
events, ``offline.estimators`` gives SNIPS and DR with 95% intervals from the logged
propensities; the champion's estimate is the mean logged reward of the same events (on-policy).
Each window keeps the sums those estimates are made of (``offline.moments``), updated as events
enter and leave it, so that a judgement costs the same whatever the window's size.
A challenger *clears* when it has at least ``BANDIT_PROMOTE_MIN_EVENTS`` events and both lower
bounds exceed the champion's estimate. A policy that a promotion replaced as champion must clear
more to serve again: both lower bounds above the champion's 95% interval (the mean logged
reward's), not only its estimate. Without it, two policies that both learned the best arm of
rewards that do not vary for a context and arm swapped places as soon as either might: each,
challenging, scores an interval of width about 0 at the best arm's reward, while the champion's
mean is lowered by its own exploration (and under a deterministic champion, propensity 1, the
estimates see only the events where a challenger agrees with it). ``Bench`` holds all of this
with no I/O: the learner (``service.learner``) and the replay simulator (``sim.champion``) drive
the same object.

Promotion swaps the champion's policy object for the challenger's, already trained: nothing is
relearned. The old champion becomes a challenger (a replaced one, as above: kept with the
challengers' state, forgotten by a reset), and every window restarts, so the next
promotion needs ``BANDIT_PROMOTE_MIN_EVENTS`` new events.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, ValidationError

from bandit_router.errors import RouterError
from bandit_router.features import Features
from bandit_router.offline.estimators import (
    Estimate,
    RewardModel,
    doubly_robust,
    ips,
    snips,
)
from bandit_router.offline.moments import COLUMNS, Moments
from bandit_router.policies.base import Arm, Policy, PolicySpec, shown
from bandit_router.policies.registry import (
    RunsAs,
    build_policy,
    load_policy,
    parse_policy_spec,
    runs_as,
)
from bandit_router.service.estimates import Interval
from bandit_router.settings import Settings
from bandit_router.store.records import MAX_TS, Event, is_stream_id, stream_id_key

if TYPE_CHECKING:
    from bandit_router.service.learner import Learner
    from bandit_router.store.repository import Store

log = logging.getLogger("bandit_router")

JUDGE_EVERY = 100  # scored events between judgements (estimates, promotion check)
# Per scored event (``COLUMNS`` of a row): the challenger's probability of the logged arm, the
# logged propensity and reward, the reward model's prediction for the logged arm, and DR's
# direct term: the row ``offline.moments`` sums.
SLACK = 1e-9  # a probability, or a sum of them times predictions, may round a little past 0 or 1
SYNC_EVERY = 1024  # rows a window holds back at most before they enter its ring and sums


class Window:
    """The newest ``size`` scored events of one challenger, a ring of rows of ``COLUMNS``, with
    their ``Moments``: the estimates' sums, updated as rows enter and leave the ring.

    Rows added are held back and enter the ring (and the sums) together, at the next read or
    every ``SYNC_EVERY`` rows: one vectorised update instead of one per row."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._rows: npt.NDArray[np.float64] = np.zeros((size, COLUMNS))
        self._next = 0
        self._held = 0  # rows in the ring
        self._pending: list[tuple[float, float, float, float, float]] = []
        self._moments = Moments()  # the sums of the rows in the ring, updated with them

    def add(self, row: tuple[float, float, float, float, float]) -> None:
        self._pending.append(row)
        if len(self._pending) >= SYNC_EVERY:
            self._sync()

    def _sync(self) -> None:
        if self._pending:
            rows = np.array(self._pending, dtype=np.float64)
            self._pending = []
            self._enter(rows)

    def _enter(self, rows: npt.NDArray[np.float64]) -> None:
        """Put ``rows`` (oldest first) into the ring, evicting the oldest rows to make room."""
        rows = rows[-self.size :]
        k = len(rows)
        evicted = max(0, self._held + k - self.size)
        oldest = (self._next - self._held) % self.size
        gone = self._rows[(oldest + np.arange(evicted)) % self.size]  # a copy
        self._moments.update(rows, gone)
        self._rows[(self._next + np.arange(k)) % self.size] = rows
        self._next = (self._next + k) % self.size
        self._held = min(self._held + k, self.size)

    def rows(self) -> npt.NDArray[np.float64]:
        """The rows, oldest first."""
        self._sync()
        if self._held < self.size:
            return self._rows[: self._held]
        return np.roll(self._rows, -self._next, axis=0)

    def moments(self) -> Moments:
        """The sums of ``rows()``."""
        self._sync()
        return self._moments

    def dumps(self) -> bytes:
        return self.rows().astype("<f8").tobytes()

    @classmethod
    def loads(cls, size: int, data: bytes) -> Window:
        """A window from ``dumps()``; ``ValueError`` for one the learner cannot have written (a
        value not finite, a propensity outside (0, 1], another outside [0, 1]): read, it broke
        every judgement and /stats (the estimators refuse such propensities), or scored on it."""
        values = np.frombuffer(data, dtype="<f8")
        if len(values) % COLUMNS:
            raise ValueError(f"a window of {len(values)} values is not rows of {COLUMNS}")
        rows = values.reshape(-1, COLUMNS)
        if not np.all(np.isfinite(rows)):
            raise ValueError("a window holds a value that is not finite")
        p = rows[:, 1]  # the logged propensities
        if np.any(p <= 0) or np.any(p > 1):
            raise ValueError("a window holds a propensity outside (0, 1]")
        if np.any(rows < -SLACK) or np.any(rows > 1 + SLACK):
            raise ValueError("a window holds a probability, reward or prediction outside [0, 1]")
        window = cls(size)
        window._enter(rows.astype(np.float64, copy=False))  # its sums computed afresh from the rows
        return window


@dataclass(frozen=True, slots=True)
class Standing:
    """One challenger's scores over its window."""

    policy: str
    events: int
    snips: Estimate
    dr: Estimate
    champion: Estimate  # the mean logged reward of the same events: the champion's value
    clears: bool

    @property
    def margin(self) -> float:
        """How far the lower of the two lower bounds is above the champion (NaN: unknown)."""
        return min(self.snips.low, self.dr.low) - self.champion.value


NAN = Estimate(math.nan, math.nan, math.nan, 0)


def standing(
    policy: str, rows: npt.NDArray[np.float64], min_events: int, replaced: bool = False
) -> Standing:
    """Score a window's rows with the offline estimators (the reference: ``scored`` gives the
    same from the window's sums). ``replaced``: the policy is a champion a promotion replaced,
    which clears only above the champion's interval."""
    n = len(rows)
    if n == 0:
        return Standing(policy, 0, NAN, NAN, NAN, False)
    t, p, r, q, dm = rows.T
    champion = ips(np.ones(n), np.ones(n), r)  # on-policy: the logged rewards' mean
    s, d = snips(t, p, r), doubly_robust(t, p, r, q, dm)
    return _judged(policy, n, s, d, champion, min_events, replaced)


def scored(policy: str, window: Window, min_events: int, replaced: bool = False) -> Standing:
    """``standing`` of the window's rows, from its sums: a cost that does not grow with it."""
    m = window.moments()
    if m.n == 0:
        return Standing(policy, 0, NAN, NAN, NAN, False)
    if not m.exact:  # a weight too large to sum, or all too small (Moments.exact)
        return standing(policy, window.rows(), min_events, replaced)
    return _judged(policy, m.n, m.snips(), m.doubly_robust(), m.on_policy(), min_events, replaced)


def _judged(
    policy: str,
    n: int,
    s: Estimate,
    d: Estimate,
    champion: Estimate,
    min_events: int,
    replaced: bool = False,
) -> Standing:
    bar = champion.high if replaced else champion.value
    clears = n >= min_events and s.low > bar and d.low > bar
    return Standing(policy, n, s, d, champion, bool(clears))


@dataclass(slots=True)
class Challenger:
    spec: PolicySpec
    policy: Policy
    window: Window
    clearing: bool = False  # at the last judgement: the log says when this changes


def pool(settings: Settings) -> list[str]:
    """Every policy that may serve or challenge: ``BANDIT_POLICY`` and ``BANDIT_CHALLENGERS``,
    each once (as first written)."""
    found: dict[RunsAs, str] = {}
    for text in [settings.policy, *settings.challengers]:
        spec = parse_policy_spec(text)
        found.setdefault(runs_as(spec, settings), str(spec))
    return list(found.values())


def in_pool(spec: PolicySpec, settings: Settings) -> bool:
    wanted = runs_as(spec, settings)
    return any(runs_as(parse_policy_spec(s), settings) == wanted for s in pool(settings))


class Bench:
    """The champion's challengers: their models, windows and the DR reward model; no I/O."""

    def __init__(
        self,
        champion: PolicySpec,
        specs: Sequence[PolicySpec],
        settings: Settings | None = None,
        seed: int | None = None,
        stream_id: str = "0-0",
    ) -> None:
        self.settings = settings
        self.seed = seed
        self.min_events = settings.promote_min_events if settings else 1000
        self.size = settings.challenger_window if settings else 10_000
        self.champion = champion
        self.challengers: dict[str, Challenger] = {}
        for spec in specs:
            if not self.same(spec, champion) and self.running(spec) is None:
                self.challengers[str(spec)] = self._fresh(spec)
        self.reward_model = RewardModel()
        self.stream_id = stream_id  # watermark: the newest logged event observed
        self._unjudged = 0
        self.replaced: list[PolicySpec] = []  # champions a promotion replaced, oldest first

    def same(self, a: PolicySpec, b: PolicySpec) -> bool:
        return runs_as(a, self.settings) == runs_as(b, self.settings)

    def running(self, spec: PolicySpec) -> str | None:
        """The name of the running challenger that is policy ``spec``, however written."""
        return next((s for s, c in self.challengers.items() if self.same(c.spec, spec)), None)

    def was_replaced(self, spec: PolicySpec) -> bool:
        """Whether a promotion replaced policy ``spec`` (however written) as champion."""
        return any(self.same(spec, r) for r in self.replaced)

    def _fresh(self, spec: PolicySpec) -> Challenger:
        return Challenger(spec, build_policy(spec, self.settings, self.seed), Window(self.size))

    # Scoring and learning

    def observe(
        self, x: Features, arms: Sequence[Arm], arm: str, probability: float, reward: float
    ) -> None:
        """Score every challenger on one logged decision, then let each learn it."""
        if not self.challengers:
            return
        rhat = self.reward_model.predict(x, [a.name for a in arms])
        q = rhat.get(arm, 0.5)
        for name, c in list(self.challengers.items()):
            try:
                pmf = c.policy.choose(x, arms).probabilities  # before it learns this event
                row = (pmf.get(arm, 0.0), probability, reward, q, _direct(pmf, rhat))
                c.policy.learn(x, arms, arm, probability, reward)
            except Exception:  # anything: its model is not the champion's
                self._drop(name)
                continue
            c.window.add(row)
        self.reward_model.learn(x, arm, reward)
        self._unjudged += 1

    def _drop(self, name: str) -> None:
        """Drop challenger ``name``, whose model cannot choose or learn (a state that loads but
        holds NaN, written by hand or by a bug): raised, it stopped the learner's step and so
        all learning. Its next snapshot leaves it out; it starts afresh at the next start."""
        log.exception("challenger %s dropped: its model cannot choose or learn", name)
        del self.challengers[name]

    def learn(
        self, event: Event, arms: Mapping[str, Arm], x: Features | None = None, late: bool = False
    ) -> bool:
        """Observe a logged event unless it is at or below the watermark, as ``Model.learn``."""
        if stream_id_key(event.stream_id) <= stream_id_key(self.stream_id):
            if not late:
                return False
        else:
            self.stream_id = event.stream_id
        if not self.challengers:
            return True
        d = event.decision
        eligible = [arms.get(n) or Arm(n) for n in d["arms"]]
        if x is None:
            x = Features.from_json(d["features"])
        self.observe(x, eligible, d["arm"], float(d["probability"]), float(event.reward["reward"]))
        return True

    # Judging and promoting

    def standings(self) -> list[Standing]:
        return [
            scored(s, c.window, self.min_events, self.was_replaced(c.spec))
            for s, c in self.challengers.items()
        ]

    @property
    def due(self) -> bool:
        return self._unjudged >= JUDGE_EVERY

    def judge(self) -> Standing | None:
        """Score every challenger, log when one starts or stops clearing, and return the one
        that clears by the widest margin (None: none clears)."""
        self._unjudged = 0
        found = self.standings()
        for s in found:
            c = self.challengers[s.policy]
            if s.clears != c.clearing:
                c.clearing = s.clears
                log.info(
                    "challenger %s %s champion %s: SNIPS %.4f [%.4f, %.4f], DR %.4f [%.4f, %.4f], "
                    "champion %.4f, over %d events",
                    s.policy,
                    "clears" if s.clears else "no longer clears",
                    self.champion,
                    s.snips.value,
                    s.snips.low,
                    s.snips.high,
                    s.dr.value,
                    s.dr.low,
                    s.dr.high,
                    s.champion.value,
                    s.events,
                )
        clearing = [s for s in found if s.clears]
        return max(clearing, key=lambda s: s.margin) if clearing else None

    def promote(
        self, spec: PolicySpec, champion: Policy, by: str, version: int
    ) -> tuple[Challenger, dict[str, Any]]:
        """Make challenger ``spec`` (however written) the champion: returns it (its trained
        policy serves from now on) and the promotion's record. ``champion`` (the serving
        policy) becomes a challenger, one a promotion replaced; every window restarts."""
        found = self.running(spec)
        if found is None:
            running = ", ".join(self.challengers) or "none"
            what = "is the champion" if self.same(spec, self.champion) else "is not a challenger"
            raise RouterError(
                f"policy {shown(str(spec))} {what}; running challengers: {running}",
                field="policy",
            )
        policy = found
        c = self.challengers[policy]
        scores = scored(policy, c.window, self.min_events, self.was_replaced(c.spec))
        record = {
            "ts": time.time(),
            "from_policy": str(self.champion),
            "to_policy": policy,
            "by": by,
            "events": scores.events,
            "model_version": version,
            "snips": scores.snips.to_json(),
            "dr": scores.dr.to_json(),
            "champion": scores.champion.to_json(),
        }
        promoted = self.challengers.pop(policy)
        if not self.was_replaced(self.champion):
            self.replaced.append(self.champion)
        self.set_champion(promoted.spec, champion, keep_old=True)
        log.info(
            "promoted challenger %s over %s (%s): SNIPS %s, DR %s, champion %s, %d events",
            policy,
            record["from_policy"],
            by,
            _fmt(scores.snips),
            _fmt(scores.dr),
            _fmt(scores.champion),
            scores.events,
        )
        return promoted, record

    def set_champion(self, spec: PolicySpec, old: Policy | None, keep_old: bool) -> None:
        """``spec`` serves from now on; the old champion (policy ``old``) becomes a challenger
        when ``keep_old``; a challenger of ``spec`` itself is dropped; every window restarts."""
        previous = self.champion
        self.champion = spec
        twin = self.running(spec)
        if twin is not None:
            del self.challengers[twin]
        if keep_old and old is not None and not self.same(previous, spec):
            self.challengers[str(previous)] = Challenger(previous, old, Window(self.size))
        self.restart_windows()

    def restart_windows(self) -> None:
        for c in self.challengers.values():
            c.window = Window(self.size)
            c.clearing = False
        self._unjudged = 0

    # Persistence: a hash written with the champion's snapshot (``Store.publish``)

    def fields(self, summary: bytes) -> dict[str, bytes]:
        meta = {
            "stream_id": self.stream_id,
            "champion": str(self.champion),
            "challengers": list(self.challengers),
            "clearing": [s for s, c in self.challengers.items() if c.clearing],
            "replaced": [str(r) for r in self.replaced],
        }
        out = {"meta": json.dumps(meta).encode(), "summary": summary}
        if self.challengers:
            out["reward_model"] = self.reward_model.dumps()
        for s, c in self.challengers.items():
            out[f"policy:{s}"] = c.policy.dumps()
            out[f"window:{s}"] = c.window.dumps()
        return out

    @classmethod
    def restore(
        cls,
        fields: Mapping[str, bytes],
        champion: PolicySpec,
        settings: Settings,
        stream_id: str,
    ) -> Bench:
        """The challengers of ``pool(settings)`` but ``champion``, from stored ``fields`` where
        they hold them, fresh where not. Its watermark is the stored one (the caller replays
        the log from there up to ``stream_id``, the champion's); fresh at ``stream_id`` when
        nothing usable is stored or the stored watermark is past it (the log was reset)."""
        specs = [parse_policy_spec(s) for s in pool(settings)]
        meta = _meta(fields.get("meta"))
        if meta is None or stream_id_key(meta["stream_id"]) > stream_id_key(stream_id):
            return cls(champion, specs, settings, settings.seed, stream_id)
        bench = cls(champion, [], settings, settings.seed, meta["stream_id"])
        for text in meta["replaced"]:
            try:
                bench.replaced.append(parse_policy_spec(text))
            except ValueError as e:
                log.warning("a replaced champion not restored (%s)", e)
        same = meta["champion"] == str(champion)  # windows score against this champion
        clearing = set(meta["clearing"])
        for spec in specs:
            name = str(spec)
            if bench.same(spec, champion):
                continue
            c = bench._fresh(spec)
            try:
                if f"policy:{name}" in fields:
                    c.policy = load_policy(spec, fields[f"policy:{name}"], settings, settings.seed)
                if same and f"window:{name}" in fields:
                    c.window = Window.loads(bench.size, fields[f"window:{name}"])
                    c.clearing = name in clearing
            except ValueError as e:
                log.warning("challenger %s not restored (%s): it starts afresh", name, e)
                c = bench._fresh(spec)
            bench.challengers[name] = c
        if "reward_model" in fields:
            try:
                bench.reward_model = RewardModel.loads(fields["reward_model"])
            except ValueError as e:
                log.warning("challengers' reward model not restored (%s)", e)
        return bench


def _direct(pmf: Mapping[str, float], rhat: Mapping[str, float]) -> float:
    """DR's direct term: the reward model's prediction under the challenger's probabilities."""
    return sum(pmf.get(a, 0.0) * v for a, v in rhat.items())


def _meta(raw: bytes | None) -> dict[str, Any] | None:
    """The stored state's ``meta`` as ``Bench.fields`` writes it, or None (nothing stored, or
    written by another hand: a value of another type, JSON nested too deep), so that the
    challengers start afresh rather than stop the learner's take-over, and the service's start."""
    try:
        meta = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(meta, dict):
        return None
    stored, champion = meta.get("stream_id"), meta.get("champion")
    clearing, replaced = meta.get("clearing", []), meta.get("replaced", [])
    if not isinstance(stored, str) or not is_stream_id(stored):
        return None
    for names in (clearing, replaced):
        if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
            return None
    return {
        "stream_id": stored,
        "champion": champion if isinstance(champion, str) else None,
        "clearing": clearing,
        "replaced": replaced,
    }


def _fmt(e: Estimate) -> str:
    return f"{e.value:.4f} [{e.low:.4f}, {e.high:.4f}]"


# What /stats, /metrics and the dashboard show


_INTERVAL = {"value": 0.74, "low": 0.72, "high": 0.76, "n": 4000}
_CHAMPION = {"value": 0.7, "low": 0.69, "high": 0.71, "n": 4000}
CHALLENGER_EXAMPLE = {
    "policy": "linucb",
    "events": 4000,
    "snips": _INTERVAL,
    "dr": _INTERVAL,
    "champion": _CHAMPION,
    "clears": True,
}
PROMOTION_EXAMPLE = {
    "ts": 1.7e9,
    "from_policy": "squarecb",
    "to_policy": "linucb",
    "by": "auto",
    "events": 4000,
    "model_version": 9000,
    "snips": _INTERVAL,
    "dr": _INTERVAL,
    "champion": _CHAMPION,
}

CHALLENGERS_EXAMPLE = {
    "champion": "squarecb",
    "auto_promote": False,
    "min_events": 1000,
    "window": 10000,
    "computed_at": 1.7e9,
    "challengers": [CHALLENGER_EXAMPLE],
    "promotions": [PROMOTION_EXAMPLE],
}


class ChallengerView(BaseModel):
    policy: str = Field(description="the challenger's policy spec", examples=["linucb"])
    events: int = Field(description="events it has been scored on (its window)", examples=[4000])
    snips: Interval = Field(description="SNIPS estimate of its mean reward, 95% interval")
    dr: Interval = Field(description="doubly robust estimate of its mean reward, 95% interval")
    champion: Interval = Field(
        description="the champion's estimate: the mean logged reward of the same events"
    )
    clears: bool = Field(
        description="at least BANDIT_PROMOTE_MIN_EVENTS events, and the SNIPS and DR lower "
        "bounds both above the champion's estimate (for a champion a promotion replaced, above "
        "the champion's interval)",
        examples=[False],
    )


class PromotionView(BaseModel):
    # Bounded: a record written by hand with a time no date holds is left out (_promotion_views),
    # not shown to `bandit-router status`, whose date of it raised.
    ts: float = Field(description="when, unix s", examples=[1.7e9], ge=0, le=MAX_TS)
    from_policy: str = Field(description="the champion replaced", examples=["squarecb"])
    to_policy: str = Field(description="the challenger promoted", examples=["linucb"])
    by: str = Field(description="`auto` (BANDIT_AUTO_PROMOTE) or `admin`", examples=["auto"])
    events: int = Field(description="events its estimates were computed on", examples=[4000])
    model_version: int = Field(description="events learned at the promotion", examples=[9000])
    snips: Interval = Field(description="the challenger's SNIPS estimate then")
    dr: Interval = Field(description="the challenger's DR estimate then")
    champion: Interval = Field(description="the champion's estimate then")


class ChallengersView(BaseModel):
    champion: str = Field(description="the policy serving", examples=["squarecb"])
    auto_promote: bool = Field(description="BANDIT_AUTO_PROMOTE", examples=[False])
    min_events: int = Field(description="BANDIT_PROMOTE_MIN_EVENTS", examples=[1000])
    window: int = Field(description="BANDIT_CHALLENGER_WINDOW", examples=[10000])
    computed_at: float | None = Field(
        description="when these scores were computed, unix s (live on the learner; on another "
        "process, as the learner last published them)",
        examples=[1.7e9],
    )
    challengers: list[ChallengerView] = Field(
        description="every running challenger", examples=[[CHALLENGER_EXAMPLE]]
    )
    promotions: list[PromotionView] = Field(
        description="every promotion recorded in Redis, oldest first (the newest 100)",
        examples=[[PROMOTION_EXAMPLE]],
    )


def view_of(s: Standing) -> ChallengerView:
    return ChallengerView(
        policy=s.policy,
        events=s.events,
        snips=Interval.of(s.snips),
        dr=Interval.of(s.dr),
        champion=Interval.of(s.champion),
        clears=s.clears,
    )


def summary(bench: Bench) -> bytes:
    """The standings as the learner publishes them for the other processes."""
    views = [view_of(s).model_dump() for s in bench.standings()]
    data = {"champion": str(bench.champion), "at": time.time(), "challengers": views}
    return json.dumps(data).encode()


async def challengers_view(learner: Learner, promotions: int = 100) -> ChallengersView:
    """Live from this process's learner when it leads, else the learner's last summary."""
    settings = learner.settings
    bench = learner.bench
    at: float | None
    if learner.leading and bench is not None:
        champion, at = str(bench.champion), time.time()
        found = [view_of(s) for s in bench.standings()]
    else:
        champion, at, found = str(learner.model.spec), None, []
        raw = await learner.store.challenger_field("summary")
        try:  # the learner's last summary; one written by hand is not read, not a 500
            data = json.loads(raw) if raw else {}
            views = [ChallengerView.model_validate(v) for v in data.get("challengers", [])]
            when = data.get("at")
            if when is not None and not _is_time(when):
                raise ValueError(f"at is not a time: {when!r:.40}")
            champion, at, found = str(data.get("champion", champion)), when, views
        except (ValueError, TypeError, AttributeError, RecursionError) as e:
            if learner.store.first_time("summary", raw):
                log.warning("the challengers' summary is not readable, left out: %.200s", e)
    return ChallengersView(
        champion=champion,
        auto_promote=settings.auto_promote,
        min_events=settings.promote_min_events,
        window=settings.challenger_window,
        computed_at=at,
        challengers=found,
        promotions=_promotion_views(learner.store, await learner.store.promotions(promotions)),
    )


def _is_time(value: Any) -> bool:
    """A time a date can hold (unix s, years 1970..9999), as the learner writes one."""
    return type(value) in (int, float) and 0 <= value <= MAX_TS


def _promotion_views(store: Store, records: list[dict[str, Any]]) -> list[PromotionView]:
    """The records as views; one whose fields do not fit (written by hand) is left out."""
    views = []
    for record in records:
        try:
            views.append(PromotionView.model_validate(record))
        except ValidationError:
            if store.first_time("promotion", repr(record)):
                log.warning("a promotion record does not fit, left out: %.80r", record)
    return views
