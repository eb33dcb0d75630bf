"""What the store reads back: logged events, snapshots, reward parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    pass


def decode_parts(raw: dict[bytes, bytes]) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in raw.items()}


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)  # compact JSON, as json.dumps(separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Event:
    """A joined event from the training log: the decision and its final reward."""

    stream_id: str
    decision: dict[str, Any]
    reward: dict[str, Any]  # {"parts": {...}, "reward": float, "ts": float}


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


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """Stream ids as numbers, for ordering (``"0-0"`` is before every event)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def to_event(stream_id: bytes, fields: dict[bytes, bytes]) -> Event:
    return Event(stream_id.decode(), orjson.loads(fields[b"d"]), orjson.loads(fields[b"r"]))


def to_events(reply: Any) -> list[Event]:
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
