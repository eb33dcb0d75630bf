"""Evaluate: counterfactual estimates of candidate policies from the logged events.

The log (DSJSON from ``bandit-router export``, or the store's events) becomes typed records. A
candidate policy is replayed progressively in time order, as ``vw --cb_explore_adf`` progressive
validation does: at each event it gives its pmf over the eligible arms (``choose(...)
.probabilities``), then learns the logged arm, propensity and reward. Baselines learn nothing.
The pmfs, the logged propensities (at least ``MIN_PROPENSITY``) and rewards, and an online
reward model feed IPS, SNIPS and DR (``estimators``); the candidates are replayed side by
side, and of each event only those inputs are kept, as float64 arrays. The dashboard calls
``estimate_policies``; ``baseline_specs`` names the baselines worth showing for a set of arms.
``evaluate_file`` (the command) reads a file again instead of holding its records: once more
when its events are too far out of time order, and once more for the Vowpal Wabbit candidates.
"""

from __future__ import annotations

import heapq
import logging
import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from bandit_router import inputs
from bandit_router.features import QUERY_STATS, Features
from bandit_router.offline.estimators import Estimate, RewardModel, doubly_robust, ips, snips
from bandit_router.offline.export import APP_RAW, to_dsjson
from bandit_router.policies.base import Arm, Policy
from bandit_router.policies.registry import build_policy, parse_policy_spec
from bandit_router.policies.vw import VW_POLICIES
from bandit_router.settings import Settings
from bandit_router.store.records import Event, Unreadable
from bandit_router.store.repository import Store

log = logging.getLogger("bandit_router")
METHODS = ("ips", "snips", "dr")
# The least logged propensity an importance weight divides by: a smaller one (a log of
# ``egreedy:epsilon=1e-9``) counts as this, as clipped IPS does (Strehl et al. 2010,
# ``max(p, tau)``), so a weight is at most 1e6 and the terms, their squares and sums stay
# finite. The default policies log above it.
MIN_PROPENSITY = 1e-6


@dataclass(frozen=True, slots=True)
class LoggedRecord:
    """One logged decision and its reward: what the off-policy estimators need."""

    event_id: str
    ts: float  # decision time, seconds since the epoch
    x: Features
    arms: tuple[Arm, ...]  # eligible arms, in the order the policy saw them
    arm: str  # the logged choice
    probability: float  # its propensity under the logging policy
    reward: float  # in [0, 1]


def _features(c: Mapping[str, Any], max_features: int | None = None) -> Features:
    """The shared namespaces, each an object of bounded numbers (``Q``, ``N``), 32-bit word
    hashes (``W``) or strings (``C``), as ``export`` writes them and the contract allows. The
    app features come from ``_app`` when there is one: ``N`` and ``C`` as the client named them
    (``export.vw_key``)."""
    q, w = inputs.table("c.Q", c.get("Q", {})), inputs.table("c.W", c.get("W", {}))
    app, at = c, "c"
    if APP_RAW in c:
        app, at = inputs.table(f"c.{APP_RAW}", c[APP_RAW]), f"c.{APP_RAW}"
    n, cat = inputs.table(f"{at}.N", app.get("N", {})), inputs.table(f"{at}.C", app.get("C", {}))
    inputs.feature_count(f"{at}.N plus {at}.C", len(n) + len(cat), max_features)
    inputs.app_features(f"{at}.N", n, None)
    inputs.app_features(f"{at}.C", cat, None)
    for key, value in cat.items():
        inputs.text(f"{at}.C.{key}", value)  # a string, not a number or boolean
    return Features(
        stats=tuple(inputs.number(f"c.Q.{name}", q.get(name, 0.0)) for name in QUERY_STATS),
        tokens=tuple(_token(t) for t in w),
        numeric={str(k): inputs.number(f"{at}.N.{k}", v) for k, v in n.items()},
        categorical=dict(cat),
    )


def _token(key: str) -> int:
    token = int(key) if key.isascii() and key.isdigit() else -1
    if not 0 <= token < 2**32:
        raise ValueError(f"c.W keys are word hashes, 0..{2**32 - 1}, got {key[:40]!r}")
    return token


