"""A complete client of bandit-router: ask which model should answer, call it, report how it went.

The app reports the latency as soon as the answer is back, and the user's rating later, when
the user gives it; the router learns the event once every weighted part has arrived (or when
its reward window closes). Run a service first, with weights on exactly these two parts so each
event is learned as soon as its rating comes in:

    BANDIT_REWARD_WEIGHTS=rating=0.7,latency=0.3 bandit-router serve

then ``python clients/python_httpx.py`` (``BANDIT_URL`` and ``BANDIT_API_KEY`` if needed).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import httpx

DEFAULT_ARM = "7b"  # what the app uses when the router cannot be reached

QUERIES = [
    ("Write a Python function that merges two sorted lists", {"task": "code", "tier": "pro"}),
    ("What is the capital of Australia?", {"task": "qa", "tier": "free"}),
    ("Explain step by step why the sky is blue", {"task": "qa", "tier": "pro"}),
]


def call_model(arm: str, query: str) -> str:
    """Stand-in for the real LLM call (an OpenAI-compatible server, vLLM, llama.cpp...)."""
    time.sleep({"4b": 0.02, "7b": 0.05, "14b": 0.1}.get(arm, 0.05))
    return f"[{arm}] an answer to {query!r}"


class RouterClient:
    """The two calls an app makes: choose an arm, then report reward parts for the event."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def choose(self, query: str, features: dict[str, Any]) -> dict[str, Any] | None:
        """The decision, or None when the router is unavailable (the app must not stop)."""
        try:
            response = self.http.post("/choose", json={"query": query, "features": features})
            response.raise_for_status()
        except httpx.HTTPError as e:
            print(f"router unavailable ({e}); using {DEFAULT_ARM}")
            return None
        decision: dict[str, Any] = response.json()
        return decision

    def report(self, event_id: str, **parts: float) -> dict[str, Any]:
        """Send reward parts (latency_ms, accuracy, rating, cost_usd); any subset, any time."""
        response = self.http.post("/reward", json={"event_id": event_id, **parts})
        response.raise_for_status()  # 404: the event expired; 422: the message says what is wrong
        result: dict[str, Any] = response.json()
        return result


def answer(router: RouterClient, query: str, features: dict[str, Any]) -> str | None:
    """Answer one query with the chosen model; report its latency at once. Returns the event id."""
    decision = router.choose(query, features)
    arm = decision["arm"] if decision else DEFAULT_ARM
    start = time.perf_counter()
    text = call_model(arm, query)
    latency_ms = (time.perf_counter() - start) * 1000
    print(text)
    if decision is None:
        return None
    result = router.report(decision["event_id"], latency_ms=latency_ms)
    print(f"  latency {latency_ms:.0f} ms reported: {result['status']}")
    return str(decision["event_id"])


def main(base_url: str, api_key: str | None = None) -> list[dict[str, Any]]:
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=5.0) as http:
        router = RouterClient(http)
        events = [answer(router, query, features) for query, features in QUERIES]
        # ... later, the users rate the answers they got:
        results = []
        for event_id in filter(None, events):
            result = router.report(event_id, rating=random.randint(3, 5))
            print(
                f"  rating reported for {event_id}: {result['status']}, reward {result['reward']}"
            )
            results.append(result)
        return results


if __name__ == "__main__":
    main(os.environ.get("BANDIT_URL", "http://127.0.0.1:8000"), os.environ.get("BANDIT_API_KEY"))
