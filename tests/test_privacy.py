"""Privacy of the query text: words are hashed under a per-deployment secret kept in Redis."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import secrets
import stat
import zlib
from collections.abc import Iterable
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from bandit_router.cli.main import main
from bandit_router.features import PUBLIC_WORDS, WordKey, extract
from bandit_router.offline.export import export_events
from bandit_router.policies.base import Arm
from bandit_router.service.journal import Journal
from bandit_router.service.router import Router
from bandit_router.settings import Settings
from bandit_router.store.embedded import EmbeddedRedis
from bandit_router.store.keys import KEY_DECISION, KEY_WORD_SECRET
from bandit_router.store.records import dumps
from bandit_router.store.repository import Store
from bandit_router.store.transport import connect
from tests.conftest import ClientFactory, SettingsFactory, use_settings

SLICE = Path(__file__).resolve().parents[1] / "examples" / "mmlu_pro_llama2_slice.jsonl"
ALL = [json.loads(line)["query"] for line in SLICE.read_text().splitlines()]
QUERIES = ALL[:40]


def _words(query: str) -> set[str]:
    return set(re.findall(r"[^\W_]+", query.lower()))


# The attacker's dictionary: every word of the slice, so it holds every word the test sends.
DICTIONARY = sorted(set().union(*map(_words, ALL)))


def _store(settings: Settings) -> Store:
    return Store(connect(settings.redis_url or ""), settings.key_prefix, 60, 10_000)


def _attack(hashes: Iterable[int]) -> set[str]:
    """Words recovered by hashing the dictionary as the old code did (CRC-32), unkeyed BLAKE2b,
    and with the public replay key; a stored hash that matches one gives its word away."""
    table: dict[int, str] = {}
    for word in DICTIONARY:
        raw = word.encode()
        table[zlib.crc32(raw)] = word
        table[int.from_bytes(hashlib.blake2b(raw, digest_size=4).digest(), "little")] = word
        table[PUBLIC_WORDS.hash(raw)] = word
    return {table[h] for h in hashes if h in table}


def _traffic(client: TestClient) -> list[str]:
    ids = []
    for query in QUERIES:
        d = client.post("/choose", json={"query": query, "features": {"team": "a"}}).json()
        assert client.post("/reward", json={"event_id": d["event_id"], "reward": 0.5}).is_success
        ids.append(d["event_id"])
    return ids


async def _decision_tokens(store: Store, event_id: str) -> list[int]:
    """The hashed words of a decision as Redis holds it."""
    raw = await store.redis.get(store.key(KEY_DECISION, event_id))
    assert isinstance(raw, bytes)
    tokens: list[int] = json.loads(raw)["features"]["t"]
    return tokens


def _secret(settings: Settings) -> str:
    client = redis.Redis.from_url(settings.redis_url or "")
    raw = client.get(KEY_WORD_SECRET.format(p="{" + settings.key_prefix + "}"))
    client.close()
    assert isinstance(raw, bytes) and len(raw) == 64  # 32 random bytes, hex
    return raw.decode()


def test_the_attack_recovers_words_hashed_the_old_way() -> None:
    """The attack itself works: on CRC-32 tokens it gets back every word of the query."""
    words = _words(QUERIES[0])
    assert _attack(zlib.crc32(w.encode()) for w in words) == words


def test_a_dictionary_attack_on_the_export_and_redis_recovers_no_word(
    make_settings: SettingsFactory, make_client: ClientFactory
) -> None:
    settings = make_settings(policy="egreedy")
    client = make_client(settings)
    ids = _traffic(client)
    out = io.StringIO()

    async def export() -> list[list[int]]:
        store = _store(settings)
        await export_events(store, out, [Arm.from_spec(a) for a in settings.arms])
        stored = [await _decision_tokens(store, i) for i in ids]
        await store.close()
        return stored

    in_redis = asyncio.run(export())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == len(QUERIES)
    exported = [[int(t) for t in line["c"]["W"]] for line in lines]
    assert sum(map(len, exported)) > 1000  # words were logged, as hashes
    assert exported == in_redis
    assert all(tokens == sorted(tokens) for tokens in exported)  # a set: no word order
    # Of 1,500 keyed 32-bit tokens, one matches some word of the dictionary's 12,000 hashes by
    # chance about once in 200 runs: a word counts as recovered when it is in its own query.
    leaked = [
        _attack(tokens) & _words(query) for tokens, query in zip(exported, QUERIES, strict=True)
    ]
    assert set().union(*leaked) == set()
    assert _secret(settings) not in out.getvalue()
    # Whoever reads Redis reads the secret, and with it the same attack works.
    stolen = WordKey(_secret(settings))
    table = {stolen.hash(w.encode()): w for w in DICTIONARY}
    assert {table[t] for t in exported[0]} == _words(QUERIES[0])


def test_whoever_can_also_send_queries_recovers_the_words_from_an_export(
    make_settings: SettingsFactory, make_client: ClientFactory
) -> None:
    """A word hashes alike in every decision: an app's user (or API client) who sends the
    dictionary through /choose finds each word's hash in the export, without the secret, and
    with them the words of every other decision. 8 queries a chunk of 128 words: the chunk, and
    for each bit of a word's index in it, the words whose index has that bit set."""
    settings = make_settings(policy="egreedy")
    client = make_client(settings)

    def sent(query: str) -> str:
        event_id: str = client.post("/choose", json={"query": query}).json()["event_id"]
        assert client.post("/reward", json={"event_id": event_id, "reward": 0.5}).is_success
        return event_id

    victim = sent(QUERIES[0])
    chunks = [DICTIONARY[i : i + 128] for i in range(0, len(DICTIONARY), 128)]
    probes = []  # each chunk's event, and its events by bit
    for chunk in chunks:
        bits = [[w for i, w in enumerate(chunk) if i >> b & 1] for b in range(7)]
        probes.append((sent(" ".join(chunk)), [sent(" ".join(ws)) if ws else "" for ws in bits]))
    out = io.StringIO()

    async def export() -> None:
        store = _store(settings)
        await export_events(store, out, [Arm.from_spec(a) for a in settings.arms])
        await store.close()

    asyncio.run(export())
    hashes = {
        line["EventId"]: {int(t) for t in line["c"]["W"]}
        for line in map(json.loads, out.getvalue().splitlines())
    }
    table: dict[int, str] = {}
    for chunk, (whole, by_bit) in zip(chunks, probes, strict=True):
        for h in hashes[whole]:
            table[h] = chunk[sum(1 << b for b, e in enumerate(by_bit) if e and h in hashes[e])]
    assert {table[h] for h in hashes[victim]} == _words(QUERIES[0])


