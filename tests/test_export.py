"""DSJSON export: exact output, exact round trip to records, and real VW learning from it."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import vowpalwabbit
from fastapi.testclient import TestClient

from bandit_router.cli.main import main
from bandit_router.features import Features
from bandit_router.offline.evaluate import (
    LoggedRecord,
    estimate_policies,
    load_records,
    read_log,
    record_from_dsjson,
)
from bandit_router.offline.export import export_events, export_log, to_dsjson
from bandit_router.policies.base import Arm, ParamValue
from bandit_router.policies.vw import VW_POLICIES, vw_arguments
from bandit_router.store.records import Event
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect
from tests.conftest import ClientFactory, SettingsFactory
from tests.live import serve

__all__ = ["serve"]  # the fixture, imported
CB_LABEL = vowpalwabbit.LabelType.CONTEXTUAL_BANDIT

X = Features(
    stats=(0.5, 0.25, 0, 1, 0, 0, 0, 0, 0, 0),
    tokens=(22, 11),
    numeric={"n": 2.0, "zero": 0.0},
    categorical={"tier": "pro"},
)
ARMS = {"4b": Arm("4b", 4, 0.1), "14b": Arm("14b", 14, 0.4)}
EVENT = Event(
    "1-0",
    {
        "event_id": "e1",
        "features": X.to_json(),
        "arms": ["4b", "14b", "new"],
        "arm": "14b",
        "probability": 0.9,
        "probabilities": {"4b": 0.05, "14b": 0.9, "new": 0.05},
        "policy": "egreedy",
        "model_version": 3,
        "ts": 1795420800.5,
    },
    {"parts": {"accuracy": 1.0}, "reward": 0.75, "ts": 1795420801.0},
)


def test_event_to_dsjson_exact() -> None:
    assert to_dsjson(EVENT, ARMS) == {
        "_label_cost": -0.75,
        "_label_probability": 0.9,
        "_label_Action": 2,
        "_labelIndex": 1,
        "a": [2, 1, 3],
        "p": [0.9, 0.05, 0.05],
        "c": {
            "Q": {"chars": 0.5, "words": 0.25, "code": 1},
            "W": {"22": 1, "11": 1},
            "N": {"n": 2.0, "zero": 0.0},
            "C": {"tier": "pro"},
            "_multi": [
                {
                    "A": {"id": "4b"},
                    "_arm": {"name": "4b", "params_b": 4, "usd_per_mtok": 0.1},
                },
                {
                    "A": {"id": "14b"},
                    "_arm": {"name": "14b", "params_b": 14, "usd_per_mtok": 0.4},
                },
                {"A": {"id": "new"}, "_arm": {"name": "new"}},
            ],
        },
        "EventId": "e1",
        "Timestamp": "2026-11-23T08:00:00.500000Z",
        "Version": "1",
        "VWState": {"m": "3"},
    }


def test_records_rebuild_the_features_and_arms_exactly() -> None:
    record = record_from_dsjson(json.loads(json.dumps(to_dsjson(EVENT, ARMS))))
    assert record.x == X
    assert record.arms == (ARMS["4b"], ARMS["14b"], Arm("new"))
    assert (record.event_id, record.arm, record.probability, record.reward) == (
        "e1",
        "14b",
        0.9,
        0.75,
    )
    assert record.ts == 1795420800.5


def test_a_broken_line_is_named() -> None:
    bad = dict(to_dsjson(EVENT, ARMS), _labelIndex=7)
    with pytest.raises(ValueError, match=r"line 2: .*_labelIndex 7 is outside the 3 actions"):
        read_log(["", json.dumps(bad)])
    with pytest.raises(ValueError, match=r"line 1: .*must be in \(0, 1\]"):
        read_log([json.dumps(dict(to_dsjson(EVENT, ARMS), _label_probability=0))])


CODE = "Write a Python function that merges two sorted lists; return the merged list"
LOOKUP = "What is the definition of the word zebra"


def _log_planted_rule(client: TestClient, rounds: int) -> None:
    """Code queries pay on 14b, lookups on 4b: a rule the exported file must let VW learn."""
    for i in range(rounds):
        query = CODE if i % 2 else LOOKUP
        d = client.post("/choose", json={"query": f"{query} {i}", "features": {"team": "a"}}).json()
        good = d["arm"] == ("14b" if query == CODE else "4b")
        reward = {"event_id": d["event_id"], "reward": 1.0 if good else 0.0}
        assert client.post("/reward", json=reward).status_code == 200


def _vw_pmf(vw: vowpalwabbit.Workspace, line: str) -> list[float]:
    return [float(p) for p in vw.predict(line)]


def test_vw_learns_from_an_exported_file(
    make_settings: SettingsFactory, make_client: ClientFactory, tmp_path: Path
) -> None:
    # A fixed word key: with the service's own random one the words hash differently in every
    # run, and the two estimates below, near each other, were once 0.018 apart.
    settings = make_settings(policy="random", hash_key="test_export: a fixed word key")
    _log_planted_rule(make_client(settings), 160)
    path = tmp_path / "log.dsjson"
    with path.open("w") as out:
        assert asyncio.run(export_log(settings, out)) == 160
    lines = path.read_text().splitlines()
    # The registry's own defaults, so VW here learns exactly as evaluate's egreedy does.
    params: dict[str, ParamValue] = {**VW_POLICIES["egreedy"].defaults, "epsilon": 0.05}
    vw = vowpalwabbit.Workspace(arg_list=[*vw_arguments("egreedy", params, 1), "--dsjson"])
    code_line = next(line for line in lines if '"code":1' in line)
    lookup_line = next(line for line in lines if '"lookup":1' in line)
    assert _vw_pmf(vw, code_line) == pytest.approx([1 / 3] * 3)  # nothing learned yet
    ips_terms = []
    for line in lines:  # progressive validation: predict, then learn
        label = json.loads(line)
        pmf = _vw_pmf(vw, line)[label["_labelIndex"]]
        ips_terms.append(pmf / label["_label_probability"] * -label["_label_cost"])
        vw.learn(line)
    names = [a.name for a in settings.arms]  # every exported event lists the arms in this order
    assert _vw_pmf(vw, code_line)[names.index("14b")] > 0.9
    assert _vw_pmf(vw, lookup_line)[names.index("4b")] > 0.9
    vw.finish()
    # evaluate rebuilds what the service saw, so its replay of egreedy matches VW's own on the file
    ours = estimate_policies(read_log(lines), ["egreedy:epsilon=0.05"])["egreedy:epsilon=0.05"]
    assert ours["ips"].value == pytest.approx(sum(ips_terms) / len(ips_terms), abs=0.01)


def test_cli_export_then_evaluate(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(policy="random")
    _log_planted_rule(make_client(settings), 60)
    monkeypatch.setenv("BANDIT_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("BANDIT_KEY_PREFIX", settings.key_prefix)
    path = tmp_path / "log.dsjson"
    assert main(["export", "--out", str(path)]) == 0
    assert "exported 60 events" in capsys.readouterr().err
    assert main(["evaluate", str(path), "--policies", "fixed:14b,static,egreedy", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["logged"]["n"] == 60
    assert set(result["policies"]) == {"fixed:14b", "static", "egreedy"}
    for estimates in result["policies"].values():
        assert set(estimates) == {"ips", "snips", "dr"}
        assert all(e["low"] <= e["value"] <= e["high"] for e in estimates.values())
    assert main(["evaluate", str(path)]) == 0  # the baselines, as a table
    table = capsys.readouterr().out
    assert "fixed:arm=4b" in table and "static" in table and "snips" in table


def test_cli_evaluate_names_a_bad_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.dsjson"
    path.write_text(json.dumps(to_dsjson(EVENT, ARMS)) + "\n")
    assert main(["evaluate", str(path), "--policies", "egredy"]) == 2
    assert "unknown policy 'egredy'; valid: egreedy" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


def test_cli_evaluate_and_simulate_keep_the_services_feature_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log or replay file with more app features than /choose takes (BANDIT_MAX_FEATURES)
    is refused, naming the limit, as `train` refuses it: the service could not have decided so."""
    path = tmp_path / "log.dsjson"
    path.write_text(json.dumps(to_dsjson(EVENT, ARMS)) + "\n")  # 3 app features
    replay = tmp_path / "replay.jsonl"
    row = {"query": "q", "context": {"a": 1, "b": 2, "c": 3}, "outcomes": {"x": {"accuracy": 1}}}
    replay.write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("BANDIT_MAX_FEATURES", "3")
    assert main(["evaluate", str(path), "--policies", "static"]) == 0
    assert main(["simulate", str(replay), "--policies", "random", "--seeds", "1"]) == 0
    assert "skyline" not in capsys.readouterr().out  # no half of one row to train on
    monkeypatch.setenv("BANDIT_MAX_FEATURES", "2")
    assert main(["evaluate", str(path), "--policies", "static"]) == 2
    assert "has 3 features; the limit is 2 (BANDIT_MAX_FEATURES)" in capsys.readouterr().err
    assert main(["simulate", str(replay), "--policies", "random", "--seeds", "1"]) == 2
    assert "has 3 features; the limit is 2 (BANDIT_MAX_FEATURES)" in capsys.readouterr().err


