"""The OpenAPI schema documents every field, parameter, error response and the auth scheme."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from bandit_router.http.app import create_app
from bandit_router.settings import Settings
from tests.conftest import ClientFactory
from tests.live import serve

__all__ = ["serve"]  # the fixture, imported
Serve = Callable[..., str]

AUTHENTICATED = {
    "/choose",
    "/reward",
    "/admin/snapshot",
    "/admin/reset",
    "/admin/promote",
    "/admin/policy",
    "/stats",
    "/deployments",
    "/metrics",
    "/dashboard",
    "/v1/chat/completions",
    "/v1/models",
    "/v1/models/{model}",
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(Settings()).openapi()  # no lifespan: no Redis needed
    return schema


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, m, op) for path, ops in spec["paths"].items() for m, op in ops.items()]


def test_every_field_has_a_description_and_an_example(spec: dict[str, Any]) -> None:
    missing = []
    for name, schema in spec["components"]["schemas"].items():
        for field, prop in schema.get("properties", {}).items():
            if "description" not in prop:
                missing.append(f"{name}.{field}: description")
            if "examples" not in prop and "$ref" not in prop:  # a $ref's model has its own
                missing.append(f"{name}.{field}: example")
    assert missing == []


def _invalid(path: str) -> int:
    """The status of a request the contract finds invalid: 422, OpenAI's 400 at the gateway."""
    return 400 if path.startswith("/v1/") else 422


def test_every_operation_is_described_with_its_errors(spec: dict[str, Any]) -> None:
    for path, method, op in _operations(spec):
        assert op.get("summary") and op.get("description"), (path, method)
        assert op.get("tags"), (path, method)
        for param in op.get("parameters", []):
            assert param.get("description") and "examples" in param["schema"] | param, param
        codes = set(op["responses"])
        parameters = op.get("parameters", [])
        if op.get("requestBody") or any(p["in"] != "path" for p in parameters):
            assert str(_invalid(path)) in codes, (
                path,
                method,
            )  # a path segment read as a string is never
        if path in AUTHENTICATED:
            assert {"401", "500"} <= codes, (path, method)
        for code, response in op["responses"].items():
            assert response.get("description"), (path, method, code)
    assert {"409", "404", "503"} <= set(spec["paths"]["/reward"]["post"]["responses"])
    assert "403" in spec["paths"]["/admin/policy"]["post"]["responses"]


def test_every_body_documents_the_answers_of_its_reading(spec: dict[str, Any]) -> None:
    """Every body is read by the same guard (size, time, content type, JSON, schema), so every
    operation that takes one can answer each of these: the gateway's lacked 408."""
    for path, method, op in _operations(spec):
        if op.get("requestBody"):
            expected = {"400", "408", "413", "415", str(_invalid(path))}
            assert expected <= set(op["responses"]), (path, method)


def test_every_operation_that_reads_a_deployment_documents_it(make_client: ClientFactory) -> None:
    """An operation that answers ``?deployment=`` (a 422 naming it for an unknown one) lists the
    parameter: /admin/promote read it without saying so."""
    client = make_client(admin_key="admin-1")
    spec = client.get("/openapi.json").json()
    refused = 0
    for path, method, op in _operations(spec):
        url = path.replace("{model}", "auto") + "?deployment=no-such"
        response = client.request(method.upper(), url, headers={"x-api-key": "admin-1"})
        named = [p["name"] for p in op.get("parameters", [])]
        if response.status_code == _invalid(path) and response.json().get("field") == "deployment":
            assert "deployment" in named, (path, method)
            refused += 1
    assert refused == 9  # /arms, /stats, the four /admin routes and the gateway's three


def test_every_field_of_an_open_answer_is_documented(make_client: ClientFactory) -> None:
    """The open operations' answers hold only fields their schema describes: /healthz answered
    ``learner`` (README, The endpoints) while its schema left it out."""
    client = make_client()
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path in ("/healthz", "/arms", "/deployments"):
        ok = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        described = set(schemas[ok["schema"]["$ref"].rsplit("/", 1)[-1]]["properties"])
        answered = set(client.get(path).json())
        assert answered <= described, (path, answered - described)


