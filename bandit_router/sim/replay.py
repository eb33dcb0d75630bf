"""Replay: runs policies over full-feedback logs exactly as the service's loop would.

A replay file has one JSON row per query: ``query``, optional ``context`` (the app's
``features``) and ``outcomes``, each arm's measured result. Whichever arm a policy picks, its
outcome is in the row, so every step is the service's loop in-process: ``features.extract``,
``Policy.choose``, ``RewardConfig.combine`` of the chosen arm's outcome, ``Policy.learn``.
Nothing here prints; the CLI does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from bandit_router.offline.train import full_feedback, teach
from bandit_router.policies.base import Arm, Policy
from bandit_router.policies.registry import build_policy, parse_policy_spec
from bandit_router.settings import Settings
from bandit_router.sim.champion import ChampionStepper, is_auto, parse_auto
from bandit_router.sim.dataset import Prepared, Row, Run, order
from bandit_router.sim.hindsight import BestContextStepper, OracleStepper, fixed_spec

# Policies the simulator adds to the service's registry: they need hindsight or a peer library.
HINDSIGHT = ("best-fixed", "oracle", "best-context")
PEERS = ("mabwiser",)
COLD = "cold:"  # with --warm-start: this policy starts cold, for comparison in the same run

Progress = Callable[[int], None]


class Stepper(Protocol):
    """Plays one step: choose for a row, get the reward of the chosen arm, learn. Returns both."""

    def step(self, i: int, row: Row, arms: Sequence[Arm]) -> tuple[str, float]: ...


@dataclass(slots=True)
class PolicyStepper:
    """The service's loop in-process, over a policy from the registry (or a peer)."""

    policy: Policy
    prepared: Prepared

    def step(self, i: int, row: Row, arms: Sequence[Arm]) -> tuple[str, float]:
        x = self.prepared.features[i]
        decision = self.policy.choose(x, arms)
        reward = self.prepared.rewards.combine(row.outcomes[decision.arm])
        self.policy.learn(x, arms, decision.arm, decision.probability, reward)
        return decision.arm, reward


def check_spec(name: str, settings: Settings) -> None:
    """Raise ``ValueError`` naming the valid choices when ``name`` is not a simulator policy, or
    the value out of range when it would not build with ``settings`` (the run's)."""
    name = name.removeprefix(COLD)
    head = name.partition(":")[0]
    if head in PEERS:
        from bandit_router.sim.peers import peer_missing, peer_params

        peer_params(name)
        if missing := peer_missing(head):
            raise ValueError(missing)
        return
    if name in HINDSIGHT:
        return
    if is_auto(name):
        parse_auto(name, settings)
        return
    if head == "fixed" and ":" in name and "=" not in name:
        return
    try:
        spec = parse_policy_spec(name)
    except ValueError as e:
        raise ValueError(f"{e}; the simulator adds: {', '.join(HINDSIGHT + PEERS)}") from None
    if spec.name != "fixed":
        build_policy(name, settings, 0)


def make_stepper(
    name: str, prepared: Prepared, seed: int, settings: Settings | None = None
) -> Stepper:
    """The stepper for a policy name as given on the command line."""
    name = name.removeprefix(COLD)
    if name == "oracle":
        return OracleStepper(prepared)
    if name == "best-context":
        return BestContextStepper(prepared)
    if is_auto(name):
        return ChampionStepper.build(name, prepared, seed, settings)
    if name.partition(":")[0] == "mabwiser":
        from bandit_router.sim.peers import mabwiser_policy

        return PolicyStepper(mabwiser_policy(name, prepared.replay.arms, seed), prepared)
    return PolicyStepper(build_policy(fixed_spec(name, prepared), settings, seed), prepared)


def run(
    name: str,
    stepper: Stepper,
    prepared: Prepared,
    rows: Sequence[int] | npt.NDArray[np.int64],
    seed: int,
    progress: Progress | None = None,
    arrivals: Mapping[str, int] | None = None,
) -> Run:
    """Play ``rows`` (indices, in order) through ``stepper``; ``progress`` hears each step;
    ``arrivals``: arms that join the deployment at a step (0-based), ineligible before it."""
    out = Run.empty(name, seed, len(rows))
    out.rows = np.asarray(rows, dtype=np.int64)
    replay = prepared.replay
    for t, i in enumerate(rows):
        row = replay.rows[i]
        arms = prepared.eligible[i]
        if arrivals:
            arms = [a for a in arms if arrivals.get(a.name, 0) <= t] or arms
        arm, reward = stepper.step(int(i), row, arms)
        parts = row.outcomes[arm]
        out.arm[t] = prepared.arm_index[arm]
        out.reward[t] = reward
        out.accuracy[t] = np.nan if parts.accuracy is None else parts.accuracy
        out.latency_ms[t] = np.nan if parts.latency_ms is None else parts.latency_ms
        out.cost_usd[t] = np.nan if parts.cost_usd is None else parts.cost_usd
        if progress is not None:
            progress(1)
    if isinstance(stepper, ChampionStepper):
        out.promotions = [
            (int(p["model_version"]), str(p["from_policy"]), str(p["to_policy"]))
            for p in stepper.promotions
        ]
    return out


def outcomes(prepared: Prepared, i: int) -> dict[str, float]:
    """Row ``i``'s reward for every arm that has an outcome."""
    table = prepared.table[i]
    return {a: float(table[j]) for a, j in prepared.arm_index.items() if not np.isnan(table[j])}


def warm_rows(n: int, warm_start: float) -> int:
    """How many of a seed's first rows train the learners before the replay (``warm_start``:
    the fraction, in [0, 1))."""
    if not 0.0 <= warm_start < 1.0:
        raise ValueError(f"warm_start must be in [0, 1), got {warm_start}")
    return int(n * warm_start)


def simulate(
    names: Sequence[str],
    prepared: Prepared,
    seeds: Sequence[int],
    in_order: bool = False,
    settings: Settings | None = None,
    progress: Progress | None = None,
    warm_start: float = 0.0,
    arrivals: Mapping[str, int] | None = None,
) -> dict[str, list[Run]]:
    """Every policy over every seed's row order; the runs keyed by the names as given.

    With ``warm_start``, the first fraction of each seed's order trains every learning policy
    with full feedback (``offline.train``) and the rest is replayed; a name prefixed ``cold:``
    replays the same rows untrained. ``arrivals``: arms added mid-stream (see ``run``)."""
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for seed in seeds:
        rows = order(len(prepared.replay.rows), seed, in_order)
        warm, rows = (
            rows[: warm_rows(len(rows), warm_start)],
            rows[warm_rows(len(rows), warm_start) :],
        )
        for name in names:
            stepper = make_stepper(name, prepared, seed, settings)
            if len(warm) and isinstance(stepper, PolicyStepper) and not name.startswith(COLD):
                examples = full_feedback(
                    prepared.features,
                    prepared.eligible,
                    lambda i: outcomes(prepared, i),
                    (int(i) for i in warm),
                    seed,
                )
                teach(stepper.policy, examples)
            runs[name].append(run(name, stepper, prepared, rows, seed, progress, arrivals))
    return runs
