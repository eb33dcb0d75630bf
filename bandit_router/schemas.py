"""HTTP request and response bodies, apart from the domain types."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from bandit_router.settings import ArmSpec

EVENT_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
EVENT_ID_MAX_CHARS = 128
EventId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=EVENT_ID_MAX_CHARS, pattern=EVENT_ID_PATTERN),
]
FeatureKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MAX_FEATURE_VALUE_CHARS = 256
ArmName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ChooseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, description="the user's query text", examples=["What is 2+2?"])
    features: dict[FeatureKey, Any] | None = Field(
        default=None,
        description="app-known facts: a flat object of strings, numbers and booleans",
        examples=[{"task": "qa", "tier": "pro", "lang": "en"}],
    )
    arms: list[ArmName] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="the arms eligible for this request (default: every configured arm)",
        examples=[["7b", "14b"]],
    )
    event_id: EventId | None = Field(
        default=None,
        description="your id for this decision; the same id returns the same decision "
        "(default: a new random id)",
        examples=["req-2026-11-23-0001"],
    )

    @field_validator("features")
    @classmethod
    def _flat(cls, features: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, value in (features or {}).items():
            if isinstance(value, str) and len(value) > MAX_FEATURE_VALUE_CHARS:
                raise ValueError(
                    f"features.{key} is {len(value)} characters; the limit is "
                    f"{MAX_FEATURE_VALUE_CHARS}"
                )
            if not isinstance(value, str | bool | int | float):
                raise ValueError(
                    f"features.{key} must be a string, number or boolean, "
                    f"got {type(value).__name__}"
                )
        return features


EXAMPLE_EVENT_ID = "1392b69a83784a91b0a2d03365a8cca9"


class ChooseResponse(BaseModel):
    event_id: str = Field(
        description="the decision's id: send it back with the reward", examples=[EXAMPLE_EVENT_ID]
    )
    arm: str = Field(description="the model to call", examples=["7b"])
    probability: float = Field(
        description="the probability the chosen arm had (its propensity)", examples=[0.9]
    )
    probabilities: dict[str, float] = Field(
        description="the probability of every eligible arm",
        examples=[{"4b": 0.05, "7b": 0.9, "14b": 0.05}],
    )
    policy: str = Field(description="the policy spec that decided", examples=["egreedy"])
    model_version: int = Field(
        description="events learned by the model that decided", examples=[1200]
    )
    degraded: bool = Field(
        default=False,
        description="true when Redis was unreachable: the decision is buffered in this process",
        examples=[False],
    )


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: EventId = Field(
        description="the event_id /choose answered with", examples=[EXAMPLE_EVENT_ID]
    )
    latency_ms: float | None = Field(
        default=None, ge=0, description="the model's latency, ms", examples=[840]
    )
    accuracy: float | None = Field(
        default=None, ge=0, le=1, description="how correct the answer was, 0..1", examples=[1.0]
    )
    rating: float | None = Field(
        default=None, ge=1, le=5, description="user rating, 1..5 stars", examples=[4]
    )
    cost_usd: float | None = Field(
        default=None, ge=0, description="what the call cost, USD", examples=[0.0004]
    )
    reward: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="a final reward in 0..1 computed by the app; used as is when sent",
        examples=[0.8],
    )
    final: bool = Field(
        default=False,
        description="no more parts will come: learn the event now with the parts it has, "
        "instead of waiting for the missing weighted parts or the window's end",
        examples=[False],
    )

    @model_validator(mode="after")
    def _some_part(self) -> RewardRequest:
        parts = (self.latency_ms, self.accuracy, self.rating, self.cost_usd, self.reward)
        if all(v is None for v in parts) and not self.final:
            raise ValueError(
                "send at least one reward part: latency_ms, accuracy, rating, cost_usd or "
                "reward (or final: true to close the event with the parts it has)"
            )
        return self


class RewardResponse(BaseModel):
    event_id: str = Field(description="the rewarded event", examples=[EXAMPLE_EVENT_ID])
    arm: str = Field(description="the arm the event had chosen", examples=["7b"])
    status: str = Field(
        description="`final`: the reward is logged for learning; "
        "`pending`: waiting for more parts or for the reward window to close",
        examples=["final"],
    )
    reward: float | None = Field(
        description="the combined reward in 0..1, once final", examples=[0.866]
    )
    parts: dict[str, float] = Field(
        description="every part received for the event so far",
        examples=[{"accuracy": 1.0, "rating": 4.0, "latency_ms": 840.0}],
    )
    duplicates: list[str] = Field(
        default_factory=list,
        description="parts sent again: ignored, the first value stands",
        examples=[["rating"]],
    )
    model_version: int = Field(
        description="events learned by the model that answered", examples=[1201]
    )


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str = Field(
        min_length=1,
        description="the policy spec to switch to, `name[:param=value...]`",
        examples=["squarecb:gamma_scale=30"],
    )


class VersionResponse(BaseModel):
    model_version: int = Field(description="events learned by the model", examples=[1200])


class PolicyResponse(VersionResponse):
    policy: str = Field(description="the policy spec in force", examples=["egreedy"])


class ErrorResponse(BaseModel):
    detail: str = Field(
        description="what was wrong, naming the field and the allowed values",
        examples=["unknown arm '70b'; valid: 4b, 7b, 14b"],
    )
    field: str | None = Field(
        default=None, description="the field at fault, when one is", examples=["arms"]
    )


class HealthResponse(BaseModel):
    status: str = Field(description="`ok`, or `unavailable` (HTTP 503)", examples=["ok"])
    redis: str = Field(description="`ok`, or what went wrong reaching Redis", examples=["ok"])
    model_version: int | None = Field(
        default=None, description="rewards learned by the served model", examples=[1200]
    )


class ArmsResponse(BaseModel):
    arms: list[ArmSpec] = Field(
        description="the configured arms (BANDIT_ARMS), in order",
        examples=[[{"name": "7b", "params_b": 7, "usd_per_mtok": 0.2}]],
    )
