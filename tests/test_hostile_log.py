"""Logged events no reader expects never break a read path.

Before the request contract refused them, ``{"latency_ms": Infinity}`` was stored (as null) and
``1e308`` as is; a log can also hold entries written by hand or by another version. Here such
entries go straight into the Redis stream, then /stats, ``status``, ``export``, ``evaluate``, a
restart and the running learner read them: each skips what it cannot use and counts it.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from bandit_router.cli.main import main
from bandit_router.features import extract
from bandit_router.offline.evaluate import baseline_specs, estimate_policies, load_records, read_log
from bandit_router.offline.export import export_log
from bandit_router.policies.base import Arm
from bandit_router.service.learner import load_model
from bandit_router.settings import Settings
from bandit_router.store.keys import KEY_EVENTS, KEY_STATS
from bandit_router.store.records import Event, Unreadable, to_event
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect
from tests.conftest import ClientFactory, SettingsFactory, use_settings

GOOD_EVENTS = 6  # logged through the service, each with latency_ms 400


def _decision(**changes: Any) -> dict[str, Any]:
    """A decision as the router stores it, with ``changes``."""
    d = {
        "event_id": f"hostile-{time.monotonic_ns()}",
        "features": extract("what is a cat?", {"tier": "pro"}).to_json(),
        "arms": ["4b", "7b", "14b"],
        "arm": "7b",
        "probability": 0.8,
        "probabilities": {"4b": 0.1, "7b": 0.8, "14b": 0.1},
        "policy": "squarecb",
        "model_version": 0,
        "ts": time.time(),
    }
    d.update(changes)
    return d


def _reward(parts: dict[str, Any], value: Any = 0.5) -> dict[str, Any]:
    return {"parts": parts, "reward": value, "ts": time.time(), "default": False}


def _entry(d: Any, r: Any) -> dict[bytes, bytes]:
    def raw(value: Any) -> bytes:
        return value if isinstance(value, bytes) else orjson.dumps(value)

    return {b"d": raw(d), b"r": raw(r)}


# Usable, with values left out: (decision, reward, values dropped).
SANITISED: list[tuple[Any, Any, int]] = [
    (_decision(), _reward({"latency_ms": None, "accuracy": 1.0}), 1),  # Infinity, stored as null
    (_decision(), _reward({"latency_ms": 1e308, "accuracy": 1.0}), 1),
    (_decision(), _reward({"latency_ms": 1e308, "accuracy": 1.0}), 1),
    (_decision(), _reward({"latency_ms": 1e308, "accuracy": 1.0}), 1),
    (_decision(), _reward({"rating": "4", "cost_usd": -1, "latency_ms": [1]}), 3),
    (_decision(), _reward({"latency_ms": 400.0, "nonsense": 1}), 1),
    (_decision(), {"reward": 0.5}, 0),  # no parts at all
    (_decision(), _reward(None), 1),  # type: ignore[arg-type]
    (_decision(features={**_decision()["features"], "n": {"x": None, "y": 1e999}}), _reward({}), 2),
]
# No reader can use them.
UNREADABLE: list[tuple[Any, Any]] = [
    (b"{oops", _reward({})),
    (_decision(), b'{"parts":{"latency_ms":NaN},"reward":0.5}'),  # not JSON (NaN)
    ([1, 2], _reward({})),
    (_decision(), "a string"),
    (_decision(), _reward({}, None)),
    (_decision(), _reward({}, 5)),
    (_decision(), _reward({}, float("inf"))),  # orjson writes null
    (_decision(arm="70b"), _reward({})),
    (_decision(arms=[]), _reward({})),
    (_decision(probabilities={"7b": 0.8}), _reward({})),
    (_decision(probability=0), _reward({})),
    (_decision(probability=None), _reward({})),
    (_decision(ts=None), _reward({})),
    (_decision(ts=1e300), _reward({})),
    (_decision(event_id=None), _reward({})),
    (_decision(features=None), _reward({})),
    (_decision(features={"s": [0.1], "t": []}), _reward({})),
    (_decision(features={**_decision()["features"], "t": ["x"]}), _reward({})),
    ({k: v for k, v in _decision().items() if k != "arm"}, _reward({})),
]


def _write_hostile(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    key = KEY_EVENTS.format(p="{" + settings.key_prefix + "}", event_id="")
    for d, r, _ in SANITISED:
        client.xadd(key, {k.decode(): v for k, v in _entry(d, r).items()})
    for d, r in UNREADABLE:
        client.xadd(key, {k.decode(): v for k, v in _entry(d, r).items()})
    client.xadd(key, {"d": orjson.dumps(_decision())})  # no reward field
    client.xadd(key, {"x": b"1"})  # neither field
    stats = KEY_STATS.format(p="{" + settings.key_prefix + "}", event_id="")
    client.hset(stats, mapping={"events_learned": "lots", "skipped_no_reward": "inf", "x": "nan"})
    client.close()


READABLE = len(SANITISED)
UNREADABLE_N = len(UNREADABLE) + 2
DROPPED = sum(n for *_, n in SANITISED)


def _good_traffic(client: TestClient, n: int) -> None:
    for i in range(n):
        d = client.post("/choose", json={"query": f"what is item {i}?"}).json()
        body = {"event_id": d["event_id"], "accuracy": 1, "rating": 4, "latency_ms": 400}
        assert client.post("/reward", json=body).json()["status"] == "final"


def test_every_hostile_entry_is_sanitised_or_unreadable() -> None:
    for d, r, dropped in SANITISED:
        event = to_event(b"1-0", _entry(d, r))
        assert isinstance(event, Event), (d, r)
        assert event.dropped == dropped, (d, r)
        parts = event.reward["parts"]
        assert all(type(v) in (int, float) and 0 <= v <= 86_400_000 for v in parts.values())
    for d, r in UNREADABLE:
        assert isinstance(to_event(b"1-0", _entry(d, r)), Unreadable), (d, r)
    assert isinstance(to_event(b"1-0", {b"d": orjson.dumps(_decision())}), Unreadable)


def test_stats_status_and_the_learner_after_hostile_entries(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(policy="egreedy:epsilon=0.2")
    client = make_client(settings)
    _good_traffic(client, GOOD_EVENTS)
    _write_hostile(settings)

    response = client.get("/stats", params={"window": 100})
    assert response.status_code == 200, response.text
    recent = response.json()["recent"]
    assert recent["events"] == GOOD_EVENTS + READABLE
    assert recent["unreadable_events"] == UNREADABLE_N
    assert recent["dropped_values"] == DROPPED
    latencies = [a["latency_ms"] for a in recent["arms"].values() if a["latency_ms"] is not None]
    assert latencies and all(v == pytest.approx(400) for v in latencies)  # 1e308 left out
    assert recent["baselines"]["events"] == GOOD_EVENTS + READABLE

    # The running learner learns the usable entries and moves on past the others.
    _good_traffic(client, 1)
    assert client.get("/healthz").json()["model_version"] == GOOD_EVENTS + READABLE + 1

    use_settings(monkeypatch, settings)
    assert main(["status", "--window", "100"]) == 0
    out = capsys.readouterr().out
    assert f"window {GOOD_EVENTS + 1 + READABLE} events" in out
    assert f"unreadable entries {UNREADABLE_N}" in out


def test_a_log_of_many_arms_is_summarised_in_one_pass(
    make_client: ClientFactory, make_settings: SettingsFactory
) -> None:
    """Each arm the log names has its row in /stats, those no longer served too. One entry
    written by hand per arm, 8,000 of them, took 14 s to summarise (a pass over the window per
    arm; 1 s in one pass, not asserted: tests check behaviour, not timings)."""
    settings = make_settings(policy="egreedy")
    client = make_client(settings)
    _good_traffic(client, 1)
    r = redis.Redis.from_url(settings.redis_url or "")
    key = KEY_EVENTS.format(p="{" + settings.key_prefix + "}")
    pipe = r.pipeline()
    for i in range(8000):
        arm = f"gone-{i}"
        d = _decision(arm=arm, arms=[arm], probabilities={arm: 1.0}, probability=1.0)
        pipe.xadd(key, _entry(d, _reward({})))  # type: ignore[arg-type]
    pipe.execute()
    r.close()
    recent = client.get("/stats", params={"window": 8001}).json()["recent"]
    assert recent["events"] == 8001
    assert recent["arms"]["gone-7"]["events"] == 1
    assert recent["arms"]["gone-7"]["share"] == 1 / 8001
    assert sum(shares[0] or 0 for shares in recent["series"]["share"].values()) == pytest.approx(1)


def test_a_restart_replays_past_hostile_entries(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    _write_hostile(settings)

    async def scenario() -> None:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
        heard: list[int] = []
        model = await load_model(store, settings, progress=heard.append)
        assert model.version == READABLE
        assert heard[-1] == READABLE  # the events replayed: those learned
        assert model.stream_id == await store.last_stream_id()  # past the unreadable ones too
        await store.close()

    asyncio.run(scenario())


def test_export_and_evaluate_skip_what_they_cannot_read(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings()
    _good_traffic(make_client(settings), GOOD_EVENTS)
    _write_hostile(settings)

    out = io.StringIO()
    assert asyncio.run(export_log(settings, out)) == GOOD_EVENTS + READABLE
    records = read_log(out.getvalue().splitlines())
    assert len(records) == GOOD_EVENTS + READABLE
    arms = [Arm.from_spec(a) for a in settings.arms]

    async def from_store() -> int:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
        try:
            return len(await load_records(store, arms))
        finally:
            await store.close()

    assert asyncio.run(from_store()) == GOOD_EVENTS + READABLE
    estimates = estimate_policies(records, baseline_specs(arms))
    snips = [e["snips"].value for e in estimates.values()]
    assert all(math.isnan(v) or 0 <= v <= 1 for v in snips), snips  # nan: no event to weigh

    use_settings(monkeypatch, settings, ("redis_url", "data_dir", "key_prefix"))
    file = tmp_path / "log.dsjson"
    assert main(["export", "--out", str(file)]) == 0
    assert f"exported {GOOD_EVENTS + READABLE} events" in capsys.readouterr().err
    assert main(["evaluate", str(file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["logged"]["n"] == GOOD_EVENTS + READABLE


def test_evaluate_refuses_a_file_with_a_number_that_is_not_finite(tmp_path: Path) -> None:
    line = {
        "_label_cost": -0.5,
        "_label_probability": 0.5,
        "_labelIndex": 0,
        "Timestamp": "2026-01-01T00:00:00.000000Z",
        "c": {"N": {"x": float("inf")}, "_multi": [{"A": {"id": "4b"}}]},
    }
    with pytest.raises(ValueError, match=r"line 1: .*N\.x must be a finite number"):
        read_log([json.dumps(line)])


def test_evaluate_from_the_store_skips_an_event_a_file_would_be_refused_for(
    make_settings: SettingsFactory,
) -> None:
    """A feature of 1e200, logged before the contract bounded app numbers, is readable in the
    store but not as a file (``evaluate`` refuses it there): the store's reader skips it."""
    settings = make_settings()
    client = redis.Redis.from_url(settings.redis_url or "")
    key = KEY_EVENTS.format(p="{" + settings.key_prefix + "}", event_id="")
    huge = _decision(features={**_decision()["features"], "n": {"big": 1e200}})
    for d in (_decision(), huge):
        client.xadd(key, {k.decode(): v for k, v in _entry(d, _reward({"accuracy": 1.0})).items()})

    async def from_store() -> int:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)
        try:
            return len(await load_records(store, [Arm.from_spec(a) for a in settings.arms]))
        finally:
            await store.close()

    assert asyncio.run(from_store()) == 1
