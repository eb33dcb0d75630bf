"""Backup: the model to and from a file, for backups and for moving between environments.

A snapshot file is JSON: the policy spec, the model version, the watermark (the newest logged
event the model has learned), the arms, the fingerprint of the word key the model learned under
(never the key itself), the policy's own bytes in base64 and their SHA-256. ``dump`` takes the
newest published snapshot plus every logged event after it, so the file holds what a fresh
service would serve. ``load`` checks the file, then publishes it as the newest snapshot while
holding the learner lease, so no running learner overwrites it meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from bandit_router import inputs
from bandit_router.features import WordKey, extract
from bandit_router.policies.base import Arm, Policy
from bandit_router.policies.baselines import BASELINES
from bandit_router.policies.registry import check_arms, load_policy, parse_policy_spec
from bandit_router.service.learner import effective_spec, load_model
from bandit_router.service.router import word_key
from bandit_router.settings import Settings
from bandit_router.store.records import MAX_INT64, Snapshot, is_stream_id, stream_id_key
from bandit_router.store.repository import Store

FORMAT = "bandit-router-snapshot"
FORMAT_VERSION = 1


class SnapshotFileError(ValueError):
    """The file is not a snapshot this version can restore; the message says why."""


@dataclass(frozen=True, slots=True)
class Restored:
    """What ``load`` did: the snapshot written and how its watermark was chosen."""

    snapshot: Snapshot
    same_log: bool  # the file's watermark is in this log: events after it are learned at start
    policy_override: bool  # the file's policy differs from the one in force: set as override
    # learned under this deployment's word key: its word features carry over (None: the file
    # does not say, as a model trained on an exported log)
    same_words: bool | None


def to_json(snapshot: Snapshot, settings: Settings, words: str | None) -> dict[str, Any]:
    """The file's document; ``words`` is the fingerprint of the word key, not the key (None:
    not known)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "policy": snapshot.policy,
        "model_version": snapshot.version,
        "stream_id": snapshot.stream_id,
        "arms": [a.model_dump() for a in settings.arms],
        "key_prefix": settings.key_prefix,
        "word_key": words,
        "created": time.time(),
        "sha256": hashlib.sha256(snapshot.data).hexdigest(),
        "data": base64.b64encode(snapshot.data).decode("ascii"),
    }


# What a trial choice asks of a restored model before it is published (see ``read``).
TRIAL_QUERIES = ("", "what is a cat", "def f(x): return x  # explain why the sky is blue")


def from_json(doc: dict[str, Any]) -> Snapshot:
    """The snapshot in a file's document; raises SnapshotFileError naming what is wrong.

    The checksum covers only the model's bytes, so every field of the header is checked as
    strictly as the service would need it: an edited header must not publish a model that then
    breaks every /choose (a version beyond 64 bits) or the learner (a stream id Redis refuses).
    """
    if doc.get("format") != FORMAT or type(doc.get("format_version")) is not int:
        raise SnapshotFileError(_not_a_file(doc))
    if doc["format_version"] != FORMAT_VERSION:
        raise SnapshotFileError(_not_a_file(doc))
    policy, version, stream_id = doc.get("policy"), doc.get("model_version"), doc.get("stream_id")
    if type(policy) is not str:
        raise SnapshotFileError(f"policy is not a policy spec: {_shown(policy)}")
    try:
        parse_policy_spec(policy)
    except ValueError as e:
        raise SnapshotFileError(f"policy: {e}") from None
    if type(version) is not int or not 0 <= version <= MAX_INT64:
        raise SnapshotFileError(f"model_version is not an integer in 0..2**63-1: {_shown(version)}")
    if type(stream_id) is not str or not is_stream_id(stream_id):
        raise SnapshotFileError(
            f"stream_id is not a Redis stream id <ms>-<seq> (each in 0..2**63-1): "
            f"{_shown(stream_id)}"
        )
    words, arms = doc.get("word_key"), doc.get("arms", [])
    if words is not None and type(words) is not str:
        raise SnapshotFileError(f"word_key is not a fingerprint (a string): {_shown(words)}")
    if not isinstance(arms, list) or not all(
        isinstance(a, dict) and type(a.get("name")) is str for a in arms
    ):
        raise SnapshotFileError(f"arms is not a list of arms (objects with a name): {_shown(arms)}")
    for i, a in enumerate(arms):  # as BANDIT_ARMS takes them: `restore` prints their names
        try:
            inputs.arm(f"arms[{i}]", a["name"], a.get("params_b"), a.get("usd_per_mtok"))
        except ValueError as e:
            raise SnapshotFileError(str(e)) from None
    if type(doc.get("data")) is not str or type(doc.get("sha256")) is not str:
        raise SnapshotFileError("data or sha256 is missing or not a string")
    try:
        data = base64.b64decode(doc["data"], validate=True)
    except ValueError as e:
        raise SnapshotFileError(f"data is not base64: {e}") from e
    if hashlib.sha256(data).hexdigest() != doc["sha256"]:
        raise SnapshotFileError("the model bytes do not match the file's sha256: file damaged")
    return Snapshot(policy, version, stream_id, data)


