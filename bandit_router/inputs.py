"""Files handed to the CLI (replay files, DSJSON logs, arms files): read within bounds, checked
as strictly as the HTTP contract checks a request, so a bad line is refused by its number
instead of exhausting memory, raising a traceback or poisoning a model.

The bounds are the request contract's too (``http.contract`` takes them from here): a row or
event has at most ``MAX_ARMS`` arms, an app number is finite and at most ``MAX_FEATURE_NUMBER`` in
magnitude, a feature key has at most 64 characters and a string value at most 256. No coercion:
``"1"`` is not a number and ``true`` is not 1. A line is at most ``MAX_LINE_BYTES`` long.
"""

from __future__ import annotations

import itertools
import json
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from bandit_router.policies.base import Arm
from bandit_router.settings import MAX_ARMS as MAX_ARMS  # of one row or event, and a request's
from bandit_router.settings import ArmSpec

MAX_LINE_BYTES = 4 * 1024 * 1024  # far above any real row (the public sets' longest: 6 kB)
MAX_FEATURE_NUMBER = 1e15  # beyond it a number is an id or a mistake, and overflows scaling
MAX_FEATURE_KEY_CHARS = 64
MAX_FEATURE_VALUE_CHARS = 256


class LineError(ValueError):
    """A line that cannot be read at all (too long, not UTF-8); ``number`` is 1-based."""

    def __init__(self, number: int, problem: str) -> None:
        super().__init__(f"line {number}: {problem}")
        self.number = number
        self.problem = problem


def numbered_lines(f: IO[bytes]) -> Iterator[tuple[int, str | LineError]]:
    """Each line of ``f`` with its number, decoded; a line that is not UTF-8 comes as a
    ``LineError`` (the caller may skip it). A line over ``MAX_LINE_BYTES`` raises: the rest of it
    is never read, so a file without newlines cannot exhaust memory; so does a gzip file."""
    for number in itertools.count(1):
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise LineError(number, f"longer than {MAX_LINE_BYTES} bytes, the limit of a line")
        if number == 1 and raw.startswith(b"\x1f\x8b"):  # gzip's magic: every line would fail
            raise LineError(number, "gzip-compressed; decompress it first (gunzip -k FILE)")
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield number, LineError(number, f"not UTF-8 ({e.reason} at byte {e.start})")


# The most of a pipe copied to disk so that it can be read twice (see ``reopenable``).
MAX_PIPED_BYTES = 4 << 30


@contextmanager
def reopenable(name: str) -> Iterator[Path]:
    """``name`` (``-``: standard input) as a path that can be opened more than once. A pipe
    (``-``, ``/dev/stdin`` of a pipe, a FIFO) is copied to a temporary file first, at most
    ``MAX_PIPED_BYTES``: opened again, it would go on where the first reader's buffer stopped,
    rows lost without a word. Errors raised inside name ``name``, not the copy."""
    if name != "-":
        try:
            piped = stat.S_ISFIFO(Path(name).stat().st_mode)
        except OSError:
            piped = False  # opening it says why it cannot be read
        if not piped:
            yield Path(name)
            return
    with tempfile.TemporaryDirectory(prefix="bandit-router-") as folder:
        copy = Path(folder) / "input"
        with copy.open("wb") as out:
            if name == "-":
                _copy_bounded(sys.stdin.buffer, out, name)
            else:
                with open(name, "rb") as f:
                    _copy_bounded(f, out, name)
        try:
            yield copy
        except (ValueError, OSError) as e:
            e.args = tuple(a.replace(str(copy), name) if isinstance(a, str) else a for a in e.args)
            raise


def _copy_bounded(source: IO[bytes], out: IO[bytes], name: str) -> None:
    copied = 0
    while chunk := source.read(1 << 20):
        copied += len(chunk)
        if copied > MAX_PIPED_BYTES:
            raise ValueError(
                f"{name}: longer than {MAX_PIPED_BYTES} bytes, the most read from a pipe; "
                "write it to a file and give its name"
            )
        out.write(chunk)


