"""End to end on real data: the replay upstreams of MMLU-Pro x Llama-2 (the test slice), the
gateway in front, the OpenAI SDK app of ``clients/openai_gateway.py`` grading each answer. The
gateway's mean reward beats the static rule and comes close to what the simulator reports."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np

from bandit_router.service.router import reward_config
from bandit_router.settings import Settings
from bandit_router.sim import dataset, replay
from clients.openai_gateway import arms_for, run
from tests.conftest import _free_port, cli_env, cli_process, served, wait_until
from tests.upstreams import SLICE, SLICE_ARMS, rows

SPEED = 10  # recorded latencies run ten times faster; the latency budget shrinks alike
WEIGHTS = "accuracy=0.4,latency=0.3,cost=0.3"  # what the gateway measures counts
BUDGET_MS = 2000.0


def _simulated(policies: list[str], seeds: range) -> dict[str, float]:
    settings = Settings(reward_weights=WEIGHTS, latency_budget_ms=BUDGET_MS)  # type: ignore[arg-type]
    prepared = dataset.prepare(dataset.load(SLICE, SLICE_ARMS), reward_config(settings))
    runs = replay.simulate(policies, prepared, seeds, settings=settings)
    return {name: float(np.mean([r.reward.mean() for r in rs])) for name, rs in runs.items()}


def _listening(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_gateway_learns_on_real_data(
    redis_url: str, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    # Each server in its own process, as deployed: timings are not shared with the test's GIL.
    port = _free_port()
    command = ["upstream", str(SLICE), "--arms", str(SLICE_ARMS), "--port", str(port)]
    prefix = make_settings().key_prefix  # removed from Redis after the test
    env = cli_env()
    with cli_process([*command, "--speed", str(SPEED)], env, tmp_path / "upstream.log") as up:
        wait_until(lambda: up.poll() is None and _listening(port), 30, "the replay upstream")
        env |= cli_env(
            redis_url=redis_url,
            key_prefix=prefix,
            seed=7,
            arms=arms_for(f"http://127.0.0.1:{port}/v1", SLICE_ARMS),
            reward_weights=WEIGHTS,
            latency_budget_ms=BUDGET_MS / SPEED,
            api_keys="app-key",
        )
        with served(env, tmp_path / "gateway.log") as base:
            questions: list[dict[str, Any]] = rows()
            random.Random(0).shuffle(questions)
            results = asyncio.run(run(base, questions, concurrency=4, api_key="app-key"))
            stats = httpx.get(f"{base}/stats", headers={"x-api-key": "app-key"}).json()

    assert len(results) == len(questions)
    assert {r.streamed for r in results} == {True, False}
    rewards = [r.reward for r in results]
    assert all(r is not None for r in rewards)  # accuracy completed every event
    gateway = float(np.mean([r for r in rewards if r is not None]))
    expected = _simulated(["static", "squarecb"], range(3))
    # The gateway measures the real calls: the replay's latency plus the time on loopback and in
    # the servers, which the time scale magnifies (about 8% over the recorded latency here).
    pairs = zip(questions, results, strict=True)
    recorded = np.mean([q["outcomes"][r.arm]["latency_ms"] for q, r in pairs])
    measured = np.mean([r.latency_ms or 0.0 for r in results]) * SPEED
    print(f"gateway {gateway:.4f}, simulated {expected}; latency {measured:.0f} vs {recorded:.0f}")
    assert gateway > expected["static"] + 0.01
    assert abs(gateway - expected["squarecb"]) < 0.03
    assert stats["rewards_accepted"] == len(questions) == stats["model_version"]
