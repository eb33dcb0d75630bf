from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bandit_router.settings import DEFAULT_ARMS, Settings


def test_defaults() -> None:
    s = Settings()
    assert [a.name for a in s.arms] == ["4b", "7b", "14b"] == [a.name for a in DEFAULT_ARMS]
    assert s.policy == "squarecb"
    assert s.reward_weights == {"accuracy": 0.6, "rating": 0.2, "latency": 0.2}


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANDIT_ARMS", "small:3:0.1,big:70")
    monkeypatch.setenv("BANDIT_REWARD_WEIGHTS", "accuracy=1,latency=0.5")
    monkeypatch.setenv("BANDIT_POLICY", "linucb:alpha=0.3")
    monkeypatch.setenv("BANDIT_EPSILON", "0.2")
    s = Settings()
    assert [(a.name, a.params_b, a.usd_per_mtok) for a in s.arms] == [
        ("small", 3.0, 0.1),
        ("big", 70.0, None),
    ]
    assert s.reward_weights == {"accuracy": 1.0, "latency": 0.5}
    assert s.epsilon == 0.2


def test_arms_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANDIT_ARMS", '[{"name": "a", "params_b": 1}, {"name": "b"}]')
    assert [a.name for a in Settings().arms] == ["a", "b"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("policy", "egredy", "unknown policy 'egredy'; valid: egreedy, squarecb"),
        ("policy", "egreedy:eps=1", "unknown parameter 'eps=1'; valid: epsilon"),
        ("policy", "linucb:alpha=x", "alpha must be a float"),
        ("epsilon", 1.5, "less than or equal to 1"),
        ("reward_weights", "accuracy=1,speed=2", "unknown reward part 'speed'"),
        ("reward_weights", "accuracy=0", "at least one reward weight must be > 0"),
        ("arms", "a,a", "arm names must be unique, repeated: a"),
        ("arms", "", "at least one arm"),
        ("latency_budget_ms", 0, "greater than 0"),
    ],
)
def test_bad_settings_name_the_problem(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**{field: value})


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValidationError, match="epsilonn"):
        Settings(epsilonn=0.1)  # type: ignore[call-arg]
