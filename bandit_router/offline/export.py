"""Export: the joined-event log as DSJSON, the format ``vw --dsjson`` and off-policy tools read.

One JSON object per line and per event. VW reads the label (``_label_cost`` = -reward,
``_label_probability``, ``_label_Action`` 1-based, ``_labelIndex`` 0-based), the logged pmf
(``a``: action ids, the chosen one first; ``p``: their probabilities) and the context ``c``:
shared namespaces of the same meaning as ``policies.vw.shared_line`` (``Q`` query statistics,
``W`` hashed words, ``N`` app numbers, ``C`` app strings, which VW reads as ``key`` + ``value``)
and ``_multi``, one entry per eligible arm with its namespace ``A`` (``id``, as
``policies.vw.arm_line``). VW ignores keys that start with ``_``; ``_arm`` keeps each arm's raw
configuration, so ``evaluate`` rebuilds exactly the ``Features`` and ``Arm`` the service saw.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from bandit_router.features import QUERY_STATS, Features
from bandit_router.policies.base import Arm
from bandit_router.settings import Settings
from bandit_router.store.records import Event, Unreadable
from bandit_router.store.repository import Store, open_store

log = logging.getLogger("bandit_router")


def timestamp(ts: float) -> str:
    """DSJSON's ``Timestamp``: ISO 8601 in UTC with microseconds, e.g. 2026-11-23T08:00:00.5Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


APP_RAW = "_app"  # the app features as the client named them, when a name had to change


def vw_key(key: str) -> str:
    """An app feature's name as VW may read it. VW takes some keys that start with ``_`` as its
    own wherever they stand (``_label_cost`` in ``N`` replaced the event's cost, ``_multi`` in
    ``C`` dropped its actions), and a client names the features: such a name, and one that
    starts with ``~``, gets a ``~`` in front (no two names become one)."""
    return f"~{key}" if key.startswith(("_", "~")) else key


def shared_namespaces(x: Features) -> dict[str, dict[str, Any]]:
    """The query's namespaces; statistics that are 0 are left out, as in ``shared_line``. When
    an app feature's name had to change for VW (``vw_key``), ``_app`` (which VW skips) keeps
    ``N`` and ``C`` as sent, for ``evaluate`` and ``train``."""
    namespaces: dict[str, dict[str, Any]] = {
        "Q": {name: v for name, v in zip(QUERY_STATS, x.stats, strict=True) if v}
    }
    if x.tokens:
        namespaces["W"] = {str(t): 1 for t in x.tokens}
    app: dict[str, dict[str, Any]] = {"N": dict(x.numeric), "C": dict(x.categorical)}
    changed = False
    for name, features in app.items():
        if features:
            namespaces[name] = {vw_key(k): v for k, v in features.items()}
            changed = changed or namespaces[name].keys() != features.keys()
    if changed:
        namespaces[APP_RAW] = {name: features for name, features in app.items() if features}
    return namespaces


def arm_entry(arm: Arm) -> dict[str, Any]:
    """One ``_multi`` entry: VW's namespace ``A`` plus the raw arm under ``_arm``."""
    raw: dict[str, Any] = {"name": arm.name}
    if arm.params_b is not None:
        raw["params_b"] = arm.params_b
    if arm.usd_per_mtok is not None:
        raw["usd_per_mtok"] = arm.usd_per_mtok
    return {"A": {"id": arm.name}, "_arm": raw}


def to_dsjson(event: Event, arms: Mapping[str, Arm]) -> dict[str, Any]:
    """One joined event as a DSJSON object; arms missing from ``arms`` get name-only features."""
    d = event.decision
    names: list[str] = list(d["arms"])
    chosen = names.index(d["arm"])
    order = [chosen, *(i for i in range(len(names)) if i != chosen)]
    probabilities: Mapping[str, float] = d["probabilities"]
    return {
        "_label_cost": 0.0 - float(event.reward["reward"]),  # VW minimises cost = -reward (no -0.0)
        "_label_probability": float(d["probability"]),
        "_label_Action": chosen + 1,
        "_labelIndex": chosen,
        "a": [i + 1 for i in order],
        "p": [float(probabilities[names[i]]) for i in order],
        "c": {
            **shared_namespaces(Features.from_json(d["features"])),
            "_multi": [arm_entry(arms.get(n) or Arm(n)) for n in names],
        },
        "EventId": d["event_id"],
        "Timestamp": timestamp(float(d["ts"])),
        "Version": "1",
        "VWState": {"m": str(d.get("model_version", ""))},
    }


def dsjson_line(event: Event, arms: Mapping[str, Arm]) -> str:
    return json.dumps(to_dsjson(event, arms), separators=(",", ":"))


async def export_events(store: Store, out: TextIO, arms: Sequence[Arm]) -> int:
    """Write every logged event of ``store`` to ``out``, oldest first; returns how many.

    Unreadable entries (see ``records.to_event``) are skipped, each logged as a warning."""
    by_name = {arm.name: arm for arm in arms}
    count = 0
    async for event in store.events():
        if isinstance(event, Unreadable):
            log.warning("export skipped logged event %s: %s", event.stream_id, event.problem)
            continue
        out.write(dsjson_line(event, by_name) + "\n")
        count += 1
    return count


async def export_log(settings: Settings, out: TextIO) -> int:
    """``bandit-router export``: the log of the Redis ``settings`` name (embedded if no URL)."""
    async with open_store(settings) as store:
        return await export_events(store, out, [Arm.from_spec(a) for a in settings.arms])
