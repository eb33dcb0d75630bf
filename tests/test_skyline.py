"""The full-information skyline on planted data: its penalty follows what the features are worth."""

from __future__ import annotations

import numpy as np

from bandit_router.features import QUERY_STATS, Features
from bandit_router.sim.peers import skyline


def planted(n: int, signal: float, seed: int = 0) -> tuple[list[Features], np.ndarray]:
    """Rows of random words and a two-valued app field; arm 1 is better by 0.05 on average, and
    by ``signal`` more or less depending on the field (0: the features are noise)."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    features = [
        Features(
            stats=(0.5,) * len(QUERY_STATS),
            tokens=tuple(sorted(int(t) for t in rng.integers(0, 2**30, 20))),
            categorical={"kind": str(k)},
        )
        for k in kind
    ]
    means = np.stack([np.full(n, 0.5), 0.55 + signal * np.where(kind == 1, 1.0, -1.0)], axis=1)
    return features, (rng.random((n, 2)) < means).astype(float)


def test_where_the_features_are_noise_the_skyline_keeps_to_the_best_arm() -> None:
    features, table = planted(4000, signal=0.0)
    train, test = list(range(2000)), list(range(2000, 4000))
    best = table[test, 1].mean()
    overfit = skyline(features, table, train, test, l2=1.0).mean()
    chosen = skyline(features, table, train, test).mean()
    assert overfit < best - 0.005 < chosen, (overfit, chosen, best)


def test_where_the_features_pay_the_skyline_uses_them() -> None:
    features, table = planted(4000, signal=0.2)
    train, test = list(range(2000)), list(range(2000, 4000))
    # kind 0: arm 0 (0.5) beats arm 1 (0.35); kind 1: arm 1 (0.75); the best arm alone earns 0.55
    assert skyline(features, table, train, test).mean() > table[test, 1].mean() + 0.05