def _arm(i: int, entry: Any) -> Arm:
    where = f"c._multi[{i}]"
    entry = inputs.table(where, entry)
    if "_arm" in entry:
        raw = inputs.table(f"{where}._arm", entry["_arm"])
        return _checked_arm(
            f"{where}._arm", raw.get("name"), raw.get("params_b"), raw.get("usd_per_mtok")
        )
    return _checked_arm(f"{where}.A.id", inputs.table(f"{where}.A", entry.get("A")).get("id"))


# Arms ``inputs.arm`` accepted, by their fields as written: a log repeats the same few arms on
# every line, and that check (``ArmSpec``) was a third of the time a line took to read.
_CHECKED_ARMS: dict[tuple[Any, ...], Arm] = {}
_MAX_CHECKED_ARMS = 4096  # then it starts again
# Events held back by the first read to put them in time order (an export is in the order the
# rewards were joined): at most this many, and this many bytes of their lines.
HELD_EVENTS = 256
HELD_BYTES = 4 * 2**20


def _checked_arm(where: str, name: Any, params_b: Any = None, usd_per_mtok: Any = None) -> Arm:
    """``inputs.arm``, remembered when the fields are a string and numbers or nulls."""
    key = (_field(name), _field(params_b), _field(usd_per_mtok))
    if type(name) is not str or None in key:
        return inputs.arm(where, name, params_b, usd_per_mtok)
    arm = _CHECKED_ARMS.get(key)
    if arm is None:
        arm = inputs.arm(where, name, params_b, usd_per_mtok)  # raises: not remembered
        if len(_CHECKED_ARMS) >= _MAX_CHECKED_ARMS:
            _CHECKED_ARMS.clear()
        _CHECKED_ARMS[key] = arm
    return arm


def _field(value: Any) -> tuple[Any, ...] | None:
    """A key that tells apart what ``==`` does not (7 and 7.0, 0.0 and -0.0); None: a value
    of another type, not remembered."""
    if value is None or type(value) is str or type(value) is int:
        return (type(value), value)
    if type(value) is float:
        return (float, value, math.copysign(1.0, value))
    return None


def record_from_dsjson(obj: Any, max_features: int | None = None) -> LoggedRecord:
    """A record from one parsed DSJSON object as ``export`` writes it; every field of the type
    and range ``export`` gives it (no ``"0.5"``, no ``0.9`` for an index), at most
    ``inputs.MAX_ARMS`` arms and ``max_features`` app features (when given)."""
    obj = inputs.table("an event", obj)
    c = inputs.table("c", obj.get("c"))
    multi = c.get("_multi")
    if not isinstance(multi, list) or not multi:
        raise ValueError(f"c._multi must be a non-empty array of arms, got {inputs.kind(multi)}")
    if len(multi) > inputs.MAX_ARMS:
        raise ValueError(
            f"c._multi has {len(multi)} arms; the limit is {inputs.MAX_ARMS}, as per request"
        )
    arms = tuple(_arm(i, entry) for i, entry in enumerate(multi))
    names = [arm.name for arm in arms]
    if len(set(names)) < len(names):  # the service offers each once: a pmf by name would lose one
        i = next(i for i, name in enumerate(names) if name in names[:i])
        raise ValueError(f"c._multi[{i}] offers the arm {names[i]!r} again")
    index = obj.get("_labelIndex")
    if type(index) is not int:
        raise ValueError(f"_labelIndex must be an integer, got {_value(index)}")
    if not 0 <= index < len(arms):
        raise ValueError(f"_labelIndex {index} is outside the {len(arms)} actions")
    probability = inputs.number("_label_probability", obj.get("_label_probability"))
    reward = -inputs.number("_label_cost", obj.get("_label_cost"))
    if not 0 < probability <= 1:
        raise ValueError(f"_label_probability must be in (0, 1], got {probability}")
    if not 0 <= reward <= 1:
        raise ValueError(f"reward (-_label_cost) must be in [0, 1], got {reward}")
    stamp = inputs.text("Timestamp", obj.get("Timestamp"))
    ts = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    event_id = obj.get("EventId", "")
    return LoggedRecord(
        inputs.text("EventId", event_id) if isinstance(event_id, str) else str(event_id),
        ts,
        _features(c, max_features),
        arms,
        arms[index].name,
        probability,
        reward,
    )