def test_the_store_and_the_exported_file_give_the_same_records(
    make_settings: SettingsFactory, make_client: ClientFactory
) -> None:
    settings = make_settings(policy="random")
    _log_planted_rule(make_client(settings), 20)
    arms = [Arm.from_spec(a) for a in settings.arms]

    async def both() -> tuple[list[LoggedRecord], str]:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 1000)
        out = io.StringIO()
        await export_events(store, out, arms)
        records = await load_records(store, arms)
        await store.close()
        return records, out.getvalue()

    records, text = asyncio.run(both())
    assert records == read_log(text.splitlines())
    assert len(records) == 20 and {r.probability for r in records} == {1 / 3}
    assert records[0].x.categorical == {"team": "a"}


def test_export_writes_nothing_for_an_empty_log(make_settings: SettingsFactory) -> None:
    out = io.StringIO()
    assert asyncio.run(export_log(make_settings(), out)) == 0
    assert out.getvalue() == ""


# App features a client names as Vowpal Wabbit's own DSJSON keys. VW reads some of them wherever
# they stand: in ``c.N``, ``_label_cost`` replaced the logged cost (the reward), and
# ``_label_probability`` and ``_label_Action`` the propensity and the chosen action; in ``c.C``,
# ``_multi`` or ``_labelIndex`` left the event with no actions and no label.
VW_KEYS: dict[str, Any] = {
    "_label_cost": 0,
    "_label_probability": 0.001,
    "_label_Action": 0,
    "_labelIndex": "0",
    "_multi": "x",
    "_label": 1,
    "~_label_cost": 5,  # the escaped form of another key, sent as is
    "tier": "pro",
}


