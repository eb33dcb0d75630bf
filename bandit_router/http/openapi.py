"""What the OpenAPI schema says beyond the models: error responses per endpoint, tags, intro."""

from __future__ import annotations

from typing import Any

from bandit_router.http.contract import FEATURE_VALUE_SCHEMA, ErrorResponse, HealthResponse
from bandit_router.inputs import MAX_FEATURE_KEY_CHARS

DESCRIPTION = """\
Learns which LLM size should answer each query: a contextual bandit over HTTP.

Call `POST /choose` with the query, call the model it names, then report how it went with
`POST /reward` (all parts at once or in several calls). Errors are JSON,
`{"detail": "...", "field": "..."}`, and name the field and what is allowed.

**Auth.** When `BANDIT_API_KEYS` is set, `/choose`, `/reward` and the gateway (`/v1/...`) need
one of those keys, sent as `X-API-Key: <key>`, `Authorization: Bearer <key>` or as the password
of Basic auth. The `/admin` endpoints need `BANDIT_ADMIN_KEY` in `X-API-Key` or as a bearer
token (not Basic auth, which a browser resends by itself), and are disabled (403) while it is
unset. `/stats`, `/metrics`, `/dashboard` and `/deployments` need one of `BANDIT_OPS_KEYS`, any of
the three ways, when it is set (a browser asks for it); `/healthz`, `/livez` and `/arms` need no
key. A group of endpoints whose keys are not set is open, whatever the schemes below say.
"""

TAGS = [
    {"name": "routing", "description": "choose an arm for a query, report how it went"},
    {"name": "operations", "description": "health, stats, metrics and the dashboard"},
    {"name": "admin", "description": "snapshot, reset and switch the policy (admin key)"},
    {
        "name": "gateway",
        "description": "OpenAI-compatible chat completions: the router chooses, the upstream "
        "answers, the call is measured; errors in OpenAI's shape plus `detail` and `field`",
    },
]

ERROR_TEXT = {
    401: "missing or wrong API key (X-API-Key, Authorization: Bearer, or Basic auth's password)",
    403: "admin endpoints are disabled: BANDIT_ADMIN_KEY is unset",
    404: "unknown or expired event_id",
    409: "the event was already rewarded",
    400: "the body is not JSON, or not a JSON object",
    408: "the body did not arrive within BANDIT_BODY_TIMEOUT_S",
    413: "request body larger than BANDIT_MAX_BODY_BYTES",
    415: "content-type is not application/json",
    422: "invalid input; the message names the field and the allowed values",
    500: "internal error; the service log has the details",
    503: "Redis unavailable; retry",
    502: "every upstream tried failed; the message says how each did",
    429: "every upstream tried was at its rate limit; Retry-After, when given, is the wait",
}


def responses(*codes: int, **texts: str) -> dict[int | str, dict[str, Any]]:
    """The error responses ``codes`` as FastAPI's ``responses=``; ``texts`` (``e409=...``)
    replace the default description of a code."""
    return {
        code: {"model": ErrorResponse, "description": texts.get(f"e{code}", ERROR_TEXT[code])}
        for code in codes
    }


