"""Replay: runs policies over full-feedback logs exactly as the service's loop would.

A replay file has one JSON row per query: ``query``, optional ``context`` (the app's
``features``) and ``outcomes``, each arm's measured result. Whichever arm a policy picks, its
outcome is in the row, so every step is the service's loop in-process: ``features.extract``,
``Policy.choose``, ``RewardConfig.combine`` of the chosen arm's outcome, ``Policy.learn``.
Nothing here prints; the CLI does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from bandit_router.features import AppValue, Features, extract
from bandit_router.policies import Arm, Policy, build_policy, parse_policy_spec
from bandit_router.rewards import RewardConfig, RewardParts
from bandit_router.settings import Settings

# Policies the simulator adds to the service's registry: they need hindsight or a peer library.
HINDSIGHT = ("best-fixed", "oracle", "best-context")
PEERS = ("mabwiser",)

Progress = Callable[[int], None]


class ReplayError(ValueError):
    """A replay file that cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Row:
    """One logged query with every arm's outcome."""

    line: int  # 1-based line in the replay file
    query: str
    context: Mapping[str, AppValue]
    outcomes: Mapping[str, RewardParts]
    phase: str = ""  # scenario phase, if the generator wrote one: hindsight baselines only


@dataclass(frozen=True, slots=True)
class Replay:
    """A replay file as read: its rows, the arms, and how many bad rows were skipped."""

    rows: list[Row]
    arms: list[Arm]
    skipped: int = 0


def _parse_row(line: int, text: str) -> Row:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("a row must be a JSON object")
    query, context, outcomes = data.get("query"), data.get("context") or {}, data.get("outcomes")
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-empty string")
    if not isinstance(context, dict) or not all(
        isinstance(v, str | int | float | bool) for v in context.values()
    ):
        raise ValueError("context must be a flat object of strings, numbers and booleans")
    if not isinstance(outcomes, dict) or not outcomes:
        raise ValueError("outcomes must be a non-empty object, arm -> outcome")
    parsed = {}
    for arm, outcome in outcomes.items():
        if not isinstance(outcome, dict):
            raise ValueError(f"outcomes.{arm} must be an object")
        parts = RewardParts.from_mapping(outcome)  # raises naming the field out of range
        if not parts.present():
            raise ValueError(f"outcomes.{arm} has no reward part")
        parsed[str(arm)] = parts
    return Row(line, query, context, parsed, str(data.get("phase", "")))


def read_rows(
    path: Path, skip_bad: bool = False, limit: int | None = None
) -> tuple[list[Row], int]:
    """The rows of a replay file (at most ``limit``) and the number of bad rows skipped."""
    rows: list[Row] = []
    skipped = 0
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not text.strip():
                continue
            try:
                rows.append(_parse_row(number, text))
            except (ValueError, TypeError) as e:
                if not skip_bad:
                    raise ReplayError(f"{path}:{number}: {e} (use --skip-bad to skip)") from e
                skipped += 1
    if not rows:
        raise ReplayError(f"{path}: no usable rows")
    return rows, skipped


