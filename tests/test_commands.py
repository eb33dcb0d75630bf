"""The operators' subcommands as run from a shell: status, snapshot, restore, config, --help."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from bandit_router.cli.main import build_parser, main
from bandit_router.http.app import create_app
from bandit_router.settings import Settings
from tests.conftest import (
    COMMAND_QUERIES,
    ClientFactory,
    SettingsFactory,
    rewarded_traffic,
    use_settings,
)
from tests.live import serve

__all__ = ["serve"]  # the fixture, imported


def _probabilities(client: TestClient) -> list[dict[str, float]]:
    return [
        client.post("/choose", json={"query": q}).json()["probabilities"] for q in COMMAND_QUERIES
    ]


def test_snapshot_then_restore_in_another_environment(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = make_settings(policy="egreedy:epsilon=0.2")
    client = make_client(source)
    rewarded_traffic(client, 40)
    file = tmp_path / "model.json"
    use_settings(monkeypatch, source)
    assert main(["snapshot", str(file)]) == 0
    doc = json.loads(file.read_text())
    assert (doc["policy"], doc["model_version"]) == ("egreedy:epsilon=0.2", 40)
    assert "model version 40" in capsys.readouterr().out
    expected = _probabilities(client)

    target = make_settings(policy="linucb")  # another environment, another policy configured
    use_settings(monkeypatch, target)
    assert main(["restore", str(file)]) == 0
    out = capsys.readouterr().out
    assert "model version 40 (another log)" in out
    assert "egreedy:epsilon=0.2 set as the deployment's policy" in out
    restored = make_client(target)
    assert restored.get("/healthz").json()["model_version"] == 40
    assert restored.get("/stats").json()["policy"] == "egreedy:epsilon=0.2"
    for got, want in zip(_probabilities(restored), expected, strict=True):
        assert got == pytest.approx(want)


def test_restore_from_another_prefix_is_another_log_though_it_holds_the_watermark_s_id(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Deployments on one Redis that log in the same millisecond share stream ids, so the
    backup's watermark can name an entry of another deployment's log: restore took that log for
    the file's own and kept the watermark, and the target's events after it were learned by a
    model that never saw the ones before. Another key prefix is another log (README)."""
    source_settings, target_settings = make_settings(), make_settings()
    source = make_client(source_settings)
    with TestClient(create_app(target_settings)) as target:
        rewarded_traffic(target, 3)
    rewarded_traffic(source, 10)
    use_settings(monkeypatch, source_settings)
    file = tmp_path / "model.json"
    assert main(["snapshot", str(file)]) == 0
    watermark = json.loads(file.read_text())["stream_id"]
    # The target logs an event in the millisecond of the source's last one, then more.
    r = redis.Redis.from_url(redis_url)
    rows: Any = r.xrange(f"{{{source_settings.key_prefix}}}:events", watermark, watermark)
    r.xadd(f"{{{target_settings.key_prefix}}}:events", rows[0][1], id=watermark)
    r.close()
    with TestClient(create_app(target_settings)) as target:
        rewarded_traffic(target, 5)
    capsys.readouterr()

    use_settings(monkeypatch, target_settings)
    assert main(["restore", str(file)]) == 0
    assert "model version 10 (another log)" in capsys.readouterr().out
    restored = make_client(target_settings)
    assert restored.get("/healthz").json()["model_version"] == 10  # served as it is


