"""Features: what a policy sees of a query, derived once and used by every component.

The raw query text is not kept: each distinct word becomes a 32-bit keyed hash (BLAKE2b under
the deployment's secret ``WordKey``), kept as a set sorted by hash, so a stored decision carries
enough to learn from and replay, but neither the words (without the secret) nor their order.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

AppValue = str | int | float | bool

MAX_TOKENS = 128  # distinct words kept per query: enough to route on, bounded cost per request
WORD_CACHE = 16_384  # words whose hash a WordKey remembers: queries repeat the same words
# Longer words are hashed every time, not remembered: a word may be as long as its query, and the
# cache is bounded in words, so long ones let a client fill it with gigabytes.
CACHED_WORD_BYTES = 64

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CODE = re.compile(
    r"```|\bdef |\bclass |\bimport |\bfunction\b|\breturn\b|=>|\bSELECT\b|#include|[{};]\s*$",
    re.MULTILINE,
)
_MATH = re.compile(
    r"\d\s*[-+*/^=<>]\s*\d|\\(frac|sqrt|sum|int)\b|\$[^$]+\$|\b(solve|equation)\b", re.I
)
_LIST_ITEM = re.compile(r"^\s*(?:[A-Za-z0-9][.)]|[-*\u2022])\s", re.MULTILINE)
_LOOKUP = re.compile(
    r"\b(define|definition|what is|who is|when was|translate|synonym|embed|classify|extract"
    r"|lookup)\b",
    re.I,
)
_REASONING = re.compile(
    r"\b(why|explain|prove|derive|step by step|compare|analy[sz]e|reason)\b", re.I
)

# Substrings each pattern needs to match (of the query; of its lower case for the re.I ones, an
# ASCII query only: Unicode case folding maps a few other letters onto ASCII ones, U+017F to "s").
# A query with none of them cannot match, and Python's re tries every alternative at every
# position: the regex runs only when one is present. Same answers, a fraction of the time.
_CODE_NEEDS: tuple[str, ...] = ("```", "def ", "class ", "import ", "function", "return", "=>")
_CODE_NEEDS += ("SELECT", "#include", "{", "}", ";")
_MATH_NEEDS = ("\\", "$", "solve", "equation")  # or a digit
_LOOKUP_NEEDS: tuple[str, ...] = ("defin", "what is", "who is", "when was", "translate")
_LOOKUP_NEEDS += ("synonym", "embed", "classify", "extract", "lookup")
_REASONING_NEEDS: tuple[str, ...] = ("why", "explain", "prove", "derive", "step by step")
_REASONING_NEEDS += ("compare", "analy", "reason")
_ASCII_WORD = re.compile(rb"[A-Za-z0-9]+")  # _WORD on an ASCII query: [^\W_] is [A-Za-z0-9]
_DIGITS = b"0123456789"

# Names of the query statistics, in a fixed order (dense vectors rely on it).
QUERY_STATS = (
    "chars",
    "words",
    "lines",
    "code",
    "math",
    "digits",
    "question",
    "list_items",
    "lookup",
    "reasoning",
)


def token_hash(text: str) -> int:
    """Stable 32-bit hash (CRC-32) of an app fact or an arm name: stored as they are anyway."""
    return zlib.crc32(text.encode("utf-8"))


@functools.lru_cache(maxsize=4096)  # apps send the same few keys and values again and again
def app_hash(key: str, text: str | None = None) -> int:
    """``token_hash`` of an app fact: its key (numbers) or ``key=value`` (strings)."""
    return token_hash(key if text is None else f"{key}={text}")


class WordKey:
    """The secret that turns query words into feature indices: keyed BLAKE2b, 32 bits a word.

    The same secret gives the same hashes in every process; without it, a hash cannot be tested
    against a dictionary. ``secret`` is any text (a deployment's random secret from Redis, or
    ``BANDIT_HASH_KEY``); the BLAKE2b key is derived from it. ``fingerprint`` tells two keys apart
    without revealing either. Each word's hash is cached: a keyed hash costs several times a
    CRC-32, a cache hit about the same; a word over ``CACHED_WORD_BYTES`` is not kept.
    """

    __slots__ = ("fingerprint", "hash")

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a word key needs a non-empty secret")
        key = hashlib.blake2b(secret.encode(), digest_size=32, person=b"br-word-key").digest()
        base = hashlib.blake2b(key=key, digest_size=4, person=b"br-words")

        def word_hash(word: bytes) -> int:
            h = base.copy()  # the keyed state, copied: cheaper than keying a new hash per word
            h.update(word)
            return int.from_bytes(h.digest(), "little")

        cached = functools.lru_cache(maxsize=WORD_CACHE)(word_hash)

        def hash_word(word: bytes) -> int:
            return cached(word) if len(word) <= CACHED_WORD_BYTES else word_hash(word)

        self.hash: Callable[[bytes], int] = hash_word
        self.fingerprint = hashlib.blake2b(
            b"fingerprint", key=key, digest_size=8, person=b"br-key-id"
        ).hexdigest()

    def __repr__(self) -> str:
        return f"WordKey(fingerprint={self.fingerprint})"

    def tokens(self, words: Iterable[bytes]) -> tuple[int, ...]:
        """The hashes of ``words`` (distinct, UTF-8), as a set sorted by hash: no word order."""
        return tuple(sorted(set(map(self.hash, words))))


# Not secret: replays, offline tools and tests hash with it when no key is given, so their
# results are deterministic. A deployment never uses it (see bandit_router.service.router).
PUBLIC_WORDS = WordKey("bandit-router public word key: replays and tests, not a deployment")


@dataclass(frozen=True, slots=True)
class Features:
    """One query's context: scaled statistics, hashed words, and the app's own facts."""

    stats: tuple[float, ...]  # aligned with QUERY_STATS, each roughly in [0, 1]
    tokens: tuple[int, ...] = ()  # keyed hashes of the distinct words, sorted by hash
    numeric: Mapping[str, float] = field(default_factory=dict)  # app numbers and booleans
    categorical: Mapping[str, str] = field(default_factory=dict)  # app strings

    def stat(self, name: str) -> float:
        return self.stats[QUERY_STATS.index(name)]

    def to_json(self) -> dict[str, Any]:
        return {
            "s": list(self.stats),
            "t": list(self.tokens),
            "n": dict(self.numeric),
            "c": dict(self.categorical),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Features:
        return cls(
            stats=tuple(map(float, data["s"])),
            tokens=tuple(map(int, data.get("t", ()))),
            numeric={str(k): float(v) for k, v in data.get("n", {}).items()},
            categorical={str(k): str(v) for k, v in data.get("c", {}).items()},
        )


def _query_stats(query: str, n_words: int) -> tuple[float, ...]:
    n_chars = len(query)
    if query.isascii():
        lower = query.lower()
        raw = query.encode("ascii")
        digits = n_chars - len(raw.translate(None, _DIGITS))
        code = _maybe(_CODE, query, query, _CODE_NEEDS)
        math_ = digits > 0 or any(s in lower for s in _MATH_NEEDS)
        math_ = math_ and _MATH.search(query) is not None
        lookup = _maybe(_LOOKUP, query, lower, _LOOKUP_NEEDS)
        reasoning = _maybe(_REASONING, query, lower, _REASONING_NEEDS)
    else:
        digits = sum(map(str.isdigit, query))  # the same count, without a generator step per char
        code = _maybe(_CODE, query, query, _CODE_NEEDS)  # case-sensitive literals: any text
        math_ = _MATH.search(query) is not None
        lookup = _LOOKUP.search(query) is not None
        reasoning = _REASONING.search(query) is not None
    return (
        min(math.log1p(n_chars) / 10.0, 1.0),
        min(math.log1p(n_words) / 8.0, 1.0),
        min(math.log1p(query.count("\n") + 1) / 5.0, 1.0),
        1.0 if code else 0.0,
        1.0 if math_ else 0.0,
        digits / n_chars if n_chars else 0.0,
        1.0 if "?" in query else 0.0,
        min(math.log1p(len(_LIST_ITEM.findall(query))) / 3.0, 1.0),
        1.0 if lookup else 0.0,
        1.0 if reasoning else 0.0,
    )


def _maybe(pattern: re.Pattern[str], query: str, text: str, needs: tuple[str, ...]) -> bool:
    """``pattern.search(query)``, skipped when ``text`` holds none of the substrings it needs."""
    for s in needs:
        if s in text:
            return pattern.search(query) is not None
    return False


def _words(query: str, key: WordKey) -> tuple[int, tuple[int, ...]]:
    """The number of words, and the first MAX_TOKENS distinct lower-cased words hashed."""
    if query.isascii():  # one pass over bytes: no per-word encode, the same words
        words = _ASCII_WORD.findall(query.lower().encode("ascii"))
        distinct = dict.fromkeys(words)  # deduplicated before hashing: each word hashed once
        first = itertools.islice(distinct, MAX_TOKENS) if len(distinct) > MAX_TOKENS else distinct
        return len(words), key.tokens(first)
    return len(_WORD.findall(query)), _tokens(query, key)


def _tokens(query: str, key: WordKey) -> tuple[int, ...]:
    seen: dict[str, None] = {}
    for word in _WORD.finditer(query.lower()):  # lazily: a long query stops at MAX_TOKENS
        seen.setdefault(word.group(), None)
        if len(seen) >= MAX_TOKENS:
            break
    return key.tokens(w.encode("utf-8") for w in seen)


def extract(
    query: str, app: Mapping[str, AppValue] | None = None, words: WordKey = PUBLIC_WORDS
) -> Features:
    """Turn a query and the app's optional facts into ``Features``; the one code path for all.

    ``words`` hashes the words: the deployment's secret in the service, ``PUBLIC_WORDS`` (the
    default) in replays and tools that have no deployment.
    """
    numeric: dict[str, float] = {}
    categorical: dict[str, str] = {}
    for key, value in (app or {}).items():
        if isinstance(value, bool):
            numeric[key] = 1.0 if value else 0.0
        elif isinstance(value, int | float):
            if not math.isfinite(value):
                raise ValueError(f"feature {key!r} must be a finite number, got {value}")
            numeric[key] = float(value)
        else:
            categorical[key] = str(value)
    n_words, tokens = _words(query, words)
    return Features(_query_stats(query, n_words), tokens, numeric, categorical)
