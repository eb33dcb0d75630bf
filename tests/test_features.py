from __future__ import annotations

import pytest

from bandit_router.features import MAX_TOKENS, QUERY_STATS, Features, extract, token_hash


def test_stats_are_aligned_and_bounded() -> None:
    x = extract("Why is the sky blue? Explain step by step.\nThanks")
    assert len(x.stats) == len(QUERY_STATS)
    assert all(0.0 <= v <= 1.0 for v in x.stats)
    assert x.stat("question") == 1.0
    assert x.stat("reasoning") == 1.0
    assert x.stat("code") == 0.0
    assert x.stat("lines") > extract("one line").stat("lines")


@pytest.mark.parametrize(
    ("query", "stat"),
    [
        ("def add(a, b):\n    return a + b", "code"),
        ("```python\nprint(1)\n```", "code"),
        ("Solve 3x + 4 = 10 for x", "math"),
        ("compute \\frac{1}{2} of it", "math"),
        ("What is a monad? Define it.", "lookup"),
        ("Pick one:\nA. red\nB. blue\nC. green", "list_items"),
    ],
)
def test_markers(query: str, stat: str) -> None:
    assert extract(query).stat(stat) > 0
    assert extract("hello there friend").stat(stat) == 0


def test_words_are_hashed_distinct_lowercase_and_bounded() -> None:
    x = extract("Hello hello WORLD, world!")
    assert x.tokens == (token_hash("hello"), token_hash("world"))
    many = extract(" ".join(f"w{i}" for i in range(1000)))
    assert len(many.tokens) == MAX_TOKENS


def test_unicode_words() -> None:
    x = extract("Wie spät ist es? 今日は")
    assert token_hash("spät") in x.tokens


def test_app_features_are_split_by_type() -> None:
    x = extract("q", {"tier": "pro", "n": 3, "cheap": True, "ratio": 0.5})
    assert x.categorical == {"tier": "pro"}
    assert x.numeric == {"n": 3.0, "cheap": 1.0, "ratio": 0.5}


def test_non_finite_number_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        extract("q", {"n": float("inf")})


def test_json_round_trip() -> None:
    x = extract("What is 2+2?", {"tier": "pro", "n": 2})
    assert Features.from_json(x.to_json()) == x


def test_hash_is_stable_across_processes() -> None:
    assert token_hash("hello") == 907060870  # CRC-32, not Python's salted hash()