def read_arms(path: Path | None, rows: Iterable[Row]) -> list[Arm]:
    """Arms from the arms file, then any arm seen only in the rows (name-only features)."""
    arms: list[Arm] = []
    if path is not None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            arms = [
                Arm(str(a["name"]), a.get("params_b"), a.get("usd_per_mtok")) for a in data["arms"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ReplayError(
                f"{path}: not an arms file ({e!r}); expected {{'arms': [...]}}"
            ) from e
    known = {a.name for a in arms}
    for row in rows:
        for name in row.outcomes:
            if name not in known:
                known.add(name)
                arms.append(Arm(name))
    return arms


def load(
    path: Path, arms_path: Path | None = None, skip_bad: bool = False, limit: int | None = None
) -> Replay:
    rows, skipped = read_rows(path, skip_bad, limit)
    return Replay(rows, read_arms(arms_path, rows), skipped)


@dataclass(slots=True)
class Run:
    """One policy over one seed's row order: what it chose and what that earned, per step."""

    policy: str
    seed: int
    arm: npt.NDArray[np.int16]  # index into the replay's arms
    reward: npt.NDArray[np.float64]
    accuracy: npt.NDArray[np.float64]  # NaN where the outcome has no such part
    latency_ms: npt.NDArray[np.float64]
    cost_usd: npt.NDArray[np.float64]

    @classmethod
    def empty(cls, policy: str, seed: int, n: int) -> Run:
        nan = np.full(n, np.nan)
        return cls(policy, seed, np.zeros(n, np.int16), nan.copy(), nan.copy(), nan.copy(), nan)


@dataclass(slots=True)
class Prepared:
    """What every policy of a replay shares: features, eligible arms, every arm's reward."""

    replay: Replay
    rewards: RewardConfig
    features: list[Features]
    eligible: list[list[Arm]]
    table: npt.NDArray[np.float64]  # rows x arms, combine() of each outcome, NaN where absent
    arm_index: dict[str, int] = field(default_factory=dict)


def _score(rewards: RewardConfig, row: Row, arm: str) -> float:
    try:
        return rewards.combine(row.outcomes[arm])
    except ValueError as e:  # no part the reward weights count: say where, not a traceback
        raise ReplayError(f"line {row.line}: outcomes.{arm}: {e}") from e


def prepare(replay: Replay, rewards: RewardConfig) -> Prepared:
    """Extract each row's features once (``extract`` is deterministic) and score every outcome."""
    names = [a.name for a in replay.arms]
    table = np.full((len(replay.rows), len(names)), np.nan)
    for i, row in enumerate(replay.rows):
        for j, name in enumerate(names):
            if name in row.outcomes:
                table[i, j] = _score(rewards, row, name)
    return Prepared(
        replay,
        rewards,
        [extract(row.query, row.context) for row in replay.rows],
        [[a for a in replay.arms if a.name in row.outcomes] for row in replay.rows],
        table,
        {name: j for j, name in enumerate(names)},
    )


def phase_changes(rows: Sequence[Row]) -> list[int]:
    """Steps (1-based, in time order) where a scenario's phase changes."""
    return [t + 1 for t in range(1, len(rows)) if rows[t].phase != rows[t - 1].phase]


def order(n: int, seed: int, in_order: bool) -> npt.NDArray[np.int64]:
    """The row order of one seed: time order, or a shuffle drawn from the seed."""
    return np.arange(n) if in_order else np.random.default_rng(seed).permutation(n)


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


def check_spec(name: str) -> None:
    """Raise ``ValueError`` naming the valid choices when ``name`` is not a simulator policy."""
    head = name.partition(":")[0]
    if head in PEERS:
        from bandit_router.peers import peer_params

        peer_params(name)
        return
    if name in HINDSIGHT:
        return
    if head == "fixed" and ":" in name and "=" not in name:
        return
    try:
        parse_policy_spec(name)
    except ValueError as e:
        raise ValueError(f"{e}; the simulator adds: {', '.join(HINDSIGHT + PEERS)}") from None


def make_stepper(
    name: str, prepared: Prepared, seed: int, settings: Settings | None = None
) -> Stepper:
    """The stepper for a policy name as given on the command line."""
    from bandit_router.hindsight import BestContextStepper, OracleStepper, fixed_spec

    if name == "oracle":
        return OracleStepper(prepared)
    if name == "best-context":
        return BestContextStepper(prepared)
    if name.partition(":")[0] == "mabwiser":
        from bandit_router.peers import mabwiser_policy

        return PolicyStepper(mabwiser_policy(name, prepared.replay.arms, seed), prepared)
    return PolicyStepper(build_policy(fixed_spec(name, prepared), settings, seed), prepared)


def run(
    name: str,
    stepper: Stepper,
    prepared: Prepared,
    rows: Sequence[int] | npt.NDArray[np.int64],
    seed: int,
    progress: Progress | None = None,
) -> Run:
    """Play ``rows`` (indices, in order) through ``stepper``; ``progress`` hears each step."""
    out = Run.empty(name, seed, len(rows))
    replay = prepared.replay
    for t, i in enumerate(rows):
        row = replay.rows[i]
        arm, reward = stepper.step(int(i), row, prepared.eligible[i])
        parts = row.outcomes[arm]
        out.arm[t] = prepared.arm_index[arm]
        out.reward[t] = reward
        out.accuracy[t] = np.nan if parts.accuracy is None else parts.accuracy
        out.latency_ms[t] = np.nan if parts.latency_ms is None else parts.latency_ms
        out.cost_usd[t] = np.nan if parts.cost_usd is None else parts.cost_usd
        if progress is not None:
            progress(1)
    return out


def simulate(
    names: Sequence[str],
    prepared: Prepared,
    seeds: Sequence[int],
    in_order: bool = False,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> dict[str, list[Run]]:
    """Every policy over every seed's row order; the runs keyed by the names as given."""
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for seed in seeds:
        rows = order(len(prepared.replay.rows), seed, in_order)
        for name in names:
            stepper = make_stepper(name, prepared, seed, settings)
            runs[name].append(run(name, stepper, prepared, rows, seed, progress))
    return runs
