"""Router: the request loop (extract, choose, store; parts, combine, log, learn)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from bandit_router.deployments import setting_named
from bandit_router.errors import (
    AlreadyRewarded,
    ArmsConflict,
    InvalidArm,
    InvalidReward,
    RouterError,
    StoreDamaged,
    StoreUnavailable,
    UnknownEvent,
    UnreadableEvent,
)
from bandit_router.features import AppValue, WordKey, extract
from bandit_router.policies.base import Arm
from bandit_router.policies.registry import parse_policy_spec, runs_as
from bandit_router.rewards import PART_FIELDS, RewardConfig, RewardParts
from bandit_router.service.journal import Journal
from bandit_router.service.learner import BATCH, Learner, Model, load_model, restore, wait_or_stop
from bandit_router.service.metrics import Metrics
from bandit_router.settings import Settings, check_weights
from bandit_router.store.keys import KEY_WORD_SECRET
from bandit_router.store.records import dumps, stream_id_key
from bandit_router.store.repository import Store

log = logging.getLogger("bandit_router")
# After this process last found Redis unavailable, how long a reward for an event Redis does not
# know is answered 503 (retry), not 404: every process writes what it buffered within about a
# second of Redis's return (the background flush), and its background jobs meet an outage of a
# few seconds even without traffic.
BUFFER_GRACE_S = 10.0
SWEEP_BATCH = 500  # ended windows read from Redis at a time by a sweep
SWEEP_BATCHES = 100  # at most this many a sweep; the next sweep goes on from there
# Windows closed at once: their finalize calls share a round trip (Redis runs them back to back,
# so not hundreds), and a leading learner's read after it takes all their events.
CLOSED_TOGETHER = BATCH


@dataclass(frozen=True, slots=True)
class ChooseResult:
    event_id: str
    arm: str
    probability: float
    probabilities: dict[str, float]
    policy: str
    model_version: int
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class RewardResult:
    event_id: str
    arm: str
    status: str  # "pending": waiting for more parts; "final": logged for learning
    reward: float | None
    parts: dict[str, float]
    duplicates: list[str] = field(default_factory=list)
    model_version: int = 0


def result_fields(result: ChooseResult | RewardResult) -> dict[str, Any]:
    """A result as the JSON object ``/choose`` and ``/reward`` answer with."""
    return {name: getattr(result, name) for name in result.__slots__}


def new_event_id() -> str:
    """``uuid.uuid4().hex``, bit for bit, without building a ``UUID``."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # the RFC 4122 variant
    return b.hex()


def reward_config(settings: Settings) -> RewardConfig:
    return RewardConfig(
        settings.reward_weights, settings.latency_budget_ms, settings.cost_budget_usd
    )


async def word_key(settings: Settings, store: Store) -> WordKey:
    """The deployment's key for hashing query words: ``BANDIT_HASH_KEY``, else its Redis secret."""
    return WordKey(settings.hash_key or await store.word_secret())


class Finalized(NamedTuple):
    """An event's reward as logged, and whether this call logged it (else a concurrent one)."""

    reward: float
    parts: dict[str, float]
    here: bool


