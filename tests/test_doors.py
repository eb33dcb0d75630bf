"""Both doors to the routing contract answer alike: the fast door (ASGI middleware in front of
the app) and FastAPI's routes (what an app mounted under a root path reaches), over real HTTP."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SettingsFactory, _free_port, cli_env, cli_process, healthy, wait_until
from tests.live import serve  # noqa: F401  (fixture)

ROOT = "/api"
ARMS = ["4b", "7b", "14b", "70b", ""]
JSON_HEADERS = {"content-type": "application/json"}

# Values a client might send for any field: right, wrong and hostile.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.integers().map(lambda n: n * 10**400),  # huge integers
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 5, 0.5, 840, 1e308, -1, 86_400_001]),
    st.text(max_size=20),
    st.sampled_from(["", "4b", "7b", "14b", "70b", "840", "yes", "true"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=5)
features = st.dictionaries(st.text(min_size=0, max_size=8), values, max_size=4)
event_ids = st.one_of(
    st.sampled_from(["e-1", "e-2", "bad id!", "", "x" * 200]), st.text(max_size=10)
)
choose_bodies = st.fixed_dictionaries(
    {},
    optional={
        "query": st.one_of(st.text(max_size=30), values),
        "features": st.one_of(features, values),
        "arms": st.one_of(
            st.lists(st.sampled_from(["4b", "7b", "14b", "70b", ""]), max_size=4), values
        ),
        "event_id": event_ids,
        "extra": values,
    },
)
reward_bodies = st.fixed_dictionaries(
    {"event_id": event_ids},
    optional={
        "latency_ms": values,
        "accuracy": values,
        "rating": values,
        "cost_usd": values,
        "reward": values,
        "final": values,
        "extra": values,
    },
)
# Bodies no JSON encoder writes: non-finite numbers, bad escapes, deep nesting, not JSON at all.
raw_bodies = st.sampled_from(
    [
        b'{"query": "q", "features": {"n": Infinity}}',
        b'{"query": "q", "features": {"n": NaN}}',
        b'{"event_id": "e-1", "latency_ms": Infinity}',
        b'{"event_id": "e-1", "latency_ms": 1e999}',
        b'{"query": "\\ud800"}',
        b'{"query": "q", "features": {"k": "\\udfff"}}',
        b'{"query": "q", "features": {"k": ' + b"9" * 400 + b"}}",
        b'{"query": "q", "features": {"k": ' + b"9" * 5000 + b"}}",
        b'{"query": "q", "features": ' + b'{"a": ' * 500 + b"1" + b"}" * 501,
        b"[" * 5000,
        b"\xff\xfe not utf-8",
        b"",
        b"null",
        b"[]",
        b'"a string"',
        b"{not json",
    ]
)


def _json(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


class Doors:
    """Two live services alike but for their door, each on a key prefix of its own, so the same
    requests in the same order leave both in the same state."""

    def __init__(self, fast: str, routed: str) -> None:
        self.fast = httpx.Client(base_url=fast, timeout=30)
        self.routed = httpx.Client(base_url=routed, timeout=30)

    def both(
        self, path: str, raw: bytes, headers: dict[str, str] | list[tuple[str, str]]
    ) -> tuple[Any, Any]:
        fast = self.fast.post(path, content=raw, headers=headers)
        routed = self.routed.post(path, content=raw, headers=headers)
        return _answer(fast), _answer(routed)

    def close(self) -> None:
        self.fast.close()
        self.routed.close()


def _answer(response: httpx.Response) -> tuple[int, Any]:
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    if response.status_code == 200:  # a decision or a reward: compare its shape, not its draw
        return 200, sorted(body)
    assert response.status_code < 500, response.text  # no traceback, no 5xx, for any input
    assert set(body) == {"detail", "field"} and body["detail"], body
    return response.status_code, body


@pytest.fixture
def doors(serve: Callable[..., str]) -> Iterator[Doors]:  # noqa: F811
    # Behind uvicorn's --root-path (a proxy mounting the app under /api) the fast door leaves
    # every request to FastAPI's routes.
    settings = {"max_features": 3, "api_keys": "k1", "reward_weights": "accuracy=1,latency=1"}
    doors = Doors(serve(**settings), serve(root_path=ROOT, **settings))
    yield doors
    doors.close()


PROPERTY = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
KEYED = {**JSON_HEADERS, "x-api-key": "k1"}


@PROPERTY
@given(body=choose_bodies)
def test_choose_answers_alike_through_both_doors(doors: Doors, body: dict[str, Any]) -> None:
    fast, routed = doors.both("/choose", _json(body), KEYED)
    assert fast == routed


@PROPERTY
@given(body=reward_bodies)
def test_reward_answers_alike_through_both_doors(doors: Doors, body: dict[str, Any]) -> None:
    fast, routed = doors.both("/reward", _json(body), KEYED)
    assert fast == routed


@PROPERTY
@given(raw=raw_bodies, path=st.sampled_from(["/choose", "/reward"]))
def test_hostile_bodies_answer_alike_and_never_5xx(doors: Doors, raw: bytes, path: str) -> None:
    fast, routed = doors.both(path, raw, KEYED)
    assert fast == routed
    assert fast[0] in (400, 422), fast


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no key
        {"x-api-key": "wrong"},
        {"authorization": "Bearer k1"},
        {"authorization": "Basic OmsxCg=="},  # ":k1\n": not the key
    ],
)
def test_auth_and_content_type_answer_alike(doors: Doors, headers: dict[str, str]) -> None:
    types: list[list[str]] = [
        ["application/json"],
        ["text/plain"],
        ["application/x-www-form-urlencoded"],
        [],
        ["application/json", "text/plain"],
    ]
    for declared in types:
        all_headers = [*headers.items(), *(("content-type", t) for t in declared)]
        raw = b'{"query": "q"}'
        fast, routed = doors.both("/choose", raw, all_headers)
        assert fast == routed


def test_a_body_of_no_declared_type_or_of_two_is_refused_everywhere(
    serve: Callable[..., str],  # noqa: F811
) -> None:
    """A browser sends a cross-site POST with no content-type without asking first (a no-cors
    fetch of a Blob): a JSON body is taken only when declared so, once, on every route."""
    base = serve(admin_key="a1")
    upstream = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    gateway = serve(arms=json.dumps([{"name": "m", "upstream": upstream}]))
    calls = [
        (base, "/choose", b'{"query": "q"}', {}),
        (base, "/reward", b'{"event_id": "e-1", "accuracy": 1}', {}),
        (base, "/admin/policy", b'{"policy": "egreedy"}', {"x-api-key": "a1"}),
        (gateway, "/v1/chat/completions", b'{"model": "auto", "messages": []}', {}),
    ]
    for url, path, raw, headers in calls:
        for declared in ([], ["application/json", "application/json"]):
            sent = [*headers.items(), *(("content-type", t) for t in declared)]
            response = httpx.post(f"{url}{path}", content=raw, headers=sent)
            assert response.status_code == 415, (path, declared, response.text)
            assert response.json()["field"] == "content-type"
            if not declared:  # said as missing ("got 'none'" read as a type named none)
                assert "got no content-type header" in response.json()["detail"], response.text


def _raw_post(
    base: str, path: str, declared: int, sent: bytes, key: str = ""
) -> tuple[bytes, bytes]:
    """A POST over a socket that declares ``declared`` bytes of JSON and sends ``sent`` (with
    ``key`` as its X-API-Key): the head and body of the answer, read until the server closes
    the connection (10 s at most)."""
    host, port = base.removeprefix("http://").split(":")
    keyed = f"x-api-key: {key}\r\n" if key else ""
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"{keyed}content-length: {declared}\r\n\r\n".encode()
            + sent
        )
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, body


def test_a_body_shorter_than_its_length_is_answered_408_and_closed(
    serve: Callable[..., str],  # noqa: F811
) -> None:
    fast = serve(body_timeout_s=0.5, admin_key="a1")
    routed = serve(root_path=ROOT, body_timeout_s=0.5)
    for base, path in ((fast, "/choose"), (routed, "/choose"), (fast, "/admin/policy")):
        head, body = _raw_post(base, path, 100, b'{"query": "q"', key="a1")
        assert head.startswith(b"HTTP/1.1 408"), (path, head)
        assert b"connection: close" in head.lower()
        assert json.loads(body) == {
            "detail": "request body not received within 0.5 s (BANDIT_BODY_TIMEOUT_S); "
            "the connection is closed",
            "field": "body",
        }


def test_a_body_declared_over_the_limit_is_refused_before_it_is_sent(
    serve: Callable[..., str],  # noqa: F811
) -> None:
    """A content-length over BANDIT_MAX_BODY_BYTES is answered 413 at once: nothing of the body
    was sent, and the answer must not wait for the body timeout (60 s here; the socket's 10)."""
    fast = serve(body_timeout_s=60)
    routed = serve(root_path=ROOT, body_timeout_s=60)
    for base, path in ((fast, "/choose"), (routed, "/choose"), (fast, "/admin/policy")):
        head, body = _raw_post(base, path, 2_000_000, b"")
        assert head.startswith(b"HTTP/1.1 413"), (path, head)
        assert json.loads(body)["field"] == "body"


def test_a_request_without_its_key_is_refused_before_its_body(
    serve: Callable[..., str],  # noqa: F811
) -> None:
    """A keyed POST without its key is answered 401 (403 for the admin routes while they are
    disabled) at once and closed, its body not read: read first, a client with no key had the
    process hold up to BANDIT_MAX_BODY_BYTES of body on each connection it opened until the
    body timeout (300 connections, each with 1 MB sent but a byte: 130 MB), a 408 when the
    body did not come. A declared length over the limit is still a 413 first."""
    keys = {"api_keys": "k1", "admin_key": "a1", "body_timeout_s": 1}
    fast = serve(**keys)
    routed = serve(root_path=ROOT, **keys)
    unkeyed = [(fast, p, 401) for p in ("/choose", "/reward", "/v1/chat/completions")]
    unkeyed += [(routed, "/choose", 401), (routed, "/reward", 401), (fast, "/admin/policy", 401)]
    unkeyed.append((serve(body_timeout_s=1), "/admin/reset", 403))
    for base, path, status in unkeyed:
        head, body = _raw_post(base, path, 100_000, b'{"query": "q"', key="wrong")
        assert head.startswith(b"HTTP/1.1 %d" % status), (path, head)
        assert b"connection: close" in head.lower(), (path, head)
        assert json.loads(body)["field"] == "X-API-Key", body
    head, _ = _raw_post(fast, "/choose", 2_000_000, b"", key="wrong")
    assert head.startswith(b"HTTP/1.1 413"), head
    head, _ = _raw_post(fast, "/choose", 100, b'{"query": "q"', key="k1")
    assert head.startswith(b"HTTP/1.1 408"), head  # with its key: read, and waited for


def _peak_kib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
def test_bodies_no_route_reads_are_not_held(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """A body no route reads (a POST to a path not served, a GET that declares one, a PUT to a
    path whose POST reads one) is waited for as any other (BANDIT_BODY_TIMEOUT_S), but let go
    as it arrives; a keyed route's without its key is not read at all. Before, each was kept
    whole until the timeout, for a client with no key too: 300 connections, each sending 1 MB of
    body but a byte to a path not served, held about 300 MB."""
    settings = make_settings()
    env = cli_env(
        redis_url=settings.redis_url,
        key_prefix=settings.key_prefix,
        api_keys="k1",
        body_timeout_s=2,
    )
    size, each = 1_000_000, 60
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with cli_process(["serve", "--port", str(port)], env, tmp_path / "serve.log") as proc:
        wait_until(lambda: healthy(base), 60, "the service to answer /healthz")
        before = _peak_kib(proc.pid)  # one worker: the service runs in this process
        conns = []
        for request in (b"POST /nope", b"GET /stats", b"PUT /choose", b"POST /choose"):
            for _ in range(each):
                conn = socket.create_connection(("127.0.0.1", port), timeout=15)
                conns.append(conn)
                head = b"%s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" % request
                # a /choose without its key is answered, and closed, before its body
                with contextlib.suppress(OSError):
                    conn.sendall(head + b"content-length: %d\r\n\r\n" % size + b" " * (size - 1))
        answers = []
        for conn in conns:
            with conn:
                reply = b""
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(65536):
                        reply += chunk
                answers.append(reply.split(b"\r\n", 1)[0])
        grown_mib = (_peak_kib(proc.pid) - before) / 1024
    assert answers.count(b"HTTP/1.1 408 Request Timeout") == 3 * each, set(answers)
    assert answers.count(b"HTTP/1.1 401 Unauthorized") == each, set(answers)
    # 240 MB of body sent but a byte; a connection holds uvicorn's 64 KiB read window at most
    assert grown_mib < 40, grown_mib


def test_the_admin_bodies_follow_the_routing_calls_contract(
    serve: Callable[..., str],  # noqa: F811
) -> None:
    base = serve(admin_key="a1")
    headers = {**JSON_HEADERS, "x-api-key": "a1"}
    cases = [
        (b'{"policy": ' * 10_000 + b'"x"' + b"}" * 10_000, 400, "body"),
        (b'{"policy": "\xff"}', 400, "body"),
        (b'{"policy": "\\ud800"}', 400, "body"),
        (b"[]", 400, "body"),
        (b"{}", 422, "policy"),
        (b'{"policy": 1}', 422, "policy"),
        (b'{"policy": "egreedy", "extra": 1}', 422, "extra"),
    ]
    for path in ("/admin/policy", "/admin/promote"):
        for raw, status, field in cases:
            response = httpx.post(f"{base}{path}", content=raw, headers=headers)
            assert (response.status_code, response.json()["field"]) == (status, field), (
                path,
                raw[:40],
                response.text,
            )
        plain = httpx.post(f"{base}{path}", content=b"{}", headers={"x-api-key": "a1"})
        assert plain.status_code == 415


def test_a_bad_admin_body_is_a_client_error_not_a_crash(
    serve: Callable[..., str],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bad admin body is answered as any client's error: no "Exception in ASGI application"
    with a traceback in the log, and the kept-alive connection serves the next request (uvicorn
    closes a connection whose app raised, even after its response)."""
    base = serve(admin_key="a1")
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's, which does not propagate
    uvicorn_log.addHandler(caplog.handler)
    host, port = base.removeprefix("http://").split(":")
    try:
        with (
            socket.create_connection((host, int(port)), timeout=10) as conn,
            conn.makefile("rb") as reader,
        ):
            for path, raw, status in (
                ("/admin/policy", b"[null, null]", 400),
                ("/admin/policy", b'{"policy": "egreedy", "x": 1}', 422),
                ("/admin/promote", b"{}", 422),
                ("/admin/promote", b'{"policy": "\\ud800"}', 400),
            ):
                conn.sendall(
                    b"POST %s HTTP/1.1\r\nhost: x\r\nx-api-key: a1\r\n"
                    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (path.encode(), len(raw), raw)
                )
                assert _read_response(reader)[0] == status, (path, raw)
            conn.sendall(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
            assert _read_response(reader) == (200, b'{"status":"ok"}')
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def _read_response(reader: Any) -> tuple[int, bytes]:
    """One response of known length off a kept-alive connection: its status and body."""
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, reader.read(length)


def test_finite_bounds_are_named(doors: Doors) -> None:
    """The limits of each number are in the message, so a client can fix its call."""
    cases = [
        (b'{"event_id": "e-1", "latency_ms": 1e308}', "latency_ms", "86400000"),
        (b'{"event_id": "e-1", "cost_usd": 5000}', "cost_usd", "1000"),
        (b'{"event_id": "e-1", "latency_ms": "840"}', "latency_ms", "valid number"),
        (b'{"event_id": "e-1", "accuracy": true}', "accuracy", "valid number"),
        (b'{"event_id": "e-1", "accuracy": 1, "final": "yes"}', "final", "valid boolean"),
        (b'{"query": "q", "features": {"k": 1e16}}', "features", "1e+15"),
    ]
    for raw, field, words in cases:
        path = "/reward" if b"event_id" in raw else "/choose"
        fast, routed = doors.both(path, raw, KEYED)
        assert fast == routed
        status, body = fast
        assert status == 422 and body["field"] == field and words in body["detail"], body


# A body that is JSON but not UTF-8: as a Windows tool or a client that honours a declared
# charset may write it.
foreign_bodies = st.one_of(
    st.just(b"\xef\xbb\xbf").map(lambda bom: (bom + b'{"query": "q"}', "byte order mark")),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=8).map(
        lambda text: (  # é then a character below 0x80: no UTF-8 sequence starts so
            json.dumps({"query": f"café {text}"}, ensure_ascii=False).encode("latin-1"),
            "UTF-8",
        )
    ),
    st.just(("utf-16", "UTF-8")).map(
        lambda x: (json.dumps({"query": "q"}).encode(x[0]), x[1])  # with its own BOM
    ),
)


@PROPERTY
@given(case=foreign_bodies, charset=st.sampled_from(["", "; charset=latin-1", "; charset=utf-16"]))
def test_a_body_not_utf8_is_a_400_saying_so_at_every_door(
    doors: Doors, case: tuple[bytes, str], charset: str
) -> None:
    """A byte order mark was "expected value at line 1 column 1" and a Latin-1 byte "invalid
    unicode code point": neither told the client that the bytes, not the JSON, were at fault."""
    raw, said = case
    headers = {**KEYED, "content-type": "application/json" + charset}
    fast, routed = doors.both("/choose", raw, headers)
    assert fast == routed
    assert fast[0] == 400 and fast[1]["field"] == "body", fast
    assert said in fast[1]["detail"], fast
    gateway = doors.fast.post("/v1/chat/completions", content=raw, headers=headers)
    assert gateway.status_code == 400 and said in gateway.json()["detail"], gateway.text


def test_a_body_nested_201_levels_is_read_and_one_deeper_is_refused(
    serve: Callable[..., str],  # noqa: F811
) -> None:
    """README's limit to the level: 201 levels are read (the flat `features` rule answers), 202
    are 400 `body`. README said 200, one short of what is read."""
    base = serve()

    def nested(levels: int) -> bytes:  # the body object and `features` are two of the levels
        inner = b"[" * (levels - 2) + b"]" * (levels - 2)
        return b'{"query": "q", "features": {"k": ' + inner + b"}}"

    for levels, status, field in ((201, 422, "features"), (202, 400, "body")):
        response = httpx.post(f"{base}/choose", content=nested(levels), headers=JSON_HEADERS)
        assert (response.status_code, response.json()["field"]) == (status, field), response.text
