"""Check the off-policy estimates against the truth on a synthetic stream with known rewards.

The service (a real Router on an embedded Redis in a temporary folder) logs ``--events``
decisions of a logging policy on three kinds of queries whose true mean reward per arm is known;
the log is exported to DSJSON and read back as ``bandit-router evaluate`` does; each candidate's
estimates are printed beside its true value: for baselines the exact expected reward, for
learning policies the expected reward they earn when run live on a fresh stream of the same
length (what progressive validation estimates).

    .venv/bin/python simulations/ope_check.py --events 3000 --logging egreedy:epsilon=0.2

``--log FILE`` keeps the exported log, which README's ``bandit-router evaluate`` example reads.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

from bandit_router.features import extract
from bandit_router.offline.estimators import Estimate
from bandit_router.offline.evaluate import estimate_policies, normalize_spec, read_log
from bandit_router.offline.export import export_log
from bandit_router.policies.base import Arm
from bandit_router.policies.registry import build_policy
from bandit_router.rewards import RewardParts
from bandit_router.service.router import Router
from bandit_router.settings import Settings
from bandit_router.store.embedded import EmbeddedRedis
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "river",
    "stone",
    "cloud",
    "paper",
    "orange",
    "signal",
    "market",
    "garden",
]
QUERIES = {
    "code": "Write a Python function that {w} the {v} list; return the result",
    "lookup": "What is the definition of {w} in the {v} sense",
    "plain": "Tell me a short story about a {w} and a {v}",
}
MEAN = {  # true mean reward of each arm per kind of query
    "code": {"4b": 0.2, "7b": 0.5, "14b": 0.8},
    "lookup": {"4b": 0.7, "7b": 0.6, "14b": 0.5},
    "plain": {"4b": 0.4, "7b": 0.6, "14b": 0.55},
}


def draw(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(list(QUERIES))
    return kind, QUERIES[kind].format(w=rng.choice(WORDS), v=rng.choice(WORDS))


async def log_events(settings: Settings, events: int, seed: int) -> None:
    store = Store(connect(settings.redis_url or ""), settings.key_prefix, 3600, 1_000_000)
    router = await Router.open(settings, store)
    rng = random.Random(seed)
    for _ in range(events):
        kind, query = draw(rng)
        result = await router.choose(query)
        reward = 1.0 if rng.random() < MEAN[kind][result.arm] else 0.0
        await router.reward(result.event_id, RewardParts(reward=reward))
    await store.close()


def live_value(spec: str, settings: Settings, events: int, seed: int) -> float:
    """The expected reward ``spec`` earns run live (learning from its own choices)."""
    policy = build_policy(normalize_spec(spec), seed=seed)
    arms = [Arm.from_spec(a) for a in settings.arms]
    rng = random.Random(seed + 1)
    total = 0.0
    for _ in range(events):
        kind, query = draw(rng)
        x = extract(query)
        d = policy.choose(x, arms)
        total += sum(p * MEAN[kind][a] for a, p in d.probabilities.items())
        reward = 1.0 if rng.random() < MEAN[kind][d.arm] else 0.0
        policy.learn(x, arms, d.arm, d.probability, reward)
    return total / events


def _cell(e: Estimate, truth: float) -> str:
    mark = "*" if e.low <= truth <= e.high else " "
    return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]{mark}".rjust(24)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--logging", default="egreedy:epsilon=0.2")
    parser.add_argument(
        "--policies",
        default="random,static,fixed:4b,fixed:7b,fixed:14b,egreedy:epsilon=0.05,linucb,squarecb",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--log", type=Path, help="also write the exported log here (for bandit-router evaluate)"
    )
    args = parser.parse_args()
    specs = args.policies.split(",")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(tmp) as redis:
        # a fixed word key: the same words hash alike in every run, so the figures repeat
        settings = Settings(
            redis_url=redis.url,
            policy=args.logging,
            seed=args.seed,
            hash_key=f"ope-check-seed-{args.seed:08d}",
        )
        asyncio.run(log_events(settings, args.events, args.seed))
        path = Path(tmp) / "log.dsjson"
        with path.open("w") as out:
            asyncio.run(export_log(settings, out))
        records = read_log(path.read_text().splitlines())
        if args.log is not None:
            args.log.write_text(path.read_text())
    results = estimate_policies(records, specs)
    print(
        f"{len(records)} events logged by {args.logging}; mean reward "
        f"{sum(r.reward for r in records) / len(records):.3f}"
    )
    print(f"{'policy':<22}{'truth':>7}" + "".join(f"{m:>24}" for m in ("ips", "snips", "dr")))
    for spec in specs:
        truth = live_value(spec, settings, args.events, args.seed)
        cells = [results[spec][m] for m in ("ips", "snips", "dr")]
        row = "".join(_cell(e, truth) for e in cells)
        print(f"{spec:<22}{truth:>7.3f}{row}")
    print("* the 95% interval covers the truth")


if __name__ == "__main__":
    main()
