"""Sufficient statistics of logged events for ``estimators``' SNIPS, DR and on-policy mean, so
that a sliding window's (events added, events evicted) give the estimators' estimates over its
events at a cost that does not grow with the window.

An event is a row ``(t, p, r, q, dm)``: the target's probability of the logged arm, the logged
propensity, the reward, the reward model's prediction for the logged arm and DR's direct term.
With ``w = t / p`` and DR's term ``x = dm + w (r - q)``, both rounded as the estimators round
them, ``Moments`` holds the event count and the sums of ``w``, ``w r``, ``w^2``, ``w^2 r``,
``w^2 r^2``, ``r``, ``r^2``, ``x`` and ``x^2``: enough for each estimate's value and interval.

The sums are exact. From sums in floating point, a variance ``sum x^2 - (sum x)^2 / n`` cancels
when the terms are (nearly) equal, and its square root turns rounding errors of 1e-16 into
errors of 1e-8 in the interval; and sums that events are added to and subtracted from drift. So
each event's terms are split into floats that sum to them (exactly for products of two numbers,
by Dekker's two-product; to within 2 ** -104 for the two products of three, the same floats
whenever the event is added or removed), and each float into integers added into an integer
bucket per binary exponent. Adding and removing events is then integer arithmetic: the sums are
exact whatever the order and however many events came and went, so they cannot drift. Limits: a
product below about 1e-290 underflows, losing digits far below any estimate's; an event with a
term too large to split (``w`` above about 1e150) is counted in ``unbounded`` instead, and weights
all below about 1e-90 have squares that underflow: ``exact`` says when the caller should score
the events with the estimators themselves.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from bandit_router.offline.estimators import Estimate, mean_of, snips_of

Rows = npt.NDArray[np.float64]

COLUMNS = 5  # t, p, r, q, dm
TINY_WEIGHTS = 2.0**-300  # see Moments.exact
MAX_EVENTS = 1 << 20  # the int64 sums cannot overflow with at most this many events held
_SPLITTER = float((1 << 27) + 1)  # Dekker's: splits a float64 into two halves of 26 bits
# A finite float64 with biased exponent e and fraction bits f is m * 2 ** (max(e, 1) - _SCALE)
# with the integer m = f (+ 2 ** 52 when e > 0). Bucket b counts units of 2 ** (8 b - _SCALE):
# m shifted by max(e, 1) % 8 (below 2 ** 60) is added as its low 32 bits to bucket max(e, 1) // 8
# and the rest to the bucket 4 above. An event adds below 2 ** 33.7 to a bucket (3 floats at
# most a statistic), so 2 ** 20 events cannot overflow an int64.
_SCALE = 1075
_BUCKETS = (2046 >> 3) + 4 + 1  # per statistic
# Events converted at once: keeps the temporary arrays small (faster than larger chunks when
# a whole window is loaded), and bincount's float64 sums exact (below 2 ** 45.7 a chunk).
_CHUNK = 1 << 12


class Sums(NamedTuple):
    """The sums over the events."""

    w: Fraction
    wr: Fraction
    ww: Fraction
    wwr: Fraction
    wwrr: Fraction
    r: Fraction
    rr: Fraction
    x: Fraction
    xx: Fraction


# The statistic (its index in Sums) that each of _parts' rows adds to.
_STAT_OF_PART = np.array([0, 7, 5, 1, 2, 6, 8, 1, 2, 6, 8, 3, 4, 3, 4, 3, 4])
_FIRST = (_STAT_OF_PART * _BUCKETS)[:, None]  # each part's statistic's first bucket


def _split(a: Rows) -> tuple[Rows, Rows]:
    c = _SPLITTER * a
    high = c - (c - a)
    return high, a - high


def _two_product(a: Rows, b: Rows) -> tuple[Rows, Rows]:
    """``(a * b, e)`` with ``a * b + e`` exactly the product (no overflow or underflow)."""
    product = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return product, ((ah * bh - product) + ah * bl + al * bh) + al * bl


def _parts(rows: Rows) -> Rows:
    """Per event (a column), the floats added to the statistics (``_STAT_OF_PART``): for each,
    floats that sum to its term exactly (``w``, ``r``, ``x``, ``w r``, ``w^2``, ``r^2``,
    ``x^2``) or to within 2 ** -104 of it (``w^2 r``, ``w^2 r^2``: far below what the estimates
    need, and the same whenever the event is added or removed)."""
    t, p, r, q, dm = rows.T
    w = t / p
    x = dm + w * (r - q)  # as doubly_robust rounds it
    high, low = _two_product(np.stack([w, w, r, x]), np.stack([r, w, r, x]))
    # w^2 r = ww r + ww_e r, and (w r)^2 = wr^2 + 2 wr wr_e + wr_e^2 (the last dropped), with
    # w r = wr + wr_e and w^2 = ww + ww_e
    high2, low2 = _two_product(high[[1, 0]], np.stack([r, high[0]]))
    extra = np.stack([low[1] * r, 2 * high[0] * low[0]])
    return np.concatenate([np.stack([w, x, r]), high, low, high2, low2, extra])


class Moments:
    """The statistics of a changing set of events: ``update`` adds and removes events."""

    def __init__(self) -> None:
        self.n = 0  # events held
        self.unbounded = 0  # of them, events with a term too large to sum (see the module)
        self._buckets = np.zeros((len(Sums._fields), _BUCKETS), dtype=np.int64)
        self._sums: Sums | None = None

    @classmethod
    def of(cls, rows: Rows) -> Moments:
        moments = cls()
        moments.update(rows, rows[:0])
        return moments

    def update(self, added: Rows, removed: Rows) -> None:
        """Add the events ``added`` and remove ``removed`` (rows of ``COLUMNS``, ``removed``
        among those held)."""
        n = self.n + len(added) - len(removed)
        if not 0 <= n <= MAX_EVENTS:
            raise ValueError(f"{n} events: between 0 and {MAX_EVENTS} can be held")
        self.n = n
        self._sums = None
        rows = np.concatenate([added, removed])
        negative = np.repeat(np.array([0, -1], dtype=np.int64), [len(added), len(removed)])
        for start in range(0, len(rows), _CHUNK):
            self._add(rows[start : start + _CHUNK], negative[start : start + _CHUNK])

    def _add(self, rows: Rows, negative: npt.NDArray[np.int64]) -> None:
        """Add (``negative`` 0) or subtract (-1) each event (a row) into the buckets."""
        with np.errstate(over="ignore", invalid="ignore"):
            parts = _parts(rows)
            finite = np.isfinite(parts).all(axis=0)
        if not finite.all():
            self.unbounded += int((2 * negative[~finite] + 1).sum())
            parts, negative = parts[:, finite], negative[finite]
        bits = parts.view(np.int64)
        exponent = (bits >> 52) & 0x7FF
        mantissa = (bits & ((1 << 52) - 1)) | (np.minimum(exponent, 1) << 52)
        at = np.maximum(exponent, 1)
        sign = (bits >> 63) ^ negative  # -1: subtract the part's magnitude
        shifted = ((mantissa ^ sign) - sign) << (at & 7)
        bucket = (at >> 3) + _FIRST
        index = np.concatenate([bucket, bucket + 4])
        halves = np.concatenate([shifted & 0xFFFFFFFF, shifted >> 32])
        counts = np.bincount(index.ravel(), halves.ravel().astype(np.float64), self._buckets.size)
        self._buckets += counts.astype(np.int64).reshape(self._buckets.shape)

    @property
    def exact(self) -> bool:
        """The estimates from the sums are the estimators': every event held is in the sums
        (none ``unbounded``), and the weights are 0 or not all so small (below about 1e-90)
        that their squares underflow, which SNIPS's interval, scaled by them, would show."""
        if self.unbounded:
            return False
        w = self.sums().w
        return w == 0 or w >= TINY_WEIGHTS

    def sums(self) -> Sums:
        if self.unbounded:
            raise ValueError(f"{self.unbounded} events too large to sum exactly")
        if self._sums is None:
            totals = [0] * len(Sums._fields)
            stats, buckets = np.nonzero(self._buckets)
            for stat, bucket, count in zip(
                stats.tolist(),
                buckets.tolist(),
                self._buckets[stats, buckets].tolist(),
                strict=True,
            ):
                totals[stat] += count << (bucket << 3)
            self._sums = Sums(*(Fraction(total, 1 << _SCALE) for total in totals))
        return self._sums

    def snips(self) -> Estimate:
        s = self.sums()
        return snips_of(self.n, s.w, s.wr, s.ww, s.wwr, s.wwrr)

    def doubly_robust(self) -> Estimate:
        s = self.sums()
        return mean_of(self.n, s.x, s.xx)

    def on_policy(self) -> Estimate:
        """The mean reward with its interval, as ``ips`` with target and logged all 1."""
        s = self.sums()
        return mean_of(self.n, s.r, s.rr)
