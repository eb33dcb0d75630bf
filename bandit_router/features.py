"""Features: what a policy sees of a query, derived once and used by every component.

The raw query text is not kept: words become 32-bit hashes (CRC-32), so a stored decision
carries enough to learn from and replay, but not the text itself.
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

AppValue = str | int | float | bool

MAX_TOKENS = 128  # distinct words kept per query: enough to route on, bounded cost per request

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
    """Stable 32-bit hash of a word or a ``key=value`` pair (same in every process)."""
    return zlib.crc32(text.encode("utf-8"))


@functools.lru_cache(maxsize=4096)  # apps send the same few keys and values again and again
def app_hash(key: str, text: str | None = None) -> int:
    """``token_hash`` of an app fact: its key (numbers) or ``key=value`` (strings)."""
    return token_hash(key if text is None else f"{key}={text}")


@dataclass(frozen=True, slots=True)
class Features:
    """One query's context: scaled statistics, hashed words, and the app's own facts."""

    stats: tuple[float, ...]  # aligned with QUERY_STATS, each roughly in [0, 1]
    tokens: tuple[int, ...] = ()  # hashed distinct words, in order of first appearance
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


def _words(query: str) -> tuple[int, tuple[int, ...]]:
    """The number of words, and the distinct lower-cased words hashed (at most MAX_TOKENS)."""
    if query.isascii():  # one pass over bytes: no per-word encode, the same words and hashes
        words = _ASCII_WORD.findall(query.lower().encode("ascii"))
        seen = dict.fromkeys(map(zlib.crc32, words))
        tokens = tuple(seen)
        return len(words), tokens if len(tokens) <= MAX_TOKENS else tokens[:MAX_TOKENS]
    return len(_WORD.findall(query)), _tokens(query)


def _tokens(query: str) -> tuple[int, ...]:
    seen: dict[int, None] = {}
    crc32 = zlib.crc32  # token_hash, inlined: this loop runs once per word
    for word in _WORD.finditer(query.lower()):  # lazily: a long query stops at MAX_TOKENS
        seen.setdefault(crc32(word.group().encode("utf-8")), None)
        if len(seen) >= MAX_TOKENS:
            break
    return tuple(seen)


def extract(query: str, app: Mapping[str, AppValue] | None = None) -> Features:
    """Turn a query and the app's optional facts into ``Features``; the one code path for all."""
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
    n_words, tokens = _words(query)
    return Features(_query_stats(query, n_words), tokens, numeric, categorical)