def test_the_gateway_body_and_answer_are_described(spec: dict[str, Any]) -> None:
    """The fields the gateway reads, with their types (a null `model` or `messages` was valid by
    the schema, and refused); a streamed answer is server-sent events."""
    op = spec["paths"]["/v1/chat/completions"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["model", "messages"]
    assert body["properties"]["model"]["type"] == "string"
    assert (
        body["properties"]["messages"] | {"type": "array", "minItems": 1}
        == (body["properties"]["messages"])
    )
    for name in ("stream", "stream_options", "metadata"):
        assert {"type": "null"} in body["properties"][name]["anyOf"], name
    metadata = body["properties"]["metadata"]["anyOf"][0]
    features = spec["components"]["schemas"]["ChooseRequest"]["properties"]["features"]
    assert metadata["additionalProperties"] == features["anyOf"][0]["additionalProperties"]
    answers = op["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(answers)
    event = answers["text/event-stream"]["schema"]  # one event, as schemathesis checks each
    assert event["type"] == "object" and event["required"] == ["data"]
    assert "4XX" in op["responses"]  # the upstream's own, passed through


def test_a_feature_value_is_described(spec: dict[str, Any]) -> None:
    features = spec["components"]["schemas"]["ChooseRequest"]["properties"]["features"]
    values = features["anyOf"][0]["additionalProperties"]["anyOf"]
    assert {v["type"] for v in values} == {"string", "number", "boolean"}
    assert {"type": "string", "maxLength": 256} in values
    assert {"type": "number", "minimum": -1e15, "maximum": 1e15} in values


def test_a_decision_links_to_its_reward(spec: dict[str, Any]) -> None:
    link = spec["paths"]["/choose"]["post"]["responses"]["200"]["links"]["reward"]
    ids = {op.get("operationId"): path for path, _, op in _operations(spec)}
    assert ids[link["operationId"]] == "/reward"
    assert link["requestBody"]["event_id"] == "$response.body#/event_id"


def test_the_auth_scheme(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"] == {
        "type": "apiKey",
        "description": "an API key",
        "in": "header",
        "name": "X-API-Key",
    }
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["HTTPBasic"]["scheme"] == "basic"
    for path, _method, op in _operations(spec):
        assert bool(op.get("security")) == (path in AUTHENTICATED), path
    assert "X-API-Key" in spec["info"]["description"]


def _sent(scheme: str, key: str) -> dict[str, str]:
    """The headers that carry ``key`` the way ``scheme`` (a securitySchemes name) says."""
    if scheme == "APIKeyHeader":
        return {"x-api-key": key}
    if scheme == "HTTPBearer":
        return {"authorization": f"Bearer {key}"}
    assert scheme == "HTTPBasic", scheme
    return {"authorization": "Basic " + base64.b64encode(f"ops:{key}".encode()).decode()}


def test_each_operation_takes_its_key_the_ways_its_security_lists_and_no_other(
    serve: Serve,
) -> None:
    """The document listed no Basic auth, which every keyed group but the admin's takes (the
    dashboard's browser sends it), and its description said the admin key was taken that way."""
    base = serve(api_keys="k1", ops_keys="ops-1", admin_key="root-key")
    spec = httpx.get(f"{base}/openapi.json").json()
    schemes = set(spec["components"]["securitySchemes"])
    assert schemes == {"APIKeyHeader", "HTTPBearer", "HTTPBasic"}
    for path, method, op in _operations(spec):
        if not op.get("security"):
            continue
        key = "root-key" if path.startswith("/admin/") else "k1"
        if path in ("/stats", "/metrics", "/dashboard", "/deployments"):
            key = "ops-1"
        listed = {name for each in op["security"] for name in each}
        url = base + path.replace("{model}", "auto")
        for scheme in schemes:
            for given, opens in ((key, scheme in listed), ("wrong-key", False)):
                headers = {"content-type": "application/json", **_sent(scheme, given)}
                answer = httpx.request(method.upper(), url, headers=headers, content=b"{}")
                assert (answer.status_code != 401) == opens, (path, scheme, given, answer.text)
    assert "not Basic auth" in spec["info"]["description"]  # of the admin key


@pytest.mark.parametrize(
    "keys",
    [{}, {"api_keys": "k1"}, {"ops_keys": "ops-1"}, {"api_keys": "k1", "ops_keys": "ops-1"}],
)
def test_an_operation_the_service_answers_without_a_key_says_so(
    serve: Serve, keys: dict[str, str]
) -> None:
    """With a group's keys unset its operations answer without one, while the document required
    a key of every keyed operation: a client generated from it (or schemathesis's auth checks)
    took the open service for a broken one. Now such an operation's security lists the empty
    requirement, and only then."""
    base = serve(admin_key="root-key", **keys)
    spec = httpx.get(f"{base}/openapi.json").json()
    for path, method, op in _operations(spec):
        if not op.get("security"):
            continue
        url = base + path.replace("{model}", "auto")
        headers = {"content-type": "application/json"}
        answer = httpx.request(method.upper(), url, headers=headers, content=b"{}")
        keyless = answer.status_code not in (401, 403)
        assert ({} in op["security"]) == keyless, (keys, path, answer.status_code)


def test_each_error_comes_in_the_content_type_documented(serve: Serve) -> None:
    """The dashboard's 401 and 500 were documented as text/html, the page's own type (FastAPI
    puts a response `model` under the route's media type), while they are JSON like every
    error; a client generated from the document would not parse them."""
    base = serve(api_keys="k1", ops_keys="ops-1", admin_key="root-key")
    spec = httpx.get(f"{base}/openapi.json").json()
    for path, method, op in _operations(spec):
        if not op.get("security"):
            continue
        url = base + path.replace("{model}", "auto")
        answer = httpx.request(method.upper(), url, headers={"content-type": "application/json"})
        assert answer.status_code == 401, (path, answer.status_code)
        documented = set(op["responses"]["401"]["content"])
        assert answer.headers["content-type"] in documented, (path, documented)
        for code, response in op["responses"].items():  # every error: JSON (the gateway's 4XX
            if code not in ("200", "4XX"):  # passes the upstream's own on)
                assert set(response["content"]) == {"application/json"}, (path, code)


def _body(path: str, deployment: str) -> bytes:
    """A body valid but for its deployment: a reward's event id names the deployment asked."""
    if path == "/choose":
        return b'{"query": "hi"}'
    if path == "/reward":
        event = f"{deployment}:e1" if deployment not in ("", "default") else "e1"
        return json.dumps({"event_id": event, "reward": 1}).encode()
    return b"{}"


def test_a_deployment_is_documented_as_one_of_those_served(serve: Serve, tmp_path: Path) -> None:
    """The document said any string for ``deployment``, so a client (or schemathesis) could not
    learn the valid names but from a 422. Now each is an enum of the names served (the gateway's
    too), and the service takes every value listed and refuses one not listed."""
    deployments = tmp_path / "deployments.toml"
    deployments.write_text('[deployments.support]\narms = "4b,14b"\n')
    base = serve(admin_key="root-key", deployments_file=str(deployments))
    spec = httpx.get(f"{base}/openapi.json").json()
    body = spec["components"]["schemas"]["ChooseRequest"]["properties"]["deployment"]
    assert body["anyOf"][0]["enum"] == ["default", "support"]
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    schema = chat["application/json"]["schema"]["properties"]["deployment"]
    assert schema["enum"] == ["default", "support", ""]
    checked = 0
    for path, method, op in _operations(spec):
        for parameter in op.get("parameters", []):
            if parameter["name"] != "deployment":
                continue
            served = ["default", "support"]
            assert parameter["schema"]["enum"] == [*served, ""], path
            for name, takes in [*((n, True) for n in ["", *served]), ("nowhere", False)]:
                answer = httpx.request(
                    method.upper(),
                    f"{base}{path}",
                    params={"deployment": name},
                    headers={"x-api-key": "root-key", "content-type": "application/json"},
                    content=_body(path, name),
                )
                invalid = answer.status_code == _invalid(path)
                refused = invalid and answer.json()["field"] == "deployment"
                assert refused != takes, (path, name, answer.text)
            checked += 1
    # /choose, /reward, /arms, /stats, the gateway's chat and its two models routes, the four admin
    assert checked == 11


def test_docs_page_uses_only_local_assets(client: TestClient) -> None:
    html = client.get("/docs").text
    assert "cdn" not in html.lower()
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in html
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 100_000
    assert client.get("/redoc").status_code == 404