def _value(value: Any) -> str:
    return inputs.kind(value) if not isinstance(value, float) else f"{value:g}"


def read_log(lines: Iterable[str], max_features: int | None = None) -> list[LoggedRecord]:
    """Records from DSJSON lines (blank lines skipped); errors name the line number."""
    return list(_iter_records(enumerate(lines, 1), max_features))


def read_log_file(f: IO[bytes], max_features: int | None = None) -> list[LoggedRecord]:
    """``read_log`` of a file opened in binary: a line is at most ``inputs.MAX_LINE_BYTES``."""
    return list(iter_log_file(f, max_features))


def iter_log_file(f: IO[bytes], max_features: int | None = None) -> Iterator[LoggedRecord]:
    """``read_log_file``, one record at a time: a reader that needs one at a time (``train``)
    holds no more than one in memory (a record takes about 3 KB, twice its line)."""
    return _iter_records(inputs.numbered_lines(f), max_features)


def _iter_records(
    lines: Iterable[tuple[int, str | inputs.LineError]], max_features: int | None
) -> Iterator[LoggedRecord]:
    for number, line in lines:
        if isinstance(line, inputs.LineError):
            raise line
        if not line.strip():
            continue
        yield _record(number, line, max_features)


def _record(number: int, line: str, max_features: int | None) -> LoggedRecord:
    try:
        return record_from_dsjson(inputs.parse_json(line), max_features)
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise inputs.LineError(number, f"not an exported DSJSON event ({e})") from e


def record_from_event(event: Event, arms: Sequence[Arm]) -> LoggedRecord:
    """A record straight from a store event, through the same mapping as the export."""
    return record_from_dsjson(to_dsjson(event, {arm.name: arm for arm in arms}))


async def load_records(store: Store, arms: Sequence[Arm]) -> list[LoggedRecord]:
    """Every logged event of ``store`` as a record; unreadable entries (see
    ``records.to_event``) and events a file would be refused for (``record_from_dsjson``) are
    skipped, each logged as a warning."""
    records = []
    async for event in store.events():
        if isinstance(event, Unreadable):
            log.warning("evaluate skipped logged event %s: %s", event.stream_id, event.problem)
            continue
        try:
            records.append(record_from_event(event, arms))
        except ValueError as e:  # logged before the contract bounded it (a feature of 1e200)
            log.warning("evaluate skipped logged event %s: %s", event.stream_id, e)
    return records


def normalize_spec(spec: str) -> str:
    """Accept ``fixed:NAME`` for ``fixed:arm=NAME``; check the spec against the registry."""
    name, _, rest = spec.strip().partition(":")
    if name == "fixed" and rest and "=" not in rest:
        spec = f"fixed:arm={rest}"
    return str(parse_policy_spec(spec))


def check_fixed_arms(offered: Sequence[str], specs: Sequence[str]) -> None:
    """A ``fixed`` spec names an arm some event of the log offered (``offered``: every arm
    offered): else it would be estimated as each event's first arm, under the name given (a
    misspelt arm). No arms: no events, which ``estimate_policies`` says."""
    if not offered:
        return
    for spec in specs:
        parsed = parse_policy_spec(normalize_spec(spec))
        arm = parsed.params.get("arm")
        if parsed.name == "fixed" and arm not in offered:
            said = f"arm {arm!r} is in no event of the log" if arm else "names no arm"
            raise ValueError(f"policy {spec}: {said}; valid: {', '.join(offered)}")


def baseline_specs(arms: Sequence[Arm]) -> list[str]:
    """The baselines to compare against: uniform random, the static rule, each arm alone."""
    return ["random", "static", *(f"fixed:arm={arm.name}" for arm in arms)]


def target_pmfs(
    records: Sequence[LoggedRecord], spec: str, settings: Settings | None = None, seed: int = 0
) -> list[dict[str, float]]:
    """The candidate's pmf at each event, learning from the log as it goes (progressive)."""
    policy = build_policy(normalize_spec(spec), settings, seed)
    pmfs = []
    for r in records:
        pmfs.append(dict(policy.choose(r.x, r.arms).probabilities))
        policy.learn(r.x, r.arms, r.arm, r.probability, r.reward)
    return pmfs