class Router:
    """Serves decisions from this process's model and turns reward parts into logged events."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        learner: Learner,
        words: WordKey,
        secret: str | None = None,
        deployment: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.learner = learner
        self.words = words  # hashes the query's words; the same in every process of a deployment
        self._secret = secret  # the Redis word secret ``words`` comes from (not BANDIT_HASH_KEY)
        self._secret_differs = False  # Redis holds another: said once
        self._policies_seen: set[str] = set()  # the learner's snapshots' policies: see refresh
        self.deployment = deployment  # its name, as messages say it (None: default)
        self._expired_at_window_end = 0  # in the sweep running: see sweep
        self.arms = [Arm.from_spec(a) for a in settings.arms]
        self._arms_by_name = {a.name: a for a in self.arms}
        self.rewards = reward_config(settings)
        self._weighted = _weighted(settings.reward_weights)
        # Gateway events may carry reward weights of their own (a request's preference) that only
        # their decision knows: with upstreams configured, parts are combined once it is read.
        self.event_weights = any(arm.upstream is not None for arm in settings.arms)
        self._buffer: OrderedDict[str, dict[str, Any]] = OrderedDict()  # decisions Redis missed
        self._buffer_sizes: dict[str, int] = {}  # their size as JSON
        self.buffered_bytes = 0
        self.journal = journal_for(settings)  # the buffer's copy on disk, if any
        self._unjournalled: set[str] = set()  # buffered decisions the journal could not take
        self.unavailable_at = -math.inf  # monotonic time this process last found Redis down
        self._flushing = asyncio.Lock()
        self.buffer_dropped = 0
        self._full_said = False  # the buffer's bound was reached, said; again once it empties
        self.metrics = Metrics([a.name for a in self.arms], str(learner.model.spec))
        learner.on_learned = self.metrics.learned
        learner.on_redis_error = self.metrics.redis_error
        learner.on_promoted = self.metrics.promoted

    @classmethod
    async def open(
        cls,
        settings: Settings,
        store: Store,
        where: str = "",
        name: str | None = None,
        stopping: asyncio.Event | None = None,
    ) -> Router:
        """Restore the newest snapshot plus the log after it; take the learner lease if free.
        ``where``: whose lines the learner and the background jobs say (``Outage.where``);
        ``name``: the deployment's; ``stopping``: set, the replay of the log stops
        (``load_model``), and the learner's replays under the lease (``Learner.stopping``)."""
        with contextlib.suppress(StoreUnavailable):  # else the host's clock until a sweep reads it
            await store.read_clock()
        model = await load_model(store, settings, deployment=name, stop=stopping, where=where)
        learner = Learner(settings, store, model, stopping)
        learner.outage.where = where
        if settings.hash_key:
            secret, words = None, WordKey(settings.hash_key)
            await _say_if_a_secret_differs(store, settings.hash_key)
        else:  # the deployment's secret in Redis, which this process keeps there
            made = secrets.token_hex(32)
            secret = await store.keep_word_secret(made)
            words = WordKey(secret)
            if secret == made and learner.model.version:
                # A model that learned words under another key (BANDIT_HASH_KEY unset since, or a
                # secret Redis lost) sees its word features no more: said, as nothing else does.
                log.warning(
                    "no word secret was in Redis (%s), so this process made one, but the model "
                    "has learned %d events: their query words were hashed with another key "
                    "(BANDIT_HASH_KEY, unset since, or a secret Redis lost), so its word "
                    "features are learned afresh; to keep them, set BANDIT_HASH_KEY as it was "
                    "and restart every process",
                    store.key(KEY_WORD_SECRET),
                    learner.model.version,
                )
        router = cls(settings, store, learner, words, secret, name)
        if settings.learn_in_workers:
            # A lease or log key of another type (said in the log), or a Redis that refuses
            # writes: serve anyway, and let the learner's loop try again, rather than fail the
            # start of every process.
            with contextlib.suppress(StoreDamaged, StoreUnavailable):
                await learner.lead()
        with contextlib.suppress(StoreUnavailable):  # before the first reward for one comes
            await router.flush()  # the decisions of gone processes' journals
        return router

    @property
    def model(self) -> Model:
        return self.learner.model

    @property
    def version(self) -> int:
        return self.learner.model.version

    # Choosing

    def eligible(self, names: Sequence[str] | None) -> list[Arm]:
        if names is None:
            return self.arms
        unknown = [n for n in names if n not in self._arms_by_name]
        if unknown or not names:
            raise InvalidArm(unknown[0] if unknown else "", [a.name for a in self.arms])
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
        weights: Mapping[str, float] | None = None,
        direct: bool = False,
    ) -> ChooseResult:
        """Choose among ``arms`` (default: all). ``weights``: this event's own reward weights;
        ``direct``: the caller named the arm (one eligible arm, probability 1), so the record
        says it was not the policy's choice."""
        self._check_request(query, features)
        eligible = self.eligible(arms)
        if event_id is not None and event_id in self._buffer:
            return _choose_result(self._same_arms(self._buffer[event_id], arms), degraded=True)
        try:
            x = extract(query, features, self.words)
        except ValueError as e:
            raise RouterError(str(e), field="features") from e
        model = self.model
        decision = model.policy.choose(x, eligible)
        record: dict[str, Any] = {
            "event_id": event_id or new_event_id(),
            "features": x.to_json(),
            "arms": [a.name for a in eligible],
            "arm": decision.arm,
            "probability": decision.probability,
            "probabilities": dict(decision.probabilities),
            "policy": str(model.spec),
            "model_version": model.version,
            "ts": self.store.clock.now(),  # Redis's clock: other processes judge its window
        }
        if self.settings.store_query_text:
            record["query"] = query
        if weights is not None:
            record["weights"] = dict(weights)
        if direct:
            record["direct"] = True
        try:
            existing = await self._save(record)
        except StoreUnavailable:
            self.unavailable_at = time.monotonic()
            kept = self._buffer.get(record["event_id"])
            if kept is not None:  # a repeat of this id kept its decision while this one waited
                return _choose_result(self._same_arms(kept, arms), degraded=True)
            self._keep(record)
            self.metrics.decided(decision.arm, record["policy"], record["probabilities"])
            self.metrics.degraded.set(1)
            self.metrics.redis_error("choose")
            return _choose_result(record, degraded=True)
        if existing is None:
            self.metrics.decided(decision.arm, record["policy"], record["probabilities"])
            self.learner.chosen(record["event_id"], record["ts"], x)
            return _choose_result(record)
        return _choose_result(self._same_arms(existing, arms))

    def _same_arms(
        self, decided: Mapping[str, Any], arms: Sequence[str] | None
    ) -> Mapping[str, Any]:
        """``decided``, the decision already made under a repeated event_id, unless this request
        asks for other arms than it was made over (``arms`` None: any)."""
        if arms is not None and set(arms) != set(decided["arms"]):
            raise ArmsConflict(decided["event_id"], decided["arms"], list(dict.fromkeys(arms)))
        return decided

    async def _save(self, record: dict[str, Any]) -> dict[str, Any] | None:
        return await self.store.save_decision(record["event_id"], record)

    def _keep(self, record: dict[str, Any]) -> None:
        """Hold a decision Redis could not take, within the bounds the settings give."""
        encoded = dumps(record)
        size = len(encoded)
        count, room = self.settings.decision_buffer, self.settings.decision_buffer_bytes
        while len(self._buffer) >= count or self.buffered_bytes + size > room:
            if count and size <= room:  # else no buffer, or this decision alone is too big
                self._say_full()
            if self.settings.buffer_overflow == "reject" or count == 0 or size > room:
                raise StoreUnavailable(
                    "the local decision buffer is full (BANDIT_DECISION_BUFFER, "
                    "BANDIT_DECISION_BUFFER_BYTES)"
                )
            self._let_go(next(iter(self._buffer)))
            self.buffer_dropped += 1
        self._buffer[record["event_id"]] = record
        self._buffer_sizes[record["event_id"]] = size
        self.buffered_bytes += size
        if self.journal is not None:
            if not self.journal.append(encoded):
                self._unjournalled.add(record["event_id"])
            if self.journal.size > 2 * (self.buffered_bytes + len(self._buffer)):
                # mostly lines of decisions the full buffer let go: the disk, and the Redis of
                # the process that writes the journal once this one is gone, are bounded too
                self._journal_only_buffer()

    def _say_full(self) -> None:
        """Say the buffer's bound reached, once until the buffer is written: each request past
        it would otherwise be a 503 or a decision dropped that only a counter, written once
        Redis is back, tells of."""
        if self._full_said:
            return
        self._full_said = True
        drops = self.settings.buffer_overflow == "drop_oldest"
        log.warning(
            "%sthe local decision buffer is full (%d decisions, %d bytes; BANDIT_DECISION_BUFFER "
            "%d, BANDIT_DECISION_BUFFER_BYTES %d) while Redis is unavailable: %s, until Redis "
            "takes them",
            self.learner.outage.where,  # the deployment, where a process serves several
            len(self._buffer),
            self.buffered_bytes,
            self.settings.decision_buffer,
            self.settings.decision_buffer_bytes,
            "the oldest decisions are dropped (counted in decisions_dropped)"
            if drops
            else "each further /choose is answered 503 (BANDIT_BUFFER_OVERFLOW=reject)",
        )

    def _journal_only_buffer(self) -> None:
        """Rewrite the journal to what the buffer holds, all of it when that succeeds."""
        if self.journal is not None and self.journal.keep_only(self._buffer.values()):
            self._unjournalled.clear()

    def _let_go(self, event_id: str) -> None:
        del self._buffer[event_id]
        self.buffered_bytes -= self._buffer_sizes.pop(event_id)
        self._unjournalled.discard(event_id)

    async def flush(self) -> int:
        """Write buffered decisions to Redis, oldest first, after those of gone processes'
        journals; stops at the first failure.

        One flush at a time (the background one and rewards for buffered decisions may all
        ask at once); a decision the full buffer let go meanwhile is written anyway.
        """
        written = 0
        async with self._flushing:
            await self._write_orphans()
            try:
                while self._buffer:
                    event_id, record = next(iter(self._buffer.items()))
                    await self._save_once(record)
                    if event_id in self._buffer:  # else the full buffer let it go meanwhile
                        self._let_go(event_id)
                    written += 1
            finally:
                if written:
                    self._journal_only_buffer()
            if dropped := self.buffer_dropped:  # more may be dropped while this is counted
                await self.store.count("decisions_dropped", dropped)
                self.buffer_dropped -= dropped
        if not self._buffer:
            self._full_said = False
        self.metrics.degraded.set(1 if self._buffer else 0)  # one may have come meanwhile
        return written

    async def _save_once(self, record: dict[str, Any]) -> None:
        with contextlib.suppress(UnreadableEvent, AlreadyRewarded):  # its id is taken
            await self._save(record)

    async def _write_orphans(self) -> None:
        """Write the decisions a process of this deployment journalled before it stopped or
        died with Redis down; each journal is deleted once all of its decisions are in."""
        if self.journal is None:
            return
        for orphan in self.journal.orphans():
            count, stale = 0, 0
            # A decision older than its keys' lifetime can take no reward any more, and may
            # have been written and learned, its keys since expired: written again, its window
            # would close anew (learning the default reward a second time, if one is set).
            oldest = self.store.clock.now() - self.store.ttl_s
            for record in orphan.records():
                if record["ts"] < oldest:
                    stale += 1
                    continue
                await self._save_once(record)
                count += 1
            orphan.done()
            log.warning(
                "wrote %d decisions from %s, kept by a process that stopped while Redis was "
                "unavailable%s",
                count,
                orphan.path,
                f"; {stale} older than their keys' lifetime were let go" if stale else "",
            )

    # Rewards

    async def reward(self, event_id: str, parts: RewardParts, final: bool = False) -> RewardResult:
        """Keep the parts; learn the event once it is complete, or now with ``final``.

        An event Redis does not know is ``UnknownEvent`` (404), except within ``BUFFER_GRACE_S``
        of this process last finding Redis unavailable: another process may still be writing
        the decision it buffered meanwhile, so the answer is ``StoreUnavailable`` (503: retry)."""
        try:
            return await self._reward(event_id, parts, final)
        except StoreUnavailable:
            self.unavailable_at = time.monotonic()
            raise
        except UnknownEvent as e:
            if time.monotonic() - self.unavailable_at < BUFFER_GRACE_S:
                raise StoreUnavailable(
                    f"{e}; Redis was unavailable moments ago, so another process may still be "
                    "writing a decision it kept meanwhile"
                ) from e
            raise

    async def _reward(self, event_id: str, parts: RewardParts, final: bool) -> RewardResult:
        present = parts.present()
        own = None
        if not self.event_weights or "reward" in present:  # else the event's weights decide
            own = self._combine(present) if present or not final else None  # no weighted part: 422
        if event_id in self._buffer:
            await self.flush()  # its decision must be in Redis before a part can join it
        if own is None and present and not present.keys() & self._weighted:
            # parts the deployment does not weigh: does the event's own weighting? (422 if not)
            await self._weighs_some(event_id, present)
        alone = None
        if own is not None and (final or "reward" in present or self._weighted <= present.keys()):
            # Final by itself: if no other part came before, logged in the same round trip.
            now = self.store.clock.now()
            alone = {"parts": present, "reward": own, "ts": now, "default": False}
        got = await self.store.add_parts(event_id, present, alone)
        decision, merged = got.decision, got.parts
        weights = own_weights(decision)  # read once: it warns of an unusable record
        value: float | None = None
        logged_here = got.logged is not None
        if logged_here:
            value = own
        elif final or self._complete(decision, merged, weights):
            if not merged and self.settings.default_reward is None:
                self._combine(merged, weights)  # nothing to learn from: 422 naming the parts
            value, merged, logged_here = await self._finalize(event_id, merged, weights)
        if value is not None and self.learner.leading:
            # the learner is here: learned before we answer (stored, whatever the learner meets)
            await self.learner.catch_up_stored(got.logged)
        # The reward's value is observed once an event, by the call that logged it: others that
        # completed it at the same moment answer the same value, not another observation.
        self.metrics.rewarded(decision["arm"], value if logged_here else None)
        return RewardResult(
            event_id=event_id,
            arm=decision["arm"],
            status="pending" if value is None else "final",
            reward=value,
            parts=merged,
            duplicates=got.duplicates,
            model_version=self.version,
        )

    async def _weighs_some(self, event_id: str, present: Mapping[str, float]) -> None:
        """``InvalidReward`` unless the event's weights count one of the ``present`` parts;
        ``UnknownEvent`` if it is gone. A read the usual reward (a part the deployment weighs)
        does without."""
        decision = await self.store.decision(event_id)
        if decision is None:
            raise UnknownEvent(event_id)
        self._combine(present, own_weights(decision))

    def _complete(
        self,
        decision: Mapping[str, Any],
        parts: Mapping[str, float],
        weights: Mapping[str, float] | None,
    ) -> bool:
        """Whether every part ``weights`` (the event's own, or None: the deployment's) counts has
        arrived, or a direct reward, or the event's window has closed."""
        weighted = self._weighted if weights is None else _weighted(weights)
        if "reward" in parts or weighted <= parts.keys():
            return True
        return self.store.clock.now() >= float(decision["ts"]) + self.settings.reward_wait_s

    def _combine(
        self, parts: Mapping[str, float], weights: Mapping[str, float] | None = None
    ) -> float:
        config = self.rewards
        if weights is not None:
            config = RewardConfig(weights, config.latency_budget_ms, config.cost_budget_usd)
        try:
            return config.combine(RewardParts.from_mapping(parts))
        except ValueError as e:  # no weighted part: ``reward`` is always one, the message lists all
            raise InvalidReward(str(e), field="reward") from e

    def _value(
        self, parts: Mapping[str, float], weights: Mapping[str, float] | None, window_end: bool
    ) -> tuple[float, bool]:
        """The reward ``parts`` make, and whether it is the default: with no part, or at the
        window's end none its weights count (parts the weights in force since left out, a
        gateway preference counting a part never sent), when a default reward is set."""
        default = self.settings.default_reward
        if not parts:
            return float(default or 0.0), True
        try:
            return self._combine(parts, weights), False
        except InvalidReward:
            if not window_end or default is None:
                raise
            return float(default), True

    async def _finalize(
        self,
        event_id: str,
        parts: dict[str, float],
        weights: Mapping[str, float] | None = None,
        window_end: bool = False,
    ) -> Finalized:
        """Log the event with the reward of every part present; retry if parts arrive meanwhile.
        Returns the reward and parts logged: when a concurrent call (or a sweep) logged the event
        first, with every part stored before it (so ours), the ones it logged, which may count
        parts that came after ours were read. ``window_end``: the sweep closes it."""
        while True:
            value, default = self._value(parts, weights, window_end)
            now = self.store.clock.now()
            reward = {"parts": parts, "reward": value, "ts": now, "default": default}
            try:
                if await self.store.finalize(event_id, len(parts), reward) is not None:
                    return Finalized(value, parts, here=True)
            except AlreadyRewarded as e:
                if e.logged is None:  # a done marker from before it kept the reward
                    return Finalized(value, parts, here=False)
                return Finalized(float(e.logged["reward"]), dict(e.logged["parts"]), here=False)
            parts = await self.store.parts_of(event_id)

    async def sweep(self, now: float | None = None) -> int:
        """Close every ended reward window: learn the parts present, or the default reward.

        Ended windows come a batch at a time. Those with no part are let go in one round trip
        (unless a default reward is set); the others' parts are read in one, and they are
        closed ``CLOSED_TOGETHER`` at a time. A sweep goes on while batches come back full.
        """
        if now is None:  # Redis's clock, read anew: the one every process's decisions are on
            now = await self.store.read_clock()
        closed = 0
        self._expired_at_window_end = 0
        for _ in range(SWEEP_BATCHES):
            due = await self.store.due(now, SWEEP_BATCH)
            to_close = due
            if self.settings.default_reward is None:
                to_close = await self.store.skip_silent(due)  # the others: nothing to learn
            parts_of = await self.store.parts_of_many(to_close)
            weights_of: list[Mapping[str, float] | None] = [None] * len(to_close)
            if self.event_weights:
                decisions = await self.store.decisions_of_many(to_close)
                weights_of = [own_weights(d) if d else None for d in decisions]
            windows = list(zip(to_close, parts_of, weights_of, strict=True))
            for i in range(0, len(windows), CLOSED_TOGETHER):
                done = await asyncio.gather(
                    *(self._close(e, p, w) for e, p, w in windows[i : i + CLOSED_TOGETHER]),
                    return_exceptions=True,
                )
                for result in done:
                    if isinstance(result, BaseException):
                        raise result  # Redis failed: the next sweep takes these windows again
                    closed += result
            if len(due) < SWEEP_BATCH:
                break
        if self._expired_at_window_end:  # one line a sweep: an outage can leave thousands
            log.warning(
                "%d events not learned at their window's end: their decisions expired first "
                "(no sweep ran for max(BANDIT_REWARD_WAIT_S, 600) s after the windows closed); "
                "counted in skipped_no_reward",
                self._expired_at_window_end,
            )
        return closed

    async def _close(
        self,
        event_id: str,
        parts: dict[str, float] | None,
        weights: Mapping[str, float] | None = None,
    ) -> int:
        """Learn one ended window's parts, or the default reward; 1 if it was learned. ``parts``
        None: its parts key is not a hash (the store said so), so the window is let go."""
        if parts is None:
            await self.store.drop_pending(event_id)
            return 0
        if not parts and self.settings.default_reward is None:  # they expired meanwhile
            await self.store.drop_pending(event_id)
            return 0
        try:
            await self._finalize(event_id, parts, weights, window_end=True)
        except InvalidReward:  # no part its weights count (a gateway event's own weights, say a
            # rating the app never sent) and no default reward: nothing to learn, as for an
            # event with no part at all; counted, not said in the log, which a client could fill
            # a line per call
            await self.store.drop_pending(event_id)
            return 0
        except UnknownEvent:  # its decision expired: nothing to learn with
            if await self.store.drop_pending(event_id):  # else another sweep counted it
                self._expired_at_window_end += 1
            return 0
        except UnreadableEvent:  # the store said so in the log
            await self.store.drop_pending(event_id)
            return 0
        return 1

    # Background work and stats

    async def run(self, stop: asyncio.Event) -> None:
        """The periodic work of a service process: learn or follow, sweep, flush the buffer."""
        tasks = [
            self._every(stop, self.settings.model_refresh_s, "refresh", self.refresh),
            self._every(stop, self.settings.model_refresh_s, "word_secret", self.keep_word_secret),
            self._every(stop, self.settings.sweep_s, "sweep", self.sweep),
            self._every(stop, 1.0, "flush", self._flush_if_any),
        ]
        if self.settings.learn_in_workers:
            tasks.append(self.learner.run(stop))
        if self.journal is not None:
            # a job of its own: a flush waits on a Redis that does not answer, for its timeouts
            tasks.append(self._every(stop, 1.0, "journal sync", self._sync_journal))
        await asyncio.gather(*tasks)

    async def _sync_journal(self) -> None:
        """Sync the journal; one deleted under the process is written again with what the
        buffer holds first, so that a stop before Redis returns does not lose it."""
        if self.journal is None:
            return
        if self._buffer and self.journal.deleted():
            log.warning(
                "the decision journal %s was deleted while this process held it (by hand, or a "
                "cleaner of BANDIT_BUFFER_DIR): written again with the %d decisions buffered",
                self.journal.path,
                len(self._buffer),
            )
            self._journal_only_buffer()
        await self.journal.sync()

    async def _flush_if_any(self) -> int:
        if self._buffer or self.journal is not None:  # a journal: gone processes' may wait
            return await self.flush()
        return 0

    async def _every(
        self,
        stop: asyncio.Event,
        seconds: float,
        name: str,
        job: Callable[[], Awaitable[object]],
    ) -> None:
        while not stop.is_set():
            try:
                await job()
                self.learner.outage.reached(name)
            except StoreUnavailable as e:
                self.unavailable_at = time.monotonic()
                self.metrics.redis_error(name)
                self.learner.outage.failed(name, e)
            except StoreDamaged:  # the store said so in the log, once: no traceback each period
                self.metrics.redis_error(name)
            except Exception:  # a background job must not die silently; it retries next period
                log.exception("%s failed", name)
            await wait_or_stop(stop, seconds)

    async def refresh(self) -> bool:
        """A follower loads a newer snapshot (or a switched policy) published by the learner."""
        if self.learner.leading:
            return False
        model = self.model
        head = await self.store.snapshot_head()  # without the model bytes: cheap to poll
        if head is None:
            return False
        policy, version, stream_id = head
        newer = (stream_id_key(stream_id), version) > (
            stream_id_key(model.stream_id),
            model.version,
        )
        if not newer and policy == str(model.spec):
            return False
        snapshot = await self.store.load_snapshot()
        if snapshot is None or self.learner.leading:
            return False
        self.learner.model = restore(snapshot, parse_policy_spec(snapshot.policy), self.settings)
        await self._say_if_another_policy(snapshot.policy)
        return True

    async def _say_if_another_policy(self, policy: str) -> None:
        """Said once per policy: the learner publishes ``policy``, which this process serves
        from now on, though no admin switch or promotion set it (no policy override in Redis)
        and this process's BANDIT_POLICY is another. The learner, a ``bandit-router learn`` or
        another process, was started with another BANDIT_POLICY (as during a rolling restart
        that changes it): this process's setting is not served, and nothing else says so."""
        if policy in self._policies_seen:
            return
        own = parse_policy_spec(self.settings.policy)
        with contextlib.suppress(ValueError):  # one refused since: restore() said it
            if runs_as(parse_policy_spec(policy), self.settings) == runs_as(own, self.settings):
                self._policies_seen.add(policy)
                return
        overridden = await self.store.policy_override()  # for every process: load_model says it
        self._policies_seen.add(policy)
        if overridden:
            return
        setting = setting_named(self.deployment, "BANDIT_POLICY", "policy")
        log.warning(
            "serving policy %s, the learner's, not this process's policy %s (%s): the learner "
            "(bandit-router learn, or the process holding the lease) runs with another; give "
            "every process of the deployment the same",
            policy,
            own,
            setting,
        )

    async def keep_word_secret(self) -> bool:
        """Put the word secret this process hashes words with back in Redis if it is gone (a
        Redis restarted without persistence, the key deleted): else the next process to start
        would make another, and the deployment's processes would hash query words two ways.
        False, said once, when Redis holds another secret."""
        if self._secret is None:
            return True
        if await self.store.keep_word_secret(self._secret) == self._secret:
            return True
        if not self._secret_differs:
            self._secret_differs = True
            log.error(
                "the word secret in Redis is not the one this process hashes query words with: "
                "Redis lost it (restarted without persistence, or the key was deleted) and a "
                "process started since made another; until the processes started before are "
                "restarted, the deployment hashes words two ways (BANDIT_HASH_KEY avoids it)"
            )
        return False

    async def close(self) -> None:
        """Write what the buffer holds if Redis allows, publish the model, release the lease.

        With Redis still down the buffer stays in the journal for another process, said in the
        log; without a journal it dies with the process: the log says it is a loss, with how
        many, and how many the full buffer had dropped (not yet in ``decisions_dropped``)."""
        try:
            await self.flush()
        except StoreUnavailable as e:
            dropped = (
                f"; {self.buffer_dropped} more were dropped by the full buffer (not counted in "
                "decisions_dropped)"
                if self.buffer_dropped
                else ""
            )
            kept = None if self.journal is None else self.journal.release()
            lost = len(self._unjournalled)
            if kept is not None:
                said = log.error if lost else log.warning
                said(
                    "%d decisions answered with degraded=true are kept in %s: Redis was "
                    "unavailable until the process stopped (%s); the next process of this "
                    "deployment to reach Redis writes them%s%s",
                    len(self._buffer) - lost,
                    kept,
                    e,
                    f"; {lost} more, which the journal could not take, are lost, and rewards "
                    "for them will be refused as unknown (404)"
                    if lost
                    else "",
                    dropped,
                )
            else:
                log.error(
                    "%d decisions answered with degraded=true are lost: Redis was unavailable "
                    "until the process stopped (%s), and rewards for them will be refused as "
                    "unknown (404)%s",
                    len(self._buffer),
                    e,
                    dropped,
                )
        if self.journal is not None:
            self.journal.release()
        await self.learner.close()

    async def stats(self) -> dict[str, Any]:
        counters = await self.store.counters()
        per_arm: dict[str, dict[str, Any]] = {}
        for arm in self.arms:
            rewards = counters.get(f"rewards:{arm.name}", 0.0)
            total = counters.get(f"reward_sum:{arm.name}", 0.0)
            per_arm[arm.name] = {
                "decisions": int(counters.get(f"decisions:{arm.name}", 0)),
                "rewards": int(rewards),
                "mean_reward": total / rewards if rewards else None,
            }
        # The totals count every arm's counters, those of arms no longer served included.
        return {
            "policy": str(self.model.spec),
            "model_version": self.version,
            "arms": per_arm,
            "decisions": int(counter_total(counters, "decisions:")),
            "rewards_accepted": int(counter_total(counters, "rewards:")),
            "events_learned": int(counters.get("events_learned", 0)),
            "skipped_no_reward": int(counters.get("skipped_no_reward", 0)),
            "decisions_dropped": int(counters.get("decisions_dropped", 0)),
            "buffered_decisions": len(self._buffer),
            "learner": self.learner.leading,
        }


