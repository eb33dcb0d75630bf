"""What the store reads back: logged events, snapshots, reward parts."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bandit_router.features import QUERY_STATS
from bandit_router.rewards import PART_BOUNDS

# Decision times a reader can turn into a date (datetime's range: years 1..9999).
MAX_TS = 253_402_300_799.0


def read_decision(raw: bytes) -> dict[str, Any]:
    """A stored decision record as the reward path reads it, or ``ValueError`` saying why not: a
    JSON object whose ``ts`` is a time and ``arm`` a string, as ``scripts.DECISION_LUA`` checks it
    (the rest is checked where the log is read: ``to_event``)."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # the JSON Redis's cjson reads and orjson does not: NaN, Infinity, huge numbers
            record = json.loads(raw)
        except (ValueError, RecursionError):
            raise ValueError("not a JSON object") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if not _finite(record.get("ts")) or not 0 <= record["ts"] <= MAX_TS:
        raise ValueError("ts is not a time")
    if type(record.get("arm")) is not str:
        raise ValueError("arm is not a string")
    return record


def read_choice(raw: bytes) -> dict[str, Any]:
    """A stored decision as a repeated /choose answers it (``read_decision``, and every field of
    that answer as the service writes it), or ``ValueError`` saying why not."""
    record = read_decision(raw)
    problem = _decision_problem(record)
    if problem is not None:
        raise ValueError(problem)
    if type(record.get("policy")) is not str or type(record.get("model_version")) is not int:
        raise ValueError("decision: policy is not a string or model_version not an integer")
    return record


def decode_parts(raw: dict[bytes, bytes]) -> tuple[dict[str, float], list[bytes]]:
    """The reward parts of a parts hash, and the names of its fields that are not a part (written
    by hand): a name that is not a part's, a value that is not a number within its bounds."""
    parts: dict[str, float] = {}
    others: list[bytes] = []
    for name, value in raw.items():
        try:
            key, number = name.decode(), float(value)
        except ValueError:  # UnicodeDecodeError included
            others.append(name)
            continue
        if _in_bounds(key, number):
            parts[key] = number
        else:
            others.append(name)
    return parts, others


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)  # compact JSON, as json.dumps(separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Event:
    """A joined event from the training log: the decision and its final reward."""

    stream_id: str
    decision: dict[str, Any]
    reward: dict[str, Any]  # {"parts": {...}, "reward": float, "ts": float}
    dropped: int = 0  # values of the logged record left out as unreadable (see ``to_event``)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A logged event no reader can use: a malformed record, or a decision or reward value that
    is not what the service writes. Readers skip it (the learner moves its watermark past it)."""

    stream_id: str
    problem: str


Logged = Event | Unreadable


@dataclass(frozen=True, slots=True)
class Snapshot:
    policy: str
    version: int
    stream_id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Parts:
    """What ``add_parts`` found: the decision, every part received so far, the repeats."""

    decision: dict[str, Any]
    parts: dict[str, float]
    duplicates: list[str]
    logged: str | None = None  # the stream id, when these parts were logged as final at once


MAX_INT64 = 2**63 - 1  # a version or stream id part beyond it breaks Redis and orjson
_STREAM_ID = re.compile(r"([0-9]{1,19})-([0-9]{1,19})")


def is_stream_id(text: str) -> bool:
    """Whether ``text`` is a Redis stream id ``<ms>-<seq>``, each part within MAX_INT64."""
    match = _STREAM_ID.fullmatch(text)
    return match is not None and max(int(match[1]), int(match[2])) <= MAX_INT64


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """Stream ids as numbers, for ordering (``"0-0"`` is before every event)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def to_event(stream_id: bytes, fields: dict[bytes, bytes]) -> Logged:
    """One entry of the log, checked, so that nothing stored can break a read path.

    Logged before the request contract refused them, or written by hand, an entry may hold
    anything. The event is ``Unreadable`` unless it is JSON with a decision whose arm, eligible
    arms, propensities, time and features are as the service writes them, and a reward in
    [0, 1]. Values that only describe the event are sanitised instead: a reward part that is
    not a finite number within its bounds (``rewards.PART_BOUNDS``; null where the contract once
    let ``Infinity`` through, 1e308) and an app number feature that is not a finite number are
    left out, and counted in ``Event.dropped``.
    """
    sid = stream_id.decode(errors="replace")
    try:
        decision = orjson.loads(fields[b"d"])
        reward = orjson.loads(fields[b"r"])
    except (KeyError, orjson.JSONDecodeError) as e:
        return Unreadable(sid, f"not a logged event: {type(e).__name__} {e}")
    if not isinstance(decision, dict) or not isinstance(reward, dict):
        return Unreadable(sid, "not a logged event: its decision or reward is not a JSON object")
    problem = _decision_problem(decision) or _reward_problem(reward)
    if problem is not None:
        return Unreadable(sid, problem)
    dropped = 0
    parts = reward.get("parts", {})
    if not isinstance(parts, dict):
        reward, dropped = {**reward, "parts": {}}, 1
    elif "parts" not in reward or not all(_in_bounds(k, v) for k, v in parts.items()):
        kept = {k: v for k, v in parts.items() if _in_bounds(k, v)}
        reward, dropped = {**reward, "parts": kept}, len(parts) - len(kept)
    numbers = decision["features"].get("n", {})
    if not all(_finite(v) for v in numbers.values()):
        kept = {k: v for k, v in numbers.items() if _finite(v)}
        dropped += len(numbers) - len(kept)
        decision = {**decision, "features": {**decision["features"], "n": kept}}
    return Event(sid, decision, reward, dropped)