class _Replay:
    """The replay of ``specs`` over records given in time order, one at a time (``step``). The
    reward model and the candidates (each its own model and random generator) see each event in
    turn, side by side, except the Vowpal Wabbit candidates, which replay the same records in a
    pass of their own afterwards (``apart``): in step with the reward model a VW model ran at
    about three quarters of its speed. What is kept of an event is the estimators' inputs, as
    float64: its logged propensity, reward and predicted reward (24 bytes), per candidate its
    probability of the logged arm and DR's direct term (16 bytes), and, with a VW candidate,
    the reward predicted for each of its arms (8 bytes an arm). ``vw_later``: the VW candidates
    are built when their pass starts (a replay that may be dropped builds no VW model)."""

    def __init__(
        self, specs: Sequence[str], settings: Settings | None, seed: int, vw_later: bool = False
    ) -> None:
        self.specs = list(specs)
        self._normalized = [normalize_spec(spec) for spec in specs]
        self._settings, self._seed = settings, seed
        vw = [parse_policy_spec(spec).name in VW_POLICIES for spec in self._normalized]
        self._apart = [k for k in range(len(specs)) if vw[k]]
        self._beside = [k for k in range(len(specs)) if not vw[k]]
        self.policies: dict[int, Policy] = {}
        self._build(self._beside if vw_later else range(len(specs)))
        self._model = RewardModel()
        self._logged, self._rewards, self._predicted = array("d"), array("d"), array("d")
        self._target = [array("d") for _ in specs]
        self._direct = [array("d") for _ in specs]
        self._values = array("d")  # rhat(x_i, a) for each arm a of each event, for the pass apart

    def _build(self, candidates: Iterable[int]) -> None:
        for k in candidates:
            if k not in self.policies:
                self.policies[k] = build_policy(self._normalized[k], self._settings, self._seed)

    @property
    def events(self) -> int:
        return len(self._logged)

    def step(self, r: LoggedRecord) -> None:
        """The next event in time order: the reward model and the candidates beside it."""
        preds = self._model.predict(r.x, [arm.name for arm in r.arms])  # rhat(x_i, a), every a
        self._model.learn(r.x, r.arm, r.reward)  # after predicting: progressive, never its own
        self._logged.append(r.probability)
        self._rewards.append(r.reward)
        self._predicted.append(preds[r.arm])
        if self._apart:
            self._values.extend(preds.values())  # in the order of r.arms
        for k in self._beside:
            self._candidate(k, r, preds.items())

    def _candidate(self, k: int, r: LoggedRecord, preds: Iterable[tuple[str, Any]]) -> None:
        pmf = dict(self.policies[k].choose(r.x, r.arms).probabilities)
        self.policies[k].learn(r.x, r.arms, r.arm, r.probability, r.reward)
        self._target[k].append(pmf.get(r.arm, 0.0))
        self._direct[k].append(sum(pmf.get(a, 0.0) * q for a, q in preds))

    def apart(self, ordered: Iterable[LoggedRecord]) -> None:
        """The VW candidates' pass: ``ordered`` gives again the records ``step`` was given."""
        if not self._apart:
            return
        self._build(self._apart)
        values = np.frombuffer(self._values, dtype=np.float64)
        read = at = 0
        for r in ordered:
            names = [arm.name for arm in r.arms]
            preds = list(zip(names, values[at : at + len(names)], strict=False))
            read, at = read + 1, at + len(names)
            for k in self._apart:
                self._candidate(k, r, preds)
        _check_read(read, self.events)

    def estimates(self) -> dict[str, dict[str, Estimate]]:
        """Each spec's IPS, SNIPS and DR over the events replayed."""
        logged = np.maximum(np.frombuffer(self._logged, dtype=np.float64), MIN_PROPENSITY)
        rewards = np.frombuffer(self._rewards, dtype=np.float64)
        predicted = np.frombuffer(self._predicted, dtype=np.float64)
        results = {}
        for k, spec in enumerate(self.specs):
            target = np.frombuffer(self._target[k], dtype=np.float64)
            direct = np.frombuffer(self._direct[k], dtype=np.float64)
            results[spec] = {
                "ips": ips(target, logged, rewards),
                "snips": snips(target, logged, rewards),
                "dr": doubly_robust(target, logged, rewards, predicted, direct),
            }
        return results


