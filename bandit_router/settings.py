"""Settings: every knob of the service, read from ``BANDIT_*`` environment variables."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bandit_router.policies.registry import parse_policy_spec

REWARD_PARTS = ("accuracy", "rating", "latency", "cost")


class ArmSpec(BaseModel):
    """One arm as configured: a model name and the features it carries into the policy."""

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
        return json.loads(text)
    arms: list[dict[str, Any]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, *rest = item.split(":")
        if len(rest) > 2:
            raise ValueError(f"arm {item!r}: expected name[:params_b[:usd_per_mtok]]")
        arm: dict[str, Any] = {"name": name}
        for key, raw in zip(("params_b", "usd_per_mtok"), rest, strict=False):
            if raw:
                arm[key] = float(raw)
        arms.append(arm)
    return arms


def parse_weights(value: Any) -> Any:
    """Read ``BANDIT_REWARD_WEIGHTS``, written ``accuracy=0.6,rating=0.2,latency=0.2``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("{"):
        return json.loads(text)
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"reward weight {item!r}: expected part=weight")
        weights[key.strip()] = float(raw)
    return weights


class Settings(BaseSettings):
    """The service's configuration. Tests build ``Settings(...)`` directly."""

    model_config = SettingsConfigDict(env_prefix="BANDIT_", extra="forbid")

    host: str = Field(default="127.0.0.1", description="address `serve` binds to")
    port: int = Field(default=8000, ge=0, le=65535, description="port `serve` listens on")
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes")
    log_level: str = Field(default="info", description="uvicorn and service log level")
    loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto", description="uvicorn's event loop (auto: uvloop when installed)"
    )

    redis_url: str | None = Field(
        default=None,
        description="Redis to use (redis://, rediss://, unix://, with password); "
        "unset: start the embedded Redis",
    )
    data_dir: str = Field(default="data", description="where the embedded Redis keeps its files")
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
    epsilon: float = Field(
        default=0.05, ge=0, le=1, description="exploration rate of egreedy, bag and rnd"
    )
    linucb_alpha: float = Field(default=0.5, ge=0, description="width of LinUCB's upper bound")
    vw_args: str = Field(default="", description="extra Vowpal Wabbit arguments, for experts")
    seed: int | None = Field(default=None, description="makes choices reproducible")

    reward_weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: {"accuracy": 0.6, "rating": 0.2, "latency": 0.2},
        description="weights of the reward parts (accuracy, rating, latency, cost)",
    )
    latency_budget_ms: float = Field(
        default=2000.0, gt=0, description="latency that scores 0; 0 ms scores 1"
    )
    cost_budget_usd: float = Field(
        default=0.001, gt=0, description="cost per call that scores 0; free scores 1"
    )

    reward_wait_s: int = Field(
        default=3600, ge=1, description="how long a decision waits for its reward parts"
    )
    default_reward: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="reward learned for an event with no reward when its window closes; "
        "unset: such events are skipped",
    )
    sweep_s: float = Field(
        default=5.0, gt=0, description="how often closed reward windows are swept"
    )
    stats_cache_s: float = Field(
        default=1.0,
        ge=0,
        description="how long a /stats answer is reused for the same window and buckets",
    )
    snapshot_every: int = Field(
        default=1000, ge=1, description="events learned between model snapshots to Redis"
    )
    publish_s: float = Field(
        default=10.0, gt=0, description="longest time between snapshots while learning"
    )
    model_refresh_s: float = Field(
        default=2.0, gt=0, description="how often workers look for a newer model snapshot"
    )
    learner_lease_s: float = Field(
        default=10.0, gt=0, description="the learner's lease; a dead learner is replaced after it"
    )
    startup_wait_s: float = Field(
        default=60.0,
        ge=0,
        description="how long a starting process waits for Redis before it gives up",
    )
    claim_idle_s: float = Field(
        default=30.0, gt=0, description="a dead learner's unacknowledged events are claimed after"
    )
    learn_in_workers: bool = Field(
        default=True,
        description="service processes take the learner lease; false when `bandit-router learn` "
        "runs apart",
    )
    decision_buffer: int = Field(
        default=10_000, ge=0, description="decisions kept in memory while Redis is down"
    )
    buffer_overflow: Literal["drop_oldest", "reject"] = Field(
        default="drop_oldest",
        description="when the buffer is full: drop its oldest decision, or answer 503",
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
        description="comma list of keys for /stats, /metrics and the dashboard; empty: open",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="largest accepted request body"
    )
    body_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="how long a request body may take to arrive (408 and the connection closed)",
    )
    store_query_text: bool = Field(
        default=False, description="keep the raw query in Redis with the decision"
    )
    stream_maxlen: int = Field(
        default=1_000_000, ge=1000, description="joined events kept in the training log (approx.)"
    )
    max_query_chars: int = Field(default=32_768, ge=1, description="longest accepted query")
    max_features: int = Field(default=64, ge=0, description="most app features per request")

    _parse_arms = field_validator("arms", mode="before")(parse_arms)
    _parse_weights = field_validator("reward_weights", mode="before")(parse_weights)

    @field_validator("api_keys", "ops_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, arms: list[ArmSpec]) -> list[ArmSpec]:
        if not arms:
            raise ValueError("at least one arm is needed")
        names = [arm.name for arm in arms]
        dupes = sorted({name for name in names if names.count(name) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique, repeated: {', '.join(dupes)}")
        return arms

    @field_validator("reward_weights")
    @classmethod
    def _known_parts(cls, weights: dict[str, float]) -> dict[str, float]:
        for key, weight in weights.items():
            if key not in REWARD_PARTS:
                raise ValueError(f"unknown reward part {key!r}; valid: {', '.join(REWARD_PARTS)}")
            if weight < 0:
                raise ValueError(f"reward weight {key} must be >= 0, got {weight}")
        if not any(weights.values()):
            raise ValueError("at least one reward weight must be > 0")
        return weights

    @field_validator("policy")
    @classmethod
    def _policy_exists(cls, policy: str) -> str:
        parse_policy_spec(policy)  # raises ValueError naming the valid policies
        return policy

    def arm(self, name: str) -> ArmSpec | None:
        return next((arm for arm in self.arms if arm.name == name), None)