def read_logged_reward(raw: bytes) -> tuple[float, dict[str, float]] | None:
    """The reward and parts an event's done marker says it was logged with; None when it does
    not say (the ``1`` of a marker written before it held them, or anything written by hand)."""
    try:
        reward = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(reward, dict) or _reward_problem(reward) is not None:
        return None
    parts = reward.get("parts")
    if not isinstance(parts, dict) or not all(_in_bounds(k, v) for k, v in parts.items()):
        return None
    return float(reward["reward"]), {k: float(v) for k, v in parts.items()}


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _in_bounds(name: str, value: Any) -> bool:
    bounds = PART_BOUNDS.get(name)
    return bounds is not None and _finite(value) and bounds[0] <= value <= bounds[1]


def _decision_problem(d: dict[str, Any]) -> str | None:
    """Why ``d`` is not a decision the readers can use; None when it is."""
    arm, arms, probabilities = d.get("arm"), d.get("arms"), d.get("probabilities")
    if not isinstance(arms, list) or not arms or not all(type(a) is str for a in arms):
        return "decision: arms is not a non-empty list of names"
    if arm not in arms:
        return "decision: arm is not one of its arms"
    if not isinstance(probabilities, dict) or not all(
        _finite(probabilities.get(a)) and 0 <= probabilities[a] <= 1 for a in arms
    ):
        return "decision: probabilities is not a number in 0..1 for each of its arms"
    if not _finite(d.get("probability")) or not 0 < d["probability"] <= 1:
        return "decision: probability is not a number in (0, 1]"
    if not _finite(d.get("ts")) or not 0 <= d["ts"] <= MAX_TS:
        return "decision: ts is not a time"
    if type(d.get("event_id")) is not str:
        return "decision: event_id is not a string"
    x = d.get("features")
    if not isinstance(x, dict):
        return "decision: features is not an object"
    stats, tokens = x.get("s"), x.get("t", [])
    if not isinstance(stats, list) or len(stats) != len(QUERY_STATS):
        return f"decision: features.s is not a list of {len(QUERY_STATS)} numbers"
    if not all(_finite(v) for v in stats):
        return f"decision: features.s is not a list of {len(QUERY_STATS)} numbers"
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        return "decision: features.t is not a list of integers"
    if not isinstance(x.get("n", {}), dict) or not isinstance(x.get("c", {}), dict):
        return "decision: features.n or features.c is not an object"
    return None


def _reward_problem(r: dict[str, Any]) -> str | None:
    if not _finite(r.get("reward")) or not 0 <= r["reward"] <= 1:
        return "reward: not a number in 0..1"
    return None


Entry = tuple[bytes, dict[bytes, bytes]]  # a log entry as redis-py reads it: id, fields


def decode_entries(rows: Sequence[Entry]) -> list[Logged]:
    return [to_event(sid, fields) for sid, fields in rows]


def to_events(reply: Any) -> list[Logged]:
    """The events of XREADGROUP's raw reply: {stream: entries} in RESP3, [[stream, entries]] in
    RESP2, nothing when no event is new; an entry is [id, [field, value, ...]]."""
    if not reply:
        return []
    (entries,) = reply.values() if isinstance(reply, dict) else [reply[0][1]]
    return [
        to_event(sid, dict(zip(flat[::2], flat[1::2], strict=True)))
        for sid, flat in entries
        if flat
    ]