def _replay(
    replay: _Replay, ordered: Callable[[], Iterable[LoggedRecord]], n: int
) -> dict[str, dict[str, Estimate]]:
    """The estimates of ``replay`` (fresh) over the ``n`` records ``ordered()`` gives (in time
    order, the same at each call)."""
    for r in ordered():
        replay.step(r)
    _check_read(replay.events, n)
    replay.apart(ordered())
    return replay.estimates()


def _check_read(read: int, n: int) -> None:
    if read != n:
        raise ValueError(f"the log changed while it was read: {read} events, not {n}")


def estimate_policies(
    records: Sequence[LoggedRecord],
    specs: Sequence[str],
    settings: Settings | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Estimate]]:
    """IPS, SNIPS and DR estimates with 95% intervals of each policy spec, keyed by the spec.

    ``records`` come from ``read_log`` (an exported file) or ``load_records`` (the store);
    they are replayed in decision-time order. ``specs`` are policy specs as ``BANDIT_POLICY``
    takes them (``egreedy:epsilon=0.1``, ``linucb``, ``static``, ``fixed:7b``, ...); ``settings``,
    when given, supplies defaults the spec omits (``BANDIT_EPSILON``, ...) as in the service.
    The result maps each spec as given to ``{"ips": Estimate, "snips": ..., "dr": ...}``.
    ``evaluate_file`` gives the same from a file without holding its records.
    """
    if not records:
        raise ValueError("the log has no events to evaluate")
    for spec in specs:
        normalize_spec(spec)  # fail on a misspelt spec before any replay
    ordered = sorted(records, key=lambda r: r.ts)
    return _replay(_Replay(specs, settings, seed), lambda: ordered, len(ordered))


@dataclass(frozen=True, slots=True)
class LogSummary:
    """What ``evaluate`` says of a log besides the estimates, from one read of it."""

    events: int
    logged: Estimate | None  # the logging policy's mean reward (``logged_value``); None: empty
    clipped: int  # events logged below ``MIN_PROPENSITY`` (``clipped``)
    first_arms: tuple[Arm, ...]  # the first event's arms (for ``baseline_specs``)
    offered: tuple[str, ...]  # every arm some event offered, in order of first offer


@dataclass(frozen=True, slots=True)
class _Index:
    """Where each event's line starts, and its decision time; both in the file's order."""

    offsets: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]


def _scan(
    f: IO[bytes], max_features: int | None, start: Callable[[tuple[Arm, ...]], _Replay]
) -> tuple[LogSummary, _Index, _Replay | None]:
    """Read the whole log once, checking every line as ``read_log_file`` does (an error names
    its line), keeping of each event only its line's offset, its time and its reward; and step
    the replay that ``start(the first event's arms)`` gives through the events in time order
    (``sorted``'s: ties in the file's order), holding back up to ``HELD_EVENTS`` of them to put
    them in order. An event earlier than one replayed already, or a replay that raises, ends
    it: the replay returned is None, and ``evaluate_file`` replays from the index instead
    (which raises that error where it would)."""
    offsets, stamps, rewards = array("q"), array("d"), array("d")
    clipped_events = 0
    first: tuple[Arm, ...] = ()
    offered: dict[str, None] = {}
    replay: _Replay | None = None
    held: list[tuple[float, int, int, LoggedRecord]] = []  # time, number, size, record
    held_bytes, replayed_upto = 0, -math.inf
    replaying = True  # no event earlier than one replayed, and the replay did not raise
    offset = f.tell()
    for number, line in inputs.numbered_lines(f):
        start_at, offset = offset, f.tell()
        if isinstance(line, inputs.LineError):
            raise line
        if not line.strip():
            continue
        r = _record(number, line, max_features)
        if replaying and r.ts < replayed_upto:  # replayed from the index instead
            replaying, replay = False, None
            held.clear()
        if replaying:
            try:
                replay = replay or start(r.arms)
                heapq.heappush(held, (r.ts, number, len(line), r))
                held_bytes += len(line)
                while len(held) > HELD_EVENTS or held_bytes > HELD_BYTES:
                    replayed_upto, _, size, earliest = heapq.heappop(held)
                    held_bytes -= size
                    replay.step(earliest)
            except Exception:  # the replay from the index raises it again, in its place
                replaying, replay = False, None
                held.clear()
        offsets.append(start_at)
        stamps.append(r.ts)
        rewards.append(r.reward)
        clipped_events += r.probability < MIN_PROPENSITY
        first = first or r.arms
        offered.update(dict.fromkeys(arm.name for arm in r.arms))
    try:
        while replay is not None and held:
            replay.step(heapq.heappop(held)[3])
    except Exception:
        replay = None
    summary = LogSummary(
        len(offsets),
        _on_policy(np.frombuffer(rewards, dtype=np.float64)) if len(offsets) else None,
        clipped_events,
        first,
        tuple(offered),
    )
    index = _Index(np.frombuffer(offsets, dtype=np.int64), np.frombuffer(stamps, dtype=np.float64))
    return summary, index, replay