def _not_a_file(doc: dict[str, Any]) -> str:
    return (
        f"not a {FORMAT} file of version {FORMAT_VERSION} "
        f"(format={_shown(doc.get('format'))}, format_version={_shown(doc.get('format_version'))})"
    )


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


async def dump(
    store: Store,
    settings: Settings,
    path: Path,
    progress: Callable[[int], None] | None = None,
    deployment: str | None = None,
) -> dict[str, Any]:
    """Write the current model (newest snapshot + the log after it) to ``path``; returns the
    document written, without its data. ``progress`` hears the count of events replayed;
    ``deployment`` names the deployment in what the log says."""
    model = await load_model(store, settings, progress=progress, deployment=deployment)
    # Read, never made: a mistyped prefix would become a deployment, and a Redis that refuses
    # writes could not be read. With no secret there are no word features to name a key for.
    secret = settings.hash_key or await store.stored_word_secret()
    doc = to_json(model.snapshot(), settings, WordKey(secret).fingerprint if secret else None)
    write_file(path, doc)
    return {k: v for k, v in doc.items() if k != "data"}


def write_file(path: Path, doc: dict[str, Any]) -> None:
    """Write a snapshot file whole (see ``replacing``)."""
    with replacing(path) as f:
        f.write(json.dumps(doc))


