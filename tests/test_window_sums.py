"""A challenger window's running sums give the estimators' scores over its rows: generated
streams of rows, longer than the window (so rows are evicted), read at random points and
reloaded from ``dumps()``, each judgement compared with ``standing`` over ``window.rows()``."""

from __future__ import annotations

import math
from fractions import Fraction
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bandit_router.features import extract
from bandit_router.offline import moments
from bandit_router.offline.estimators import Estimate, mean_of, snips_of
from bandit_router.offline.moments import Moments
from bandit_router.policies.base import Arm
from bandit_router.policies.registry import parse_policy_spec
from bandit_router.service import challengers
from bandit_router.service.challengers import Bench, Standing, Window, scored, standing
from bandit_router.settings import Settings

Row = tuple[float, float, float, float, float]
TOLERANCE = 1e-9

unit = st.floats(0.0, 1.0) | st.sampled_from([0.0, 1.0, 0.5, 0.1, 0.7])
# Propensities down to 1e-4: DR's terms grow as 1/p, and so does the estimators' own rounding
# (about 1e-16 of the terms); ``test_any_propensity`` takes them all, with a relative tolerance.
propensity = st.floats(1e-4, 1.0) | st.sampled_from([1.0, 0.5, 1 / 3, 1e-4])
target = st.just(0.0) | unit  # the challenger's probability: 0 often
row = st.tuples(target, propensity, unit, unit, unit)
# An action: a row added, a judgement (read), or the window reloaded from its bytes.
action = st.one_of(
    row.map(lambda r: ("add", r)),
    st.just(("judge", None)),
    st.just(("reload", None)),
)


def _close(a: float, b: float, tolerance: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance


def _same(a: Standing, b: Standing, tolerance: float = TOLERANCE) -> None:
    assert (a.policy, a.events) == (b.policy, b.events)
    for x, y in ((a.snips, b.snips), (a.dr, b.dr), (a.champion, b.champion)):
        assert x.n == y.n, (x, y)
        for u, v in ((x.value, y.value), (x.low, y.low), (x.high, y.high)):
            assert _close(u, v, tolerance), (a, b)
    # Whether it clears may only differ on a tie (both margins within the tolerance of 0).
    if abs(a.margin) > tolerance and abs(b.margin) > tolerance:
        assert a.clears == b.clears


def _check(window: Window, min_events: int, tolerance: float = TOLERANCE) -> None:
    """``scored`` against ``standing``. The estimators warn of their own overflow or division
    by 0 (weights past 1e308, or whose mean rounds to 0), and ``scored`` hands such windows to
    them; when it does not, a warning of its own is an error."""
    with np.errstate(all="ignore"):
        expected = standing("c", window.rows(), min_events)
    if window.moments().exact:
        _same(scored("c", window, min_events), expected, tolerance)
    else:
        with np.errstate(all="ignore"):
            _same(scored("c", window, min_events), expected, tolerance)


def _play(size: int, actions: list[tuple[str, Row | None]], min_events: int) -> None:
    window = Window(size)
    for kind, r in actions:
        if kind == "add":
            assert r is not None
            window.add(r)
        elif kind == "reload":
            window = Window.loads(size, window.dumps())
        else:
            _check(window, min_events)
    _check(window, min_events)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, 12),
    actions=st.lists(action, max_size=60),
    sync_every=st.integers(1, 8),
    min_events=st.integers(1, 5),
)
def test_running_sums_score_as_the_estimators(
    size: int, actions: list[tuple[str, Row | None]], sync_every: int, min_events: int
) -> None:
    with mock.patch.object(challengers, "SYNC_EVERY", sync_every):
        _play(size, actions, min_events)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, 12),
    rows=st.lists(st.tuples(target, st.floats(0.0, 1.0, exclude_min=True), unit, unit, unit)),
)
def test_any_propensity(size: int, rows: list[Row]) -> None:
    """Propensities anywhere in (0, 1]: equal to within 1e-9 of the terms' size (DR's grow as
    1/p); a weight too large to square, or weights all too small, score with the estimators."""
    window = Window(size)
    for r in rows:
        window.add(r)
    kept = window.rows()
    with np.errstate(over="ignore"):  # inf: past 1e308
        scale = max(1.0, float(np.max(kept[:, 0] / kept[:, 1], initial=0.0)))
    _check(window, 1, TOLERANCE * scale)