def journal_for(settings: Settings) -> Journal | None:
    """The journal ``settings`` ask for: in BANDIT_BUFFER_DIR, by default BANDIT_DATA_DIR's
    ``buffer``; none when it is empty."""
    directory = settings.buffer_dir
    if directory is None:
        directory = os.path.join(settings.data_dir, "buffer")
    return Journal(Path(directory), settings.key_prefix) if directory else None


async def _say_if_a_secret_differs(store: Store, hash_key: str) -> None:
    """Warn when Redis holds a word secret other than ``hash_key``: processes without
    BANDIT_HASH_KEY hash words with it (the deployment's, before the setting was made)."""
    with contextlib.suppress(StoreDamaged):  # a key that does not read: the key does without it
        stored = await store.stored_word_secret()
        if stored is not None and stored != hash_key:
            log.warning(
                "BANDIT_HASH_KEY is set, but %s holds another word secret, the one processes "
                "started without BANDIT_HASH_KEY hash query words with (this deployment's before "
                "the setting): the word features the model learned under it do not carry over, "
                "and while such processes run, words are hashed two ways; once every process has "
                "BANDIT_HASH_KEY, delete that key (DEL) to end this warning",
                store.key(KEY_WORD_SECRET),
            )


def counter_total(counters: Mapping[str, float], prefix: str) -> float:
    """The sum of the per-arm counters named ``prefix`` + an arm."""
    return sum(v for k, v in counters.items() if k.startswith(prefix))


def own_weights(decision: Mapping[str, Any]) -> dict[str, float] | None:
    """The event's own reward weights (a gateway request's preference), None for the
    deployment's: also when the stored ones are unusable (a record written by hand or by an
    older version), so that one bad record cannot stop its reward, or the sweep, for good."""
    weights = decision.get("weights")
    if weights is None:
        return None
    try:
        return check_weights(weights)
    except ValueError as e:
        log.warning("event %s: its reward weights are unusable (%s)", decision.get("event_id"), e)
        return None


def _weighted(weights: Mapping[str, float]) -> set[str]:
    """The request fields of the parts ``weights`` counts."""
    return {PART_FIELDS[k] for k, w in weights.items() if w > 0}


def _choose_result(record: Mapping[str, Any], degraded: bool = False) -> ChooseResult:
    return ChooseResult(
        event_id=record["event_id"],
        arm=record["arm"],
        probability=record["probability"],
        probabilities=record["probabilities"],
        policy=record["policy"],
        model_version=record["model_version"],
        degraded=degraded,
    )
