from __future__ import annotations

import pytest

from bandit_router.http.contract import RewardRequest
from bandit_router.rewards import PART_BOUNDS, RewardConfig, RewardParts
from bandit_router.settings import Settings

CONFIG = RewardConfig({"accuracy": 0.6, "rating": 0.2, "latency": 0.2}, latency_budget_ms=1000)
ALL = RewardParts(accuracy=1.0, rating=5, latency_ms=500)


def test_weighted_mean_of_all_parts() -> None:
    assert CONFIG.combine(ALL) == pytest.approx(0.6 * 1 + 0.2 * 1 + 0.2 * 0.5)


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ("accuracy", (0.2 * 1 + 0.2 * 0.5) / 0.4),
        ("rating", (0.6 * 1 + 0.2 * 0.5) / 0.8),
        ("latency_ms", (0.6 * 1 + 0.2 * 1) / 0.8),
    ],
)
def test_each_part_missing_in_turn(missing: str, expected: float) -> None:
    parts = {"accuracy": 1.0, "rating": 5.0, "latency_ms": 500.0}
    del parts[missing]
    assert CONFIG.combine(RewardParts(**parts)) == pytest.approx(expected)


def test_scaling() -> None:
    scaled = CONFIG.scaled(RewardParts(accuracy=0.3, rating=3, latency_ms=5000, cost_usd=0.0005))
    assert scaled == pytest.approx({"accuracy": 0.3, "rating": 0.5, "latency": 0.0, "cost": 0.5})


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (RewardParts(cost_usd=0.0), 1.0),
        (RewardParts(cost_usd=0.00025), 0.75),
        (RewardParts(cost_usd=0.001), 0.0),
        (RewardParts(cost_usd=0.5), 0.0),  # far over the budget: 0, not below
        (RewardParts(latency_ms=0.0), 1.0),
        (RewardParts(latency_ms=250.0), 0.75),
        (RewardParts(latency_ms=4000.0), 0.0),
    ],
)
def test_latency_and_cost_fall_from_1_when_free_to_0_at_their_budgets(
    parts: RewardParts, expected: float
) -> None:
    """Cheaper and faster is better: a quarter of the budget (1000 ms, 0.001 USD) scores 0.75,
    the budget or more 0."""
    config = RewardConfig({"latency": 1.0, "cost": 1.0}, latency_budget_ms=1000)
    assert config.combine(parts) == pytest.approx(expected)


def test_parts_from_a_mapping_skip_nulls_and_other_fields() -> None:
    """As a replay's outcomes and /reward's stored parts give them: null parts are absent."""
    parts = RewardParts.from_mapping({"accuracy": 1, "rating": None, "output_tokens": 7})
    assert parts == RewardParts(accuracy=1.0)
    assert CONFIG.combine(parts) == 1.0


def test_direct_reward_wins() -> None:
    assert CONFIG.combine(RewardParts(accuracy=0.0, reward=0.9)) == 0.9


def test_no_weighted_part_is_an_error_naming_the_fields() -> None:
    with pytest.raises(ValueError, match="accuracy, latency_ms, rating"):
        CONFIG.combine(RewardParts(cost_usd=0.1))


def test_a_part_without_a_weight_does_not_count() -> None:
    """A part the weights leave out (cost here) is stored but adds nothing to the reward."""
    assert CONFIG.combine(RewardParts(accuracy=0.5, cost_usd=0.0)) == pytest.approx(0.5)
    zero = RewardConfig({"accuracy": 1.0, "cost": 0.0})
    assert zero.combine(RewardParts(accuracy=0.25, cost_usd=0.0)) == pytest.approx(0.25)


def test_a_part_weighted_zero_is_not_named_as_a_way_out() -> None:
    zero = RewardConfig({"accuracy": 1.0, "cost": 0.0})
    with pytest.raises(ValueError, match=r"send reward, or one of accuracy$"):
        zero.combine(RewardParts(cost_usd=0.0))


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("accuracy", 1.5, "0..1"),
        ("rating", 0, "1..5"),
        ("latency_ms", -1, "0..86400000"),
        ("cost_usd", 1000.5, "0..1000"),
        ("reward", float("nan"), "0..1"),
    ],
)
def test_out_of_range_parts(field: str, value: float, allowed: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be {allowed}"):
        RewardParts(**{field: value})


def test_the_request_schema_declares_the_same_bounds_as_the_parts() -> None:
    """pydantic's Field(ge, le) on RewardRequest (the OpenAPI schema, FastAPI's 422s) and the
    table RewardParts and the fast path check against must not drift apart."""
    for name, (low, high) in PART_BOUNDS.items():
        declared = {type(m).__name__: m for m in RewardRequest.model_fields[name].metadata}
        assert declared["Ge"].ge == low, name
        assert (declared["Le"].le if "Le" in declared else None) == high, name


def test_the_budgets_default_to_the_settings_defaults() -> None:
    config = RewardConfig({"accuracy": 1.0})
    assert config.latency_budget_ms == Settings.model_fields["latency_budget_ms"].default
    assert config.cost_budget_usd == Settings.model_fields["cost_budget_usd"].default
