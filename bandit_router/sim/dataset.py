"""A replay set: the rows of a full-feedback file, read and checked, and prepared for replay."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bandit_router.features import PUBLIC_WORDS, AppValue, Features, WordKey, extract
from bandit_router.policies.base import Arm
from bandit_router.rewards import RewardConfig, RewardParts


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
    # Champion and challengers (``auto``): each promotion's step, from and to, in order;
    # None for a policy that has no challengers.
    promotions: list[tuple[int, str, str]] | None = None

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


def replay_words(hash_key: str | None) -> WordKey:
    """The simulator's word key: ``BANDIT_HASH_KEY`` when set (as a service started with the
    same one hashes), else the public key: replays need no secret, and stay deterministic."""
    return WordKey(hash_key) if hash_key else PUBLIC_WORDS


def prepare(replay: Replay, rewards: RewardConfig, words: WordKey = PUBLIC_WORDS) -> Prepared:
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
        [extract(row.query, row.context, words) for row in replay.rows],
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
