"""Sequences of calls, as a buggy client or an attacker makes them, against a live service."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.live import serve  # noqa: F401  (fixture)


def test_a_tiny_reward_or_feature_leaves_the_model_choosing(serve: Callable[..., str]) -> None:  # noqa: F811
    """A reward of 1e-200 (within 0..1) on a fresh model, then choices: VW read its cost as NaN
    and every later /choose was a 500. A feature of 1e-200 was a 500 itself."""
    with httpx.Client(base_url=serve(), timeout=30) as http:
        first = http.post("/choose", json={"query": "what is 2+2?"}).json()
        done = http.post("/reward", json={"event_id": first["event_id"], "reward": 1e-200})
        assert done.status_code == 200, done.text
        for features in (None, {"n": 1e-200}, {"n": -3e-204}):
            answer = http.post("/choose", json={"query": "what is 2+2?", "features": features})
            assert answer.status_code == 200, answer.text