# The decision's event_id goes back with the reward: a link tools (Swagger UI, schemathesis's
# stateful runs) follow from one call to the next.
REWARD_LINK = {
    "reward": {
        "operationId": "reward_reward_post",
        "description": "report how the chosen arm did: the `event_id` goes back with its parts",
        "requestBody": {"event_id": "$response.body#/event_id", "latency_ms": 840},
    }
}
CHOOSE = {200: {"description": "the decision", "links": REWARD_LINK}} | responses(
    400,
    401,
    408,
    409,
    413,
    415,
    422,
    500,
    503,
    e409="the event_id is known with other arms, was learned and its decision expired, or its "
    "stored decision is unreadable",
    e503="Redis unavailable and the local buffer full",
)
REWARD = responses(
    400,
    401,
    404,
    408,
    409,
    413,
    415,
    422,
    500,
    503,
    e404="unknown or expired event_id, or its reward window closed",
    e409="the event was already rewarded, or its stored decision is unreadable",
)
READ = responses(401, 422, 500, 503, e401="missing or wrong operator key (BANDIT_OPS_KEYS)")
# The errors of a page that answers other than JSON (the dashboard's HTML, the metrics' text):
# FastAPI would document a `model` under the page's own media type, while errors are JSON.
ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
OPS: dict[int | str, dict[str, Any]] = {
    code: {"description": response["description"], "content": ERROR_JSON}
    for code, response in responses(
        401, 500, e401="missing or wrong operator key (BANDIT_OPS_KEYS)"
    ).items()
}
HEALTH: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthResponse, "description": "Redis unreachable"}
}
ADMIN = responses(
    401,
    403,
    409,
    500,
    503,
    e401="missing or wrong admin key (X-API-Key or Authorization: Bearer; BANDIT_ADMIN_KEY)",
    e409="this process does not hold the learner lease",
)
ADMIN_BODY = ADMIN | responses(400, 408, 413, 415, 422)

# Every endpoint that takes ``?deployment=``: an unknown one is a 422 naming the valid ones.
DEPLOYMENT_ERRORS = responses(422, e422="unknown deployment; the message lists the valid ones")
# A streamed answer's events, each described as OpenAPI 3.2's ``itemSchema`` describes one of
# text/event-stream (and schemathesis reads ``schema``): the fields of one event.
SSE_EVENT = {
    "type": "object",
    "description": "one server-sent event: `data` holds a chunk in OpenAI's shape (JSON), or "
    "an error object in OpenAI's shape, and the last event's is `[DONE]`",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}
GATEWAY = (
    {
        200: {
            "description": "the upstream's answer as it came: a chat completion, or its "
            "server-sent events when `stream` is true",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": SSE_EVENT},
            },
        }
    }
    | responses(
        400,
        401,
        404,
        408,
        413,
        415,
        429,
        500,
        502,
        503,
        e400="the body is not a JSON object, or an invalid request (OpenAI answers 400 where "
        "the other endpoints answer 422): the message names the field (`error.param`) and the "
        "allowed values",
        e404="unknown model (the upstream's own 404 is a failure of its arm: 502)",
        e503="BANDIT_GATEWAY_MAX_CONCURRENCY upstream calls already in flight; retry",
    )
    | {
        "4XX": {
            "description": "the upstream's own 4xx, passed through as it came (its status "
            "and body); not its 401, 402, 403, 404, 408, 409 or 429, each a failure of its arm"
        }
    }
)
GATEWAY_DEPLOYMENT = (
    "the deployment, as the body's `deployment` or a `model` naming a deployment (all: the "
    "same one); none: `default`, or the deployment `model` names"
)
GATEWAY_READ = responses(
    400, 401, 500, e400="unknown deployment, or two named; the message lists the valid ones"
)
GATEWAY_MODEL = responses(
    400,
    401,
    404,
    500,
    e400="unknown deployment, or two named; the message lists the valid ones",
    e404="no such model here (`GET /v1/models` lists them)",
)


OPS_PATHS = frozenset({"/stats", "/metrics", "/dashboard", "/deployments"})  # BANDIT_OPS_KEYS


def open_where_unkeyed(schema: dict[str, Any], api_keys: bool, ops_keys: bool) -> None:
    """Add the empty requirement (no key at all) to the security of the operations whose group of
    keys is not set, which answer without one: ``api_keys`` whether any deployment has API keys,
    ``ops_keys`` whether BANDIT_OPS_KEYS is set. The admin routes are never open (403 unset)."""
    for path, operations in schema["paths"].items():
        keyed = ops_keys if path in OPS_PATHS else api_keys
        if keyed or path.startswith("/admin/"):
            continue
        for operation in operations.values():
            if operation.get("security"):
                operation["security"].append({})