def test_restore_refuses_while_a_learner_runs(
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = make_client()
    rewarded_traffic(client, 3)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    use_settings(monkeypatch, settings)
    file = tmp_path / "model.json"
    assert main(["snapshot", str(file)]) == 0
    assert main(["restore", str(file)]) == 1
    assert "a learner holds the lease" in capsys.readouterr().err
    assert main(["restore", "--force", str(file)]) == 0
    assert "(this log: events after it are learned)" in capsys.readouterr().out


def test_restore_refuses_a_damaged_file(
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, make_settings())
    file = tmp_path / "model.json"
    assert main(["snapshot", str(file)]) == 0
    doc = json.loads(file.read_text())
    doc["data"] = doc["data"][:-8] + "AAAAAAA="
    file.write_text(json.dumps(doc))
    assert main(["restore", str(file)]) == 1
    assert "sha256" in capsys.readouterr().err
    file.write_text("{}")
    assert main(["restore", str(file)]) == 1
    assert "not a bandit-router-snapshot file" in capsys.readouterr().err


def test_restore_says_which_arms_the_model_never_learned_and_which_are_not_served(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = make_settings()  # the arms 4b, 7b, 14b
    rewarded_traffic(make_client(source), 10)
    file = tmp_path / "model.json"
    use_settings(monkeypatch, source)
    assert main(["snapshot", str(file)]) == 0
    use_settings(monkeypatch, make_settings())  # the same arms: nothing said
    assert main(["restore", str(file)]) == 0
    assert "the model learned the arms" not in capsys.readouterr().out
    use_settings(monkeypatch, make_settings())
    monkeypatch.setenv("BANDIT_ARMS", "7b,14b,70b")
    assert main(["restore", str(file)]) == 0
    assert (
        "the model learned the arms 4b, 7b, 14b; this deployment serves 7b, 14b, 70b: 70b start "
        "cold, as added arms do; 4b are not served (BANDIT_ARMS)"
    ) in capsys.readouterr().out


def test_status_from_redis_and_from_a_url(
    serve: Callable[..., str],
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import httpx2 as httpx

    settings = make_settings()
    base = serve(
        **{k: getattr(settings, k) for k in ("key_prefix", "redis_url")}, challengers="linucb"
    )
    with httpx.Client(base_url=base) as http:
        for i in range(12):
            d = http.post("/choose", json={"query": COMMAND_QUERIES[i % 3]}).json()
            body = {"event_id": d["event_id"], "accuracy": 1, "rating": 5, "latency_ms": 400}
            http.post("/reward", json=body)
    use_settings(monkeypatch, settings)
    assert main(["status"]) == 0
    from_redis = capsys.readouterr().out
    assert main(["status", "--url", base]) == 0
    from_url = capsys.readouterr().out
    for out in (from_redis, from_url):
        assert "model version 12" in out and "rewards 12" in out
        for name in ("4b", "7b", "14b", "static", "fixed:arm=14b"):
            assert name in out
    assert "champion squarecb   automatic promotion off" in from_url
    assert "\nlinucb " in from_url  # its row in the challengers' table, live from the learner
    assert main(["status", "--url", base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rewards_accepted"] == 12
    assert main(["status", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot read http://127.0.0.1:9/stats" in capsys.readouterr().err


def test_status_says_what_the_learner_has_published_while_it_is_down(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With no learner running (BANDIT_LEARN_IN_WORKERS=false, `learn` dead), `status` from
    Redis said `model version 5   rewards 5`, the log replayed as a restarted process would,
    and nothing of the published model, which had learned none: the learner looked caught up."""
    settings = make_settings(learn_in_workers=False)
    client = make_client(settings)
    rewarded_traffic(client, 5)
    use_settings(monkeypatch, settings)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "model version 5" in out and "rewards 5   events learned 0" in out


def test_status_from_a_url_says_what_the_service_refused(
    serve: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --api-key on a service with BANDIT_OPS_KEYS it said only ``HTTP Error 401:
    Unauthorized``: the service's detail names the key it wants."""
    base = serve(ops_keys=["ops-key"])
    assert main(["status", "--url", base]) == 1
    err = capsys.readouterr().err
    assert "HTTP Error 401" in err and "BANDIT_OPS_KEYS" in err and "--api-key" in err, err
    assert main(["status", "--url", base, "--api-key", "ops-key"]) == 0
    monkeypatch.setenv("BANDIT_TEST_OPS_KEY", "ops-key")  # not in argv, where `ps` shows it
    assert main(["status", "--url", base, "--api-key-env", "BANDIT_TEST_OPS_KEY"]) == 0
    monkeypatch.delenv("BANDIT_TEST_OPS_KEY")
    with pytest.raises(SystemExit) as exit:  # misspelt or unset: not taken for "no key"
        main(["status", "--url", base, "--api-key-env", "BANDIT_TEST_OPS_KEY"])
    assert exit.value.code == 2 and "BANDIT_TEST_OPS_KEY is not set" in capsys.readouterr().err


def test_status_of_an_empty_deployment(
    make_settings: SettingsFactory,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import redis

    settings = make_settings()
    use_settings(monkeypatch, settings)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "model version 0" in out and "window 0 events" in out
    # Reading writes nothing: a mistyped prefix is not made a deployment.
    with redis.Redis.from_url(redis_url) as r:
        assert r.keys(f"{{{settings.key_prefix}}}*") == []


def test_config_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BANDIT_REDIS_URL", "rediss://app:s3cret@redis.internal:6380/0")
    monkeypatch.setenv("BANDIT_API_KEYS", "key-one,key-two")
    monkeypatch.setenv("BANDIT_ADMIN_KEY", "admin-secret")
    monkeypatch.setenv("BANDIT_EPSILON", "0.1")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for secret in ("s3cret", "key-one", "admin-secret"):
        assert secret not in out
    assert "rediss://app:****@redis.internal:6380/0" in out
    assert "BANDIT_EPSILON" in out and "0.1" in out
    sources = {line.split()[0]: line.split()[-1] for line in out.splitlines()[2:]}
    assert sources["BANDIT_EPSILON"] == "env"
    assert sources["BANDIT_CHALLENGERS"] == sources["BANDIT_POLICY"] == "default"
    assert main(["config", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["BANDIT_API_KEYS"] == ["****", "****"]
    assert doc["BANDIT_ADMIN_KEY"] == "****"
    assert doc["BANDIT_KEY_PREFIX"] == "bandit"


def test_config_tells_an_unset_setting_from_an_empty_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unset BANDIT_BUFFER_DIR (BANDIT_DATA_DIR/buffer) and an empty one (memory only) were
    both an empty cell."""

    def row() -> list[str]:
        assert main(["config"]) == 0
        (line,) = [x for x in capsys.readouterr().out.splitlines() if "BANDIT_BUFFER_DIR" in x]
        return line.split()

    monkeypatch.delenv("BANDIT_BUFFER_DIR", raising=False)
    assert row() == ["BANDIT_BUFFER_DIR", "(unset)", "default"]
    monkeypatch.setenv("BANDIT_BUFFER_DIR", "")
    assert row() == ["BANDIT_BUFFER_DIR", "env"]  # an empty cell


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("BANDIT_POLICY", "squarecb:gamma_scale=nan", "gamma_scale must be in (0, 10000], got nan"),
        ("BANDIT_CHALLENGERS", "linucb:dim=100000000", "dim must be in [12, 1024]"),
        ("BANDIT_VW_ARGS", "--readable_model {tmp}/x", "'--readable_model' is not an allowed"),
        ("BANDIT_CHALLENGERS", "fixed:arm=70b", "arm '70b' is not an arm; valid: 4b, 7b, 14b"),
    ],
)
def test_config_refuses_a_policy_value_out_of_bounds(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    env: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(env, value.replace("{tmp}", str(tmp_path)))
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err and env in err and message in err
    assert list(tmp_path.iterdir()) == []


def test_every_command_and_option_has_help() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in subparsers._choices_actions}
    for name, sub in subparsers.choices.items():
        assert helps.get(name), f"{name} has no one-line help"
        assert sub.description, f"{name} --help has no description"
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        assert sub.format_help()
    assert {"serve", "learn", "status", "snapshot", "restore", "config"} <= set(helps)


SLICE = Path(__file__).parents[1] / "examples" / "mmlu_pro_llama2_slice.jsonl"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["simulate", str(SLICE), "--seeds", "0"],
            "argument --seeds: 0 is out of range: 1 to 1000",
        ),
        (["simulate", str(SLICE), "--seeds", "-2"], "argument --seeds: -2 is out of range"),
        (["simulate", str(SLICE), "--seeds", "two"], "argument --seeds: 'two' is not an integer"),
        # Unbounded, 10**20 seeds ended in an OverflowError and 10**8 ran for days.
        (["simulate", str(SLICE), "--seeds", str(10**20)], "argument --seeds: 1000000000000000"),
        (["simulate", str(SLICE), "--seeds", "1001"], "--seeds: 1001 is out of range: 1 to 1000"),
        (["simulate", str(SLICE), "--first-seed", "-1"], "argument --first-seed: -1 is out of"),
        (["simulate", str(SLICE), "--limit", "0"], "argument --limit: 0 is out of range: 1 or"),
        (["simulate", str(SLICE), "--limit", "-1"], "argument --limit: -1 is out of range"),
        (["simulate", str(SLICE), "--csv-every", "-1"], "argument --csv-every: -1 is out of"),
        (["evaluate", "-", "--seed", "-1"], "argument --seed: -1 is out of range: 0 to 4294967295"),
        # Past VW's 64 bits, simulate ended in a traceback and evaluate in VW's message.
        (["evaluate", "-", "--seed", str(2**64)], "argument --seed: 18446744073709551616 is out"),
        (["simulate", str(SLICE), "--first-seed", str(2**64)], "argument --first-seed: 1844"),
        (["simulate", str(SLICE), "--first-seed", str(2**32)], "out of range: 0 to 4294967295"),
        (["status", "--window", "-5"], "argument --window: -5 is out of range: 0 to 20000"),
        (["status", "--window", "20001"], "argument --window: 20001 is out of range"),
    ],
)
def test_numeric_options_out_of_range_are_refused_before_any_work(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert f"usage: bandit-router {args[0]}" in err


@pytest.mark.parametrize(
    "script",
    [
        "change_points",
        "cold_start",
        "full_feedback",
        "locks",
        "regret_split",
        "robust_eval",
        "selector_power",
        "sweep",
        "tabular",
    ],
)
def test_the_simulations_scripts_bound_their_seeds(
    script: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--seeds 0 ended robust_eval in numpy's "need at least one array to concatenate" after
    reading the set, and any count ran: these scripts replay every row per seed."""
    module = importlib.import_module(f"simulations.{script}")
    for seeds in ("0", "1001"):
        with pytest.raises(SystemExit) as exit_:
            module.main(["--seeds", seeds, "x"] + (["y"] if script == "sweep" else []))
        assert exit_.value.code == 2
        assert f"argument --seeds: {seeds} is out of range: 1 to 1000" in capsys.readouterr().err


def test_status_shows_an_arm_of_the_window_no_longer_served(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a restart without 14b, its events stay in the window: `status` left its row out,
    so the shares it listed did not add up and nothing said why."""
    settings = make_settings(policy="random")
    rewarded_traffic(make_client(settings), 30)
    use_settings(monkeypatch, settings)
    monkeypatch.setenv("BANDIT_ARMS", "4b,7b")
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("14b"))
    assert row.split()[:5] == ["14b", "(not", "served)", "-", "-"], row
    assert float(row.split()[6]) > 0, row  # its share of the window