def read_bounded(f: IO[bytes], what: str) -> str:
    """A whole small file (an arms file), at most ``MAX_LINE_BYTES``, as UTF-8 text."""
    raw = f.read(MAX_LINE_BYTES + 1)
    if len(raw) > MAX_LINE_BYTES:
        raise ValueError(f"{what} is longer than {MAX_LINE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} is not UTF-8 ({e.reason} at byte {e.start})") from None


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are unique (``json.loads``' ``object_pairs_hook``): it keeps the last
    of a repeated key, so a row naming an arm twice in ``outcomes`` would be replayed with one
    outcome, and a deployments file's table read with one of its two, silently."""
    table: dict[str, Any] = {}
    for key, value in pairs:
        if key in table:
            raise ValueError(f"the key {_show(key)} twice in one object")
        table[key] = value
    return table


def parse_json(text: str) -> Any:
    """``json.loads`` whose every failure is a ``ValueError`` saying what is wrong; an object
    with a repeated key is refused."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    except RecursionError:
        raise ValueError("not JSON this reader accepts (nested too deeply)") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise ValueError(f"not JSON this reader accepts ({e})") from None


def kind(value: Any) -> str:
    """The JSON name of ``value``'s type, for messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return names.get(type(value), "null" if value is None else "a number")


def _show(value: Any) -> str:
    """A value for a message: numbers as floats (``-5.0``, as before these checks), every value
    cut at 40 characters (a 400-digit integer)."""
    if type(value) is int and abs(value) < 1e300:
        value = float(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bound(value: float) -> str:
    value = float(value)  # an int has no is_integer before Python 3.12
    return f"{value:.0f}" if value.is_integer() and abs(value) < 1e9 else f"{value:g}"


def number(
    where: str, value: Any, low: float = -MAX_FEATURE_NUMBER, high: float = MAX_FEATURE_NUMBER
) -> float:
    """``value`` if a JSON number (not a string, not a boolean) in ``low..high``, as a float.

    The bounds are compared before any conversion, so a 400-digit integer is refused, not an
    OverflowError; NaN fails every comparison and is refused too."""
    if type(value) is not int and type(value) is not float:
        raise ValueError(f"{where} must be a number, got {kind(value)}")
    if not low <= value <= high:
        if low == -high:  # worded as the request contract words it
            raise ValueError(
                f"{where} must be a finite number of at most {high:g} in magnitude, "
                f"got {_show(value)}"
            )
        raise ValueError(f"{where} must be {_bound(low)}..{_bound(high)}, got {_show(value)}")
    return float(value)


def text(where: str, value: Any) -> str:
    """``value`` if a string that is valid Unicode (no lone surrogate from a ``\\ud800``)."""
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where} holds a lone surrogate (not valid Unicode)") from None
    return value


def table(where: str, value: Any) -> Mapping[str, Any]:
    """``value`` if a JSON object."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object, got {kind(value)}")
    return value


def feature_count(where: str, count: int, max_features: int | None) -> None:
    """At most ``max_features`` app facts (``BANDIT_MAX_FEATURES``), when given."""
    if max_features is not None and count > max_features:
        raise ValueError(
            f"{where} has {count} features; the limit is {max_features} (BANDIT_MAX_FEATURES)"
        )


def app_features(where: str, values: Mapping[str, Any], max_features: int | None) -> None:
    """Check app facts as the request contract checks ``features``: flat, keys of 1-64
    characters, strings of at most 256, bounded finite numbers, booleans; at most
    ``max_features`` of them (``BANDIT_MAX_FEATURES``), when given."""
    feature_count(where, len(values), max_features)
    for key, value in values.items():
        text(f"a {where} key", key)
        if not 1 <= len(key) <= MAX_FEATURE_KEY_CHARS:
            raise ValueError(f"{where} keys are 1-{MAX_FEATURE_KEY_CHARS} characters")
        if isinstance(value, str):
            text(f"{where}.{key}", value)
            if len(value) > MAX_FEATURE_VALUE_CHARS:
                raise ValueError(
                    f"{where}.{key} is {len(value)} characters; the limit is "
                    f"{MAX_FEATURE_VALUE_CHARS}"
                )
        elif not isinstance(value, bool):
            if type(value) is not int and type(value) is not float:
                raise ValueError(
                    f"{where}.{key} must be a string, number or boolean, got {kind(value)}"
                )
            number(f"{where}.{key}", value)


def arm(where: str, name: Any, params_b: Any = None, usd_per_mtok: Any = None) -> Arm:
    """An arm as a configured arm must be (``ArmSpec``: its name's characters, a positive size,
    a price of at least 0), checked now rather than when the snapshot is written."""
    text(f"{where} name", name)
    for field, value in (("params_b", params_b), ("usd_per_mtok", usd_per_mtok)):
        if value is not None:
            number(f"{where} {field}", value, 0.0, MAX_FEATURE_NUMBER)
    try:
        ArmSpec(name=name, params_b=params_b, usd_per_mtok=usd_per_mtok)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "?"
        raise ValueError(f"{where} {field} {_show(first['input'])}: {first['msg']}") from None
    return Arm(name, params_b, usd_per_mtok)  # as written: a 7 stays 7, as before these checks
