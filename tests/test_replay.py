"""The replay core: reading rows (errors name the line), and each step being the service's loop."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bandit_router.features import extract
from bandit_router.policies.base import Arm
from bandit_router.policies.registry import build_policy
from bandit_router.rewards import RewardConfig, RewardParts
from bandit_router.service.router import reward_config
from bandit_router.settings import Settings
from bandit_router.sim import dataset, replay, report

SLICE = Path(__file__).parents[1] / "examples" / "mmlu_pro_llama2_slice.jsonl"
SLICE_ARMS = SLICE.with_suffix(".arms.json")
REWARDS = reward_config(Settings())


def _write(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"query": "What is 2+2?", "outcomes": {"a": {"accuracy": 1}, "b": {"latency_ms": 10}}}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not JSON"),
        ({"query": "", "outcomes": {"a": {"accuracy": 1}}}, "query must be a non-empty string"),
        ({"query": "q"}, "outcomes must be a non-empty object"),
        ({"query": "q", "outcomes": {"a": {"accuracy": 2}}}, "accuracy must be 0..1"),
        ({"query": "q", "outcomes": {"a": {"output_tokens": 3}}}, "outcomes.a has no reward part"),
        ({"query": "q", "context": {"x": [1]}, "outcomes": GOOD["outcomes"]}, "context must be"),
    ],
)
def test_a_bad_row_is_named_by_its_line(tmp_path: Path, bad: object, message: str) -> None:
    path = _write(tmp_path / "r.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(dataset.ReplayError, match=rf"r\.jsonl:3: {message}.*--skip-bad"):
        dataset.read_rows(path)


def test_skip_bad_skips_and_counts(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.jsonl", [GOOD, "{oops", GOOD, {"query": "q"}, GOOD])
    rows, skipped = dataset.read_rows(path, skip_bad=True)
    assert (len(rows), skipped) == (3, 2)
    assert [r.line for r in rows] == [1, 3, 5]


def test_arms_missing_from_the_arms_file_get_name_only_features(tmp_path: Path) -> None:
    arms_path = tmp_path / "arms.json"
    arms_path.write_text(json.dumps({"arms": [{"name": "b", "params_b": 7}]}))
    data = dataset.load(_write(tmp_path / "r.jsonl", [GOOD]), arms_path)
    assert data.arms == [Arm("b", 7.0), Arm("a")]


def test_each_step_is_the_services_loop() -> None:
    """A replayed policy earns exactly what a extract/choose/combine/learn loop does."""
    data = dataset.load(SLICE, SLICE_ARMS)
    prepared = dataset.prepare(data, REWARDS)
    rows = dataset.order(len(data.rows), 3, in_order=False)
    result = replay.run("egreedy", replay.make_stepper("egreedy", prepared, 3), prepared, rows, 3)
    policy, earned = build_policy("egreedy", seed=3), []
    for i in rows:
        row = data.rows[i]
        x = extract(row.query, row.context)
        d = policy.choose(x, data.arms)
        r = REWARDS.combine(row.outcomes[d.arm])
        policy.learn(x, data.arms, d.arm, d.probability, r)
        earned.append(r)
    assert result.reward.tolist() == earned


def test_hindsight_baselines_bound_the_policies() -> None:
    prepared = dataset.prepare(dataset.load(SLICE, SLICE_ARMS), REWARDS)
    names = [
        "egreedy",
        "random",
        "static",
        "best-fixed",
        "best-context",
        "oracle",
        "fixed:llama2-7b",
    ]
    runs = replay.simulate(names, prepared, seeds=[0, 1])
    mean = {name: float(np.mean([r.reward.mean() for r in rs])) for name, rs in runs.items()}
    assert all(mean["oracle"] >= m for m in mean.values())
    assert mean["best-context"] >= mean["best-fixed"] >= mean["fixed:llama2-7b"]
    assert mean["best-fixed"] == pytest.approx(np.nanmax(np.nanmean(prepared.table, axis=0)))
    assert all(len(r.reward) == 200 for rs in runs.values() for r in rs)


def test_only_arms_with_an_outcome_are_eligible(tmp_path: Path) -> None:
    """A new arm appears mid-stream: earlier rows lack it, and no policy may pick it there."""
    early = {"query": "hi there", "outcomes": {"a": {"accuracy": 0}}}
    late = {"query": "hi there", "outcomes": {"a": {"accuracy": 0}, "new": {"accuracy": 1}}}
    data = dataset.load(_write(tmp_path / "r.jsonl", [early] * 30 + [late] * 30))
    prepared = dataset.prepare(data, REWARDS)
    for name in ["egreedy", "linucb", "random", "oracle", "best-fixed", "fixed:new"]:
        (result,) = replay.simulate([name], prepared, seeds=[0], in_order=True)[name]
        assert (result.arm[:30] == 0).all(), name
    (oracle,) = replay.simulate(["oracle"], prepared, [0], in_order=True)["oracle"]
    assert (oracle.arm[30:] == 1).all()


def test_rewards_follow_the_settings() -> None:
    data = dataset.load(SLICE, SLICE_ARMS)
    accuracy_only = RewardConfig({"accuracy": 1.0})
    prepared = dataset.prepare(data, accuracy_only)
    (fixed,) = replay.simulate(["fixed:llama2-70b"], prepared, [0])["fixed:llama2-70b"]
    assert fixed.reward.tolist() == fixed.accuracy.tolist()
    assert accuracy_only.combine(RewardParts(accuracy=1.0, latency_ms=9e6)) == 1.0


def test_unknown_policies_name_the_valid_ones() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match=r"unknown policy 'nope'.*the simulator adds: best-fixed"):
        replay.check_spec("nope", settings)
    with pytest.raises(ValueError, match="policy mabwiser: unknown parameter"):
        replay.check_spec("mabwiser:beta=1", settings)
    for ok in ["egreedy:epsilon=0.1", "fixed:llama2-7b", "fixed:arm=x", "best-fixed", "mabwiser"]:
        replay.check_spec(ok, settings)


def test_an_outcome_the_weights_cannot_score_is_named(tmp_path: Path) -> None:
    data = dataset.load(_write(tmp_path / "r.jsonl", [GOOD, GOOD]))
    with pytest.raises(dataset.ReplayError, match=r"line 1: outcomes.b: no weighted reward part"):
        dataset.prepare(data, RewardConfig({"accuracy": 1.0}))


def test_skip_bad_skips_a_row_the_weights_cannot_score(tmp_path: Path) -> None:
    """--skip-bad skipped a malformed row but not one with an outcome the weights cannot
    score: the run stopped on it all the same."""
    scored = {"query": "q", "outcomes": {"a": {"accuracy": 1.0}, "b": {"accuracy": 0.0}}}
    data = dataset.load(_write(tmp_path / "r.jsonl", [scored, GOOD, scored]))
    weights = RewardConfig({"accuracy": 1.0})
    with pytest.raises(dataset.ReplayError, match=r"line 2: .*\(use --skip-bad to skip\)"):
        dataset.prepare(data, weights)
    prepared = dataset.prepare(data, weights, skip_bad=True)
    assert [row.line for row in prepared.replay.rows] == [1, 3]
    assert prepared.replay.skipped == 1 and prepared.table.tolist() == [[1.0, 0.0]] * 2
    with pytest.raises(dataset.ReplayError, match="no usable rows"):
        dataset.prepare(dataset.load(_write(tmp_path / "s.jsonl", [GOOD])), weights, skip_bad=True)


def test_the_ci_is_students_t_for_every_number_of_seeds() -> None:
    """The 95% CI over seeds takes Student's t with n - 1 degrees of freedom, not the normal
    1.96 from 11 seeds on (30 seeds: 2.045, 4% wider)."""
    rng = np.random.default_rng(0)
    for n, t in [
        (5, 2.776445),
        (10, 2.262157),
        (11, 2.228139),
        (20, 2.093024),
        (30, 2.045230),
        (40, 2.022691),
        (100, 1.984217),
    ]:
        values = rng.normal(size=n).tolist()
        expected = t * np.std(values, ddof=1) / np.sqrt(n)
        assert report.ci95(values) == pytest.approx(expected, rel=2e-4), n


def test_a_warm_start_judges_the_policies_against_best_fixed_on_the_replayed_rows() -> None:
    """With ``warm_start`` only the rows after the warm part are replayed: best-fixed's reward,
    vs best-fixed and the regrets are taken over those rows, as the policies' means are."""
    prepared = dataset.prepare(dataset.load(SLICE, SLICE_ARMS), REWARDS)
    names = ["best-fixed", "oracle", "egreedy"]
    runs = replay.simulate(names, prepared, [0, 1, 2], warm_start=0.5)
    result = report.summary(runs, prepared, {"seeds": [0, 1, 2], "warm_start": 0.5})
    fixed = float(np.mean([r.reward.mean() for r in runs["best-fixed"]]))
    oracle = float(np.mean([r.reward.mean() for r in runs["oracle"]]))
    assert result["best_fixed_reward"] == pytest.approx(fixed)
    assert result["oracle_reward"] == pytest.approx(oracle)
    assert result["policies"]["best-fixed"]["regret_best_fixed"] == pytest.approx(0.0)
    assert result["policies"]["oracle"]["regret_oracle"] == pytest.approx(0.0)
    assert "+0.00%" in report.table(result).splitlines()[1]  # best-fixed's own line
