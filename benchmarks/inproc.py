"""The in-process side of ``make bench``: learner, simulator loop and LinUCB, each beside its
reference, measured alternately in the same process so the ratio survives a noisy machine."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from vowpalwabbit import pyvw

from bandit_router.features import Features, extract
from bandit_router.learner import Learner, fresh_model
from bandit_router.linucb import LinUCB, dense_vector
from bandit_router.policies import Arm, ParamValue, build_policy, parse_policy_spec
from bandit_router.rewards import RewardConfig, RewardParts
from bandit_router.router import Router, reward_config
from bandit_router.settings import Settings
from bandit_router.store import KEY_EVENTS, Store, connect
from bandit_router.vw_policy import adf_example, vw_arguments

ARMS = [Arm("4b", 4, 0.1), Arm("7b", 7, 0.2), Arm("14b", 14, 0.4)]
_TOPICS = {
    "code": "Write a Python function that {w} and returns the sorted {v}",
    "qa": "What is the {w} of {v}?",
    "reasoning": "Explain step by step why {w} happens, and compare it with {v}.",
    "math": "Solve the equation {n}x + 7 = {m} for the {w}",
    "translate": "Translate to French: the {w} is moved to {v}",
}
_WORDS = ["capital", "river", "merge", "tree", "sunset", "meeting", "graph", "price", "queue"]


def queries(n: int, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """A synthetic stream of queries with app features, the same for every run."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        task = rnd.choice(list(_TOPICS))
        text = _TOPICS[task].format(
            w=rnd.choice(_WORDS), v=rnd.choice(_WORDS), n=rnd.randint(2, 9), m=rnd.randint(10, 99)
        )
        out.append((text, {"task": task, "tier": rnd.choice(["free", "pro"])}))
    return out


def truth(x: Features, arm: str) -> float:
    """A planted reward: big models for reasoning and maths, the small one for look-ups."""
    big = x.stat("reasoning") or x.stat("math") or x.stat("code")
    return {"4b": 0.3 if big else 0.9, "7b": 0.6, "14b": 0.9 if big else 0.4}[arm]


def egreedy(seed: int = 1) -> pyvw.Workspace:
    params: dict[str, ParamValue] = {
        "epsilon": 0.05,
        "learning_rate": 0.5,
        "bits": 18,
        "vw_args": "",
    }
    return pyvw.Workspace(arg_list=vw_arguments("egreedy", params, seed))


def bare_vw_loop(examples: list[tuple[list[str], list[str]]]) -> float:
    """Steps per second of pyvw alone: predict then learn, on prebuilt text examples."""
    vw = egreedy()
    began = time.perf_counter()
    for unlabelled, labelled in examples:
        vw.predict(unlabelled)
        vw.learn(labelled)
    elapsed = time.perf_counter() - began
    vw.finish()
    return len(examples) / elapsed


def native_vw_loop(examples: list[tuple[list[str], list[str]]]) -> float:
    """The same loop on pyvw's native layer (what VWPolicy calls), without Example wrappers."""
    vw = egreedy()
    native = pyvw.pylibvw.vw
    began = time.perf_counter()
    for unlabelled, labelled in examples:
        for lines, call in ((unlabelled, native.predict_multi), (labelled, native.learn_multi)):
            parsed = native._parse(vw, "\n".join(lines))
            call(vw, parsed)
            native._finish_example_multi_ex(vw, parsed)
    elapsed = time.perf_counter() - began
    vw.finish()
    return len(examples) / elapsed


def logged_examples(
    steps: list[Step],
) -> list[tuple[list[str], list[str]]]:
    """The text ADF examples of logged (features, arm, propensity, reward) steps."""
    names = [a.name for a in ARMS]
    return [
        (adf_example(x, ARMS), adf_example(x, ARMS, names.index(arm), -r, p))
        for x, arm, p, r in steps
    ]


# --- the simulator loop -------------------------------------------------------------------


Step = tuple[Features, str, float, float]  # features, arm, propensity, reward


def simulate(
    stream: list[tuple[str, dict[str, Any]]], config: RewardConfig
) -> tuple[float, list[Step]]:
    """Replay steps per second through the public APIs: extract, choose, combine, learn."""
    policy = build_policy(parse_policy_spec("egreedy"), Settings(seed=1), 1)
    steps: list[Step] = []
    began = time.perf_counter()
    for query, app in stream:
        x = extract(query, app)
        d = policy.choose(x, ARMS)
        r = config.combine(RewardParts(accuracy=truth(x, d.arm), latency_ms=400.0))
        policy.learn(x, ARMS, d.arm, d.probability, r)
        steps.append((x, d.arm, d.probability, r))
    return len(stream) / (time.perf_counter() - began), steps


