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

EventId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"),
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
    )
    event_id: EventId | None = Field(
        default=None, description="your id for this decision; the same id returns the same decision"
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


class ChooseResponse(BaseModel):
    event_id: str
    arm: str = Field(description="the model to call")
    probability: float = Field(description="the probability the chosen arm had")
    probabilities: dict[str, float] = Field(description="the probability of every eligible arm")
    policy: str
    model_version: int = Field(description="events learned by the model that decided")
    degraded: bool = Field(
        default=False,
        description="true when Redis was unreachable: the decision is buffered in this process",
    )


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: EventId
    latency_ms: float | None = Field(default=None, ge=0, description="the model's latency, ms")
    accuracy: float | None = Field(default=None, ge=0, le=1, description="0..1")
    rating: float | None = Field(default=None, ge=1, le=5, description="user rating, 1..5 stars")
    cost_usd: float | None = Field(default=None, ge=0, description="what the call cost, USD")
    reward: float | None = Field(
        default=None, ge=0, le=1, description="a final reward in 0..1; used as is when sent"
    )

    @model_validator(mode="after")
    def _some_part(self) -> RewardRequest:
        if all(
            v is None
            for v in (self.latency_ms, self.accuracy, self.rating, self.cost_usd, self.reward)
        ):
            raise ValueError(
                "send at least one reward part: latency_ms, accuracy, rating, cost_usd or reward"
            )
        return self


class RewardResponse(BaseModel):
    event_id: str
    arm: str
    status: str = Field(
        description="`final`: the reward is logged for learning; "
        "`pending`: waiting for more parts or for the reward window to close"
    )
    reward: float | None = Field(description="the combined reward in 0..1, once final")
    parts: dict[str, float] = Field(description="every part received for the event so far")
    duplicates: list[str] = Field(
        default_factory=list, description="parts sent again: ignored, the first value stands"
    )
    model_version: int


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str = Field(min_length=1, examples=["squarecb:gamma_scale=10"])


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong, naming the field and the allowed values")
    field: str | None = None
