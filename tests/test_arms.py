"""Arms added to or removed from a running deployment (a settings change and a restart): a new
arm gets traffic within a bounded number of events and is judged on its own results; a removed
one is never chosen again. Also the simulator's `--add-arm`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bandit_router.cli.main import main
from bandit_router.http.app import create_app
from bandit_router.rewards import RewardConfig
from bandit_router.sim import dataset, replay, report
from tests.conftest import SettingsFactory, use_settings

MEANS = {"a": 0.3, "b": 0.5, "c": 0.9}
QUERIES = ["summarise this support ticket", "write a sql query for sales", "translate to french"]


def _serve(client: TestClient, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` decisions, each rewarded from its arm's mean (Bernoulli accuracy); the arms chosen."""
    chosen = []
    for i in range(n):
        d = client.post("/choose", json={"query": QUERIES[i % len(QUERIES)]}).json()
        accuracy = float(rng.random() < MEANS[d["arm"]])
        reward = client.post("/reward", json={"event_id": d["event_id"], "accuracy": accuracy})
        assert reward.status_code == 200, reward.text
        chosen.append(d["arm"])
    return chosen


@pytest.mark.parametrize("policy", ["squarecb", "linucb"])
def test_an_added_arm_gets_traffic_and_a_removed_one_none(
    make_settings: SettingsFactory, policy: str
) -> None:
    rng = np.random.default_rng(11)
    common = {"policy": policy, "reward_weights": "accuracy=1"}
    first = make_settings(arms="a,b", **common)
    with TestClient(create_app(first)) as client:
        before = _serve(client, 300, rng)
    assert set(before) == {"a", "b"}

    added = first.model_copy(update={"arms": make_settings(arms="a,b,c").arms})
    with TestClient(create_app(added)) as client:
        assert client.get("/healthz").json()["model_version"] == 300  # kept what it learned
        after = _serve(client, 600, rng)
    first_c = after.index("c")
    assert first_c < 100, f"the new arm waited {first_c} events"
    assert after[300:].count("c") / 300 > 0.5  # the best arm, judged on its own results

    removed = first.model_copy(update={"arms": make_settings(arms="a,c").arms})
    with TestClient(create_app(removed)) as client:
        assert "b" not in _serve(client, 200, rng)
        refused = client.post("/choose", json={"query": "q", "arms": ["b"]})
        assert refused.status_code == 422 and refused.json()["field"] == "arms"