def test_the_secret_is_created_once_and_shared_by_the_deployment(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    other = make_settings()  # another deployment: another prefix on the same Redis

    async def scenario() -> None:
        first = await Router.open(settings, _store(settings))
        second = await Router.open(settings, _store(settings))
        elsewhere = await Router.open(other, _store(other))
        assert first.words.fingerprint == second.words.fingerprint
        assert first.words.fingerprint != elsewhere.words.fingerprint
        query = QUERIES[3]
        a = (await first.choose(query)).event_id
        b = (await second.choose(query)).event_id
        c = (await elsewhere.choose(query)).event_id
        got = [
            await _decision_tokens(r.store, e) for r, e in ((first, a), (second, b), (elsewhere, c))
        ]
        assert got[0] == got[1]  # same query, same features, whichever process
        assert not set(got[0]) & set(got[2])  # another deployment: other hashes
        assert got[0] != list(extract(query).tokens)  # and not the public replay key's
        for router in (first, second, elsewhere):
            await router.store.close()

    asyncio.run(scenario())
    assert _secret(settings) != _secret(other)


def test_bandit_hash_key_replaces_the_redis_secret(make_settings: SettingsFactory) -> None:
    settings = make_settings(hash_key="a secret set by the operator")

    async def scenario() -> list[int]:
        router = await Router.open(settings, _store(settings))
        event_id = (await router.choose(QUERIES[0])).event_id
        tokens = await _decision_tokens(router.store, event_id)
        assert await router.store.redis.get(router.store.key(KEY_WORD_SECRET)) is None
        await router.store.close()
        return tokens

    want = extract(QUERIES[0], None, WordKey("a secret set by the operator")).tokens
    assert asyncio.run(scenario()) == list(want)


def test_the_secret_is_not_in_a_snapshot_file_stats_or_config(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(policy="linucb")
    client = make_client(settings)
    _traffic(client)
    secret = _secret(settings)
    stats = client.get("/stats").text
    use_settings(monkeypatch, settings)
    file = tmp_path / "model.json"
    assert main(["snapshot", str(file)]) == 0
    doc = json.loads(file.read_text())
    assert doc["word_key"] == WordKey(secret).fingerprint
    monkeypatch.setenv("BANDIT_HASH_KEY", "the operator's own secret")
    assert main(["config"]) == 0
    shown = capsys.readouterr().out
    assert "the operator's own secret" not in shown and "BANDIT_HASH_KEY" in shown
    for text in (file.read_text(), stats):
        assert secret not in text and secret.upper() not in text


def test_restore_says_when_word_features_do_not_carry_over(
    make_settings: SettingsFactory,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    notice = "learned its word features under another word key"
    source = make_settings()
    client = make_client(source)
    _traffic(client)
    file = tmp_path / "model.json"
    use_settings(monkeypatch, source)
    assert main(["snapshot", str(file)]) == 0
    use_settings(monkeypatch, make_settings())  # another deployment, its own secret
    assert main(["restore", str(file)]) == 0
    assert notice in capsys.readouterr().out

    monkeypatch.setenv("BANDIT_HASH_KEY", "shared by both deployments")
    use_settings(monkeypatch, make_settings())
    assert main(["snapshot", str(file)]) == 0
    use_settings(monkeypatch, make_settings())  # another deployment, the same BANDIT_HASH_KEY
    assert main(["restore", str(file)]) == 0
    assert notice not in capsys.readouterr().out


def _shared_with_others(directory: Path) -> list[str]:
    """The files under ``directory`` that another user of the machine may read or write."""
    return [
        f"{p.name} {oct(p.stat().st_mode & 0o777)}"
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.stat().st_mode & 0o077
    ]


def test_the_embedded_redis_files_are_the_services_users_only(tmp_path: Path) -> None:
    """They hold the word secret and every decision (its query too, with
    BANDIT_STORE_QUERY_TEXT): under a umask of 022 every user of the machine could read them."""
    previous = os.umask(0o022)  # the usual one, whatever the test runner's
    try:
        with EmbeddedRedis(str(tmp_path / "data")) as server:

            async def keep() -> str:
                store = Store(connect(server.url), "bandit", 60, 10_000)
                try:
                    return await store.keep_word_secret(secrets.token_hex(32))
                finally:
                    await store.close()

            secret = asyncio.run(keep())
            client = redis.Redis.from_url(server.url)
            client.save()
            client.close()
    finally:
        os.umask(previous)
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert any(secret.encode() in p.read_bytes() for p in files)  # what is at stake
    assert _shared_with_others(tmp_path / "data") == []


def test_embedded_redis_files_an_earlier_release_left_readable_are_made_the_users(
    tmp_path: Path,
) -> None:
    """Releases before 6 December 2026 (08319f4) wrote the embedded Redis's append-only file and
    log under the umask (0644), and an append-only file keeps its mode until Redis rewrites it,
    which a small deployment may never do: after an upgrade the word secret and every decision
    stayed readable by every user of the machine. A start takes them back (the probe of
    upgrades ran aa5331b, then this release three times: appendonly.aof stayed 0644)."""
    data = tmp_path / "data"
    data.mkdir()
    previous = os.umask(0o022)
    try:
        # As such a release left them: its files, and a running server's are the same files.
        for name in ("appendonly.aof", "redis.log", "bandit-router.rdb"):
            (data / name).write_bytes(b"")
            (data / name).chmod(0o644)
        (data / "appendonlydir").mkdir(mode=0o755)  # Redis 7 keeps its AOF in a directory
        (data / "appendonlydir" / "appendonly.aof.1.incr.aof").write_bytes(b"")
        (data / "appendonlydir" / "appendonly.aof.1.incr.aof").chmod(0o644)
        (data / "notes.txt").write_bytes(b"")  # the operator's: left as it is
        (data / "notes.txt").chmod(0o644)
        with EmbeddedRedis(str(data)):
            assert _shared_with_others(data) == ["notes.txt 0o644"]
            assert stat.S_IMODE((data / "appendonlydir").stat().st_mode) == 0o700
    finally:
        os.umask(previous)


def test_the_decision_journal_is_the_services_users_only(tmp_path: Path) -> None:
    """A journal holds decisions as Redis does (their query too, with BANDIT_STORE_QUERY_TEXT)."""
    previous = os.umask(0o022)
    try:
        journal = Journal(tmp_path / "buffer", "bandit")
        record = {"event_id": "e1", "arm": "4b", "ts": 1.0, "query": "my card is 4111 1111"}
        journal.append(dumps(record))
        assert _shared_with_others(tmp_path) == []
        journal.keep_only([record, {**record, "event_id": "e2"}])  # rewritten: a new file
        assert _shared_with_others(tmp_path) == []
        journal.release()
    finally:
        os.umask(previous)