def _vw_labels(line: str) -> list[list[tuple[int, float, float]]]:
    """The label of each example VW reads from one DSJSON line."""
    vw = vowpalwabbit.Workspace("--cb_explore_adf --dsjson --quiet")
    try:
        examples = vw.parse(line, vowpalwabbit.LabelType.CONTEXTUAL_BANDIT)
        labels = [
            [(c.action, c.cost, c.probability) for c in e.get_label(CB_LABEL).costs]
            for e in examples
        ]
        vw.finish_example(examples)
    finally:
        vw.finish()
    return labels


def test_app_features_named_as_vw_keys_change_no_label_in_the_export(
    serve: Callable[..., str],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = f"test-vw-keys-{uuid.uuid4().hex[:8]}"
    base = serve(policy="random", key_prefix=prefix)
    decisions = []
    with httpx.Client(base_url=base) as http:
        for i, (key, value) in enumerate(VW_KEYS.items()):
            body = {"query": "what is a cat", "features": {key: value}, "event_id": f"vw.{i}"}
            d = http.post("/choose", json=body).json()
            decisions.append(d)
            assert http.post("/reward", json={"event_id": d["event_id"], "reward": 0.8}).is_success
        d = http.post("/choose", json={"query": "q", "features": VW_KEYS, "event_id": "vw.all"})
        decisions.append(d.json())
        assert http.post("/reward", json={"event_id": "vw.all", "reward": 0.8}).is_success
    monkeypatch.setenv("BANDIT_REDIS_URL", redis_url)
    monkeypatch.setenv("BANDIT_KEY_PREFIX", prefix)
    path = tmp_path / "log.dsjson"
    assert main(["export", "--out", str(path)]) == 0
    lines = path.read_text().splitlines()
    assert len(lines) == len(decisions)
    for line, d in zip(lines, decisions, strict=True):
        labels = _vw_labels(line)
        assert len(labels) == 4, (d["event_id"], labels)  # shared, then the three arms
        logged = json.loads(line)
        chosen = logged["_labelIndex"] + 1  # the examples after the shared one, in arm order
        label = (logged["_label_Action"], pytest.approx(-0.8), pytest.approx(d["probability"]))
        assert labels[chosen] == [label], (d["event_id"], labels)
        assert [labels[i] for i in (1, 2, 3) if i != chosen] == [[], []], d["event_id"]
    # evaluate reads the features the service decided with, the keys as the client sent them
    sent = [dict([item]) for item in VW_KEYS.items()] + [VW_KEYS]
    for record, features in zip(read_log(lines), sent, strict=True):
        app = {**record.x.numeric, **record.x.categorical}
        assert app == {k: float(v) if not isinstance(v, str) else v for k, v in features.items()}
