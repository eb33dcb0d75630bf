"""Many deployments in one service: the file, the request field, and per-deployment everything."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from bandit_router.deployments import DeploymentsError, load_deployments
from bandit_router.errors import StoreUnavailable
from bandit_router.settings import Settings
from tests.conftest import ClientFactory, SettingsFactory, cli_env, cli_process, wait_until

FILE = """
[deployments.support]
arms = "small:4:0.1,large:14:0.4"
policy = "egreedy"
reward_weights = {rating = 0.7, latency = 0.3}
api_keys = ["support-key"]

[deployments.coding]
arms = [{name = "coder-7b", params_b = 7}, {name = "coder-32b", params_b = 32}]
policy = "linucb:alpha=0.3"
reward_wait_s = 60
"""


def _write(tmp_path: Path, text: str, name: str = "deployments.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_file_defines_deployments_over_the_environment(tmp_path: Path) -> None:
    base = Settings(key_prefix="app", api_keys=["all-key"], deployments_file=_write(tmp_path, FILE))
    found = load_deployments(base)
    assert list(found) == ["default", "support", "coding"]
    support, coding = found["support"].settings, found["coding"].settings
    assert [a.name for a in support.arms] == ["small", "large"]
    assert support.reward_weights == {"rating": 0.7, "latency": 0.3}
    assert support.api_keys == ["all-key", "support-key"]
    assert coding.api_keys == ["all-key"] and coding.policy == "linucb:alpha=0.3"
    assert coding.reward_wait_s == 60 and support.reward_wait_s == base.reward_wait_s
    assert {d.prefix for d in found.values()} == {"app", "app:support", "app:coding"}
    # a string is a comma list, as BANDIT_API_KEYS
    same = json.dumps(
        {"deployments": {"support": {"arms": "a,b", "key_prefix": "sup", "api_keys": "k1, k2,"}}}
    )
    as_json = load_deployments(Settings(deployments_file=_write(tmp_path, same, "d.json")))
    assert as_json["support"].prefix == "sup"
    assert as_json["support"].settings.api_keys == ["k1", "k2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[deployments.support]\nport = 1\n", "port is a setting of the whole service"),
        (
            "[deployments.a]\nshutdown_timeout_s = 5\n",
            "shutdown_timeout_s is a setting of the whole",
        ),
        (
            "[deployments.a]\ngateway_max_concurrency = 5\n",
            "gateway_max_concurrency is a setting of the whole",
        ),
        ("[deployments.support]\narmz = 'a'\n", "unknown setting 'armz'; valid: "),
        ("[deployments.support]\npolicy = 'nope'\n", "deployment 'support': policy: "),
        ("[deployments.support]\narms = 'a,a'\n", "arm names must be unique"),
        ("[deployments.default]\n", "reserved"),
        ("[deployments.Bad_Name]\n", "a name is 1-32 characters"),
        ("[support]\n", "one top-level table, `deployments`"),
        ("deployments = 'support'\n", "`deployments` must be a table"),
        ("[deployments]\nsupport = 'egreedy'\n", "deployment 'support': must be a table of"),
        ("[deployments.a]\napi_keys = ['k', 1]\n", "api_keys must be a list of non-empty"),
        ("[deployments.a]\napi_keys = ['k', '']\n", "api_keys must be a list of non-empty"),
        ("[deployments\n", "not valid TOML"),
        ("[deployments.a]\nkey_prefix='x'\n[deployments.b]\nkey_prefix='x'\n", "its own"),
        ("[deployments.a]\nreward_weights = {speed = 1}\n", "unknown reward part 'speed'"),
    ],
)
def test_a_wrong_file_is_refused_naming_the_deployment_and_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(DeploymentsError, match="deployments file") as e:
        load_deployments(Settings(deployments_file=_write(tmp_path, text)))
    assert message in str(e.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DeploymentsError, match=r"nothere\.toml"):
        load_deployments(Settings(deployments_file=str(tmp_path / "nothere.toml")))


def test_an_empty_file_setting_is_no_file(make_client: ClientFactory) -> None:
    """``BANDIT_DEPLOYMENTS_FILE=`` (a compose file's way to leave it out) stopped `serve` with
    `deployments file .: Is a directory`; it is unset, as an empty BANDIT_REDIS_URL is."""
    client = make_client(deployments_file="")
    assert [d["name"] for d in client.get("/deployments").json()["deployments"]] == ["default"]


@pytest.fixture
def many(
    make_settings: SettingsFactory, make_client: ClientFactory, tmp_path: Path
) -> tuple[TestClient, Settings]:
    settings = make_settings(deployments_file=_write(tmp_path, FILE))
    return make_client(settings), settings


def _choose(client: TestClient, key: str | None = None, **body: Any) -> Any:
    headers = {"X-API-Key": key} if key else {}
    return client.post("/choose", json={"query": "hello there", **body}, headers=headers)


def test_each_deployment_decides_and_learns_on_its_own_keys(
    many: tuple[TestClient, Settings], redis_url: str
) -> None:
    client, settings = many
    plain = _choose(client).json()
    assert ":" not in plain["event_id"] and plain["arm"] in ("4b", "7b", "14b")
    coding = _choose(client, deployment="coding").json()
    assert coding["event_id"].startswith("coding:") and coding["arm"].startswith("coder-")
    assert coding["policy"].startswith("linucb")
    # a retry with the id /choose answered returns the same decision
    again = _choose(client, deployment="coding", event_id=coding["event_id"]).json()
    assert again == coding
    mine = _choose(client, deployment="coding", event_id="req-1").json()
    assert mine["event_id"] == "coding:req-1"

    # /reward finds the deployment from the event id
    got = client.post("/reward", json={"event_id": coding["event_id"], "reward": 0.9})
    assert got.status_code == 200 and got.json()["status"] == "final", got.text
    assert got.json()["model_version"] == 1
    got = client.post("/reward", json={"event_id": plain["event_id"], "reward": 0.2})
    assert got.json()["model_version"] == 1

    stats = client.get("/stats", params={"deployment": "coding"}).json()
    assert set(stats["arms"]) == {"coder-7b", "coder-32b"} and stats["rewards_accepted"] == 2 - 1
    assert client.get("/stats").json()["rewards_accepted"] == 1
    assert client.get("/stats", params={"deployment": "support"}).json()["decisions"] == 0
    r = client.get("/stats", params={"deployment": "nope"})
    assert r.status_code == 422 and r.json()["field"] == "deployment"
    assert "default, support, coding" in r.json()["detail"]
    listed = client.get("/deployments").json()["deployments"]
    assert [d["name"] for d in listed] == ["default", "support", "coding"]
    assert client.get("/arms", params={"deployment": "support"}).json()["arms"][0]["name"] == (
        "small"
    )

    # every key of a deployment is under its own hash tag
    r_client = redis.Redis.from_url(redis_url)
    try:
        prefix = settings.key_prefix
        assert r_client.xlen("{" + prefix + ":coding}:events") == 1
        assert r_client.xlen("{" + prefix + "}:events") == 1
        assert r_client.exists("{" + prefix + ":coding}:learner")
        assert r_client.xlen("{" + prefix + ":support}:events") == 0
    finally:
        r_client.close()

    metrics = client.get("/metrics").text
    assert 'bandit_decisions_total{arm="coder-7b",deployment="coding"' in metrics or (
        'bandit_decisions_total{arm="coder-32b",deployment="coding"' in metrics
    )
    assert metrics.count("# TYPE bandit_decisions_total counter") == 1


def test_an_outage_said_names_its_deployment_where_a_process_serves_several(
    many: tuple[TestClient, Settings],
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each deployment's router meets an outage on its own (on Redis Cluster, each on its own
    slot): with several, each line says whose it is; with one, nothing is added."""
    client, _ = many
    alone = make_client(make_settings())
    error = StoreUnavailable("Connection refused")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        for app in (client.app, alone.app):
            for router in app.state.routers.values():  # type: ignore[attr-defined]
                router.learner.outage.failed("sweep", error)
                router.learner.outage.reached("sweep")
    assert sorted(caplog.messages[:6:2]) == [
        f"deployment {name}: sweep waiting for Redis: {error}"
        for name in ("coding", "default", "support")
    ]
    assert all(m.startswith("deployment ") for m in caplog.messages[1:6:2]), caplog.messages
    assert caplog.messages[6:] == [
        f"sweep waiting for Redis: {error}",
        caplog.messages[7],
    ] and caplog.messages[7].startswith("Redis reachable again, ")


def test_the_learners_lines_name_their_deployment(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A service of several deployments learns for each, and `learn --deployment NAME` runs
    one per deployment: "learner HOST:PID:TAG leads at model version 0" came once each, and
    no line said whose learner it was; nor whose model "policy P at model version N" was."""
    file = _write(tmp_path, FILE)
    with caplog.at_level(logging.INFO, logger="bandit_router"):
        make_client(make_settings(deployments_file=file))
    names = [f"deployment {name}: " for name in ("coding", "default", "support")]
    leads = [m for m in caplog.messages if " leads at model version " in m]
    assert sorted(m.split("learner ")[0] for m in leads) == names
    loaded = [m for m in caplog.messages if " logged events replayed)" in m]
    assert sorted(m.split("policy ")[0] for m in loaded) == names
    settings = make_settings(deployments_file=file)  # another prefix: its leases are free
    env = cli_env(
        redis_url=settings.redis_url, key_prefix=settings.key_prefix, deployments_file=file
    )
    log = tmp_path / "learn.log"
    with cli_process(["learn", "--deployment", "coding"], env, log) as proc:
        wait_until(lambda: " leads at model version " in log.read_text(), 60, "the lease")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert "INFO bandit_router: deployment coding: learner " in log.read_text()
    assert "INFO bandit_router: deployment coding: policy " in log.read_text()


def test_an_unknown_deployment_or_a_foreign_id_is_a_422_naming_the_field(
    many: tuple[TestClient, Settings],
) -> None:
    client, _ = many
    r = _choose(client, deployment="sales")
    assert r.status_code == 422 and r.json()["field"] == "deployment"
    assert "valid: default, support, coding" in r.json()["detail"]
    r = _choose(client, event_id="coding:mine")  # default, with an id of another deployment
    assert r.status_code == 422 and r.json()["field"] == "event_id"
    r = _choose(client, deployment="coding", event_id="x" * 128)
    assert r.status_code == 422 and r.json()["field"] == "event_id"
    r = client.post("/reward", json={"event_id": "coding:never-chosen", "reward": 1})
    assert r.status_code == 404


def test_a_deployment_in_the_query_is_taken_or_refused_never_ignored(
    many: tuple[TestClient, Settings],
) -> None:
    """``?deployment=``, which /stats, /arms and /admin/* read, was ignored by /choose and
    /reward: a /choose meant for `coding` was decided and learned by `default`."""
    client, _ = many
    r = client.post("/choose?deployment=coding", json={"query": "hello there"})
    assert r.status_code == 200 and r.json()["event_id"].startswith("coding:"), r.text
    event_id = r.json()["event_id"]
    r = _choose(client, key="support-key", deployment="support")  # the body alone, as before
    assert r.json()["event_id"].startswith("support:")
    for query in ("?deployment=coding", "?deployment=coding&deployment=support"):
        r = client.post(f"/choose{query}", json={"query": "hi", "deployment": "support"})
        assert r.status_code == 422 and r.json()["field"] == "deployment", r.text
    # the same one in both, or twice in the query, names one
    for query in ("?deployment=coding", "?deployment=coding&deployment=coding"):
        r = client.post(f"/choose{query}", json={"query": "hi", "deployment": "coding"})
        assert r.status_code == 200 and r.json()["event_id"].startswith("coding:"), r.text
    r = client.post("/choose?deployment=nope", json={"query": "hi"})
    assert r.status_code == 422 and "valid: default, support, coding" in r.json()["detail"]
    r = client.post("/reward?deployment=support", json={"event_id": event_id, "reward": 1})
    assert r.status_code == 422 and r.json()["field"] == "deployment", r.text
    assert "deployment 'coding'" in r.json()["detail"]
    r = client.post("/reward?deployment=coding", json={"event_id": event_id, "reward": 1})
    assert r.status_code == 200, r.text
    # the gateway takes it too: `coding` decides (its arms have no upstream: its 404 says so)
    r = client.post(
        "/v1/chat/completions?deployment=coding",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 404 and "in deployment 'coding'" in r.json()["detail"], r.text
    # an empty one (a proxy's template with its variable unset) is `default` at every endpoint:
    # the gateway refused it, naming `deployment`, while /choose served it
    chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    for path, body in [("/choose", {"query": "hi"}), ("/v1/chat/completions", chat)]:
        r = client.post(f"{path}?deployment=", json=body)
        assert r.status_code != 422 or r.json()["field"] != "deployment", (path, r.text)


def test_the_gateway_takes_the_deployment_wherever_it_is_named(
    many: tuple[TestClient, Settings],
) -> None:
    """The gateway served ``default`` only and refused another deployment. It takes one as
    /choose does, ``?deployment=`` or the body's (not forwarded), or as ``model``; an unknown
    one, or names that disagree, are refused (OpenAI's 400) naming the field and the valid
    names. (These deployments' arms have no upstream: the deployment that decides says so, 404.)"""
    client, _ = many
    chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    for where in ("query", "body", "model"):
        query = "?deployment=coding" if where == "query" else ""
        body = {**chat, "deployment": "coding"} if where == "body" else chat
        body = {**body, "model": "coding"} if where == "model" else body
        r = client.post(f"/v1/chat/completions{query}", json=body)
        assert r.status_code == 404 and "in deployment 'coding'" in r.json()["detail"], r.text
        assert r.json()["error"]["code"] == "model_not_found"
    for deployment in ("nope", 7):
        r = client.post("/v1/chat/completions", json={**chat, "deployment": deployment})
        assert r.status_code == 400 and r.json()["field"] == "deployment", r.text
        assert r.json()["error"]["param"] == "deployment"
    r = client.post("/v1/chat/completions", json={**chat, "deployment": "nope"})
    assert "valid: default, support, coding" in r.json()["detail"]
    r = client.post(
        "/v1/chat/completions?deployment=coding", json={**chat, "deployment": "support"}
    )
    assert r.status_code == 400 and r.json()["field"] == "deployment", r.text
    r = client.post("/v1/chat/completions?deployment=coding", json={**chat, "model": "support"})
    assert r.status_code == 400 and r.json()["field"] == "model", r.text
    assert "deployment 'coding'" in r.json()["detail"]
    for path in ("/v1/models", "/v1/models/auto"):
        r = client.get(f"{path}?deployment=nope")
        assert r.status_code == 400 and r.json()["field"] == "deployment", r.text
        assert client.get(f"{path}?deployment=default").status_code != 422
    assert client.get("/v1/models?deployment=coding").json()["data"] == []


def test_a_deployment_key_opens_only_its_deployment(
    make_settings: SettingsFactory, make_client: ClientFactory, tmp_path: Path
) -> None:
    settings = make_settings(deployments_file=_write(tmp_path, FILE), api_keys=["all-key"])
    client = make_client(settings)
    assert _choose(client).status_code == 401
    assert _choose(client, key="all-key", deployment="support").status_code == 200
    decision = _choose(client, key="support-key", deployment="support")
    assert decision.status_code == 200, decision.text
    r = _choose(client, key="support-key")  # default
    assert r.status_code == 401 and "deployment 'default'" in r.json()["detail"]
    assert _choose(client, key="support-key", deployment="coding").status_code == 401
    event_id = decision.json()["event_id"]
    r = client.post(
        "/reward", json={"event_id": event_id, "rating": 5}, headers={"X-API-Key": "support-key"}
    )
    assert r.status_code == 200 and r.json()["status"] == "pending"
    other = _choose(client, key="all-key", deployment="coding").json()["event_id"]
    r = client.post(
        "/reward", json={"event_id": other, "reward": 1}, headers={"X-API-Key": "support-key"}
    )
    assert r.status_code == 401


def test_a_deployment_s_policy_overridden_is_said_with_its_name_and_its_own_route(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The start-up warning for a named deployment whose policy an admin switched said
    `BANDIT_POLICY linucb:alpha=0.3 is not served`, a setting the environment did not hold, and
    that `POST /admin/policy` with it serves it: sent so, it switched `default` instead."""
    settings = make_settings(deployments_file=_write(tmp_path, FILE), admin_key="adm")
    client = make_client(settings)
    r = client.post(
        "/admin/policy",
        params={"deployment": "coding"},
        json={"policy": "egreedy"},
        headers={"X-API-Key": "adm"},
    )
    assert r.status_code == 200
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        make_client(settings)  # a restart
    said = [m for m in caplog.messages if "is not served" in m]
    assert said == [
        "deployment coding: its policy linucb:alpha=0.3 (BANDIT_DEPLOYMENTS_FILE, or BANDIT_POLICY "
        "when the file sets none) is not served: policy egreedy, set by POST /admin/policy or a "
        "promotion and kept in Redis, overrides it; POST /admin/policy?deployment=coding with "
        '{"policy": "linucb:alpha=0.3"} serves it'
    ]


def test_a_reset_of_one_deployment_leaves_the_others_model(
    make_settings: SettingsFactory, make_client: ClientFactory, tmp_path: Path
) -> None:
    settings = make_settings(deployments_file=_write(tmp_path, FILE), admin_key="adm")
    client = make_client(settings)
    for deployment in ("default", "coding"):
        for i in range(3):
            d = _choose(client, deployment=deployment, query=f"q{i}").json()
            client.post("/reward", json={"event_id": d["event_id"], "reward": 0.5})
    admin = {"X-API-Key": "adm"}
    r = client.post("/admin/reset", params={"deployment": "coding"}, headers=admin)
    assert r.status_code == 200 and r.json()["model_version"] == 0
    assert client.get("/stats").json()["model_version"] == 3
    r = client.post("/admin/snapshot", params={"deployment": "nope"}, headers=admin)
    assert r.status_code == 422 and r.json()["field"] == "deployment"


def test_the_cli_reads_and_writes_one_deployment(
    make_settings: SettingsFactory, make_client: ClientFactory, tmp_path: Path
) -> None:
    settings = make_settings(deployments_file=_write(tmp_path, FILE))
    client = make_client(settings)
    for i in range(4):
        d = _choose(client, deployment="coding", query=f"q{i}").json()
        client.post("/reward", json={"event_id": d["event_id"], "reward": 0.5})
    env = cli_env(
        redis_url=settings.redis_url,
        key_prefix=settings.key_prefix,
        deployments_file=settings.deployments_file,
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bandit_router.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    out = run("status", "--deployment", "coding", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["rewards_accepted"] == 4 and set(doc["arms"]) == {"coder-7b", "coder-32b"}
    out = run("export", "--deployment", "coding", "--out", str(tmp_path / "log.json"))
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / "log.json").read_text().splitlines()) == 4
    out = run("export", "--deployment", "support")
    assert out.returncode == 0 and out.stdout == ""
    # coding's model given to support: the arms it is not served are named where they are set
    out = run("snapshot", "--deployment", "coding", str(tmp_path / "coding.json"))
    assert out.returncode == 0, out.stderr
    out = run("restore", "--deployment", "support", "--force", str(tmp_path / "coding.json"))
    assert out.returncode == 0, out.stderr
    assert (
        "coder-7b, coder-32b are not served (deployment support's arms: BANDIT_DEPLOYMENTS_FILE, "
        "or BANDIT_ARMS when it sets none)"
    ) in out.stdout, out.stdout
    out = run("status", "--deployment", "sales")
    assert out.returncode == 2
    assert "unknown deployment 'sales'" in out.stderr and "default, support, coding" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_dashboard_reads_the_deployment_it_is_opened_on(
    many: tuple[TestClient, Settings],
) -> None:
    client, _ = many
    script = client.get("/static/dashboard.js").text
    assert "deployment=${encodeURIComponent(DEPLOYMENT)}" in script and '"deployments"' in script
    assert 'id="deployment"' in client.get("/dashboard").text


def test_adding_and_changing_deployments_takes_a_restart_and_loses_nothing(
    make_settings: SettingsFactory, make_client: ClientFactory, tmp_path: Path
) -> None:
    settings = make_settings(deployments_file=_write(tmp_path, FILE))
    first = make_client(settings)
    for deployment in ("default", "coding"):
        for i in range(5):
            d = _choose(first, deployment=deployment, query=f"q{i}").json()
            first.post("/reward", json={"event_id": d["event_id"], "reward": 0.5})
    pending = _choose(first, deployment="coding", query="later").json()["event_id"]
    before = _choose(first, query="mine", event_id="batch:7").json()["event_id"]
    assert before == "batch:7"  # default's own id: no deployment is named batch yet
    first.__exit__(None, None, None)  # the service stops (publishing its models)

    changed = FILE.replace("reward_wait_s = 60", "reward_weights = {accuracy = 1.0}") + (
        '\n[deployments.batch]\narms = "s,m,l"\n'
    )
    path = _write(tmp_path, changed, "deployments2.toml")
    again = make_client(settings.model_copy(update={"deployments_file": path}))
    assert [d["name"] for d in again.get("/deployments").json()["deployments"]] == [
        "default",
        "support",
        "coding",
        "batch",
    ]
    assert again.get("/stats").json()["model_version"] == 5
    coding = again.get("/stats", params={"deployment": "coding"}).json()
    assert coding["model_version"] == 5
    assert coding["settings"]["reward_weights"] == {"accuracy": 1.0}
    r = again.post("/reward", json={"event_id": pending, "reward": 1})  # chosen before the restart
    assert r.status_code == 200 and r.json()["model_version"] == 6
    assert _choose(again, deployment="batch").json()["arm"] in ("s", "m", "l")
    # batch now owns the prefix, but the event default stored before is still default's
    r = again.post("/reward", json={"event_id": before, "reward": 1})
    assert r.status_code == 200 and r.json()["model_version"] == 6, r.text
    r = again.post("/reward", json={"event_id": "batch:8", "reward": 1})
    assert r.status_code == 404 and r.json()["field"] == "event_id"


# A file no reader expects is refused, naming the file, not a traceback in `serve`.
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.json", b'{"deployments": {"a": {}, "\xff": {}}}', "not UTF-8"),
        ("d.toml", b"[deployments.a]\npolicy = '\xff'\n", "not UTF-8"),
        ("d.json", DEEP.encode(), "JSON nested too deeply"),
        ("d.toml", b"x = " + DEEP.encode(), "TOML nested too deeply"),
        (
            "d.json",
            b'{"deployments": {"support": {"policy": "linucb"}, "support": {}}}',
            "the key 'support' twice in one object",
        ),
    ],
)
def test_a_hostile_deployments_file_is_named(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DeploymentsError, match=rf"deployments file .*{name}: .*{message}"):
        load_deployments(Settings(deployments_file=str(path)))


def test_a_deployment_keeps_the_environments_arm_upstreams(tmp_path: Path) -> None:
    arms = [
        {"name": "a", "upstream": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        {"name": "b"},
    ]
    file = _write(tmp_path, "[deployments.x]\npolicy='linucb'\n")
    base = Settings.model_validate({"arms": arms, "deployments_file": file})
    x = load_deployments(base)["x"].settings
    assert x.policy == "linucb"
    assert [(a.name, a.upstream) for a in x.arms] == [(a.name, a.upstream) for a in base.arms]
    assert x.arms[0].upstream is not None and x.arms[0].upstream.model == "m"
