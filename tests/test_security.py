"""API keys, the admin key and its endpoints, request limits, privacy of the query text."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bandit_router.cli.main import main
from bandit_router.policies.registry import parse_policy_spec
from bandit_router.service.learner import effective_spec, restore
from bandit_router.settings import Settings
from bandit_router.store.records import Snapshot
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect
from tests.conftest import ClientFactory, RedisProcess, SettingsFactory
from tests.live import serve

__all__ = ["serve"]  # the fixture, imported
Serve = Callable[..., str]

KEY = {"X-API-Key": "k1"}
ADMIN = {"Authorization": "Bearer root-key"}


def _choose(client: TestClient, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return client.post("/choose", json={"query": "hi", **body}, headers=headers or {})


def test_api_keys_guard_choose_and_reward(make_client: ClientFactory) -> None:
    client = make_client(api_keys="k1,k2")
    assert _choose(client).status_code == 401
    assert _choose(client, {"X-API-Key": "nope"}).status_code == 401
    assert "API key" in _choose(client).json()["detail"]
    d = _choose(client, KEY).json()
    assert _choose(client, {"Authorization": "Bearer k2"}).status_code == 200
    # an empty X-API-Key (a proxy's template, its variable unset) hides no bearer token
    assert _choose(client, {"X-API-Key": "", "Authorization": "Bearer k2"}).status_code == 200
    body = {"event_id": d["event_id"], "reward": 1}
    assert client.post("/reward", json=body).status_code == 401
    assert client.post("/reward", json=body, headers=KEY).status_code == 200
    assert client.get("/healthz").status_code == 200  # health stays open


def test_admin_endpoints_disabled_without_admin_key(client: TestClient) -> None:
    """The 403 names a field, as every client error does (it was null)."""
    for path in ("/admin/snapshot", "/admin/reset", "/admin/policy", "/admin/promote"):
        response = client.post(path, headers={"x-api-key": "any"})
        assert response.status_code == 403
        assert "BANDIT_ADMIN_KEY" in response.json()["detail"]
        assert response.json()["field"] == "X-API-Key"


def test_admin_snapshot_reset_and_policy_switch(make_client: ClientFactory) -> None:
    client = make_client(admin_key="root-key")
    for i in range(30):
        d = _choose(client, query=f"q{i}").json()
        client.post("/reward", json={"event_id": d["event_id"], "reward": 1})
    assert client.post("/admin/snapshot").status_code == 401
    assert client.post("/admin/snapshot", headers=KEY).status_code == 401
    assert client.post("/admin/snapshot", headers=ADMIN).json() == {"model_version": 30}

    switched = client.post("/admin/policy", json={"policy": "linucb:alpha=0.2"}, headers=ADMIN)
    assert switched.status_code == 200, switched.text
    assert switched.json() == {"policy": "linucb:alpha=0.2", "model_version": 30}
    assert _choose(client).json()["policy"] == "linucb:alpha=0.2"
    bad = client.post("/admin/policy", json={"policy": "lincub"}, headers=ADMIN)
    assert bad.status_code == 422
    assert "valid: egreedy" in bad.json()["detail"]

    assert client.post("/admin/reset", headers=ADMIN).json() == {"model_version": 0}
    assert _choose(client).json()["model_version"] == 0


def test_the_admin_key_is_not_taken_from_basic_auth(make_client: ClientFactory) -> None:
    """A browser holding Basic credentials for the service (the dashboard's, an operator key
    that is also the admin key) sends them with any request to it, a cross-site one too: a
    form on any page the operator opened reset the model, as ``/admin/reset`` and
    ``/admin/snapshot`` read no body whose content type could refuse it. The admin key goes in
    X-API-Key or as a bearer token; the Basic password still opens the dashboard's reads."""
    client = make_client(admin_key="root-key", ops_keys="root-key")
    basic = {"Authorization": "Basic " + base64.b64encode(b"operator:root-key").decode()}
    form = {"content-type": "application/x-www-form-urlencoded", "origin": "https://elsewhere"}
    for path in ("/admin/reset", "/admin/snapshot"):
        refused = client.post(path, headers=basic | form, content=b"a=b")
        assert refused.status_code == 401, (path, refused.text)
        assert "www-authenticate" not in refused.headers  # no browser prompt for it
        assert refused.json() == {
            "detail": "missing or wrong admin key: send X-API-Key or Authorization: Bearer "
            "<key> (BANDIT_ADMIN_KEY)",
            "field": "X-API-Key",
        }
        assert client.post(path, headers={"x-api-key": "root-key"}).status_code == 200
        assert client.post(path, headers=ADMIN).status_code == 200
    assert client.get("/stats", headers=basic).status_code == 200
    assert client.get("/dashboard", headers=basic).status_code == 200
    asked = client.get("/stats")
    assert asked.status_code == 401
    assert asked.headers["www-authenticate"].startswith("Basic ")