def test_constant_rewards_have_no_width() -> None:
    """Equal rewards: every interval has width 0 (from sums in floating point, the cancellation
    in the variance left widths near 1e-8)."""
    window = Window(3)
    for t, p in ((1.0, 0.5), (1.0, 0.3), (0.2, 0.9), (0.7, 0.3)):
        window.add((t, p, 0.7, 0.4, 0.6))
    s = scored("c", window, 1)
    assert s.snips.high - s.snips.low < 1e-15
    assert s.champion.high - s.champion.low < 1e-15


def test_nan_where_the_estimators_give_nan() -> None:
    window = Window(4)
    window.add((1.0, 0.5, 1.0, 0.5, 0.5))
    s = scored("c", window, 1)  # one event: no interval
    assert s.events == 1 and math.isnan(s.snips.low) and math.isnan(s.dr.high)
    for _ in range(4):  # the weighted row evicted: the target never picks a logged arm
        window.add((0.0, 0.5, 1.0, 0.5, 0.2))
    s = scored("c", window, 1)
    assert math.isnan(s.snips.value) and s.snips.n == 4
    _same(s, standing("c", window.rows(), 1))


def test_a_weight_too_large_to_sum_is_scored_by_the_estimators() -> None:
    window = Window(3)
    window.add((1.0, 1e-300, 0.5, 0.5, 0.5))  # w = 1e300: its square is not a float
    window.add((1.0, 0.5, 0.2, 0.5, 0.5))
    assert not window.moments().exact and window.moments().unbounded == 1
    _same(scored("c", window, 1), standing("c", window.rows(), 1))
    for _ in range(2):
        window.add((1.0, 0.5, 0.2, 0.5, 0.5))
    assert window.moments().exact and window.moments().unbounded == 0  # evicted: the sums


def test_rows_are_the_newest_oldest_first_and_a_narrower_window_keeps_the_newest() -> None:
    """Rows entering a full ring in two syncs wrap around it: ``rows()`` still gives them
    oldest first, so a restart with a smaller BANDIT_CHALLENGER_WINDOW keeps the newest."""
    rows = [(0.1 * i, 0.5, 0.5, 0.5, 0.5) for i in range(1, 6)]
    window = Window(3)
    for r in rows[:2]:
        window.add(r)
    assert window.rows().tolist() == [list(r) for r in rows[:2]]
    for r in rows[2:]:
        window.add(r)
    assert window.rows().tolist() == [list(r) for r in rows[2:]]
    assert Window.loads(2, window.dumps()).rows().tolist() == [list(r) for r in rows[3:]]


def test_sums_are_exact_whatever_came_and_went() -> None:
    """After many rows in and out, the sums are those of the rows held, to the last bit."""
    rng = np.random.default_rng(3)
    window = Window(50)
    for _ in range(40):
        for r in rng.random((37, 5)) * [1, 0.9, 1, 1, 1] + [0, 0.1, 0, 0, 0]:
            window.add(tuple(float(v) for v in r))  # type: ignore[arg-type]
        window.moments()
    assert window.moments().sums() == Moments.of(window.rows()).sums()


def test_too_many_events_are_refused() -> None:
    with pytest.raises(ValueError, match="events"):
        Moments().update(np.zeros((0, 5)), np.full((1, 5), 0.5))
    with mock.patch.object(moments, "MAX_EVENTS", 3), pytest.raises(ValueError, match="events"):
        Moments.of(np.full((4, 5), 0.5))


