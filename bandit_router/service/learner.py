"""Learner: turns the training log into a model, exactly once, and publishes snapshots.

Exactly one learner runs at a time in a deployment: whoever holds the lease in Redis (a service
process, or a separate ``bandit-router learn``). It reads the log through a consumer group and
learns in stream order. The model's *watermark* is the stream id of the newest event it has
learned; an event at or below the watermark is never learned again, so a learner that takes
over (its predecessor killed mid-batch) starts from the newest snapshot, relearns the log after
that snapshot's watermark, and only acknowledges the events its predecessor had read. A
predecessor that had only stalled past its lease can neither read the log any more (its reads
check the lease in Redis: ``scripts.READ_NEW``) nor publish (the lease, and that the stored
model has not learned past its watermark, are checked in the publishing transaction); one
that wakes to a free lease leads anew from Redis. Events are acknowledged when a snapshot that
contains them is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bandit_router.deployments import DEFAULT
from bandit_router.errors import (
    NotLearner,
    PolicyConflict,
    Stopping,
    StoreDamaged,
    StoreUnavailable,
    SwitchArrived,
)
from bandit_router.features import Features
from bandit_router.policies.base import Arm, Policy, PolicySpec
from bandit_router.policies.registry import (
    build_policy,
    check_arms,
    load_policy,
    parse_policy_spec,
    runs_as,
)
from bandit_router.service.challengers import Bench, in_pool, summary
from bandit_router.service.outage import Outage
from bandit_router.settings import Settings
from bandit_router.store.records import Event, Logged, Snapshot, Unreadable, stream_id_key
from bandit_router.store.repository import LEASE_RENEWED, LEASE_TAKEN, Store
from bandit_router.store.transport import when_available
from bandit_router.throttle import Throttle

log = logging.getLogger("bandit_router")

BATCH = 64  # events learned per step: bounds how long learning holds the event loop
FAILED_SAID_EVERY_S = 60.0  # a failure that repeats each second is a line a minute
KEPT_CHOSEN = 1024  # recent decisions whose features learning reuses (policies.vw.KEPT_SHARED)
# An idle learner doubles its wait after each empty read, from poll_s up to this: a poll costs a
# few Redis calls, and a service runs a learner per deployment.
IDLE_POLL_S = 1.0


class LeaseLapsed(Exception):
    """The learner's lease lapsed, or passed to another learner, during a replay it made under
    it (``Learner._keep_lease``)."""


@dataclass
class Model:
    """A process's model: the policy, what it has learned (version) and up to where (watermark)."""

    spec: PolicySpec
    policy: Policy
    version: int = 0  # events learned, across restarts
    stream_id: str = "0-0"  # watermark: the newest logged event learned
    refused: str | None = None  # the stored policy override refused at loading, said then

    def learn(
        self, event: Logged, arms: dict[str, Arm], x: Features | None = None, late: bool = False
    ) -> bool:
        """Learn one logged event unless it is at or below the watermark; ``x``: its features,
        when the caller has them already. An unreadable entry moves the watermark past it
        without being learned (``version`` counts events learned), so no reader meets it again.
        ``late``: an event below the watermark that this model has never seen (see
        ``Learner.step``), learned without moving the watermark back."""
        behind = stream_id_key(event.stream_id) <= stream_id_key(self.stream_id)
        if behind and not late:
            return False
        if isinstance(event, Unreadable):
            if behind:
                return False
            log.warning("logged event %s not learned: %s", event.stream_id, event.problem)
            self.stream_id = event.stream_id
            return False
        d = event.decision
        eligible = [arms.get(n) or Arm(n) for n in d["arms"]]
        if x is None:
            x = Features.from_json(d["features"])
        reward = float(event.reward["reward"])
        self.policy.learn(x, eligible, d["arm"], float(d["probability"]), reward)
        self.version += 1
        if not behind:
            self.stream_id = event.stream_id
        return True

    def snapshot(self) -> Snapshot:
        return Snapshot(str(self.spec), self.version, self.stream_id, self.policy.dumps())


def fresh_model(spec: PolicySpec, settings: Settings) -> Model:
    return Model(spec, build_policy(spec, settings, settings.seed))


def restore(snapshot: Snapshot | None, spec: PolicySpec, settings: Settings) -> Model:
    """The snapshot as a model of ``spec``; a fresh model if it is unreadable, of another kind,
    or of the same kind with other parameters when ``spec`` is not the settings' policy (a
    switch stored in Redis that a stop or a take-over left unmade: relearned from the whole
    log, as a switch made live is). The settings' own policy, its parameters changed, goes
    on from what the snapshot learned."""
    if snapshot is None:
        return fresh_model(spec, settings)
    try:
        saved = runs_as(parse_policy_spec(snapshot.policy), settings)
    except ValueError as e:  # saved under a spec refused since (squarecb:gamma_scale=nan)
        log.warning("snapshot's policy refused (%s): learning from the whole log", e)
        return fresh_model(spec, settings)
    wanted = runs_as(spec, settings)
    if saved[0] != spec.name or (
        saved != wanted and wanted != runs_as(parse_policy_spec(settings.policy), settings)
    ):
        log.warning(
            "snapshot is of policy %s, not %s: learning from the whole log", snapshot.policy, spec
        )
        return fresh_model(spec, settings)
    try:
        policy = load_policy(spec, snapshot.data, settings, settings.seed)
    except ValueError as e:
        log.warning("snapshot not loadable (%s): learning from the whole log", e)
        return fresh_model(spec, settings)
    return Model(spec, policy, snapshot.version, snapshot.stream_id)


