"""Rewards: how latency, accuracy, rating and cost become one number in [0, 1]."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

# Weight name -> the request field that carries it.
PART_FIELDS = {
    "accuracy": "accuracy",
    "rating": "rating",
    "latency": "latency_ms",
    "cost": "cost_usd",
}

# Each part's allowed range, both ends included. Latency and cost are capped where a value can
# only be a unit mistake (a day; a thousand dollars for one call), so no stored part can overflow
# a sum or a mean on a read path.
MAX_LATENCY_MS = 86_400_000.0
MAX_COST_USD = 1_000.0
PART_BOUNDS: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0),
    "rating": (1.0, 5.0),
    "latency_ms": (0.0, MAX_LATENCY_MS),
    "cost_usd": (0.0, MAX_COST_USD),
    "reward": (0.0, 1.0),
}


@dataclass(frozen=True, slots=True)
class RewardParts:
    """What an app reports about one answer. Any part may be missing."""

    accuracy: float | None = None  # 0..1
    rating: float | None = None  # 1..5 stars
    latency_ms: float | None = None  # >= 0
    cost_usd: float | None = None  # >= 0
    reward: float | None = None  # 0..1, a final reward computed by the app itself

    def __post_init__(self) -> None:
        for name, (low, high) in PART_BOUNDS.items():
            _check(name, getattr(self, name), low, high)

    def present(self) -> dict[str, float]:
        return {name: v for name in _PART_NAMES if (v := getattr(self, name)) is not None}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RewardParts:
        return cls(**{k: float(v) for k, v in data.items() if k in _PART_NAMES and v is not None})


_PART_NAMES = tuple(f.name for f in fields(RewardParts))  # in declaration order


def _check(name: str, value: float | None, low: float, high: float) -> None:
    if value is None:
        return
    if not low <= value <= high:  # NaN fails too
        raise ValueError(f"{name} must be {_number(low)}..{_number(high)}, got {value}")


def _number(value: float) -> str:
    return f"{value:.0f}" if value.is_integer() else f"{value:g}"


@dataclass(frozen=True, slots=True)
class RewardConfig:
    """Weights of the parts and the budgets that scale latency and cost."""

    weights: Mapping[str, float]
    latency_budget_ms: float = 2000.0
    cost_budget_usd: float = 0.001

    def scaled(self, parts: RewardParts) -> dict[str, float]:
        """Each present part on [0, 1], higher is better, keyed by its weight name."""
        out: dict[str, float] = {}
        if parts.accuracy is not None:
            out["accuracy"] = parts.accuracy
        if parts.rating is not None:
            out["rating"] = (parts.rating - 1.0) / 4.0
        if parts.latency_ms is not None:
            out["latency"] = 1.0 - min(parts.latency_ms / self.latency_budget_ms, 1.0)
        if parts.cost_usd is not None:
            out["cost"] = 1.0 - min(parts.cost_usd / self.cost_budget_usd, 1.0)
        return out

    def combine(self, parts: RewardParts) -> float:
        """``sum(w_k * part_k) / sum(w_k over parts present)``; a direct ``reward`` wins.

        Raises ``ValueError`` when no part with a positive weight is present.
        """
        if parts.reward is not None:
            return parts.reward
        scaled = self.scaled(parts)
        total = sum(self.weights.get(k, 0.0) for k in scaled)
        if total <= 0:
            weighted = sorted(k for k, w in self.weights.items() if w > 0)
            raise ValueError(
                "no weighted reward part present: send reward, or one of "
                + ", ".join(PART_FIELDS[k] for k in weighted)
            )
        return sum(self.weights.get(k, 0.0) * v for k, v in scaled.items()) / total