def name_deployments(schema: dict[str, Any], names: list[str]) -> None:
    """Every ``deployment`` (the query's, ``/choose``'s and the gateway's body field) as one of
    ``names``, the deployments served, as the 422 for another lists them. An empty
    ``?deployment=`` (or the gateway's body field) is ``default`` too."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "deployment" and parameter["in"] == "query":
                    parameter["schema"] = {
                        "type": "string",
                        "enum": [*names, ""],
                        "examples": names[-1:],
                    }
    field = schema["components"]["schemas"]["ChooseRequest"]["properties"]["deployment"]
    field["anyOf"][0]["enum"] = names
    field["examples"] = names[-1:]
    chat = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    gateway = chat["application/json"]["schema"]["properties"]["deployment"]
    gateway["enum"] = [*names, ""]
    gateway["examples"] = names[-1:]


def deployment_parameter(description: str) -> dict[str, Any]:
    """The ``?deployment=`` query parameter of a route that reads it from the request itself
    (not through a FastAPI parameter), for ``openapi_extra``."""
    return {
        "name": "deployment",
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
        "examples": {"default": {"value": "default"}},
    }


MODEL_PARAMETER = {
    "parameters": [
        {
            "name": "model",
            "in": "path",
            "required": True,
            "description": "a model `GET /v1/models` lists: `auto`, a deployment or an arm",
            "schema": {"type": "string"},
            "examples": {"auto": {"value": "auto"}},
        },
        deployment_parameter("the deployment whose model it is; none: as `GET /v1/models`"),
    ]
}
MODELS_PARAMETER = {
    "parameters": [
        deployment_parameter(
            "the deployment whose models to list; none: `default`'s, and the name of each "
            "other deployment the key opens"
        )
    ]
}
CHAT_PROPERTIES: dict[str, Any] = {
    "model": {
        "type": "string",
        "description": "`auto` (BANDIT_GATEWAY_MODEL): the deployment's router chooses; a "
        "named deployment's name: that deployment's router chooses; or an arm of the "
        "deployment",
        "examples": ["auto"],
    },
    "messages": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "object"},
        "description": "OpenAI's messages; the router reads the last user message with text "
        "(else the last system or developer message's)",
        "examples": [[{"role": "user", "content": "What is 2+2?"}]],
    },
    "stream": {
        "anyOf": [{"type": "boolean"}, {"type": "null"}],
        "description": "stream the answer as server-sent events (null: not streamed)",
        "examples": [False],
    },
    "stream_options": {
        "anyOf": [{"type": "object"}, {"type": "null"}],
        "description": "OpenAI's stream options, forwarded with `include_usage: true`",
        "examples": [{"include_usage": True}],
    },
    "metadata": {
        "anyOf": [
            {
                "type": "object",
                "propertyNames": {"minLength": 1, "maxLength": MAX_FEATURE_KEY_CHARS},
                "additionalProperties": FEATURE_VALUE_SCHEMA,
            },
            {"type": "null"},
        ],
        "description": "the app's features, as `/choose`'s `features` (not forwarded)",
        "examples": [{"category": "business"}],
    },
    "deployment": {
        "type": "string",
        "enum": ["default", ""],  # the deployments served, once served (name_deployments)
        "description": "as `/choose`'s: the deployment that decides (empty: `default`; with "
        "`?deployment=` or a `model` naming a deployment: the same one); not forwarded",
        "examples": ["default"],
    },
}
CHAT_BODY = {
    "parameters": [deployment_parameter(GATEWAY_DEPLOYMENT)],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "OpenAI's chat completion request; `model`: `auto` "
                    "(BANDIT_GATEWAY_MODEL), a deployment or an arm; `metadata`: the app's "
                    "features. The "
                    "fields not listed here are forwarded to the upstream as they came",
                    "required": ["model", "messages"],
                    "properties": CHAT_PROPERTIES,
                }
            }
        },
    },
}
