"""The in-process side of ``make bench``: learner, simulator loop and LinUCB, each beside its
reference, measured alternately in the same process so the ratio survives a noisy machine."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from vowpalwabbit import pyvw

from bandit_router.features import Features, extract
from bandit_router.policies.base import Arm, Decision, ParamValue, Policy
from bandit_router.policies.linucb import LinUCB, dense_vector
from bandit_router.policies.registry import parse_policy_spec
from bandit_router.policies.vw import adf_example, vw_arguments
from bandit_router.rewards import RewardParts
from bandit_router.service.learner import Learner, fresh_model
from bandit_router.service.router import Router, reward_config
from bandit_router.settings import Settings
from bandit_router.sim.dataset import Replay, Row, order, prepare
from bandit_router.sim.replay import PolicyStepper, make_stepper, run
from bandit_router.store.keys import KEY_EVENTS
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect

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


class Reference:
    """The bare pyvw loop, run in chunks interleaved with what it is compared to.

    A noisy machine changes speed over seconds; alternating chunks of a few hundred steps
    gives both sides the same conditions. ``text`` is pyvw's public API (``predict`` and
    ``learn`` on text lines); ``native`` the native calls ``VWPolicy`` makes.
    """

    def __init__(self) -> None:
        self.text_vw, self.native_vw = egreedy(), egreedy()
        self.text_s = self.native_s = 0.0
        self.steps = 0

    def run(self, examples: list[tuple[list[str], list[str]]]) -> None:
        began = time.perf_counter()
        for unlabelled, labelled in examples:
            self.text_vw.predict(unlabelled)
            self.text_vw.learn(labelled)
        self.text_s += time.perf_counter() - began
        native = pyvw.pylibvw.vw
        began = time.perf_counter()
        for unlabelled, labelled in examples:
            for lines, call in ((unlabelled, native.predict_multi), (labelled, native.learn_multi)):
                parsed = native._parse(self.native_vw, "\n".join(lines))
                call(self.native_vw, parsed)
                native._finish_example_multi_ex(self.native_vw, parsed)
        self.native_s += time.perf_counter() - began
        self.steps += len(examples)

    def rates(self) -> tuple[float, float]:
        """Steps per second of the text API and of the native calls."""
        self.text_vw.finish()
        self.native_vw.finish()
        return self.steps / self.text_s, self.steps / self.native_s


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


class _Logged:
    """A policy that remembers its decisions: the reference learns the same labelled examples."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.name = policy, policy.name
        self.decisions: list[Decision] = []

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        decision = self.policy.choose(x, arms)
        self.decisions.append(decision)
        return decision

    def learn(
        self, x: Features, arms: Sequence[Arm], arm: str, probability: float, reward: float
    ) -> None:
        self.policy.learn(x, arms, arm, probability, reward)

    def dumps(self) -> bytes:
        return self.policy.dumps()


def replay_file(n: int) -> Replay:
    """The synthetic stream as a replay file: every arm's outcome, from the planted reward."""
    rows = []
    for i, (query, app) in enumerate(queries(n)):
        x = extract(query, app)
        outcomes = {a.name: RewardParts(accuracy=truth(x, a.name), latency_ms=400.0) for a in ARMS}
        rows.append(Row(i + 1, query, app, outcomes))
    return Replay(rows, list(ARMS))


def simulator_ratio(n: int, chunk: int = 250) -> tuple[float, float, float, float]:
    """(simulator steps/s, bare pyvw text-API steps/s, native-layer steps/s, prepare rows/s).

    ``bandit-router simulate``'s own code, not a copy of it: ``replay.prepare`` extracts every
    row's features once (timed apart: the CLI shares it between every policy and seed), then
    ``replay.run`` plays shuffled rows through ``make_stepper``'s stepper: ``choose``,
    ``RewardConfig.combine`` of the chosen arm's outcome, ``learn``, and the per-step record.
    Chunks of ``chunk`` steps alternate with the bare pyvw loop on the examples they produced.
    """
    replay = replay_file(n)
    settings = Settings(seed=1)
    began = time.perf_counter()
    prepared = prepare(replay, reward_config(settings))
    prepare_s = time.perf_counter() - began
    stepper = make_stepper("egreedy", prepared, 1, settings)
    assert isinstance(stepper, PolicyStepper)
    logged = _Logged(stepper.policy)
    stepper.policy = logged
    rows = order(n, 1, in_order=False)
    reference = Reference()
    sim_s = 0.0
    for k in range(0, n, chunk):
        del logged.decisions[:]
        began = time.perf_counter()
        out = run("egreedy", stepper, prepared, rows[k : k + chunk], 1)
        sim_s += time.perf_counter() - began
        steps: list[Step] = [
            (prepared.features[i], d.arm, d.probability, r)
            for i, d, r in zip(rows[k : k + chunk], logged.decisions, out.reward, strict=True)
        ]
        reference.run(logged_examples(steps))
    return (n / sim_s, *reference.rates(), n / prepare_s)


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


async def _learn_all(
    url: str, source: str, n: int, examples: list[tuple[list[str], list[str]]]
) -> tuple[float, float, float]:
    """Events per second a leading learner learns from the stream via its consumer group,
    interleaved with the bare pyvw loop on the same examples (as many after each step)."""
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
    reference = Reference()
    learned, learn_s = 0, 0.0
    while learned < n:
        began = time.perf_counter()
        got = await learner.step()
        learn_s += time.perf_counter() - began
        reference.run(examples[learned : learned + got])
        learned += got
    await learner.close()
    await store.clear()
    await store.close()
    return (n / learn_s, *reference.rates())


def learner_ratios(url: str, n: int, reps: int) -> list[tuple[float, float, float]]:
    """[(learner events/s, bare pyvw text-API steps/s, native-layer steps/s)] for ``reps``."""
    source = f"bench-fill-{uuid.uuid4().hex[:8]}"
    steps = asyncio.run(_fill(url, source, n))
    examples = logged_examples(steps)
    out = [asyncio.run(_learn_all(url, source, n, examples)) for _ in range(reps)]
    asyncio.run(_clear(url, source))
    return out


async def _clear(url: str, prefix: str) -> None:
    store = Store(connect(url), prefix, 60, 1000)
    await store.clear()
    await store.close()


# --- LinUCB against MABWiser --------------------------------------------------------------


def _timed(indices: range, step: Callable[[int], None]) -> float:
    """Seconds ``step`` takes over ``indices``."""
    began = time.perf_counter()
    for i in indices:
        step(i)
    return time.perf_counter() - began


def linucb_ratio(n: int, dim: int = 64, chunk: int = 100) -> tuple[float, float, float]:
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
        # From the same Features as ours, as the simulator's MABWiser peer does: both sides pay
        # for the dense vector (it was prebuilt for MABWiser's side only).
        row = dense_vector(xs[i], dim).reshape(1, -1)
        arm = mab.predict(row)
        mab.partial_fit([arm], [truth(xs[i], arm)], row)

    mine_s = theirs_s = 0.0
    for k in range(0, n, chunk):  # interleaved chunks: both sides see the same machine
        theirs_s += _timed(range(k, min(k + chunk, n)), mab_step)
        mine_s += _timed(range(k, min(k + chunk, n)), ours_step)
    return n / mine_s, n / theirs_s, theirs_s / mine_s
