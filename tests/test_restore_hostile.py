"""`bandit-router restore` on damaged or edited snapshot files: refused with a message naming
the field, exit 1, nothing published; and the same checks where the service loads a snapshot
from Redis at start. Each hostile file is a real snapshot (real Redis, real VW) edited, its
sha256 recomputed where its model bytes change."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bandit_router.cli.main import main
from bandit_router.features import extract
from bandit_router.policies.base import Arm
from bandit_router.policies.linucb import LinUCB
from bandit_router.policies.registry import load_policy
from bandit_router.policies.vw import VWPolicy, adf_example
from bandit_router.settings import Settings
from bandit_router.store.records import Snapshot
from bandit_router.store.repository import open_store
from tests.conftest import (
    COMMAND_QUERIES,
    ClientFactory,
    SettingsFactory,
    rewarded_traffic,
    use_settings,
)

VW_MAGIC = b"bandit-router vw 1\n"

Restore = Callable[[Path], tuple[int, str]]


async def _published(settings: Settings) -> Snapshot | None:
    async with open_store(settings) as store:
        return await store.load_snapshot()


@pytest.fixture
def snapshot_of(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Callable[[str], dict[str, Any]]:
    """A real snapshot file's document, of a model of ``policy`` that learned 20 rewards."""

    def take(policy: str) -> dict[str, Any]:
        source = make_settings(policy=policy)
        rewarded_traffic(make_client(source), 20)
        use_settings(monkeypatch, source)
        file = tmp_path / f"{policy}.json"
        assert main(["snapshot", str(file)]) == 0
        doc: dict[str, Any] = json.loads(file.read_text())
        return doc

    return take


