"""The OpenAPI schema documents every field, parameter, error response and the auth scheme."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from bandit_router.http.app import create_app
from bandit_router.settings import Settings

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


def test_every_operation_is_described_with_its_errors(spec: dict[str, Any]) -> None:
    for path, method, op in _operations(spec):
        assert op.get("summary") and op.get("description"), (path, method)
        assert op.get("tags"), (path, method)
        for param in op.get("parameters", []):
            assert param.get("description") and "examples" in param["schema"] | param, param
        codes = set(op["responses"])
        parameters = op.get("parameters", [])
        if op.get("requestBody") or any(p["in"] != "path" for p in parameters):
            assert "422" in codes, (path, method)  # a path segment read as a string is never
        if path in AUTHENTICATED:
            assert {"401", "500"} <= codes, (path, method)
        for code, response in op["responses"].items():
            assert response.get("description"), (path, method, code)
    assert {"409", "404", "503"} <= set(spec["paths"]["/reward"]["post"]["responses"])
    assert "403" in spec["paths"]["/admin/policy"]["post"]["responses"]


def test_the_auth_scheme(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"] == {
        "type": "apiKey",
        "description": "an API key",
        "in": "header",
        "name": "X-API-Key",
    }
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    for path, _method, op in _operations(spec):
        assert bool(op.get("security")) == (path in AUTHENTICATED), path
    assert "X-API-Key" in spec["info"]["description"]


def test_docs_page_uses_only_local_assets(client: TestClient) -> None:
    html = client.get("/docs").text
    assert "cdn" not in html.lower()
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in html
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 100_000
    assert client.get("/redoc").status_code == 404
