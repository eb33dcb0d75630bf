"""Settings: every knob of the service, read from ``BANDIT_*`` environment variables."""

from __future__ import annotations

import difflib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bandit_router.policies import linucb
from bandit_router.policies.registry import (
    RunsAs,
    build_policy,
    check_arms,
    parse_policy_spec,
    runs_as,
)
from bandit_router.policies.vw import vw_options

log = logging.getLogger("bandit_router")

REWARD_PARTS = ("accuracy", "rating", "latency", "cost")
MAX_WEIGHT = 1000.0  # a reward weight's upper bound
# Upper bounds of the settings: far past any use, and within what Redis (int64 milliseconds),
# VW and the OS take.
HOUR_S, DAY_S, YEAR_S = 3600, 86_400, 31_536_000
MAX_COUNT = 10**10
# Lower bound of the periods of background jobs: each job runs once per period, so a
# vanishing one (1e-9) is a busy loop on the worker and on Redis.
MIN_PERIOD_S = 0.01
# Lower bound of the learner's lease: it is renewed between the learner's steps, 50 ms apart at
# the least, and must outlast several of them.
MIN_LEASE_S = 0.5
# Upper bound of a write's WAIT for replicas, ms: the WAIT ends a round trip to Redis, given 5 s
# in all (store.transport.DEFAULT_TIMEOUT_S); a longer one was cut short as an outage.
MAX_WAIT_MS = 4000
# Lower bound of the timeouts of a client's request and of an upstream's answer: a shorter one
# is one no client or upstream can meet (a request's head cut before it is read).
MIN_TIMEOUT_S = 0.1
GIB = 1 << 30
MIB = 1 << 20
# Arms of a deployment, of a request's arm subset, and of one row or event that `train`,
# `evaluate` and `simulate` read: what a deployment decides over, its export carries.
MAX_ARMS = 64


GATEWAY_PARTS = ("latency", "cost", "failure")


class UpstreamSpec(BaseModel):
    """An arm's OpenAI-compatible upstream, for the gateway (``/v1/chat/completions``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base_url: str = Field(
        pattern=r"^https?://[^\s]+$",
        description="the upstream's OpenAI-compatible API root",
        examples=["http://127.0.0.1:8081/v1"],
    )
    model: str = Field(
        min_length=1, description="the upstream's model name", examples=["llama2-7b"]
    )
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="the NAME of the environment variable holding the upstream's key",
        examples=["LLAMA_KEY"],
    )
    usd_per_mtok_in: float | None = Field(
        default=None, ge=0, description="USD per M input tokens", examples=[0.2]
    )
    usd_per_mtok_out: float | None = Field(
        default=None, ge=0, description="USD per M output tokens", examples=[0.2]
    )
    timeout_s: float | None = Field(
        default=None,
        ge=MIN_TIMEOUT_S,
        description="time to the first byte and between chunks",
        examples=[30],
    )


class ArmSpec(BaseModel):
    """One arm as configured: a model name and the features it carries into the policy."""

    # Exports write them as JSON. A key it does not know is refused: ignored, a misspelt
    # `upstream` or price would leave the gateway without it, and nothing said.
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            valid = list(cls.model_fields)
            for key in value:
                if key not in valid:
                    raise ValueError(f"unknown key {str(key)[:64]!r}; valid: {', '.join(valid)}")
        return value

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:/-]+$",
        description="the model's name, as /choose answers it",
        examples=["7b"],
    )
    params_b: float | None = Field(
        default=None, gt=0, description="size, billions of parameters", examples=[7]
    )
    usd_per_mtok: float | None = Field(
        default=None, ge=0, description="price per million tokens, USD", examples=[0.2]
    )
    # Excluded from every dump (/arms, /stats, exports): an upstream's address stays server-side.
    upstream: UpstreamSpec | None = Field(
        default=None,
        exclude=True,
        description="where the gateway sends this arm's requests",
        examples=[{"base_url": "http://127.0.0.1:8081/v1", "model": "llama2-7b"}],
    )


DEFAULT_ARMS = (
    ArmSpec(name="4b", params_b=4, usd_per_mtok=0.10),
    ArmSpec(name="7b", params_b=7, usd_per_mtok=0.20),
    ArmSpec(name="14b", params_b=14, usd_per_mtok=0.40),
)


def parse_arms(value: Any) -> Any:
    """Read ``BANDIT_ARMS``: JSON (a list of arm objects) or ``name:params_b:usd_per_mtok,...``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return _json(text, "a JSON list of arms")
    if text.startswith("{"):
        raise ValueError(
            'a JSON list of arms is expected ([{"name": ...}, ...]), '
            "or name:params_b:usd_per_mtok,..."
        )
    arms: list[dict[str, Any]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, *rest = item.split(":")
        if len(rest) > 2:
            raise ValueError(f"arm {item!r}: expected name[:params_b[:usd_per_mtok]]")
        arm: dict[str, Any] = {"name": name}
        for key, raw in zip(("params_b", "usd_per_mtok"), rest, strict=False):
            if raw:
                try:
                    arm[key] = float(raw)
                except ValueError:
                    raise ValueError(f"arm {item!r}: {key} {raw!r} is not a number") from None
        arms.append(arm)
    return arms


def _json(text: str, expected: str) -> Any:
    """``text`` as JSON, or ``ValueError`` saying what is wrong (a traceback, for nesting deeper
    than the parser recurses)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{expected} is expected; this one is nested too deep to read") from None
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None


def parse_weights(value: Any) -> Any:
    """Read ``BANDIT_REWARD_WEIGHTS``, written ``accuracy=0.6,rating=0.2,latency=0.2``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except RecursionError:
            raise ValueError("reward weights: a flat JSON object is expected") from None
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"reward weight {item!r}: expected part=weight")
        weights[key.strip()] = float(raw)
    return weights