@pytest.fixture
def restore(
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Restore:
    """Restore a file into a fresh deployment; its exit code and stderr. A refusal is checked
    to have published nothing."""

    def run(file: Path) -> tuple[int, str]:
        target = make_settings()
        use_settings(monkeypatch, target)
        capsys.readouterr()
        code = main(["restore", str(file)])
        err = capsys.readouterr().err
        if code != 0:
            assert asyncio.run(_published(target)) is None
            assert "Traceback" not in err
        return code, err

    return run


def _write(path: Path, doc: dict[str, Any], data: bytes | None = None) -> Path:
    """``doc`` to ``path``; with ``data``, as its model bytes, sha256 recomputed."""
    if data is not None:
        doc = {**doc, "data": base64.b64encode(data).decode(), "sha256": _sha(data)}
    path.write_text(json.dumps(doc))
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _vw_parts(doc: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    data = base64.b64decode(doc["data"])
    header, _, models = data[len(VW_MAGIC) :].partition(b"\n")
    state: dict[str, Any] = json.loads(header)
    return state, models


def _vw_data(header: bytes, models: bytes) -> bytes:
    return VW_MAGIC + header + b"\n" + models


# 1, 5: the file's header -----------------------------------------------------------------

HEADER_EDITS: list[tuple[str, str, str]] = [
    # (field, its JSON text in the file, what the message names)
    ("model_version", "1000000000000000000000000000000", "model_version"),
    ("model_version", "Infinity", "model_version"),
    ("model_version", "1e400", "model_version"),
    ("model_version", "3.7", "model_version"),
    ("model_version", "-5", "model_version"),
    ("model_version", "true", "model_version"),
    ("stream_id", '"garbage"', "stream_id"),
    ("stream_id", '"-5-3"', "stream_id"),
    ("stream_id", '"99999999999999999999999-0"', "stream_id"),
    ("stream_id", '"9223372036854775808-0"', "stream_id"),
    ("stream_id", "5", "stream_id"),
    ("format_version", "true", "format_version"),
    ("format_version", '"1"', "format_version"),
    ("format_version", "99", "not a bandit-router-snapshot file of version 1"),
    ("arms", '[{"name": "4b", "params_b": -1}]', "arms[0] params_b must be"),
    ("arms", '[{"name": "4b"}, {"name": "a b"}]', "arms[1] name"),
    ("data", '"not base64!"', "data is not base64"),
    ("data", "5", "data or sha256 is missing or not a string"),
    ("word_key", "5", "word_key"),
    ("arms", '"junk"', "arms"),
    ("arms", "[1]", "arms"),
    ("policy", '"nope"', "policy"),
    ("policy", "5", "policy"),
    ("policy", '"squarecb:gamma_scale=nan"', "policy"),
]


def test_a_fixed_policy_of_an_arm_the_deployment_lacks_is_refused(
    snapshot_of: Callable[[str], dict[str, Any]], restore: Restore, tmp_path: Path
) -> None:
    doc = snapshot_of("fixed:arm=7b")
    assert restore(_write(tmp_path / "ok.json", doc))[0] == 0
    code, err = restore(_write(tmp_path / "gone.json", {**doc, "policy": "fixed:arm=70b"}))
    assert code == 1 and "policy: policy fixed: arm '70b' is not an arm" in err, err


@pytest.mark.parametrize(("field", "text", "named"), HEADER_EDITS)
def test_an_edited_header_is_refused_naming_the_field(
    snapshot_of: Callable[[str], dict[str, Any]],
    restore: Restore,
    tmp_path: Path,
    field: str,
    text: str,
    named: str,
) -> None:
    doc = snapshot_of("egreedy")
    raw = json.dumps({**doc, field: "@@"}).replace('"@@"', text)
    file = tmp_path / "edited.json"
    file.write_text(raw)
    code, err = restore(file)
    assert code == 1
    assert named in err


def test_a_policy_over_another_explorers_model_is_refused(
    snapshot_of: Callable[[str], dict[str, Any]], restore: Restore, tmp_path: Path
) -> None:
    doc = snapshot_of("squarecb")
    code, err = restore(_write(tmp_path / "egreedy.json", {**doc, "policy": "egreedy"}))
    assert code == 1
    assert "squarecb policy, not egreedy" in err
    code, err = restore(_write(tmp_path / "random.json", {**doc, "policy": "random"}))
    assert code == 1
    assert "random keeps no model" in err
    code, err = restore(_write(tmp_path / "linucb.json", {**doc, "policy": "linucb"}))
    assert code == 1
    assert "not a saved LinUCB model" in err


def test_a_fine_file_still_restores_and_serves(
    snapshot_of: Callable[[str], dict[str, Any]],
    restore: Restore,
    make_client: ClientFactory,
    tmp_path: Path,
) -> None:
    for policy in ("squarecb", "linucb", "ts"):
        code, err = restore(_write(tmp_path / f"{policy}.json", snapshot_of(policy)))
        assert (code, err) == (0, "")


# 2, 4: a VW model's state header ---------------------------------------------------------

VW_STATE_EDITS: list[tuple[str, str]] = [
    # (the header's JSON text, what the message names); {} is the real header
    ('{"learned": -100}', "learned"),
    ('{"learned": 1e400}', "learned"),
    ('{"learned": 2.5}', "learned"),
    ('{"baseline": NaN}', "baseline"),
    ('{"baseline": Infinity}', "baseline"),
    ('{"baseline": "nan"}', "baseline"),
    ('{"baseline": 7}', "baseline"),
    ('{"baseline": null}', "baseline"),
    ('{"arms": [1]}', "arm statistics"),
    ('{"arms": "counts"}', "arm statistics are not an object"),
    ('{"arms": {"counts": {}}}', "sums is missing"),
    ('{"arms": {"sums": {"a": NaN}, "counts": {"a": 1}, "t": 1}}', "sums"),
    ('{"arms": {"sums": {"a": 5}, "counts": {"a": 1}, "t": 1}}', "cannot sum"),
    ('{"arms": {"sums": {"a": 1}, "counts": {"b": 1}, "t": 1}}', "different arms"),
    ('{"arms": {"sums": {}, "counts": {}, "t": -1}}', "t is not a count"),
    ('{"errors": [NaN, 0]}', "errors"),
]


@pytest.mark.parametrize(("edit", "named"), VW_STATE_EDITS)
def test_a_vw_state_that_cannot_choose_is_refused(
    snapshot_of: Callable[[str], dict[str, Any]],
    restore: Restore,
    tmp_path: Path,
    edit: str,
    named: str,
) -> None:
    doc = snapshot_of("squarecb")
    state, models = _vw_parts(doc)
    header = json.dumps(state)[:-1] + ", " + edit[1:]  # the edit's key comes last: it wins
    code, err = restore(_write(tmp_path / "vw.json", doc, _vw_data(header.encode(), models)))
    assert code == 1
    assert named in err


@pytest.mark.parametrize(
    ("header", "named"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b'{"learned": 3}', "baseline"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ],
)
def test_a_vw_header_of_another_shape_is_refused(
    snapshot_of: Callable[[str], dict[str, Any]],
    restore: Restore,
    tmp_path: Path,
    header: bytes,
    named: str,
) -> None:
    doc = snapshot_of("egreedy")
    _, models = _vw_parts(doc)
    code, err = restore(_write(tmp_path / "vw.json", doc, _vw_data(header, models)))
    assert code == 1
    assert named in err


def test_the_service_does_not_serve_a_hostile_snapshot_from_redis(
    snapshot_of: Callable[[str], dict[str, Any]],
    make_settings: SettingsFactory,
    make_client: ClientFactory,
) -> None:
    """Published to Redis by hand (not through restore), a VW state that cannot choose is
    refused by the loader at start: the service learns from the (empty) log instead."""
    doc = snapshot_of("squarecb")
    state, models = _vw_parts(doc)
    data = _vw_data(json.dumps({**state, "learned": -100}).encode(), models)
    settings = make_settings(policy="squarecb")

    async def publish() -> None:
        async with open_store(settings) as store:
            await store.publish(Snapshot("squarecb", 5, "0-0", data), [])

    asyncio.run(publish())
    client = make_client(settings)
    assert client.get("/healthz").json()["model_version"] == 0  # a fresh model, not version 5
    for query in COMMAND_QUERIES:
        assert client.post("/choose", json={"query": query}).status_code == 200


# 2, 3, 4: LinUCB's arrays ----------------------------------------------------------------


def _npz(arrays: dict[str, Any], compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _npz_written(
    arrays: dict[str, Any], version: tuple[int, int] = (1, 0), tail: bytes = b""
) -> bytes:
    """The npz of ``arrays``, each in .npy format ``version``, ``tail`` after ``b``'s data."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, array, version=version)
                if name == "b":
                    f.write(tail)
    return buf.getvalue()


def _linucb_arrays(doc: dict[str, Any]) -> dict[str, Any]:
    with np.load(io.BytesIO(base64.b64decode(doc["data"]))) as saved:
        return {k: saved[k] for k in saved.files}


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("a_inv nan", "a_inv"),
        ("a_inv big", "a_inv"),
        ("b inf", "b is not finite"),
        ("alpha nan", "alpha"),
        ("alpha -50", "alpha"),
        ("dim 3", "dim"),
        ("dim 64.5", "config"),
        ("no b", "has no b"),
        ("b shape", "b is float64 of shape"),
        ("a_inv int", "a_inv is int64"),
        ("names twice", "twice"),
        ("compressed", "compressed"),
        ("config int", "config is not [alpha, dim]"),
        ("names 2-d", "names are not a list"),
        ("names numbers", "names are not strings"),
        ("b fortran", "b is not the array its header says"),
        ("b longer", "b is not the array its header says"),
        ("policy dim", "saved LinUCB model has dim 64, settings ask for 32"),
    ],
)
def test_linucb_arrays_that_cannot_choose_are_refused(
    snapshot_of: Callable[[str], dict[str, Any]],
    restore: Restore,
    tmp_path: Path,
    edit: str,
    named: str,
) -> None:
    doc = snapshot_of("linucb")
    arrays = _linucb_arrays(doc)
    n, dim = len(arrays["names"]), int(arrays["config"][1])
    compressed = False
    match edit:
        case "a_inv nan":
            arrays["a_inv"] = np.full_like(arrays["a_inv"], np.nan)
        case "a_inv big":
            arrays["a_inv"] = arrays["a_inv"] * 1e200
        case "b inf":
            arrays["b"] = np.full_like(arrays["b"], np.inf)
        case "alpha nan":
            arrays["config"] = np.array([np.nan, dim])
        case "alpha -50":
            arrays["config"] = np.array([-50.0, dim])
        case "dim 3":
            arrays["config"] = np.array([0.5, 3.0])
        case "dim 64.5":
            arrays["config"] = np.array([0.5, 64.5])
        case "no b":
            del arrays["b"]
        case "b shape":
            arrays["b"] = np.zeros((n + 1, dim))
        case "a_inv int":
            arrays["a_inv"] = arrays["a_inv"].astype(np.int64)
        case "names twice":
            arrays["names"] = np.array([arrays["names"][0]] * n)
        case "compressed":
            compressed = True
        case "config int":
            arrays["config"] = np.array([1, dim])
        case "names 2-d":
            arrays["names"] = arrays["names"].reshape(1, n)
        case "names numbers":
            arrays["names"] = np.arange(n)
        case "b fortran":
            arrays["b"] = np.asfortranarray(arrays["b"])
        case "policy dim":
            doc = {**doc, "policy": "linucb:dim=32"}
    data = _npz(arrays, compressed)
    if edit == "b longer":  # b's header as written, one more value after its data
        data = _npz_written(arrays, tail=bytes(8))
    code, err = restore(_write(tmp_path / "linucb.json", doc, data))
    assert code == 1
    assert named in err


def test_linucb_arrays_in_npy_format_2_restore(
    snapshot_of: Callable[[str], dict[str, Any]], restore: Restore, tmp_path: Path
) -> None:
    """numpy writes format 2.0 where a header outgrows 1.0's, and reads it as it reads 1.0."""
    doc = snapshot_of("linucb")
    data = _npz_written(_linucb_arrays(doc), version=(2, 0))
    assert restore(_write(tmp_path / "linucb.json", doc, data)) == (0, "")


def _bomb(arrays: dict[str, Any], size: int) -> bytes:
    """The npz of ``arrays`` with ``a_inv`` replaced by ``size`` zero bytes, deflated: a few
    hundred KB that expand to ``size``. Written a chunk at a time, never held whole."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, array in arrays.items():
            if name != "a_inv":
                with zf.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, array)
        info = zipfile.ZipInfo("a_inv.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (size,)}
            )
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
    return buf.getvalue()


def test_a_zip_bomb_is_refused_before_it_is_read(
    snapshot_of: Callable[[str], dict[str, Any]], restore: Restore, tmp_path: Path
) -> None:
    arrays = _linucb_arrays(snapshot_of("linucb"))
    data = _bomb(arrays, 256 << 20)
    assert len(data) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="a_inv"):
            LinUCB.loads(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # nothing of its 256 MB decompressed
    doc = snapshot_of("linucb")
    started = time.monotonic()
    code, err = restore(_write(tmp_path / "bomb.json", doc, data))
    assert code == 1
    assert "a_inv" in err
    assert time.monotonic() - started < 10


def test_the_service_does_not_serve_nan_linucb_arrays_from_redis(
    snapshot_of: Callable[[str], dict[str, Any]],
    make_settings: SettingsFactory,
    make_client: ClientFactory,
) -> None:
    """NaN arrays published to Redis by hand: refused at start, not served (NaN scores)."""
    arrays = _linucb_arrays(snapshot_of("linucb"))
    arrays["a_inv"] = np.full_like(arrays["a_inv"], np.nan)
    settings = make_settings(policy="linucb")

    async def publish() -> None:
        async with open_store(settings) as store:
            await store.publish(Snapshot("linucb", 5, "0-0", _npz(arrays)), [])

    asyncio.run(publish())
    client = make_client(settings)
    assert client.get("/healthz").json()["model_version"] == 0  # a fresh model, not version 5
    for query in COMMAND_QUERIES:
        assert client.post("/choose", json={"query": query}).status_code == 200


# 3: a model that loads but cannot choose --------------------------------------------------


def test_a_model_that_loads_but_cannot_choose_is_refused_by_the_trial_choice(
    snapshot_of: Callable[[str], dict[str, Any]], restore: Restore, tmp_path: Path
) -> None:
    """Its header and VW's own format are sound, so the loader takes it, but its weights are NaN
    (VW taught an infinite cost): only a choice shows it, and every /choose would fail."""
    doc = snapshot_of("squarecb")
    policy = load_policy("squarecb", base64.b64decode(doc["data"]), seed=7)
    assert isinstance(policy, VWPolicy)
    arms = [Arm("4b"), Arm("7b"), Arm("14b")]
    poison = "\n".join(adf_example(extract("what is a cat"), arms, 0, float("inf"), 0.5))
    for vw in policy.regressors:
        vw.learn(poison)
    data = policy.dumps()
    loaded = load_policy("squarecb", data, seed=7)  # the loader's checks pass
    with pytest.raises(ValueError, match="probabilities must be finite"):
        loaded.choose(extract(COMMAND_QUERIES[0]), arms)
    code, err = restore(_write(tmp_path / "nan.json", doc, data))
    assert code == 1
    assert "loads but cannot choose" in err


# 4: files that are not snapshots, and snapshot's own file --------------------------------


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("# bandit-router\n", "snapshot file (not JSON"),
        (b"\xff\xfe{}", "snapshot file (not UTF-8 text"),
        ('["bandit-router-snapshot"]', "JSON object"),
    ],
)
def test_a_file_that_is_no_snapshot_is_called_so(
    restore: Restore, tmp_path: Path, content: str | bytes, why: str
) -> None:
    """A file given by mistake (a README, a binary): named not a snapshot file, and why, rather
    than the JSON parser's 'Expecting value: line 1 column 1'."""
    file = tmp_path / "README.md"
    if isinstance(content, bytes):
        file.write_bytes(content)
    else:
        file.write_text(content)
    code, err = restore(file)
    assert code == 1
    assert f"{file} is not a {why}" in err, err


def test_json_nested_too_deep_is_refused(restore: Restore, tmp_path: Path) -> None:
    file = tmp_path / "deep.json"
    file.write_text("[" * 100_000 + "]" * 100_000)
    code, err = restore(file)
    assert code == 1
    assert "nested too deep" in err


def test_an_arm_level_state_of_another_shape_is_refused(
    snapshot_of: Callable[[str], dict[str, Any]], restore: Restore, tmp_path: Path
) -> None:
    doc = snapshot_of("ts")
    magic = b"bandit-router arm-level 1\n"
    for body, named in [
        (b"[1]", "not a JSON object"),
        (b'{"kind": "ts", "counts": {}}', "sums is missing"),
        (b'{"kind": "ts", "sums": {"a": 3}, "counts": {"a": 1}, "t": 1}', "cannot sum"),
    ]:
        code, err = restore(_write(tmp_path / "ts.json", doc, magic + body))
        assert code == 1
        assert named in err


def test_snapshot_into_a_missing_directory_says_so(
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, make_settings())
    assert main(["snapshot", "/nonexistent/x.json"]) == 1
    err = capsys.readouterr().err
    assert "no directory /nonexistent" in err
    assert "Traceback" not in err