@contextmanager
def replacing(path: Path) -> Iterator[TextIO]:
    """A text file to write ``path`` through, put in its place only once the block ends: a
    reader never sees half a file, and a write that fails (a full disk, Redis gone, a kill)
    leaves the previous file as it was and no temporary file behind (a kill leaves its
    temporary, ``.NAME.*.tmp``). A link is written through, not replaced; a path that is no
    regular file (a device, a pipe: /dev/null, /dev/stdout) is written to as it is."""
    if path.exists() and not path.is_file():  # through its links: /dev/stdout is a pipe's
        with path.open("w", encoding="utf-8") as f:
            yield f
        return
    target = Path(os.path.realpath(path))
    # A name of its own (two writers of one file do not share it), made here: never a link.
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # as open() makes, umask on
    try:
        with contextlib.suppress(FileNotFoundError):  # a file made private stays so
            os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))
        with open(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before it takes the name
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class SnapshotFile(NamedTuple):
    snapshot: Snapshot
    words: str | None  # the fingerprint of the word key it learned under (None: not said)
    arms: list[str]  # the names of the arms it learned (none said: empty)
    prefix: str | None = None  # the key prefix of the deployment it was written from


# A model is one Redis string, 512 MiB at most: in base64 with its header, a file under this.
MAX_FILE_BYTES = 1 << 30


def _bounded_text(path: Path) -> str:
    """The file's text, refused past ``MAX_FILE_BYTES``: a regular file by its size before it is
    read, a stream (a pipe, /dev/zero) once it has given that much."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw = b"" if size > MAX_FILE_BYTES else f.read(MAX_FILE_BYTES + 1)
    if max(size, len(raw)) > MAX_FILE_BYTES:
        raise ValueError(f"longer than {MAX_FILE_BYTES} bytes, the most a snapshot takes")
    return raw.decode("utf-8")


def read(path: Path, settings: Settings) -> SnapshotFile:
    """Read and check a snapshot file: its format, checksum, and that its policy loads."""
    try:
        doc = json.loads(_bounded_text(path))
    except UnicodeDecodeError as e:  # a file given by mistake
        raise SnapshotFileError(f"{path} is not a snapshot file (not UTF-8 text: {e})") from e
    except json.JSONDecodeError as e:
        raise SnapshotFileError(f"{path} is not a snapshot file (not JSON: {e})") from e
    except (OSError, ValueError) as e:  # ValueError: an int too long, a file too large
        raise SnapshotFileError(f"cannot read {path}: {e}") from e
    except RecursionError:
        raise SnapshotFileError(f"cannot read {path}: JSON nested too deep") from None
    if not isinstance(doc, dict):
        raise SnapshotFileError(f"{path} is not a JSON object")
    snapshot = from_json(doc)
    spec = parse_policy_spec(snapshot.policy)
    if spec.name in BASELINES and snapshot.data:  # it would be served as the baseline
        raise SnapshotFileError(f"policy: {spec.name} keeps no model, but the file holds one")
    try:
        check_arms(spec, settings)
    except ValueError as e:
        raise SnapshotFileError(f"policy: {e}") from None
    try:
        policy = load_policy(spec, snapshot.data, settings, settings.seed)
    except ValueError as e:
        raise SnapshotFileError(f"the model in {path} does not load: {e}") from e
    _try_choices(policy, settings, path)
    words = doc.get("word_key")
    arms = [a["name"] for a in doc.get("arms", [])]  # checked by from_json
    prefix = doc.get("key_prefix")
    return SnapshotFile(
        snapshot,
        words if isinstance(words, str) else None,
        arms,
        prefix if isinstance(prefix, str) else None,
    )


def _try_choices(policy: Policy, settings: Settings, path: Path) -> None:
    """Choose among the deployment's arms for a few queries: a model that loads but cannot
    choose (a NaN in its state) would answer every /choose with an error once published."""
    arms = [Arm.from_spec(a) for a in settings.arms]
    for query in TRIAL_QUERIES:
        try:
            decision = policy.choose(extract(query), arms)
        except Exception as e:  # anything: the model is the file's, not ours
            raise SnapshotFileError(
                f"the model in {path} loads but cannot choose: {type(e).__name__}: {e}"
            ) from e
        p = list(decision.probabilities.values())
        if not all(math.isfinite(v) and 0 <= v <= 1 for v in p) or abs(sum(p) - 1) > 1e-6:
            raise SnapshotFileError(
                f"the model in {path} loads but its choice's probabilities are not a "
                f"distribution: {decision.probabilities}"
            )


async def _in_log(store: Store, stream_id: str, ours: bool, other: bool) -> bool:
    """Whether the watermark is in this log: its entry is there, or the file is a backup of this
    deployment (``ours``) and the log was trimmed past it (``BANDIT_STREAM_MAXLEN``), so what
    the log holds after it is learned, as the service learns it after its own snapshot. A file
    from another deployment (``other``: another key prefix or word key) is from another log
    whatever entry the watermark names: logs written in the same millisecond share ids."""
    if stream_id == "0-0":
        return await store.last_stream_id() == "0-0"
    if other:
        return False
    if await store.logged(stream_id):
        return True
    first = await store.first_stream_id()
    return ours and first != "0-0" and stream_id_key(stream_id) < stream_id_key(first)


async def load(
    store: Store,
    settings: Settings,
    snapshot: Snapshot,
    words: str | None = None,
    prefix: str | None = None,
) -> Restored:
    """Publish ``snapshot`` as the newest model (the caller holds the learner lease).

    In the log it came from, its watermark stays, so the events logged after it are learned at
    the next start. From another environment, the watermark becomes the end of this log: the
    model is served as it is and learns from the next event on. ``words``, the fingerprint of
    the word key the model learned under, is compared with this deployment's: under another
    key, the words of a query hash to other features, so word features are learned afresh.
    ``prefix``, the key prefix the file was written under, tells with ``words`` a backup of this
    deployment, whose watermark the log may have been trimmed past.
    """
    here = (await word_key(settings, store)).fingerprint
    ours = words == here and prefix == settings.key_prefix
    other = (prefix is not None and prefix != settings.key_prefix) or (
        words is not None and words != here
    )
    same_log = await _in_log(store, snapshot.stream_id, ours, other)
    if not same_log:
        snapshot = Snapshot(
            snapshot.policy, snapshot.version, await store.last_stream_id(), snapshot.data
        )
    # Set as an admin's switch with the model, in its transaction: else the service would
    # relearn the policy in force from the log instead (and a refused publish would leave it).
    override = parse_policy_spec(snapshot.policy) != await effective_spec(store, settings)
    same_words = None if words is None else words == here
    await store.publish(snapshot, [], override=snapshot.policy if override else None)
    return Restored(snapshot, same_log, override, same_words)