def test_the_simulator_adds_an_arm_mid_stream(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "r.jsonl"
    with path.open("w") as f:
        for i in range(2000):
            outcomes = {a: {"accuracy": float(rng.random() < m)} for a, m in MEANS.items()}
            f.write(json.dumps({"query": f"q {i % 7}", "outcomes": outcomes}) + "\n")
    prepared = dataset.prepare(dataset.load(path), RewardConfig({"accuracy": 1.0}))
    runs = replay.simulate(["squarecb", "linucb"], prepared, [0, 1], arrivals={"c": 1000})
    for name, rs in runs.items():
        c = prepared.arm_index["c"]
        assert all((r.arm[:1000] != c).all() for r in rs), name  # not eligible before
        seen = report.arrival(rs, c, 1000)
        assert all(w is not None and w < 100 for w in seen["first_chosen_after"]), seen
        assert seen["share_after"] > 0.5, (name, seen)


def test_as_many_arms_as_a_request_and_an_export_carry_and_no_more(
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A deployment decides over every configured arm, and its export is read back by
    `evaluate` and `train`, which take at most 64 arms an event (a request's `arms` too): 64
    configured arms round-trip; a 65th is refused at start-up, naming BANDIT_ARMS."""
    names = [f"m{i}" for i in range(64)]
    settings = make_settings(arms=",".join(names), reward_weights="accuracy=1")
    with TestClient(create_app(settings)) as client:
        everyone = client.post("/choose", json={"query": "q", "arms": names})
        assert everyone.status_code == 200, everyone.text
        for i in range(5):
            d = client.post("/choose", json={"query": f"q {i}"}).json()
            assert len(d["probabilities"]) == 64
            client.post("/reward", json={"event_id": d["event_id"], "accuracy": 1.0})
    use_settings(monkeypatch, settings)
    monkeypatch.setenv("BANDIT_ARMS", ",".join(names))
    log = tmp_path / "log.dsjson"
    assert main(["export", "--out", str(log)]) == 0
    assert main(["evaluate", str(log)]) == 0
    assert main(["train", str(log), "--out", str(tmp_path / "t.json")]) == 0
    capsys.readouterr()

    for value in (
        ",".join([*names, "one-more"]),
        json.dumps([{"name": n} for n in [*names, "one-more"]]),
    ):
        monkeypatch.setenv("BANDIT_ARMS", value)
        assert main(["config"]) == 2
        err = capsys.readouterr().err
        assert "BANDIT_ARMS" in err and "at most 64 arms, got 65" in err, err


@pytest.mark.parametrize(
    ("arm", "key"),
    [
        ({"name": "a", "upstrem": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}, "upstrem"),
        ({"name": "a", "usd_per_mtoks": 0.5}, "usd_per_mtoks"),
        ({"name": "a", "params": 7}, "params"),
    ],
)
def test_a_misspelt_key_of_an_arm_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arm: dict[str, object],
    key: str,
) -> None:
    """Ignored, a misspelt `upstream` left the gateway without the arm's upstream and a
    misspelt price left its cost unmeasured, with nothing said."""
    monkeypatch.setenv("BANDIT_ARMS", json.dumps([arm, {"name": "b"}]))
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "BANDIT_ARMS" in err and f"unknown key {key!r}" in err, err
    assert "valid: name, params_b, usd_per_mtok, upstream" in err, err


@pytest.mark.parametrize("gateway_model", [None, "router"])
def test_an_arm_with_an_upstream_named_as_the_gateway_model_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], gateway_model: str | None
) -> None:
    """Served, `GET /v1/models` listed the name twice, and a request for it was routed among
    every arm: the arm could not be asked for by name."""
    name = gateway_model or "auto"
    if gateway_model:
        monkeypatch.setenv("BANDIT_GATEWAY_MODEL", gateway_model)
    upstream = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    monkeypatch.setenv(
        "BANDIT_ARMS", json.dumps([{"name": n, "upstream": upstream} for n in (name, "b")])
    )
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert f"arm {name!r} (BANDIT_ARMS) is named as BANDIT_GATEWAY_MODEL" in err, err
    # Without an upstream the gateway does not serve it: the name is free.
    monkeypatch.setenv(
        "BANDIT_ARMS", json.dumps([{"name": name}, {"name": "b", "upstream": upstream}])
    )
    assert main(["config"]) == 0


def test_a_replay_of_more_arms_than_a_deployment_serves_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train` wrote a snapshot of 65 arms, which no deployment can serve, and `simulate`
    replayed them: the arms file's and the rows' arms count together."""
    rows = tmp_path / "r.jsonl"
    with rows.open("w") as f:
        for i in range(3):  # 64 arms a row, within the row limit; 65 over the file
            outcomes = {f"m{(i + j) % 65}": {"accuracy": 1.0} for j in range(64)}
            f.write(json.dumps({"query": f"q {i}", "outcomes": outcomes}) + "\n")
    arms = tmp_path / "r.arms.json"
    arms.write_text(json.dumps({"arms": [{"name": f"m{i}"} for i in range(65)]}))
    for args in (["--arms", str(arms)], []):
        assert main(["train", str(rows), *args, "--out", str(tmp_path / "t.json")]) == 2
        assert "65 arms; at most 64" in capsys.readouterr().err
        assert main(["simulate", str(rows), *args, "--policies", "random"]) == 2
        assert "65 arms; at most 64" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()
