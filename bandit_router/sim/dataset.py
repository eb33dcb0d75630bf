"""A replay set: the rows of a full-feedback file, read and checked, and prepared for replay."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bandit_router import inputs
from bandit_router.features import PUBLIC_WORDS, AppValue, Features, WordKey, extract
from bandit_router.policies.base import Arm
from bandit_router.rewards import PART_BOUNDS, RewardConfig, RewardParts


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


def _parts(where: str, outcome: Any) -> RewardParts:
    """An arm's outcome: each reward part a JSON number in its range (as ``/reward`` takes it:
    no ``"1"``, no ``true``), or null or absent; other fields (``output_tokens``) are free."""
    table = inputs.table(where, outcome)
    for name, (low, high) in PART_BOUNDS.items():
        if table.get(name) is not None:
            try:
                inputs.number(name, table[name], low, high)
            except ValueError as e:  # "accuracy must be 0..1, got 2 (outcomes.a)"
                raise ValueError(f"{e} ({where})") from None
    return RewardParts.from_mapping(table)


@functools.lru_cache(maxsize=1024)  # a file names the same few arms on every row
def _check_arm_name(name: str) -> None:
    inputs.arm("outcomes arm", name)  # as BANDIT_ARMS takes it: train writes it into settings


def _parse_row(line: int, text: str, max_features: int | None = None) -> Row:
    data = inputs.parse_json(text)
    if not isinstance(data, dict):
        raise ValueError("a row must be a JSON object")
    query, context, outcomes = data.get("query"), data.get("context") or {}, data.get("outcomes")
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-empty string")
    inputs.text("query", query)
    if not isinstance(context, dict) or not all(
        isinstance(v, str | int | float | bool) for v in context.values()
    ):
        raise ValueError("context must be a flat object of strings, numbers and booleans")
    inputs.app_features("context", context, max_features)
    if not isinstance(outcomes, dict) or not outcomes:
        raise ValueError("outcomes must be a non-empty object, arm -> outcome")
    if len(outcomes) > inputs.MAX_ARMS:
        raise ValueError(
            f"outcomes has {len(outcomes)} arms; the limit is {inputs.MAX_ARMS} per row, as per "
            "request"
        )
    parsed = {}
    for arm, outcome in outcomes.items():
        _check_arm_name(arm)
        if not isinstance(outcome, dict):
            raise ValueError(f"outcomes.{arm} must be an object")
        parts = _parts(f"outcomes.{arm}", outcome)  # raises naming the field out of range
        if not parts.present():
            raise ValueError(f"outcomes.{arm} has no reward part")
        parsed[str(arm)] = parts
    return Row(line, query, context, parsed, str(data.get("phase", "")))


def read_rows(
    path: Path, skip_bad: bool = False, limit: int | None = None, max_features: int | None = None
) -> tuple[list[Row], int]:
    """The rows of a replay file (at most ``limit``) and the number of bad rows skipped.

    ``max_features``: the most context keys a row may have (``BANDIT_MAX_FEATURES``), if given.
    A line over ``inputs.MAX_LINE_BYTES`` ends the read, even with ``skip_bad``."""
    rows: list[Row] = []
    skipped = 0
    with path.open("rb") as f:
        try:
            for number, text in inputs.numbered_lines(f):
                if limit is not None and len(rows) >= limit:
                    break
                try:
                    if isinstance(text, inputs.LineError):
                        raise ValueError(text.problem)
                    if not text.strip():
                        continue
                    rows.append(_parse_row(number, text, max_features))
                except (ValueError, TypeError) as e:
                    if not skip_bad:
                        raise ReplayError(f"{path}:{number}: {e} (use --skip-bad to skip)") from e
                    skipped += 1
        except inputs.LineError as e:
            raise ReplayError(f"{path}:{e.number}: {e.problem}") from e
    if not rows:
        raise ReplayError(f"{path}: no usable rows")
    return rows, skipped


def read_arms(path: Path | None, rows: Iterable[Row]) -> list[Arm]:
    """Arms from the arms file, then any arm seen only in the rows (name-only features)."""
    arms: list[Arm] = []
    if path is not None:
        try:
            with path.open("rb") as f:
                data = inputs.parse_json(inputs.read_bounded(f, "the file"))
            arms = [
                inputs.arm(f"arms[{i}]", a["name"], a.get("params_b"), a.get("usd_per_mtok"))
                for i, a in enumerate(data["arms"])
            ]
            names = [a.name for a in arms]
            for i, name in enumerate(names):  # each arm's column would be counted twice
                if name in names[:i]:
                    raise ValueError(f"arms[{i}] name {name!r} is listed twice")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            said = str(e) if isinstance(e, ValueError | OSError) else repr(e)
            raise ReplayError(
                f"{path}: not an arms file ({said}); expected {{'arms': [...]}}"
            ) from e
    known = {a.name for a in arms}
    for row in rows:
        for name in row.outcomes:
            if name not in known:
                known.add(name)
                arms.append(Arm(name))
    if len(arms) > inputs.MAX_ARMS:  # what a deployment serves: a model of more, none could
        where = f"{path} and the rows" if path is not None else "the rows"
        raise ReplayError(
            f"{where} name {len(arms)} arms; at most {inputs.MAX_ARMS}, as BANDIT_ARMS"
        )
    return arms


def load(
    path: Path,
    arms_path: Path | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
    max_features: int | None = None,
) -> Replay:
    rows, skipped = read_rows(path, skip_bad, limit, max_features)
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
    # The replayed rows (indices into the replay, in the order played): what the hindsight
    # references are averaged over (a warm start replays only the rows after its own).
    rows: npt.NDArray[np.int64] | None = None

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
        raise ReplayError(f"line {row.line}: outcomes.{arm}: {e} (use --skip-bad to skip)") from e


def _scorable(replay: Replay, rewards: RewardConfig) -> Replay:
    """``replay`` without the rows with an outcome the reward weights cannot score (no part
    they count), those counted as skipped."""
    keep = []
    for row in replay.rows:
        try:
            for parts in row.outcomes.values():
                rewards.combine(parts)
        except ValueError:
            continue
        keep.append(row)
    if not keep:
        raise ReplayError("no usable rows: no row has a reward part the weights count")
    return Replay(keep, replay.arms, replay.skipped + len(replay.rows) - len(keep))


def replay_words(hash_key: str | None) -> WordKey:
    """The simulator's word key: ``BANDIT_HASH_KEY`` when set (as a service started with the
    same one hashes), else the public key: replays need no secret, and stay deterministic."""
    return WordKey(hash_key) if hash_key else PUBLIC_WORDS


def prepare(
    replay: Replay, rewards: RewardConfig, words: WordKey = PUBLIC_WORDS, skip_bad: bool = False
) -> Prepared:
    """Extract each row's features once (``extract`` is deterministic) and score every outcome;
    with ``skip_bad``, a row with an outcome the weights cannot score is skipped and counted."""
    if skip_bad:
        replay = _scorable(replay, rewards)
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