async def effective_spec(
    store: Store, settings: Settings, warned: set[str] | None = None
) -> PolicySpec:
    """The policy an admin switched to, else the one in the settings (also when the switch is
    to a spec refused since it was stored, such as ``squarecb:gamma_scale=nan``, or to
    ``fixed:arm=NAME`` of an arm the deployment no longer has: said in the
    log once per override in ``warned``, the caller's, or at every call without it)."""
    return spec_in_force(await store.policy_override(), settings, warned)


def spec_in_force(
    override: str | None, settings: Settings, warned: set[str] | None = None
) -> PolicySpec:
    """``effective_spec`` of the policy override ``override`` as read."""
    if override:
        try:
            spec = parse_policy_spec(override)
            check_arms(spec, settings)  # an arm removed since
            return spec
        except ValueError as e:
            if warned is None or override not in warned:
                log.warning("policy override refused (%s): serving %s", e, settings.policy)
            if warned is not None:
                warned.add(override)
    return parse_policy_spec(settings.policy)


async def load_model(
    store: Store,
    settings: Settings,
    spec: PolicySpec | None = None,
    progress: Callable[[int], None] | None = None,
    deployment: str | None = None,
    stop: asyncio.Event | None = None,
    where: str = "",
) -> Model:
    """The newest snapshot plus every logged event after it (``progress``: events replayed;
    ``deployment``: the deployment's name, for what the log says of its policy; ``where``:
    whose line the model's start is, as ``Learner.where``). ``stop``
    set, the replay ends at the next event with ``asyncio.CancelledError``: the process
    stops, and nothing it replayed was published (the next learner replays it)."""
    warned: set[str] = set()  # the override refused, if any: said here, once
    if spec is None:
        override = await store.policy_override()
        spec = spec_in_force(override, settings, warned)
        setting = parse_policy_spec(settings.policy)
        if override and runs_as(spec, settings) != runs_as(setting, settings):
            # An operator who changed BANDIT_POLICY would otherwise see it ignored without a word.
            named = deployment is not None and deployment != DEFAULT
            log.warning(
                "%s is not served: policy %s, set by POST /admin/policy or a promotion and kept "
                'in Redis, overrides it; POST /admin/policy%s with {"policy": "%s"} serves it',
                f"deployment {deployment}: its policy {setting} (BANDIT_DEPLOYMENTS_FILE, or "
                "BANDIT_POLICY when the file sets none)"
                if named
                else f"BANDIT_POLICY {setting}",
                spec,
                f"?deployment={deployment}" if named else "",
                setting,
            )
    model = restore(await store.load_snapshot(), spec, settings)
    model.refused = next(iter(warned), None)
    arms = {a.name: Arm.from_spec(a) for a in settings.arms}
    replayed = 0
    try:
        async for event in store.events(after=model.stream_id):
            if stop is not None and stop.is_set():
                raise asyncio.CancelledError("stopped while replaying the log")
            replayed += model.learn(event, arms)
            if progress is not None:
                progress(replayed)
    except StoreDamaged:  # the log's key is of another type (said in the log): serve what is
        pass  # learned; the learner replays the log once an operator has deleted the key
    log.info(
        "%spolicy %s at model version %d (%d logged events replayed)",
        where,
        spec,
        model.version,
        replayed,
    )
    return model