def test_sums_follow_the_rows_through_restore_restart_and_promotion() -> None:
    """Whenever a window's rows are replaced (restored from its bytes, restarted, a promotion),
    its sums are those of the new rows."""
    settings = Settings(
        policy="random", challengers=["linucb"], promote_min_events=10, challenger_window=20
    )
    champion = parse_policy_spec("random")
    bench = Bench(champion, [parse_policy_spec("linucb")], settings, seed=1)
    arms = [Arm("4b"), Arm("7b"), Arm("14b")]
    x = extract("what is the capital of France")
    rng = np.random.default_rng(5)

    def feed(n: int) -> None:
        for _ in range(n):
            bench.observe(x, arms, str(rng.choice(["4b", "7b", "14b"])), 1 / 3, float(rng.random()))

    def check(b: Bench) -> None:
        for name, c in b.challengers.items():
            _same(
                scored(name, c.window, b.min_events), standing(name, c.window.rows(), b.min_events)
            )

    feed(45)
    check(bench)
    restored = Bench.restore(bench.fields(b""), champion, settings, bench.stream_id)
    assert restored.challengers["linucb"].window.rows().tolist() == (
        bench.challengers["linucb"].window.rows().tolist()
    )
    check(restored)
    bench.restart_windows()
    assert bench.standings()[0].events == 0
    feed(7)
    check(bench)
    bench.promote(parse_policy_spec("linucb"), bench._fresh(champion).policy, "admin", 1)
    assert [s.events for s in bench.standings()] == [0]  # the old champion, afresh
    feed(3)
    check(bench)
    assert bench.standings()[0].events == 3


def test_estimates_from_sums_by_hand() -> None:
    """The tiny log of test_estimators, from its sums."""
    m = Moments.of(
        np.array([[1.0, 0.5, 1.0, 0.5, 0.5], [0.0, 0.5, 1.0, 0.5, 0.2], [1.0, 0.25, 0.5, 0.5, 0.6]])
    )
    snips = m.snips()
    assert snips.value == pytest.approx(2 / 3) and snips.n == 3
    half = 1.959963984540054 * (1 / 3) / math.sqrt(3)
    assert [snips.low, snips.high] == pytest.approx([2 / 3 - half, 2 / 3 + half])
    assert m.on_policy().value == pytest.approx(2.5 / 3)
    assert isinstance(m.doubly_robust(), Estimate)
    assert m.doubly_robust().value == pytest.approx((1.5 + 0.2 + 0.6) / 3)
    with pytest.raises(ValueError, match="need at least one event"):
        mean_of(0, Fraction(0), Fraction(0))
    with pytest.raises(ValueError, match="need at least one event"):
        snips_of(0, *[Fraction(0)] * 5)


def test_the_margin_is_the_lower_of_the_two_lower_bounds_over_the_champion() -> None:
    snips, dr = Estimate(0.7, 0.6, 0.8, 100), Estimate(0.72, 0.65, 0.79, 100)
    s = Standing("c", 100, snips, dr, Estimate(0.5, 0.45, 0.55, 100), True)
    assert s.margin == pytest.approx(0.1)


@pytest.mark.parametrize("min_events", [0, 1])
def test_a_challenger_with_no_events_never_clears(min_events: int) -> None:
    empty = standing("c", np.zeros((0, 5)), min_events)
    assert (empty.events, empty.snips.n, empty.clears) == (0, 0, False)
    from_sums = scored("c", Window(4), min_events)
    assert (from_sums.events, from_sums.dr.n, from_sums.clears) == (0, 0, False)


def test_a_challenger_clears_at_min_events_and_only_strictly_above_the_champion() -> None:
    champion = Estimate(0.6, 0.5, 0.7, 10)
    high, tie = Estimate(0.8, 0.7, 0.9, 10), Estimate(0.7, 0.6, 0.8, 10)
    assert challengers._judged("c", 10, high, high, champion, 10).clears
    assert not challengers._judged("c", 9, high, high, champion, 10).clears
    assert not challengers._judged("c", 10, tie, high, champion, 10).clears
    assert not challengers._judged("c", 10, high, tie, champion, 10).clears