# Specs an admin could once switch to: NaN, infinite or huge values made every later /choose
# fail (and were kept in Redis); linucb:dim=100000000 asked numpy for 71 PiB; -f and the like
# had VW write files on the server, and -i told whether a file exists.
REFUSED_POLICIES = [
    ("squarecb:gamma_scale=NaN", "parameter gamma_scale must be in (0, 10000], got nan"),
    ("squarecb:gamma_scale=inf", "parameter gamma_scale must be in (0, 10000], got inf"),
    ("squarecb:gamma_scale=1e400", "parameter gamma_scale must be in (0, 10000], got inf"),
    ("squarecb:gamma_scale=" + "9" * 400, "parameter gamma_scale must be in (0, 10000], got inf"),
    ("egreedy:epsilon=nan", "parameter epsilon must be in [0, 1], got nan"),
    ("egreedy:learning_rate=inf", "parameter learning_rate must be in (0, 10], got inf"),
    ("linucb:alpha=nan", "parameter alpha must be in [0, 100], got nan"),
    ("ucb:discount=-inf", "parameter discount must be in (0, 1], got -inf"),
    ("bag:bag=" + "9" * 400, "parameter bag must be in [1, 100], got 99999999999999999999..."),
    ("linucb:dim=100000000", "parameter dim must be in [12, 1024], got 100000000"),
    ("squarecb:vw_args=-f {tmp}/x.model", "vw_args: '-f' is not an allowed VW option"),
    ("squarecb:vw_args=--readable_model {tmp}/x.txt", "'--readable_model' is not an allowed"),
    ("squarecb:vw_args=--invert_hash {tmp}/x.txt", "'--invert_hash' is not an allowed"),
    ("egreedy:vw_args=--cache_file {tmp}/x.cache", "'--cache_file' is not an allowed"),
    ("squarecb:vw_args=--power_t nan", "vw_args: --power_t must be in [0, 1], got nan"),
    ("fixed:arm=nope", "arm 'nope' is not an arm; valid: 4b, 7b, 14b"),  # served 4b silently
]