class Learner:
    """Holds the lease, learns new events, publishes snapshots. One per process at most."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        model: Model,
        stopping: asyncio.Event | None = None,
    ) -> None:
        """``stopping``: the process's stop as it is signalled (``Router.open``), which a
        replay under the lease looks at (``stopping``) before ``run``'s stop is set."""
        self.settings = settings
        self.store = store
        self.model = model
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.arms = {a.name: Arm.from_spec(a) for a in settings.arms}
        self._leading = False
        # Stored overrides refused, said once in the log (the one met loading the model, then).
        self._refused: set[str] = {model.refused} if model.refused else set()
        self._acks: list[str] = []
        self._unlearned: list[Logged] = []  # read after a batch's writes while the lock was held
        # Events were delivered to this learner that no replica confirmed (a WAIT failed):
        # nothing read is learned as it comes until a read is confirmed; meanwhile each step
        # learns the log up to ``_confirmed``. ``_delivered``: the newest event id any read
        # delivered; ``_confirmed``: the newest one a replica has (a confirmed read covers
        # every read before it, as replication keeps the master's order).
        self._unconfirmed = False
        self._delivered = "0-0"
        self._confirmed = "0-0"
        self._led_upto = "0-0"  # the log's end when this learner took the lease and replayed it
        self._waits_said = False  # that another learner holds the lease, since this one led
        # This process's recent decisions: event id -> (their ts, their features), so learning
        # them reuses the features (and the policy's work on them) instead of rebuilding them.
        self._chosen: dict[str, tuple[float, Features]] = {}
        self._published = (model.version, time.monotonic())
        self._put_off = -math.inf  # no publish is due before then (monotonic): one was refused
        self._lock = asyncio.Lock()
        self._started = 0  # steps started; the number of the newest one that read the log:
        self._read = 0  # concurrent callers share a step that started after they called
        self._claimed = -math.inf  # when stale events were last claimed (monotonic)
        self._lease_at = -math.inf  # when the lease was last taken or renewed (monotonic)
        self._relead = False  # a read's reply was lost: lead anew at once (``_read_lost``)
        # Redis's loss of the model is said (``_published_again``): not again when the lease
        # lapses before this process published the model again, and it leads anew.
        self._loss_said = False
        self._stop: asyncio.Event | None = None  # ``run``'s
        self._signalled = stopping
        self.on_learned: Callable[[str, int], None] | None = None  # (arm, version): metrics
        self.on_redis_error: Callable[[str], None] | None = None  # (operation): metrics
        self.outage = Outage()  # says Redis's unavailability, for the router's jobs too
        self._failed = Throttle()  # says the loop's other failures
        # The challengers, while this process leads (service.challengers); an automatic
        # promotion whose publish was put off (a model key of another type) goes with the next
        # snapshot; one whose publish failed is dropped (``_drop_promotion``).
        self.bench: Bench | None = None
        self.on_promoted: Callable[[dict[str, Any]], None] | None = None  # (record), published
        self._promotion: dict[str, Any] | None = None
        self._decided_under: str | None = None  # the policy override when it was decided
        self.stopped_at: int | None = None  # the model version ``close`` published

    @property
    def where(self) -> str:
        """Whose learner, in its log lines, where one process learns for several deployments
        (``deployment support: ``; set by ``open_routers`` and ``learn --deployment``)."""
        return self.outage.where

    @property
    def leading(self) -> bool:
        return self._leading

    @leading.setter
    def leading(self, value: bool) -> None:
        """While it leads, every round trip of this process that logs an event also reads the
        new events for it, so a /reward learns its event without a round trip of its own."""
        if value != self._leading:
            name = self.name if value else None
            self.store.follow_log(name, BATCH, self._followed, self._read_lost)
        self._leading = value

    @property
    def stopping(self) -> bool:
        """The process stops: a replay under the lease (a take-over's, a switch's relearning)
        ends at the next event."""
        return any(e is not None and e.is_set() for e in (self._stop, self._signalled))

    def _read_lost(self) -> None:
        """A read of the log for this learner failed, and Redis may have run it all the same (a
        reply slower than the timeout, a connection lost after the write): its events were
        delivered to this learner, and no read delivers them again. Learning what reads deliver
        next would carry the watermark past them for good (and a claim of its own pending
        events later acknowledged them): instead it leads anew from the log after its watermark,
        as after an outage, at the loop's next turn."""
        if self._leading:
            self.leading = False
            self._relead = True

    def _followed(self, events: list[Logged], confirmed: bool) -> None:
        """Events a round trip read after its writes: learned now, unless a step, a publish or a
        switch holds the lock; then the next step learns them, in stream order with its own.
        Not learned while unconfirmed (see ``_unconfirmed``): a failover could lose them."""
        if not self._leading:
            return  # delivered to a learner that lost the lease: the next leader claims them
        self._saw(events, confirmed)
        if self._unconfirmed:
            return
        if self._lock.locked():
            self._unlearned += events
        else:
            self._learn_all(events)

    def _saw(self, events: list[Logged], confirmed: bool) -> None:
        if events and stream_id_key(events[-1].stream_id) > stream_id_key(self._delivered):
            self._delivered = events[-1].stream_id
        if confirmed:
            self._confirmed = self._delivered
        else:
            self._unconfirmed = True

    async def _read_new(self) -> list[Logged]:
        """The log's new events, confirmed by the replicas with BANDIT_REDIS_WAIT_REPLICAS. After
        an unconfirmed read, the log up to the newest event a replica confirmed, read again
        from the log (after a failover, the new master's log is the truth)."""
        try:
            events, confirmed = await self.store.read_new(self.name, BATCH)
        except StoreUnavailable:
            self._read_lost()
            raise
        self._saw(events, confirmed)
        if not self._unconfirmed:
            return events
        upto, earlier = self._confirmed, []
        if stream_id_key(upto) > stream_id_key(self.model.stream_id):
            earlier = [e async for e in self.store.events(after=self.model.stream_id, until=upto)]
        if upto == self._delivered:  # nothing unconfirmed is left
            self._unconfirmed = False
            self._unlearned = []  # kept while the lock was held: in ``earlier`` too
        return earlier

    def _learn_all(self, events: list[Logged]) -> None:
        if self._unlearned:
            events = sorted([*self._unlearned, *events], key=lambda e: stream_id_key(e.stream_id))
            self._unlearned = []
        for event in events:
            self._learn(event)
            self._acks.append(event.stream_id)

    async def catch_up(self, stream_id: str | None) -> None:
        """Make sure the logged event ``stream_id`` (None: not known) is learned, and publish
        when due. Usually it is learned already, by the read that followed its round trip; if
        that read came while the lock was held, it is learned once the lock is free, without
        reading the log again."""
        if not self._learned(stream_id):
            async with self._lock:
                self._learn_all([])  # what reads kept while the lock was held
        if not self._learned(stream_id) or self._due():
            await self.step()

    async def catch_up_stored(self, stream_id: str | None) -> None:
        """``catch_up`` for a reward Redis has stored and logged, whose answer must say so
        whatever happens here: a failure (an outage, a model that cannot be saved) is the
        learner's, said as ``run`` says a failed step, and it leads anew from Redis at the
        loop's next turn, which learns the event."""
        try:
            await self.catch_up(stream_id)
        except Exception as e:
            self._step_failed(e)
            if self._leading:
                self.leading = False
                self._relead = True

    def _learned(self, stream_id: str | None) -> bool:
        return stream_id is not None and (
            stream_id_key(stream_id) <= stream_id_key(self.model.stream_id)
        )

    async def lead(self) -> bool:
        """Take or renew the lease; on taking it, catch up from the newest snapshot and the log."""
        lease = await self.store.hold_lease(self.name, self.settings.learner_lease_s)
        held = lease != 0
        if held:
            self._lease_at = time.monotonic()
        # Its lease lapsed before this renewal (the process froze: SIGSTOP, a paused VM), so
        # another learner may have led meanwhile and published a newer model: lead anew from
        # Redis, as a process taking the lease does. Going on with the model it froze with
        # published that over the newer one, and what the other had learned was lost. Said
        # in ``_take_over``, unless Redis lost its data (the lease with it).
        lapsed = lease == LEASE_TAKEN and self.leading
        if lapsed:
            self.leading = False
        try:
            if held and self.leading:
                await self._follow_switch()
            if held and not self.leading:
                await self._take_over(lapsed)
        except LeaseLapsed:
            # A replay under the lease (a backlog, a switch's relearning) renews it as it goes:
            # it lapsed all the same (the process stalled), or another learner took it.
            log.warning(
                "%slearner %s: its lease lapsed while it caught up with the log; leading anew",
                self.where,
                self.name,
            )
            self._lapsed()
            return False
        if not held:
            self.bench = None
            if not self._waits_said:
                # A second `learn` (or a worker) said nothing after its start: waiting, or stuck?
                log.info(
                    "%slearner %s: another learner holds the lease; this one takes over if it "
                    "stops (within BANDIT_LEARNER_LEASE_S)",
                    self.where,
                    self.name,
                )
                self._waits_said = True
        else:
            self._waits_said = False
        self.leading = held
        return held

    async def _take_over(self, lapsed: bool) -> None:
        """Lead from Redis: its newest snapshot, the challengers as published, and the log after
        them, replayed under the lease (renewed as it goes: ``LeaseLapsed``). ``lapsed``: this
        process led, and its lease lapsed before this renewal."""
        async with self._lock:
            # A promotion this process made and never published (its lease was lost, or
            # Redis failed: the admin was told) is dropped with the model it swapped in:
            # what Redis holds serves. Published later, its record and override would
            # contradict the model reloaded here.
            self._promotion = None
            await self.store.ensure_group()
            await self.store.prune_consumers(keep=self.name)  # learners gone since
            # before these reads, which set them
            seen, override = self.store.model_seen, self.store.override_seen
            snapshot = await self.store.load_snapshot()
            lost = snapshot is None and seen
            if lapsed and not lost:
                log.warning(
                    "%slearner %s: its lease had lapsed; leading anew from Redis",
                    self.where,
                    self.name,
                )
            # The policy serving now, not the one this process loaded: a promotion or a
            # switch since then (this process followed, and may not have refreshed) would
            # otherwise be undone, the promoted model relearned as the old champion.
            spec = await effective_spec(self.store, self.settings, self._refused)
            if lost:
                spec = await self._published_again(spec, override)
                self._loss_said = True
            elif snapshot is not None:
                self._loss_said = False
            # Newer: learned further in the log (a reset's version 0 included), as a follower
            # sees it; then by version. A publish of an older model would be refused.
            newer = snapshot is not None and (
                stream_id_key(snapshot.stream_id),
                snapshot.version,
            ) > (stream_id_key(self.model.stream_id), self.model.version)
            if newer or spec != self.model.spec:
                self.model = restore(snapshot, spec, self.settings)
            self.bench = await self._open_bench()
            async for event in self.store.events(after=self.model.stream_id):
                if self.stopping:
                    # the process stops: what is learned is published on the way out, the
                    # events after it are the next learner's
                    break
                self._learn(event)
                await self._keep_lease()
            self._led_upto = self.model.stream_id
            published = snapshot.version if snapshot is not None else 0
            # A model Redis lost is published again at the next step, not a period later:
            # a process starting meanwhile would learn from the empty log, and serve that.
            self._published = (published, -math.inf if lost else time.monotonic())
        log.info(
            "%slearner %s leads at model version %d", self.where, self.name, self.model.version
        )

    async def _published_again(self, spec: PolicySpec, override: str | None) -> PolicySpec:
        """Redis holds no model, though this process saw one there: Redis lost its data (a
        FLUSHALL, a restart without persistence, a failover to an empty replica). Said once, in
        one line (not again when the lease lapsed during a take-over of the same loss, before
        the model was published again); this process's model is published again. ``spec``:
        the policy in force as read now; ``override``: the policy override as this process last
        saw it. When that set the policy this model serves (a promotion, an admin's switch, a
        restore) and went with the model, it is set again: else BANDIT_POLICY, untrained,
        served in its place. The policy to serve is returned."""
        put_back = ""
        if (
            spec != self.model.spec
            and self.store.override_seen is None  # read by ``effective_spec`` just now
            and spec_in_force(override, self.settings, self._refused) == self.model.spec
        ):
            await self.store.set_policy_override(str(self.model.spec))
            spec = self.model.spec
            put_back = f", and {spec} set again as the policy in force (a promotion's or switch's)"
        if spec == self.model.spec:
            done = f"this process's model, {spec} at version {self.model.version}, is published "
            done += f"again{put_back}"
        else:  # the learner's policy, not this process's (a rolling restart that changes it)
            done = (
                f"this process's model, {self.model.spec} at version {self.model.version}, is "
                f"not: the policy in force here is {spec}, which is learned afresh"
            )
        if self._loss_said:  # a take-over of this loss was cut short (``LeaseLapsed``)
            return spec
        challengers = "; the challengers start afresh" if self.settings.challengers else ""
        log.warning(
            "%slearner %s: Redis holds no model, though one was published (Redis lost its data: "
            "restarted without persistence, flushed, or the key was deleted): %s; what else "
            "Redis held is lost: decisions waiting for rewards (refused as unknown), rewards "
            "logged and not learned yet, the counters, the promotion records%s",
            self.where,
            self.name,
            done,
            challengers,
        )
        return spec

    async def _open_bench(self) -> Bench:
        """The challengers as last published, brought up to the model's watermark: the log
        between their watermark and the model's is replayed to them (what the model replayed
        at start-up: at most the events after the newest snapshot)."""
        stored = await self.store.challenger_state()
        bench = Bench.restore(stored, self.model.spec, self.settings, self.model.stream_id)
        if bench.challengers and bench.stream_id != self.model.stream_id:
            upto = stream_id_key(self.model.stream_id)
            async for event in self.store.events(after=bench.stream_id):
                if stream_id_key(event.stream_id) > upto:
                    break
                if isinstance(event, Event):
                    bench.learn(event, self.arms)
                await self._keep_lease()
        bench.stream_id = self.model.stream_id
        return bench

    def _lapsed(self) -> None:
        """The lease lapsed during a replay: not leading, what it replayed to is reloaded from
        Redis when it leads again."""
        self.bench = None
        self.leading = False

    async def _keep_lease(self) -> None:
        """Renew the lease when a third of it has passed, during a replay made under it (the
        backlog a learner takes over, a switch's relearning of the whole log), as ``run``
        renews it between steps: a replay of a long log outlasts the lease. ``LeaseLapsed``
        when it is no longer this learner's own, held throughout."""
        if time.monotonic() - self._lease_at < self.settings.learner_lease_s / 3:
            return
        lease = await self.store.hold_lease(self.name, self.settings.learner_lease_s)
        if lease != LEASE_RENEWED:
            raise LeaseLapsed()
        self._lease_at = time.monotonic()

    async def step(self) -> int:
        """Learn what is new in the log (and what a dead learner left); publish when due.

        Returns the number of events read (at most ``BATCH``, but for the catch-up after an
        unconfirmed read, which learns the log up to it at once, as ``lead`` does), learned or
        not."""
        if not self.leading:
            return 0
        # What the caller logged before this call is read by any step that starts from now on.
        # Callers that queued behind the lock while one such step ran have their events
        # learned already: concurrent /reward calls share one read of the log.
        wanted = self._started + 1
        async with self._lock:
            if self._read >= wanted:  # a step that started after this call has read the log
                return 0
            self._started += 1
            number = self._started
            # A dead learner's events become claimable only after claim_idle_s, so looking
            # for them a few times per claim_idle_s is enough, not on every step: in a single
            # process a step runs in every /reward and this would be one more round trip.
            now = time.monotonic()
            if now - self._claimed >= min(self.settings.claim_idle_s / 2, 1.0):
                idle_ms = int(self.settings.claim_idle_s * 1000)
                for event, theirs in await self.store.claim_stale(self.name, idle_ms, BATCH):
                    # Another learner's, above what lead() replayed: read after this one took
                    # the lease, so never learned here (reads that check the lease prevent it;
                    # learned late rather than lost, should one ever be).
                    if theirs and stream_id_key(event.stream_id) > stream_id_key(self._led_upto):
                        self._learn(event, late=True)
                    self._acks.append(event.stream_id)
                self._claimed = now
            events = await self._read_new()
            self._read = number
            self._learn_all(events)
            await self._judge()
            if self._due():
                await self._publish_or_put_off()
            return len(events)

    def chosen(self, event_id: str, ts: float, x: Features) -> None:
        """This process decided ``event_id`` at ``ts`` on features ``x``: kept a while, if it
        leads, for learning that event."""
        if self._leading:
            self._chosen[event_id] = (ts, x)
            if len(self._chosen) > KEPT_CHOSEN:
                del self._chosen[next(iter(self._chosen))]  # the oldest, as policies.vw's

    def _learn(self, event: Logged, late: bool = False) -> None:
        if isinstance(event, Unreadable):
            self.model.learn(event, self.arms, late=late)
            return
        d = event.decision
        kept = self._chosen.pop(d["event_id"], None) if self._chosen else None
        x = kept[1] if kept is not None and kept[0] == d["ts"] else None  # the same decision
        if self.bench is not None and self.bench.challengers and x is None:
            x = Features.from_json(d["features"])  # built once for the model and challengers
        if self.model.learn(event, self.arms, x, late) and self.on_learned is not None:
            self.on_learned(d["arm"], self.model.version)
        if self.bench is not None:
            self.bench.learn(event, self.arms, x, late)

    def _due(self) -> bool:
        if time.monotonic() < self._put_off:
            return False
        version, at = self._published
        if self.model.version == version and not self._acks:
            return False
        behind = self.model.version - version >= self.settings.snapshot_every
        return behind or time.monotonic() - at >= self.settings.publish_s

    async def _publish(self) -> bool:
        """Publish, unless the lease has passed to another learner meanwhile (this process
        stalled past it), or a model that learned further was published (this one took the
        lease again after such a stall): then this one stops leading (False), as its snapshot
        would be older than the newest; the next ``lead`` loads that one, and a new learner
        claims what this one read and did not acknowledge.

        ``SwitchArrived`` when an admin switched the policy (on another process) after the
        promotion this publish carries was decided: the switch wins. The promotion is dropped,
        and the switch made now, as this learner makes one it finds pending."""
        bench = self.bench
        fields = bench.fields(summary(bench)) if bench is not None else None
        snapshot = self.model.snapshot()
        promotion, under = self._promotion, self._decided_under
        try:
            published = await self.store.publish(
                snapshot, self._acks, fields, promotion, self.name, decided_under=under
            )
        except SwitchArrived as e:
            assert promotion is not None
            log.info("%spromotion of %s dropped: %s", self.where, promotion["to_policy"], e.message)
            # the switch drops the promotion, and replaces the model and bench it swapped in
            try:
                spec = await effective_spec(self.store, self.settings, self._refused)
                if not await self._switch(spec):  # the process stops: the promoted model,
                    self._lapsed()  # never published, is not; the next learner switches
            except LeaseLapsed:  # the next learner to lead makes the switch
                self._lapsed()
            raise
        if not published:
            log.warning(
                "%slearner %s lost its lease, or a newer model is published: model version %d "
                "not published",
                self.where,
                self.name,
                snapshot.version,
            )
            self.leading = False
            self.bench = None
            self._acks = []
            self._promotion = None  # not made: the model and bench it swapped are reloaded
            return False
        self._acks = []
        self._loss_said = False  # a loss after this one is said
        if promotion is not None and self.on_promoted is not None:
            self.on_promoted(promotion)  # counted once made: one dropped is no promotion
        self._promotion = None
        self._published = (self.model.version, time.monotonic())
        self._put_off = -math.inf
        return True

    async def _publish_or_put_off(self) -> bool:
        """``_publish``; when the store refuses it (a key of another type, said in the log once
        by the store), put off for BANDIT_PUBLISH_S and False: learning, and the rewards that
        wait for it, go on meanwhile, and the model is published once an operator mends the key.
        What it would have written (acknowledgements, a promotion) waits for that publish."""
        try:
            return await self._publish()
        except StoreDamaged:
            self._put_off = time.monotonic() + self.settings.publish_s
            return False
        except SwitchArrived:  # said in the log; the switch that won is published
            return False

    async def _judge(self) -> None:
        """Score the challengers when due; with BANDIT_AUTO_PROMOTE, promote one that clears."""
        if self.bench is None or not self.bench.due:
            return
        best = self.bench.judge()
        if best is not None and self.settings.auto_promote:
            pending, override = await self._switch_pending()
            if pending is not None:
                log.info(
                    "%schallenger %s not promoted: a switch to %s is pending",
                    self.where,
                    best.policy,
                    pending,
                )
                return
            await self._promote(parse_policy_spec(best.policy), "auto", override)

    async def _switch_pending(self) -> tuple[PolicySpec | None, str | None]:
        """The policy an admin switched to (``POST /admin/policy``, on any process) that this
        learner does not serve yet, else None; and the policy override as read, which a
        promotion decided now is published under (``Store.publish`` checks that it still is).
        A promotion now would overwrite that switch, or be undone by it, its record then naming
        a policy that does not serve."""
        override = await self.store.policy_override()
        spec = spec_in_force(override, self.settings, self._refused)
        return (spec if spec != self.model.spec else None), override

    async def promote(self, policy: str) -> dict[str, Any]:
        """Promote the running challenger ``policy`` now (``POST /admin/promote``)."""
        async with self._lock:
            if self.bench is None:
                raise NotLearner()
            spec = parse_policy_spec(policy)
            pending, override = await self._switch_pending()
            if pending is not None:
                raise PolicyConflict(
                    f"policy {pending} was set by POST /admin/policy and serves once the learner "
                    "has switched to it (within BANDIT_LEARNER_LEASE_S / 3 and a second): "
                    "promote then"
                )
            return await self._promote(spec, "admin", override)

    async def _promote(self, policy: PolicySpec, by: str, override: str | None) -> dict[str, Any]:
        """The challenger's trained policy serves from now on, without relearning; the snapshot,
        the policy override (as ``POST /admin/policy`` sets it) and the record are written in
        one transaction, so every process loads it and a restart keeps it. ``override``: the
        policy override read when it was decided; a switch since then wins (``SwitchArrived``,
        said to an admin, in the log for an automatic one)."""
        assert self.bench is not None
        old = self.model
        promoted, record = self.bench.promote(policy, old.policy, by, old.version)
        self.model = Model(promoted.spec, promoted.policy, old.version, old.stream_id)
        self._promotion, self._decided_under = record, override
        try:
            if by != "admin":  # a key of another type: it waits for the next publish
                published = await self._publish_or_put_off()
            else:  # an admin is told why, StoreDamaged included
                published = await self._publish()
        except (StoreUnavailable, StoreDamaged):
            self._drop_promotion(old)
            raise
        if not published and not self.leading:  # the lease was lost
            self._drop_promotion(old)
        if not published and by == "admin":
            raise NotLearner()
        return record

    def _drop_promotion(self, old: Model) -> None:
        """A promotion whose publish failed is not made: the champion ``old`` serves again at
        once, and the learner leads anew from Redis at its next renewal, as after a failure in
        its loop (a publish that Redis applied but whose answer was lost is then found there).
        Kept, it was published with the next snapshot, after an admin had been told 503."""
        self.model = old
        self._promotion = None
        self.bench = None
        self.leading = False

    async def publish(self) -> int:
        """Publish the model now (admin snapshot, shutdown); returns its version."""
        async with self._lock:
            if not await self._publish():
                raise NotLearner()
        return self.model.version

    async def _follow_switch(self) -> None:
        """Serve the policy an admin switched to on any process. Read under the lock: read
        before it, a switch made here meanwhile (``POST /admin/policy`` on this process, which
        stores and serves its policy under the lock) was undone by the policy read before."""
        async with self._lock:
            if self._promotion is not None:  # not published yet: its override neither
                return
            if self.stopping:  # a switch stopped already: the next learner makes it
                return
            spec = await effective_spec(self.store, self.settings, self._refused)
            if spec != self.model.spec:
                log.info("%sswitching policy %s -> %s", self.where, self.model.spec, spec)
                await self._switch(spec)

    async def switch(self, spec: PolicySpec, store: bool = False) -> None:
        """Replace the policy with a fresh one of ``spec`` learned from the whole log; ``store``:
        also set it as the policy override (``POST /admin/policy``), under the same lock as a
        promotion, so the two never interleave (the override and the model then disagreed).
        ``Stopping`` when the process stops during the relearning (nothing is replaced)."""
        async with self._lock:
            if store:
                await self.store.set_policy_override(str(spec))
            served = self.model.spec
            try:
                switched = await self._switch(spec)
            except LeaseLapsed:
                self._lapsed()
                raise NotLearner(
                    f"the learner lease passed to another process while this one relearned the "
                    f"log for policy {spec}; "
                    + ("the switch is stored, and the learner makes it" if store else "not made")
                ) from None
            if not switched:
                # a relearning of the policy in force is not stored as pending: asked again
                pending = store and spec != served
                raise Stopping(
                    f"this process is stopping: it stopped relearning the log for policy {spec}, "
                    f"and {served} serves on; "
                    + (
                        "the switch is stored, and the next learner to lead makes it"
                        if pending
                        else "not made: send this request again once a learner leads"
                    )
                )

    async def _switch(self, spec: PolicySpec) -> bool:
        """``switch``, the lock held. False, nothing replaced nor published, when the process
        stops meanwhile: the old model serves on and is published as the process stops, and a
        switch stored (the policy override) is the next learner's, which relearns the whole
        log at its start or take-over (a model half relearned would be served as if complete,
        and its publish refused: its watermark is behind the stored model's)."""
        model, old = fresh_model(spec, self.settings), self.model
        # The old champion challenges on, trained, when it is one of BANDIT_POLICY and
        # BANDIT_CHALLENGERS (as a learner restarting would run it); else it is dropped.
        keep = self.bench is not None and in_pool(old.spec, self.settings)
        learned = 0
        async for event in self.store.events():
            if self.stopping:
                log.warning(
                    "%slearner %s: the process stops: its switch to policy %s stopped after "
                    "relearning %d logged events (to %s): not made here; %s serves on, and a "
                    "switch stored in Redis is made by the next learner to lead",
                    self.where,
                    self.name,
                    spec,
                    learned,
                    model.stream_id,
                    old.spec,
                )
                return False
            learned += model.learn(event, self.arms)
            # the events it had not seen, as the bench's: it serves on if the relearning stops
            old.learn(event, self.arms)
            if self.bench is not None and isinstance(event, Event):
                self.bench.learn(event, self.arms)  # the events the old model had not seen
            await self._keep_lease()
        self._promotion = None  # one not published yet (put off) is replaced with its model
        self.model = model
        if self.bench is not None:
            self.bench.set_champion(spec, old.policy if keep else None, keep_old=keep)
        await self._publish_or_put_off()  # the switch is stored already (the override)
        return True

    async def reset(self) -> int:
        """Forget everything learned: a fresh model whose watermark is the end of the log."""
        async with self._lock:
            model = fresh_model(self.model.spec, self.settings)
            model.stream_id = await self.store.last_stream_id()
            self.model = model
            if self.bench is not None:
                self.bench = Bench.restore({}, model.spec, self.settings, model.stream_id)
            if not await self._publish():
                raise NotLearner()
        return self.model.version

    async def run(self, stop: asyncio.Event, poll_s: float = 0.05) -> None:
        """Renew the lease, learn, publish, until ``stop`` is set; Redis outages are waited out."""
        self._stop = stop
        renew_every = self.settings.learner_lease_s / 3
        renewed = 0.0
        # the longest wait after empty reads: within the lease's renewal period too
        longest = max(poll_s, min(IDLE_POLL_S, renew_every))
        idle = poll_s
        while not stop.is_set():
            try:
                if self._relead or time.monotonic() - renewed >= renew_every:
                    self._relead = False
                    await self.lead()
                    renewed = time.monotonic()
                read = await self.step()
                self.outage.reached("learner")
            except Exception as e:  # an outage, or a bug: led anew from Redis either way
                self._step_failed(e)
                self.leading = False
                renewed = 0.0
                await wait_or_stop(stop, 1.0)
                continue
            # A full batch: more may be waiting, so read again at once (after letting the
            # loop run). Waiting poll_s after every batch capped a learner at BATCH / poll_s
            # events a second (1,280), below what one API process logs.
            if read >= BATCH:
                wait = 0.0
            elif read:
                wait = idle = poll_s
            else:  # nothing new: the next empty read waits twice as long
                wait, idle = idle, min(idle * 2, longest)
            await wait_or_stop(stop, wait)

    def _step_failed(self, e: Exception) -> None:
        """Say why a step of ``run`` failed: a Redis outage as the outage does, a bug with its
        traceback (raised, it would end all learning with no line in the log)."""
        if isinstance(e, StoreUnavailable | StoreDamaged):
            if self.on_redis_error is not None:
                self.on_redis_error("learner")
            if isinstance(e, StoreUnavailable):  # StoreDamaged: said once, by the store
                self.outage.failed("learner", e)
            return
        due = self._failed.due(FAILED_SAID_EVERY_S)
        if due is not None:
            more = f" ({due.count} more since the last said)" if due.count else ""
            log.exception(
                "%slearner %s: its step failed%s; leading anew", self.where, self.name, more
            )

    async def close(self) -> None:
        """Publish what was learned and hand the lease over; ``stopped_at``: the version
        published, None when none was (not leading, or the publish refused or failed)."""
        if self.leading:
            try:
                self.stopped_at = await self.publish()
            except (StoreUnavailable, StoreDamaged, NotLearner, SwitchArrived) as e:
                log.error("%sfinal snapshot not saved: %s", self.where, e)
            await self.store.prune_consumers()  # its own name too, once nothing is pending
        await self.store.release_lease(self.name)
        self.leading = False


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_learner(
    settings: Settings,
    store: Store,
    stop: asyncio.Event,
    where: str = "",
    deployment: str | None = None,
) -> Learner | None:
    """A learner on its own (``bandit-router learn``): learn and publish until ``stop`` is set.
    None when ``stop`` is set while it still waits for Redis at start (a SIGTERM must not wait
    for BANDIT_STARTUP_WAIT_S: nothing is learned yet, so nothing is lost)."""
    loading = asyncio.ensure_future(
        when_available(
            lambda: load_model(store, settings, deployment=deployment, stop=stop, where=where),
            settings.startup_wait_s,
        )
    )
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not loading.done():
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
    if loading.cancelled():
        return None
    model = loading.result()
    await store.warn_if_evicting()
    learner = Learner(settings, store, model)
    learner.outage.where = where  # ``Learner.where``
    try:
        await learner.run(stop)
    finally:
        await learner.close()
    return learner
