from __future__ import annotations

import math
import random
import tracemalloc
from typing import Any

import pytest

from bandit_router import features
from bandit_router.features import (
    MAX_TOKENS,
    PUBLIC_WORDS,
    QUERY_STATS,
    Features,
    WordKey,
    extract,
    token_hash,
)


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


def _word(word: str, key: WordKey = PUBLIC_WORDS) -> int:
    return key.hash(word.encode("utf-8"))


def test_words_are_hashed_distinct_lowercase_sorted_and_bounded() -> None:
    x = extract("Hello hello WORLD, world!")
    assert x.tokens == tuple(sorted({_word("hello"), _word("world")}))
    assert extract("world hello").tokens == extract("hello world").tokens  # no word order
    many = extract(" ".join(f"w{i}" for i in range(1000)))
    assert len(many.tokens) == MAX_TOKENS
    assert set(many.tokens) == {_word(f"w{i}") for i in range(MAX_TOKENS)}  # the first ones


def test_unicode_words() -> None:
    x = extract("Wie spät ist es? 今日は")
    assert _word("spät") in x.tokens
    long = extract(" ".join(f"wört{i}" for i in range(1000)))
    assert set(long.tokens) == {_word(f"wört{i}") for i in range(MAX_TOKENS)}


def test_words_are_hashed_with_the_key_given() -> None:
    query = "Write a Python function that merges two sorted lists"
    a, b = WordKey("deployment a secret"), WordKey("deployment b secret")
    assert extract(query, None, a) == extract(query, None, WordKey("deployment a secret"))
    assert extract(query, None, a).stats == extract(query, None, b).stats
    assert not set(extract(query, None, a).tokens) & set(extract(query, None, b).tokens)
    assert "deployment a" not in repr(a) and a.fingerprint != b.fingerprint


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
    assert token_hash("hello") == 907060870  # app facts and arms: CRC-32, not Python's hash()
    assert _word("hello") == 3157813282  # query words: keyed BLAKE2b, the same in every process


def _plain(query: str) -> dict[str, Any]:
    """The markers and word-derived stats as the patterns alone define them (no shortcuts)."""
    from bandit_router import features as f

    words = f._WORD.findall(query)
    return {
        "code": 1.0 if f._CODE.search(query) else 0.0,
        "math": 1.0 if f._MATH.search(query) else 0.0,
        "lookup": 1.0 if f._LOOKUP.search(query) else 0.0,
        "reasoning": 1.0 if f._REASONING.search(query) else 0.0,
        "digits": sum(map(str.isdigit, query)) / len(query) if query else 0.0,
        "tokens": list(dict.fromkeys(f._WORD.findall(query.lower()))),
        "words": len(words),
    }


def test_shortcuts_agree_with_the_patterns() -> None:
    # extract skips a regex when the query lacks every literal it needs and splits ASCII
    # queries over bytes: a pattern edited without its _NEEDS list would show up here.
    pieces = [
        *("def ", "class ", "import ", "function", "return", "=>", "SELECT", "#include", "```"),
        *("x;", "{", "}", "solve", "Equation", "\\sqrt", "$x$", "3 + 4", "2*5", "What is"),
        *("WHO IS", "when was", "Translate", "synonym", "embed", "classify", "extract", "lookup"),
        *("define", "Definition", "why", "EXPLAIN", "prove", "derive", "step by step", "compare"),
        *("analyse", "analyze", "reason", "\u017folve", "\u212aey", "İstanbul", "²", "٣", "naïve"),
        *("word", "Word", "a_b", "x1", "\n", " ", "?", "- item", "1."),
    ]
    rnd = random.Random(7)
    for _ in range(3000):
        query = "".join(rnd.choice(pieces) + rnd.choice(["", " ", "\n"]) for _ in range(8))
        x, want = extract(query), _plain(query)
        for name in ("code", "math", "lookup", "reasoning", "digits"):
            assert x.stat(name) == want[name], (name, query)
        assert x.tokens == tuple(sorted({_word(w) for w in want["tokens"][:MAX_TOKENS]})), query
        assert x.stat("words") == min(math.log1p(want["words"]) / 8.0, 1.0), query


def test_long_words_do_not_fill_the_word_cache() -> None:
    """The cache of word hashes is bounded in words, and a client's word may be as long as its
    query (32,768 characters, 98 KB of UTF-8 in CJK): cached, 16,384 of them held 1.6 GB in a
    served process. A long word is hashed as any other, but not kept."""
    key = WordKey("a deployment's secret")
    queries = [f"{i:05d}" + "a" * 32_000 for i in range(300)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tokens = [extract(q, None, key).tokens for q in queries]
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(set(tokens)) == len(queries)  # each word still hashed, and hashed apart
    assert extract(queries[7], None, key).tokens == tokens[7]
    assert kept < 1_000_000  # cached, 300 x 32 KB: 9.6 MB


def test_app_booleans_are_one_and_zero() -> None:
    assert extract("q", {"on": True, "off": False}).numeric == {"on": 1.0, "off": 0.0}


def test_the_first_128_distinct_words_are_kept() -> None:
    """README: a query's first 128 distinct words become its tokens."""
    words = [f"w{i}x" for i in range(200)]
    x = extract(" ".join(words + words))
    assert x.tokens == tuple(sorted({_word(w) for w in words[:128]}))
    assert x.stat("words") == pytest.approx(math.log1p(400) / 8.0)  # every word counts


def test_the_counting_statistics_by_their_formulas() -> None:
    query = "Why is 2 + 2 = 4?\n- one\n- two\nwhat is a cat"
    x = extract(query)
    assert x.stat("chars") == pytest.approx(math.log1p(len(query)) / 10.0)
    assert x.stat("lines") == pytest.approx(math.log1p(4) / 5.0)
    assert x.stat("list_items") == pytest.approx(math.log1p(2) / 3.0)
    assert x.stat("digits") == pytest.approx(3 / len(query))
    # A query holding every literal a pattern may need still runs the pattern.
    assert extract(" ".join(features._REASONING_NEEDS)).stat("reasoning") == 1.0
    plain = extract("no question here")
    assert (plain.stat("question"), plain.stat("list_items"), plain.stat("digits")) == (0, 0, 0)
    assert extract("").stat("digits") == 0.0
    long = extract("x" * 30_000 + "\n" * 200)
    assert (long.stat("chars"), long.stat("lines")) == (1.0, 1.0)  # each capped


def test_app_facts_hash_by_key_for_numbers_and_key_value_for_strings() -> None:
    assert features.app_hash("n") == token_hash("n")
    assert features.app_hash("lang", "en") == token_hash("lang=en")
    assert features.app_hash("lang", "en") != features.app_hash("lang", "fr")


def test_a_word_key_needs_a_secret_and_has_a_16_hex_digit_fingerprint() -> None:
    with pytest.raises(ValueError, match="a word key needs a non-empty secret"):
        WordKey("")
    assert len(WordKey("s3cret").fingerprint) == 16
