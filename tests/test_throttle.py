"""Throttle: a repeated warning said at once, then at most once a period, with a count."""

from __future__ import annotations

import math

from bandit_router.throttle import Throttle


def _throttle() -> tuple[Throttle, list[float]]:
    now = [100.0]
    return Throttle(clock=lambda: now[0]), now


def test_the_first_is_due_then_one_a_period_with_the_ones_between_counted_by_kind() -> None:
    throttle, now = _throttle()
    first = throttle.due(10.0, kind="a")
    assert first is not None and first.count == 0 and first.after_s == math.inf
    for kind in ("a", "b", "a"):
        now[0] += 3
        assert throttle.due(10.0, kind=kind) is None
    now[0] += 1  # 10 s after the first
    again = throttle.due(10.0, kind="b")
    assert again is not None
    assert dict(again.unsaid) == {"a": 2, "b": 1} and again.count == 3 and again.after_s == 10.0
    now[0] += 1
    assert throttle.due(10.0) is None  # the period starts again from the one said


def test_keys_are_throttled_apart() -> None:
    throttle, now = _throttle()
    assert throttle.due(10.0, "arm-1") is not None
    assert throttle.due(10.0, "arm-2") is not None
    assert throttle.due(10.0, "arm-1") is None
    now[0] += 10
    said = throttle.due(10.0, "arm-1")
    assert said is not None and said.count == 1
    said = throttle.due(10.0, "arm-2")
    assert said is not None and said.count == 0


def test_forget_makes_the_next_due_at_once_and_hands_over_the_count() -> None:
    throttle, now = _throttle()
    assert throttle.due(60.0, "down", "sweep") is not None
    now[0] += 1
    assert throttle.due(60.0, "down", "sweep") is None
    forgotten = throttle.forget("down")
    assert dict(forgotten.unsaid) == {"sweep": 1} and forgotten.after_s == 1.0
    said = throttle.due(60.0, "down")
    assert said is not None and said.count == 0
    never = throttle.forget("never")
    assert never.count == 0 and never.after_s == math.inf  # none was said