def test_admin_policy_refuses_values_out_of_bounds_and_vw_file_options(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = make_client(admin_key="root-key")
    written = tmp_path / "vw"
    written.mkdir()
    for spec, message in REFUSED_POLICIES:
        body = {"policy": spec.format(tmp=written)}
        response = client.post("/admin/policy", json=body, headers=ADMIN)
        assert response.status_code == 422, (spec, response.text)
        assert response.json()["field"] == "policy"
        assert message in response.json()["detail"], (spec, response.text)
    assert list(written.iterdir()) == []
    # -i answers the same whether the file exists or not
    details = [
        client.post(
            "/admin/policy", json={"policy": f"squarecb:vw_args=-i {path}"}, headers=ADMIN
        ).json()["detail"]
        for path in ("/etc/hostname", written / "no-such-file")
    ]
    assert details[0] == details[1] and "'-i' is not an allowed VW option" in details[0]
    # nothing was switched or kept: the default policy serves, and serves every choice
    for i in range(20):
        d = _choose(client, query=f"q{i}")
        assert d.status_code == 200 and d.json()["policy"] == "squarecb", d.text
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    stored = _everything_stored(settings.redis_url or "", settings.key_prefix)
    assert "gamma_scale" not in stored and "vw_args" not in stored and "dim=" not in stored


# fixed:arm=70b: an admin's switch to an arm the deployment has since dropped
@pytest.mark.parametrize(
    "stored", ["squarecb:gamma_scale=NaN", "squarecb:vw_args=-f {tmp}/x", "fixed:arm=70b"]
)
def test_an_override_stored_before_it_was_refused_gives_way_to_the_settings_policy(
    make_client: ClientFactory, make_settings: SettingsFactory, tmp_path: Path, stored: str
) -> None:
    """A deployment that took squarecb:gamma_scale=NaN before it was refused starts, and serves
    the settings' policy, rather than failing every choice (or failing to start)."""
    settings = make_settings(admin_key="root-key")
    raw: Any = redis.Redis.from_url(settings.redis_url or "")
    raw.set("{" + settings.key_prefix + "}:policy", stored.format(tmp=tmp_path))
    raw.close()
    client = make_client(settings)
    for i in range(5):
        d = _choose(client, query=f"q{i}")
        assert d.status_code == 200 and d.json()["policy"] == "squarecb", d.text
    switched = client.post("/admin/policy", json={"policy": "linucb"}, headers=ADMIN)
    assert switched.status_code == 200 and _choose(client).json()["policy"] == "linucb"
    assert not (tmp_path / "x").exists()


def test_a_refused_override_is_said_once_to_a_learner_that_renews_its_lease(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()

    async def scenario() -> None:
        store = Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 1000)
        await store.set_policy_override("squarecb:gamma_scale=NaN")
        warned: set[str] = set()
        for _ in range(3):  # a lease renewal reads it each time
            assert str(await effective_spec(store, settings, warned)) == "squarecb"
        await store.close()

    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records].count(
        "policy override refused (policy squarecb: parameter gamma_scale must be in (0, 10000], "
        "got nan): serving squarecb"
    ) == 1