def simulator_ratio(n: int) -> tuple[float, float, float]:
    """(simulator steps/s, bare pyvw steps/s, native-layer pyvw steps/s), back to back."""
    stream = queries(n)
    config = reward_config(Settings())
    sim, steps = simulate(stream, config)
    ref = bare_vw_loop(logged_examples(steps))
    return sim, ref, native_vw_loop(logged_examples(steps))


# --- the learner --------------------------------------------------------------------------


async def _fill(url: str, prefix: str, n: int) -> list[Step]:
    """Log ``n`` rewarded decisions through the router (which does not learn them)."""
    settings = Settings(redis_url=url, key_prefix=prefix, learn_in_workers=False, seed=1)
    store = Store(connect(url), prefix, settings.reward_wait_s, settings.stream_maxlen)
    router = await Router.open(settings, store)
    steps: list[Step] = []
    for query, app in queries(n, seed=2):
        c = await router.choose(query, app)
        x = extract(query, app)
        r = truth(x, c.arm)
        await router.reward(c.event_id, RewardParts(reward=r))
        steps.append((x, c.arm, c.probability, r))
    await router.close()
    await store.close()
    return steps


async def _learn_all(url: str, source: str, n: int) -> float:
    """Events per second a leading learner learns from the stream via its consumer group."""
    prefix = f"bench-learn-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=url, key_prefix=prefix, seed=1)
    store = Store(connect(url), prefix, settings.reward_wait_s, settings.stream_maxlen)
    learner = Learner(settings, store, fresh_model(parse_policy_spec("egreedy"), settings))
    await learner.lead()
    rows: Any = await store.redis.xrange(KEY_EVENTS.format(p="{" + source + "}"))
    async with store.redis.pipeline(transaction=False) as pipe:
        for _, fields in rows:
            pipe.xadd(store.key(KEY_EVENTS), fields)
        await pipe.execute()
    began = time.perf_counter()
    learned = 0
    while learned < n:
        learned += await learner.step()
    elapsed = time.perf_counter() - began
    await learner.close()
    await store.clear()
    await store.close()
    return n / elapsed


def learner_ratios(url: str, n: int, reps: int) -> list[tuple[float, float, float]]:
    """[(learner events/s, bare pyvw steps/s, native-layer steps/s)] for ``reps`` runs."""
    source = f"bench-fill-{uuid.uuid4().hex[:8]}"
    steps = asyncio.run(_fill(url, source, n))
    examples = logged_examples(steps)
    out = []
    for _ in range(reps):
        ref = bare_vw_loop(examples)
        got = asyncio.run(_learn_all(url, source, n))
        out.append((got, ref, native_vw_loop(examples)))
    asyncio.run(_clear(url, source))
    return out


async def _clear(url: str, prefix: str) -> None:
    store = Store(connect(url), prefix, 60, 1000)
    await store.clear()
    await store.close()


# --- LinUCB against MABWiser --------------------------------------------------------------


def _timed(n: int, step: Callable[[int], None]) -> float:
    began = time.perf_counter()
    for i in range(n):
        step(i)
    return n / (time.perf_counter() - began)


def linucb_ratio(n: int, dim: int = 64) -> tuple[float, float, float]:
    """(ours steps/s, MABWiser steps/s, ratio): choose + learn on the same contexts at d = dim."""
    from mabwiser.mab import MAB, LearningPolicy

    xs = [extract(q, a) for q, a in queries(n + 50, seed=3)]
    vectors = np.array([dense_vector(x, dim) for x in xs])
    names = [a.name for a in ARMS]
    ours = LinUCB(alpha=0.5, dim=dim, seed=1)

    def ours_step(i: int) -> None:
        d = ours.choose(xs[i], ARMS)
        ours.learn(xs[i], ARMS, d.arm, d.probability, truth(xs[i], d.arm))

    mab = MAB(names, LearningPolicy.LinUCB(alpha=0.5), seed=1)
    warm = vectors[n : n + 50]  # MABWiser must be fitted once before it predicts
    mab.fit([names[i % 3] for i in range(50)], [0.5] * 50, warm)

    def mab_step(i: int) -> None:
        row = vectors[i : i + 1]
        arm = mab.predict(row)
        mab.partial_fit([arm], [truth(xs[i], arm)], row)

    theirs = _timed(n, mab_step)
    mine = _timed(n, ours_step)
    return mine, theirs, mine / theirs