def check_weights(weights: Any) -> dict[str, float]:
    """Reward weights as floats, or ``ValueError`` naming the unknown part or bad weight: each a
    number in 0..MAX_WEIGHT (weights are relative; the bound keeps their sum finite)."""
    if not isinstance(weights, dict):
        raise ValueError("reward weights must be an object of part: weight")
    out: dict[str, float] = {}
    for key, weight in weights.items():
        if key not in REWARD_PARTS:
            raise ValueError(f"unknown reward part {key!r}; valid: {', '.join(REWARD_PARTS)}")
        number = _weight(weight)
        if number is None or not 0 <= number <= MAX_WEIGHT:
            raise ValueError(f"reward weight {key} must be a number in 0..{MAX_WEIGHT:g}")
        out[key] = number
    if not any(out.values()):
        raise ValueError("at least one reward weight must be > 0")
    return out


def _weight(value: Any) -> float | None:
    """``value`` as a finite float, or None (not a number, a bool, NaN, infinite, too large)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


class Settings(BaseSettings):
    """The service's configuration. Tests build ``Settings(...)`` directly."""

    # Every number finite and bounded: a value past what Redis, VW or the OS take (a TTL in ms
    # beyond int64, an infinite lease) passed start-up and broke every call after it.
    model_config = SettingsConfigDict(env_prefix="BANDIT_", extra="forbid", allow_inf_nan=False)

    host: str = Field(default="127.0.0.1", description="address `serve` binds to")
    port: int = Field(default=8000, ge=0, le=65535, description="port `serve` listens on")
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes")
    shutdown_timeout_s: int = Field(  # whole seconds, as uvicorn takes them
        default=20,
        ge=1,
        le=DAY_S,
        description="how long a stopping `serve` waits for the requests in flight (a gateway "
        "stream) to end before it cancels them",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info", description="uvicorn and service log level"
    )
    loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto", description="uvicorn's event loop (auto: uvloop when installed)"
    )

    redis_url: str | None = Field(
        default=None,
        description="Redis to use (redis://, rediss://, unix://, with password); "
        "unset: start the embedded Redis",
    )
    data_dir: str = Field(default="data", description="where the embedded Redis keeps its files")
    redis_cluster: bool = Field(
        default=False,
        description="BANDIT_REDIS_URL is a Redis Cluster node (also implied by redis+cluster://)",
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="replicas that must have a write (WAIT) before it is acknowledged; 0: none",
    )
    redis_wait_timeout_ms: int = Field(
        default=1000,
        ge=1,
        le=MAX_WAIT_MS,
        description="how long a write waits for those replicas before the request gets 503",
    )
    deployments_file: str | None = Field(
        default=None,
        description="TOML or JSON file of named deployments served beside `default`",
    )

    key_prefix: str = Field(
        default="bandit",
        min_length=1,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="prefix of every Redis key (one deployment per prefix)",
    )

    arms: Annotated[list[ArmSpec], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ARMS),
        description="the arms: `name:params_b:usd_per_mtok,...` or a JSON list of objects",
    )
    # squarecb, not egreedy: the replay simulator's results in simulations/README.md.
    policy: str = Field(
        default="squarecb", description="policy spec, `name[:param=value...]` (see Policies)"
    )
    challengers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma list of policy specs that learn beside the served policy and are "
        "scored off-policy on its traffic (see Champion and challengers)",
    )
    auto_promote: bool = Field(
        default=False,
        description="promote a challenger that clears the champion (see Champion and challengers)",
    )
    promote_min_events: int = Field(
        default=1000,
        ge=10,
        le=MAX_COUNT,
        description="events a challenger is scored on before it can clear",
    )
    challenger_window: int = Field(
        default=10_000,
        ge=10,
        le=1_000_000,
        description="newest events each challenger is scored on",
    )
    epsilon: float = Field(
        default=0.05, ge=0, le=1, description="exploration rate of egreedy, bag and rnd"
    )
    linucb_alpha: float = Field(
        default=0.5,
        ge=linucb.BOUNDS["alpha"].low,
        le=linucb.BOUNDS["alpha"].high,
        allow_inf_nan=False,
        description="width of LinUCB's upper bound",
    )
    vw_args: str = Field(
        default="", description="extra Vowpal Wabbit learning options, for experts (see Policies)"
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**32 - 1, description="makes choices reproducible"
    )

    reward_weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: {"accuracy": 0.6, "rating": 0.2, "latency": 0.2},
        description="weights of the reward parts (accuracy, rating, latency, cost)",
    )
    latency_budget_ms: float = Field(
        default=2000.0, gt=0, le=DAY_S * 1000, description="latency that scores 0; 0 ms scores 1"
    )
    cost_budget_usd: float = Field(
        default=0.001, gt=0, le=1000, description="cost per call that scores 0; free scores 1"
    )

    reward_wait_s: int = Field(
        default=3600, ge=1, le=YEAR_S, description="how long a decision waits for its reward parts"
    )
    default_reward: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="reward learned for an event with no reward when its window closes; "
        "unset: such events are skipped",
    )
    sweep_s: float = Field(
        default=5.0,
        ge=MIN_PERIOD_S,
        le=DAY_S,
        description="how often closed reward windows are swept",
    )
    stats_cache_s: float = Field(
        default=1.0,
        ge=0,
        le=DAY_S,
        description="how long a /stats answer is reused for the same window and buckets",
    )
    snapshot_every: int = Field(
        default=1000,
        ge=1,
        le=MAX_COUNT,
        description="events learned between model snapshots to Redis",
    )
    publish_s: float = Field(
        default=10.0,
        ge=MIN_PERIOD_S,
        le=DAY_S,
        description="longest time between snapshots while learning",
    )
    model_refresh_s: float = Field(
        default=2.0,
        ge=MIN_PERIOD_S,
        le=DAY_S,
        description="how often workers look for a newer model snapshot",
    )
    learner_lease_s: float = Field(
        default=10.0,
        ge=MIN_LEASE_S,
        le=HOUR_S,
        description="the learner's lease; a dead learner is replaced after it",
    )
    startup_wait_s: float = Field(
        default=60.0,
        ge=0,
        le=DAY_S,
        description="how long a starting process waits for Redis before it gives up",
    )
    claim_idle_s: float = Field(
        default=30.0,
        ge=MIN_PERIOD_S,
        le=DAY_S,
        description="a dead learner's unacknowledged events are claimed after",
    )
    learn_in_workers: bool = Field(
        default=True,
        description="service processes take the learner lease; false when `bandit-router learn` "
        "runs apart",
    )
    decision_buffer: int = Field(
        default=10_000,
        ge=0,
        le=10_000_000,
        description="decisions kept in memory while Redis is down",
    )
    decision_buffer_bytes: int = Field(
        default=64 * MIB,
        ge=0,
        le=GIB,
        description="and at most this many bytes of them (as JSON)",
    )
    buffer_overflow: Literal["drop_oldest", "reject"] = Field(
        default="drop_oldest",
        description="when the buffer is full: drop its oldest decision, or answer 503",
    )
    buffer_dir: str | None = Field(
        default=None,
        description="where buffered decisions are also written, so a process that stops or dies "
        "while Redis is down leaves them for another; unset: BANDIT_DATA_DIR/buffer; empty: "
        "memory only",
    )

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma list of keys for /choose and /reward; empty: no key needed",
    )
    admin_key: str | None = Field(
        default=None, description="key for /admin endpoints; unset: they are disabled"
    )
    ops_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma list of keys for /stats, /metrics, the dashboard and /deployments; "
        "empty: open",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, le=GIB, description="largest accepted request body"
    )
    body_timeout_s: float = Field(
        default=10.0,
        ge=MIN_TIMEOUT_S,
        le=3600,
        description="how long a request body may take to arrive (408 and the connection closed)",
    )
    head_timeout_s: float = Field(
        default=10.0,
        ge=MIN_TIMEOUT_S,
        le=3600,
        description="how long a request line and headers may take to arrive, from the "
        "connection's start or from the first byte of a next request (the connection closed)",
    )
    send_timeout_s: float = Field(
        default=30.0,
        ge=MIN_TIMEOUT_S,
        le=3600,
        description="how long a response may wait on a client that reads none of it (the "
        "connection closed)",
    )
    hash_key: str | None = Field(
        default=None,
        min_length=16,
        description="secret for hashing query words; unset: a random one created in Redis "
        "(see Privacy). Set it alike to share word features between deployments or with "
        "`simulate`",
    )
    store_query_text: bool = Field(
        default=False, description="keep the raw query in Redis with the decision"
    )
    stream_maxlen: int = Field(
        default=1_000_000,
        ge=1000,
        le=MAX_COUNT,
        description="joined events kept in the training log (approx.)",
    )
    max_query_chars: int = Field(
        default=32_768, ge=1, le=10_000_000, description="longest accepted query"
    )
    max_features: int = Field(
        default=64, ge=0, le=10_000, description="most app features per request"
    )

    gateway_model: str = Field(
        default="auto",
        min_length=1,
        description="the `model` name that asks the gateway to choose the arm",
    )
    gateway_retries: int = Field(
        default=1, ge=0, le=10, description="other arms tried after an upstream fails"
    )
    gateway_parts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(GATEWAY_PARTS),
        description="what the gateway records itself: latency, cost, failure (accuracy 0)",
    )
    gateway_latency: Literal["total", "first_token"] = Field(
        default="total", description="the latency the gateway records: total or to first token"
    )
    gateway_reward_weights: Annotated[dict[str, float] | None, NoDecode] = Field(
        default=None,
        description="reward weights of gateway events; unset: BANDIT_REWARD_WEIGHTS",
    )
    gateway_preferences: Annotated[dict[str, dict[str, float]], NoDecode] = Field(
        default_factory=lambda: {
            "quality": {"accuracy": 0.8, "rating": 0.1, "latency": 0.1},
            "balanced": {"accuracy": 0.5, "rating": 0.1, "latency": 0.2, "cost": 0.2},
            "cost": {"accuracy": 0.3, "latency": 0.2, "cost": 0.5},
        },
        description="named reward weights a request picks with `x-bandit-preference` (JSON)",
    )
    gateway_timeout_s: float = Field(
        default=60.0,
        ge=MIN_TIMEOUT_S,
        le=DAY_S,
        description="an upstream's timeout unless its arm sets timeout_s",
    )
    gateway_max_concurrency: int = Field(
        default=256,
        ge=1,
        le=65_536,
        description="upstream calls in flight per process; beyond: 503",
    )
    gateway_max_response_bytes: int = Field(
        default=16_777_216,
        ge=1024,
        le=GIB,
        description="largest non-streamed upstream answer read; beyond: the arm's failure",
    )

    _parse_arms = field_validator("arms", mode="before")(parse_arms)
    _parse_weights = field_validator("reward_weights", "gateway_reward_weights", mode="before")(
        parse_weights
    )

    @field_validator("gateway_preferences", mode="before")
    @classmethod
    def _parse_preferences(cls, value: Any) -> Any:
        return _json(value, "a JSON object of named weights") if isinstance(value, str) else value

    @field_validator("gateway_parts", mode="before")
    @classmethod
    def _parse_parts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("gateway_parts")
    @classmethod
    def _known_gateway_parts(cls, parts: list[str]) -> list[str]:
        for part in parts:
            if part not in GATEWAY_PARTS:
                raise ValueError(
                    f"unknown gateway part {part!r}; valid: {', '.join(GATEWAY_PARTS)}"
                )
        return parts

    @field_validator(
        "redis_url",
        "deployments_file",
        "seed",
        "default_reward",
        "hash_key",
        "gateway_reward_weights",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """An empty variable (a compose file's ``BANDIT_REDIS_URL=``) is unset, for every
        reader alike: `serve` took an empty URL for one and started no embedded Redis, and an
        empty optional number was refused as not a number."""
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_reads(cls, url: str | None) -> str | None:
        if url is not None:
            check_redis_url(url)
        return url

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys", "ops_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("host")
    @classmethod
    def _host_not_empty(cls, value: str) -> str:
        """uvicorn binds an empty address to every interface: an unset variable in
        ``BANDIT_HOST=${HOST}`` must not open the service to the network."""
        if not value.strip():
            raise ValueError(
                "an address to bind is needed (127.0.0.1: this machine only; 0.0.0.0: every "
                "interface), got an empty one"
            )
        return value

    @field_validator("admin_key", mode="before")
    @classmethod
    def _strip_admin_key(cls, value: Any) -> Any:
        """As the other keys are: a secret file's trailing newline is no part of the key."""
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("api_keys", "ops_keys", "admin_key")
    @classmethod
    def _printable_keys(cls, value: Any) -> Any:
        """A key travels in a header, which holds printable ASCII: one with another character
        could never be sent, and every request would be refused. Not echoed: a secret."""
        keys = value if isinstance(value, list) else [] if value is None else [value]
        for i, key in enumerate(keys, 1):
            if not (key.isascii() and key.isprintable()):
                raise ValueError(
                    f"key {i} of {len(keys)} holds a character that is not printable ASCII "
                    "(a header cannot carry it)"
                )
        return value

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, arms: list[ArmSpec]) -> list[ArmSpec]:
        if not arms:
            raise ValueError("at least one arm is needed")
        if len(arms) > MAX_ARMS:
            raise ValueError(
                f"at most {MAX_ARMS} arms, got {len(arms)} (a request's arms and an exported "
                "event, which train and evaluate read, carry at most that many)"
            )
        names = [arm.name for arm in arms]
        dupes = sorted({name for name in names if names.count(name) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique, repeated: {', '.join(dupes)}")
        return arms

    @field_validator("gateway_reward_weights")
    @classmethod
    def _known_gateway_weights(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        return None if weights is None else check_weights(weights)

    @field_validator("gateway_preferences")
    @classmethod
    def _known_preferences(cls, named: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for name, weights in named.items():
            try:
                check_weights(weights)
            except ValueError as e:
                raise ValueError(f"preference {name!r}: {e}") from None
        return named

    @field_validator("reward_weights")
    @classmethod
    def _known_parts(cls, weights: dict[str, float]) -> dict[str, float]:
        return check_weights(weights)

    @field_validator("policy")
    @classmethod
    def _policy_exists(cls, policy: str) -> str:
        parse_policy_spec(policy)  # raises ValueError naming the valid policies
        return policy

    @field_validator("vw_args")
    @classmethod
    def _vw_options_allowed(cls, vw_args: str) -> str:
        vw_options(vw_args)  # raises ValueError naming the option and the allowed ones
        return vw_args

    @model_validator(mode="after")
    def _cluster_needs_a_url(self) -> Settings:
        if self.redis_cluster and not self.redis_url:
            raise ValueError(
                "BANDIT_REDIS_CLUSTER=true needs BANDIT_REDIS_URL, a node of the cluster "
                "(the embedded Redis is a single server)"
            )
        return self

    @field_validator("challengers", mode="before")
    @classmethod
    def _parse_challengers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [spec.strip() for spec in value.split(",") if spec.strip()]
        return value

    @field_validator("challengers")
    @classmethod
    def _challengers_exist(cls, specs: list[str]) -> list[str]:
        normal = [str(parse_policy_spec(spec)) for spec in specs]  # names the valid policies
        return list(dict.fromkeys(normal))

    @model_validator(mode="after")
    def _policies_build(self) -> Settings:
        """A value out of its range (``squarecb:gamma_scale=-1``) is a settings error, named."""
        named = [("BANDIT_POLICY", self.policy)] + [
            ("BANDIT_CHALLENGERS", c) for c in self.challengers
        ]
        for env, spec in named:
            try:
                check_arms(parse_policy_spec(spec), self)  # first: it names the valid arms
                build_policy(spec, self, 0)
            except ValueError as e:
                raise ValueError(f"{env}: {spec}: {e}") from None
        # One challenger per policy: ``squarecb`` and ``squarecb:gamma_scale=20`` (its default)
        # are the same policy, listed once, as first written, and said in the log.
        kept: dict[RunsAs, str] = {}
        for text in self.challengers:
            same = runs_as(parse_policy_spec(text), self)
            if same in kept:
                log.warning(
                    "BANDIT_CHALLENGERS: %s is the same policy as %s: listed once", text, kept[same]
                )
            kept.setdefault(same, text)
        if len(kept) < len(self.challengers):  # assigning marks the field set: `config` says env
            self.challengers = list(kept.values())
        return self

    @model_validator(mode="after")
    def _gateway_model_is_no_arm(self) -> Settings:
        """The gateway's ``model`` that asks it to choose, as an arm it serves, would make that
        arm one it can never be asked for by name."""
        for arm in self.arms:
            if arm.upstream is not None and arm.name == self.gateway_model:
                raise ValueError(
                    f"arm {arm.name!r} (BANDIT_ARMS) is named as BANDIT_GATEWAY_MODEL, the "
                    "gateway's model that asks it to choose: rename the arm, or set "
                    "BANDIT_GATEWAY_MODEL to another name"
                )
        return self

    @model_validator(mode="after")
    def _log_holds_a_snapshots_events(self) -> Settings:
        """The log keeps what the learner learned since its last snapshot: trimmed sooner, a
        learner that dies before publishing loses those events for good."""
        if self.snapshot_every > self.stream_maxlen:
            raise ValueError(
                f"snapshot_every (BANDIT_SNAPSHOT_EVERY) {self.snapshot_every} must be at most "
                f"stream_maxlen (BANDIT_STREAM_MAXLEN) {self.stream_maxlen}: events learned "
                "since the last snapshot would be trimmed from the log, and lost with a learner "
                "that stops before its next one"
            )
        return self

    @model_validator(mode="after")
    def _sweep_comes_while_decisions_are_kept(self) -> Settings:
        """A decision is kept ``max(reward_wait_s, 600)`` s after its window closes, for the
        sweep: a sweep period as long lets decisions expire first, and their parts are lost."""
        kept = max(self.reward_wait_s, 600)
        if self.sweep_s >= kept:
            raise ValueError(
                f"sweep_s (BANDIT_SWEEP_S) {self.sweep_s} must be less than {kept} s, the larger "
                f"of reward_wait_s (BANDIT_REWARD_WAIT_S) {self.reward_wait_s} and 600: a "
                "decision is kept that long after its reward window closes, and one the sweep "
                "comes to later has expired, its reward parts lost"
            )
        return self

    @model_validator(mode="after")
    def _window_holds_min_events(self) -> Settings:
        if self.challenger_window < self.promote_min_events:
            raise ValueError(
                f"challenger_window (BANDIT_CHALLENGER_WINDOW) {self.challenger_window} must be "
                f"at least promote_min_events (BANDIT_PROMOTE_MIN_EVENTS) "
                f"{self.promote_min_events}: no challenger could clear"
            )
        return self

    def gateway_weights(self) -> dict[str, float]:
        return self.gateway_reward_weights or self.reward_weights

    def arm(self, name: str) -> ArmSpec | None:
        return next((arm for arm in self.arms if arm.name == name), None)


# Read by the clients in clients/, not by the service: not settings, and not misspelt ones.
CLIENT_VARIABLES = frozenset({"BANDIT_URL", "BANDIT_API_KEY"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each ``BANDIT_*`` variable that names no setting: the settings ignore it, so
    a misspelt one (``BANDIT_LEARN_IN_WORKER=false``) would leave its default in force unsaid."""
    known = sorted(f"BANDIT_{name.upper()}" for name in Settings.model_fields)
    lines = []
    for name in sorted(environ):
        upper = name.upper()  # the settings read the variables in any case
        if not upper.startswith("BANDIT_") or upper in known or upper in CLIENT_VARIABLES:
            continue
        # Compared without the prefix every name shares, which alone would make any match.
        close = difflib.get_close_matches(upper[7:], [k[7:] for k in known], n=1, cutoff=0.8)
        hint = f"; did you mean BANDIT_{close[0]}?" if close else ""
        lines.append(f"{name} is not a setting and is ignored{hint}")
    return lines


# A URL's TLS options that name files, which redis-py opens only when it first connects (its
# error then, "No such file or directory", named no file and read as an outage to wait for).
TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")
CERT_REQS = ("none", "optional", "required")
# redis-py's parse_url errors that name no part of the URL but an option or the scheme
PARSE_URL_SAYS = ("Invalid value for", "Redis URL must specify")
ENCODE_PASSWORD = (
    "the URL does not read as scheme://[USER:PASSWORD@]HOST[:PORT][/DB]: a password (or user) "
    "holding @ : / ? # or % (or a full-width form of one) must be percent-encoded (@ as %40, : "
    "as %3A, / as %2F, ? as %3F, # as %23, % as %25)"
)


def check_redis_url(url: str) -> None:
    """``ValueError`` naming what of BANDIT_REDIS_URL redis-py cannot use, or would take for
    something else, before anything connects: its scheme, port and options as ``from_url``
    reads them, a database that is no number (read as 0), a TLS file that cannot be read. The
    password is never part of the message."""
    from redis.connection import parse_url

    scheme, sep, rest = url.partition("://")
    scheme = {"redis+cluster": "redis", "rediss+cluster": "rediss"}.get(scheme, scheme)
    try:
        # urlsplit's own errors quote the netloc, password and all ("contains invalid characters
        # under NFKC normalization": a password holding a full-width @ : / ? or #)
        parts = urlsplit(scheme + sep + rest)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        first = scheme + sep + rest  # a unix:// URL has no host: urlunsplit would drop its //
        if hosts:
            first = urlunsplit((parts.scheme, userinfo + at + hosts.split(",")[0], *parts[2:]))
        options: dict[str, Any] = dict(parse_url(first))  # type: ignore[no-untyped-call]
        if parts.scheme in ("redis", "rediss") and not urlsplit(first).hostname:
            # a # or ? in the password ends the host part there: redis-py took the rest for a
            # fragment or options and connected to localhost:6379
            raise ValueError("no host")
    except ValueError as e:
        if str(e).startswith(PARSE_URL_SAYS):  # an option's name or the scheme, nothing else
            raise ValueError(f"the URL does not read: {e}") from None
        raise ValueError(ENCODE_PASSWORD) from None
    # A / ? or # in a password ends the host part before its @, which is then further on: what
    # follows would be read as the database or options, and must not be quoted.
    cut = parts.scheme != "unix" and "@" in rest[len(parts.netloc) :]
    database = unquote(parts.path).strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        if cut:
            raise ValueError(ENCODE_PASSWORD)
        raise ValueError(
            f"the URL names the database {database!r}: a database is a number "
            "(redis://HOST:PORT/3); redis-py would use database 0"
        )
    if parts.scheme != "rediss" and any(k.startswith("ssl_") for k in options):
        raise ValueError(
            "TLS options (ssl_*) in a redis:// URL, which does not use TLS: write rediss://"
        )
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs not in CERT_REQS:
        shown = "" if cut else f" is {reqs!r}"
        raise ValueError(f"the URL's ssl_cert_reqs{shown}: one of {', '.join(CERT_REQS)}")
    for option in TLS_FILES:
        path = options.get(option)
        if path is not None and not _readable(Path(path), directory=option == "ssl_ca_path"):
            shown = "" if cut else f" {path!r}"
            raise ValueError(f"the URL's {option}{shown} cannot be read")


def _readable(path: Path, directory: bool) -> bool:
    try:
        if directory:
            return path.is_dir()
        with path.open("rb"):
            return True
    except OSError:
        return False