def _reread(
    f: IO[bytes], offsets: npt.NDArray[np.int64], max_features: int | None
) -> Iterator[LoggedRecord]:
    """The records whose lines start at ``offsets``, parsed again, one at a time."""
    for at in offsets:  # not .tolist(): a list of Python ints would take 36 bytes an event
        f.seek(int(at))
        try:
            yield record_from_dsjson(
                inputs.parse_json(f.readline(inputs.MAX_LINE_BYTES + 1).decode("utf-8")),
                max_features,
            )
        except (ValueError, KeyError, TypeError, OverflowError) as e:
            raise ValueError(f"the log changed while it was read ({e})") from e


def evaluate_file(
    path: str | Path,
    specs: Sequence[str] | None,
    settings: Settings | None = None,
    seed: int = 0,
) -> tuple[LogSummary, dict[str, dict[str, Estimate]]]:
    """``estimate_policies`` of the log at ``path`` (a file that can be read twice; see
    ``inputs.reopenable``), with the same estimates to the last digit, in memory that does not
    hold the records: a first read checks every line and keeps each event's offset, time and
    reward (24 bytes), and replays the events in time order as they come, up to
    ``HELD_EVENTS`` of them held back to put them in order (``_scan``); an event earlier than
    one replayed drops that replay, and the events are replayed once the read is done, read
    again in time order (an index of 8 bytes). The Vowpal Wabbit candidates read the events
    once more, in a pass of their own. The replay keeps ``_Replay``'s arrays: 56 bytes an
    event, 16 per candidate and, with a VW candidate, 8 per arm offered. ``specs`` None:
    ``baseline_specs`` of the first event's arms; a ``fixed`` spec must name an arm the log
    offered."""
    max_features = settings.max_features if settings is not None else None

    def start(first_arms: tuple[Arm, ...], vw_later: bool = True) -> _Replay:
        specs_of = list(specs) if specs else baseline_specs(first_arms)
        return _Replay(specs_of, settings, seed, vw_later)

    with open(path, "rb") as f:  # bounded lines, each decoded on its own
        summary, index, replay = _scan(f, max_features, start)
        specs = list(specs) if specs else baseline_specs(summary.first_arms)
        check_fixed_arms(summary.offered, specs)
        if not summary.events:
            raise ValueError("the log has no events to evaluate")
        for spec in specs:
            normalize_spec(spec)  # fail on a misspelt spec before any replay
        # as sorted(): ties in the file's order
        ordered = index.offsets[np.argsort(index.ts, kind="stable")]
        if replay is not None:  # replayed during the read
            replay.apart(_reread(f, ordered, max_features))
            return summary, replay.estimates()
        return summary, _replay(
            start(summary.first_arms, vw_later=False),
            lambda: _reread(f, ordered, max_features),
            summary.events,
        )


def clipped(records: Sequence[LoggedRecord]) -> int:
    """How many events logged a propensity below ``MIN_PROPENSITY``, which the estimates
    weigh as ``MIN_PROPENSITY``: for a policy that picks their arms, biased low."""
    return sum(r.probability < MIN_PROPENSITY for r in records)


def logged_value(records: Sequence[LoggedRecord]) -> Estimate:
    """The logging policy's own average reward (on-policy), with its normal 95% interval."""
    return _on_policy(np.array([r.reward for r in records]))


def _on_policy(rewards: npt.NDArray[np.float64]) -> Estimate:
    ones = np.ones(len(rewards))
    return ips(ones, ones, rewards)