def test_a_refused_override_is_said_once_by_a_starting_service(
    make_settings: SettingsFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Loading the model and the learner's first read of the override each said it."""
    settings = make_settings()
    raw = redis.Redis.from_url(settings.redis_url or "")
    raw.set(f"{{{settings.key_prefix}}}:policy", "squarecb:gamma_scale=NaN")
    raw.close()
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        client = make_client(settings)
        assert _choose(client).json()["policy"] == "squarecb"
    refused = [m for m in caplog.messages if m.startswith("policy override refused")]
    assert len(refused) == 1, refused


@pytest.mark.parametrize(
    ("override", "settings_now", "said"),
    [
        # Switched to squarecb while BANDIT_POLICY was egreedy; restarted with BANDIT_VW_ARGS
        # holding --l2, which egreedy takes and squarecb refuses: the start failed, a traceback.
        (
            "squarecb",
            {"vw_args": "--l2 0.01"},
            "policy squarecb: vw_args: squarecb sets --l2 from its parameter l2",
        ),
        # Parsed, and refused only when built (stored by hand, or before coarse was checked).
        ("squarecb:coarse=XYZ", {}, "policy squarecb: coarse must name some of the shared"),
    ],
)
def test_an_override_that_would_not_build_under_these_settings_is_refused_not_a_crash(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    override: str,
    settings_now: dict[str, Any],
    said: str,
) -> None:
    settings = make_settings(policy="egreedy", **settings_now)
    raw = redis.Redis.from_url(settings.redis_url or "")
    raw.set(f"{{{settings.key_prefix}}}:policy", override)
    raw.close()
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        client = make_client(settings)
        assert _choose(client).json()["policy"] == "egreedy"
    refused = [m for m in caplog.messages if m.startswith("policy override refused")]
    assert len(refused) == 1 and said in refused[0], refused


def test_a_snapshot_saved_under_a_refused_spec_is_relearned_from_the_log() -> None:
    saved = Snapshot("squarecb:gamma_scale=NaN", 30, "1700000000000-0", b"not read")
    model = restore(saved, parse_policy_spec("squarecb"), Settings())
    assert (str(model.spec), model.version, model.stream_id) == ("squarecb", 0, "0-0")


def test_body_size_limit_is_413_naming_the_limit(make_client: ClientFactory) -> None:
    client = make_client(max_body_bytes=2048)
    big = json.dumps({"query": "x" * 5000})
    response = client.post("/choose", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {
        "detail": "request body over the limit of 2048 bytes (BANDIT_MAX_BODY_BYTES)",
        "field": "body",
    }

    def chunks() -> Any:  # no content-length: counted as it streams
        yield big[:1000].encode()
        yield big[1000:].encode()

    streamed = client.post(
        "/choose", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert _choose(client).status_code == 200  # and the service keeps serving


@pytest.mark.parametrize("streamed", [False, True])
def test_a_body_of_the_limit_is_read_and_one_byte_more_is_413(
    make_client: ClientFactory, streamed: bool
) -> None:
    """Declared in its content-length or counted as it streams, the limit's byte is taken."""
    client = make_client(max_body_bytes=2048)
    head, tail = b'{"query": "', b'"}'
    exact = head + b"x" * (2048 - len(head) - len(tail)) + tail
    for raw, status in ((exact, 200), (head + b"x" + exact[len(head) :], 413)):
        response = client.post(
            "/choose",
            content=iter([raw[:1000], raw[1000:]]) if streamed else raw,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == status, (len(raw), response.text)


@pytest.mark.parametrize("store_text", [False, True])
def test_query_text_is_stored_only_when_asked(
    make_client: ClientFactory, make_settings: SettingsFactory, store_text: bool
) -> None:
    settings = make_settings(store_query_text=store_text)
    client = make_client(settings)
    secret = "my card number is 4111 1111 1111 1111"
    d = _choose(client, query=secret).json()
    client.post("/reward", json={"event_id": d["event_id"], "reward": 1})
    assert ("4111 1111" in _everything_stored(settings.redis_url or "", settings.key_prefix)) is (
        store_text
    )


def _everything_stored(url: str, prefix: str) -> str:
    """Every value under the prefix, decoded, as one string."""
    raw: Any = redis.Redis.from_url(url)
    values: list[bytes] = []
    for key in raw.scan_iter(match="{" + prefix + "}:*"):
        kind = raw.type(key)
        if kind == b"string":
            values.append(raw.get(key) or b"")
        elif kind == b"hash":
            values += [v for v in raw.hgetall(key).values()]
        elif kind == b"stream":
            values += [v for _, fields in raw.xrange(key) for v in fields.values()]
    raw.close()
    return b"".join(values).decode(errors="replace")


@pytest.mark.parametrize(
    "body",
    [
        {"query": "\x00\x01\x02 control \u202e rtl"},
        {"query": "emoji 🚀 and 日本語", "features": {"語": "値", "lang\x00": "x"}},
        {"query": "q", "features": {"k" * 65: 1}},
        {"query": "q", "event_id": "../../etc/passwd"},
        {"query": ["not", "a", "string"]},
        {"query": "q", "arms": ["4b", 7]},
        b'{"query": "q", "features": {"n": 1e400}}',
        b'{"query": "q", "features": {"n": NaN}}',
        b'{"query": "\\ud800 lone surrogate"}',
        b"\xff\xfe not utf-8",
    ],
)
def test_odd_input_gets_a_4xx_or_a_decision_never_a_5xx(
    client: TestClient, body: dict[str, Any] | bytes
) -> None:
    if isinstance(body, bytes):
        headers = {"content-type": "application/json"}
        response = client.post("/choose", content=body, headers=headers)
    else:
        response = client.post("/choose", json=body)
    assert response.status_code in (200, 400, 422), response.text
    if response.status_code != 200:
        assert response.json()["detail"]
    assert client.get("/healthz").status_code == 200


KEYED_CALLS = [  # an endpoint of each key group and door
    ("POST", "/choose", b'{"query": "hi"}'),
    ("POST", "/reward", b'{"event_id": "e-1", "reward": 1}'),
    ("GET", "/stats", b""),
    ("GET", "/metrics", b""),
    ("GET", "/dashboard", b""),
    ("POST", "/admin/snapshot", b""),
    ("GET", "/v1/models", b""),
    ("POST", "/v1/chat/completions", b'{"model": "auto", "messages": []}'),
]


VISIBLE = [*range(0x21, 0x7F), *range(0x80, 0x100)]  # the bytes of a header value (RFC 9110)


@pytest.fixture
def keyed(serve: Serve) -> str:
    """A service with every group of keys set (the hypothesis test reuses it for each input)."""
    return serve(api_keys="k1", ops_keys="ops-1", admin_key="root-key")


@given(
    value=st.sampled_from(
        [b"Basic \xc3\xa9", b"Basic dTp\xff\xff", b"basic \xff", b"Basic //79", b"Bearer \xe9"]
    )
    | st.lists(st.sampled_from(VISIBLE), min_size=1, max_size=40).map(
        lambda v: b"Basic " + bytes(v)
    )
)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_authorization_header_is_a_401_not_a_500(keyed: str, value: bytes) -> None:
    """A Basic header whose credentials are not ASCII made base64 raise a ValueError of its own,
    which every keyed endpoint answered as a 500 (and logged with a traceback)."""
    for method, path, body in KEYED_CALLS:
        headers = [(b"authorization", value), (b"content-type", b"application/json")]
        answer = httpx.request(method, f"{keyed}{path}", content=body, headers=headers)
        assert answer.status_code == 401, (path, value, answer.text)


def test_forged_and_replayed_event_ids(client: TestClient) -> None:
    d = _choose(client).json()
    assert client.post("/reward", json={"event_id": d["event_id"], "reward": 1}).status_code == 200
    replay = client.post("/reward", json={"event_id": d["event_id"], "reward": 1})
    assert replay.status_code == 409
    forged = client.post("/reward", json={"event_id": "f" * 32, "reward": 1})
    assert forged.status_code == 404
    wrong_type = client.post("/reward", json={"event_id": 12, "reward": 1})
    assert wrong_type.status_code == 422


def test_a_path_with_a_control_character_is_no_route(serve: Serve) -> None:
    """Starlette's routes match a path with a newline at its end: ``/admin/reset%0A`` reached
    ``/admin/reset``, which a proxy rule for the exact path would not take for it."""
    base = serve(admin_key="root-key")
    key = {"x-api-key": "root-key"}
    for method, path in [("POST", "/admin/reset%0A"), ("GET", "/stats%0a"), ("GET", "/arms%09")]:
        answer = httpx.request(method, f"{base}{path}", headers=key)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json() == {"detail": "no such path", "field": "path"}
    assert httpx.get(f"{base}/stats").status_code == 200


# Operators' secrets: the Redis URL's password.

REDIS_PASSWORD = "redis-pass-7f3e"


def test_a_redis_url_that_names_no_cluster_is_said_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The message naming the URL (``status``'s line; ``serve``'s start-up traceback) printed
    its password."""
    server = RedisProcess(
        tmp_path,
        args=["--requirepass", REDIS_PASSWORD],
        url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{{port}}/0",
    )
    server.start()
    try:
        for url in (server.url, f"redis://127.0.0.1:{server.port}/0?password={REDIS_PASSWORD}"):
            monkeypatch.setenv("BANDIT_REDIS_URL", url)
            monkeypatch.setenv("BANDIT_REDIS_CLUSTER", "true")
            monkeypatch.setenv("BANDIT_DATA_DIR", str(tmp_path / "data"))
            assert main(["status"]) == 2
            said = capsys.readouterr().err
            assert "is not a Redis Cluster node" in said
            assert REDIS_PASSWORD not in said and "****" in said
    finally:
        server.kill()


def test_config_masks_a_password_given_as_a_url_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """redis-py reads ``?password=`` as it reads ``user:password@``; config showed it."""
    monkeypatch.setenv("BANDIT_REDIS_URL", f"unix:///run/redis.sock?db=2&password={REDIS_PASSWORD}")
    assert main(["config", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["BANDIT_REDIS_URL"]
    assert shown == "unix:///run/redis.sock?db=2&password=****"
