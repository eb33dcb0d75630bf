"""Replay upstreams for the gateway's tests: ``bandit_router.sim.upstream`` under uvicorn on
loopback, the test double of the LLM providers (OpenAI's protocol, answers from real rows)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from bandit_router.sim.upstream import ReplayUpstream, read_body, watched
from tests.live import Servers

DATA = Path(__file__).resolve().parents[1] / "examples"
SLICE = DATA / "mmlu_pro_llama2_slice.jsonl"
SLICE_ARMS = DATA / "mmlu_pro_llama2_slice.arms.json"
ARMS = ("llama2-7b", "llama2-13b", "llama2-70b")
PRICES: dict[str, float] = {"llama2-7b": 0.2, "llama2-13b": 0.2857142857142857, "llama2-70b": 0.9}

Upstream = tuple[str, ReplayUpstream]  # its /v1 URL, and the app (to read its counters)
Rewrite = Callable[[dict[str, Any]], dict[str, Any]]


class Rewriting:
    """The replay upstream with each JSON answer, and each streamed event's data, passed through
    ``rewrite``: a provider that miscounts its usage or answers far more than it should."""

    def __init__(self, app: ReplayUpstream, rewrite: Rewrite) -> None:
        self.app = app
        self.rewrite = rewrite

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[Message] = []  # the response's start: its content-length follows the body

        async def rewritten(message: Message) -> None:
            if message["type"] == "http.response.start":
                held.append(message)
                return
            body = message.get("body", b"")
            if body.startswith(b"data: {"):  # the replay sends one whole event a message
                body = b"data: " + _dumps(self.rewrite(orjson.loads(body[6:]))) + b"\n\n"
            elif body.startswith(b"{"):
                body = _dumps(self.rewrite(orjson.loads(body)))
            if held:
                start = held.pop()
                headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                if not message.get("more_body"):
                    headers.append((b"content-length", b"%d" % len(body)))
                await send({**start, "headers": headers})
            await send({**message, "body": body})

        await self.app(scope, receive, rewritten)


def rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SLICE.read_text().splitlines() if line.strip()]


def _dumps(data: dict[str, Any]) -> bytes:
    """Compact JSON that may hold what orjson refuses to write (integers beyond 64 bits)."""
    return json.dumps(data, separators=(",", ":")).encode()


@pytest.fixture
def upstream() -> Iterator[Callable[..., Upstream]]:
    """Start a replay upstream of the slice; returns its base URL (ending in /v1) and app.
    ``rewrite``: a function every JSON answer and streamed event goes through (``Rewriting``)."""
    servers = Servers()

    def start(rewrite: Rewrite | None = None, **options: Any) -> Upstream:
        app = ReplayUpstream.load(SLICE, SLICE_ARMS, **options)
        served = app if rewrite is None else Rewriting(app, rewrite)
        port = servers.start(served, "the replay upstream", log_level="warning", lifespan="off")
        return f"http://127.0.0.1:{port}/v1", app

    yield start
    servers.stop()


def arm(name: str, base_url: str, model: str | None = None, **upstream: Any) -> dict[str, Any]:
    """One arm of BANDIT_ARMS with an upstream, priced as the slice's arms file says."""
    spec = {"base_url": base_url, "model": model or name, **upstream}
    return {"name": name, "usd_per_mtok": PRICES[name], "upstream": spec}


def arms_json(*arms: dict[str, Any]) -> str:
    return json.dumps(list(arms))


# A scripted upstream: what a provider sends when it misbehaves

STALL = None  # a script part: send nothing more until the gateway leaves


class Break(Exception):
    """A script part: the upstream drops its connection there, its answer unended (no last
    chunk of its chunked body: what the reader sees of a provider's reset)."""


BREAK = Break()
Part = bytes | float | None | Break  # bytes to send, seconds to wait, STALL or BREAK


@dataclass(frozen=True, slots=True)
class Script:
    """One answer, byte for byte: a status, a content type, extra headers, then the parts."""

    parts: tuple[Part, ...] = ()
    status: int = 200
    content_type: str = "text/event-stream"
    headers: tuple[tuple[str, str], ...] = ()


def chunk(text: str, model: str = "m") -> bytes:
    """One streamed chat completion event carrying ``text``."""
    delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    data = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model}
    return b"data: " + orjson.dumps({**data, "choices": [delta]}) + b"\n\n"


DONE = b"data: [DONE]\n\n"
Scripts = Mapping[str, Script | Callable[[Any], Script]]  # by model: a script, or one a request


class Scripted:
    """An upstream speaking HTTP as a provider does, that answers each request with the script of
    its ``model`` (404 for another; a function of the request's body makes the script of each
    request, as a provider's answer depends on what it was asked). Counts the requests, keeps
    their bodies as they came, their headers and the connections they came on, and counts the
    answers the gateway left before their end (their connection closed: what a provider sees of
    a cancelled call)."""

    def __init__(self, scripts: Scripts) -> None:
        self.scripts = dict(scripts)
        self.requests = 0
        self.left = 0
        self.bodies: list[bytes] = []  # each request's body, byte for byte
        self.headers: list[dict[bytes, bytes]] = []  # each request's headers
        self.connections: set[Any] = set()  # the (host, port) each request came from

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        if raw is None:
            return
        self.requests += 1
        self.bodies.append(raw)
        self.headers.append(dict(scope["headers"]))
        self.connections.add(scope["client"])
        request = orjson.loads(raw or b"{}")
        script = self.scripts.get(request.get("model"))
        if callable(script):
            script = script(request)
        if script is None:
            script = Script((b'{"error": {"message": "no such model"}}',), 404, "application/json")
        headers = [(b"content-type", script.content_type.encode())]
        headers += [(k.encode(), v.encode()) for k, v in script.headers]
        async with watched(receive) as gone:
            await send({"type": "http.response.start", "status": script.status, "headers": headers})
            for part in script.parts:
                if isinstance(part, bytes):
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                elif isinstance(part, Break):
                    raise Break  # uvicorn closes the connection of an answer begun
                elif part is STALL or part > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gone.wait(), part)
                if gone.is_set():
                    self.left += 1
                    return
            await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def scripted() -> Iterator[Callable[[Scripts], tuple[str, Scripted]]]:
    """Start a scripted upstream on loopback; returns its base URL (ending in /v1) and app."""
    servers = Servers()

    def start(scripts: Scripts) -> tuple[str, Scripted]:
        app = Scripted(scripts)
        port = servers.start(app, "the scripted upstream", log_level="warning", lifespan="off")
        return f"http://127.0.0.1:{port}/v1", app

    yield start
    servers.stop()
