"""A replay upstream: an OpenAI-compatible chat server that answers from a replay file.

Each request names an arm as its ``model``; its last user message is matched to a row's
``query`` (a query the file does not hold gets a row chosen from a hash of its text, so the
same text always gets the same row). The answer is that arm's recorded outcome: its latency
(time to the first token, then the rest of its output tokens at the arm's rate), its output
tokens, and a text a grader can score. The replay files hold no gold answer, so for multiple-
choice rows the server and ``grade`` share an answer key drawn from the row's id: an arm whose
recorded accuracy is 1 answers "The answer is (KEY)", one whose accuracy is 0 a wrong letter, and
``grade`` gives back exactly the recorded accuracy.

It is the test double of the LLM providers behind the gateway, and a demo anyone can run
(``bandit-router upstream``). Plain ASGI, for uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

_OPTION = re.compile(r"^([A-Z])[.)]\s", re.MULTILINE)
_ANSWER = re.compile(r"answer is \(?([A-Z])\)?")
_FILLER = (" Let", " me", " work", " through", " the", " options", ".")
JSON = (b"content-type", b"application/json")
SSE = (b"content-type", b"text/event-stream")


def options(query: str) -> list[str]:
    """The option letters of a multiple-choice query ("A. ...", one per line), in order."""
    return list(dict.fromkeys(_OPTION.findall(query)))


def answer_key(row_id: str, query: str) -> str | None:
    """The letter this server treats as right for a multiple-choice row; None for other rows."""
    letters = options(query)
    return letters[zlib.crc32(row_id.encode()) % len(letters)] if len(letters) >= 2 else None


def grade(text: str, row_id: str, query: str) -> float | None:
    """1.0 when ``text`` says "the answer is (KEY)", 0.0 for another letter or none; None when
    the row is not multiple-choice."""
    key = answer_key(row_id, query)
    if key is None:
        return None
    found = _ANSWER.search(text)
    return 1.0 if found is not None and found.group(1) == key else 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one arm answers to one row."""

    tokens: tuple[str, ...]  # the output, one string per token
    prompt_tokens: int
    first_token_s: float  # from the request to the first token
    per_token_s: float  # between tokens after the first

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def latency_s(self) -> float:
        return self.first_token_s + self.per_token_s * max(len(self.tokens) - 1, 0)


def _fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``latency_ms = a + b * tokens`` over one arm's rows: (a, b), both >= 0."""
    n = len(points)
    if n == 0:
        return 0.0, 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0
    b = max(b, 0.0)
    return max(my - b * mx, 0.0), b


@dataclass(slots=True)
class ReplayUpstream:
    """The rows of a replay file, answered as the arms recorded them; ``speed`` divides times."""

    rows: list[dict[str, Any]]
    prices: Mapping[str, float]  # arm -> USD per million tokens, from the arms file
    arms: list[str]
    speed: float = 1.0
    fail_status: int | None = None  # answer every request with this status (a provider down)
    api_key: str | None = None  # when set, requests must carry it as a bearer token
    _by_query: dict[str, int] = field(default_factory=dict)
    _fits: dict[str, tuple[float, float]] = field(default_factory=dict)
    requests: int = 0  # requests answered, for tests and the demo's log
    cancelled: int = 0  # streams the client left before their end

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            self._by_query.setdefault(row["query"].strip(), i)
        for arm in self.arms:
            points = [
                (float(o["output_tokens"]), float(o["latency_ms"]))
                for row in self.rows
                if (o := row["outcomes"].get(arm)) and "output_tokens" in o and "latency_ms" in o
            ]
            self._fits[arm] = _fit(points)

    @classmethod
    def load(
        cls,
        path: Path,
        arms_path: Path | None = None,
        arms: Sequence[str] = (),
        limit: int | None = None,
        **options: Any,
    ) -> ReplayUpstream:
        rows: list[dict[str, Any]] = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if limit is not None and len(rows) >= limit:
                    break
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row.get("query"), str) or not isinstance(
                    row.get("outcomes"), dict
                ):
                    raise ValueError(f"{path}:{number}: a row needs a query and outcomes")
                row.setdefault("id", f"line-{number}")
                rows.append(row)
        if not rows:
            raise ValueError(f"{path}: no rows")
        prices: dict[str, float] = {}
        if arms_path is not None:
            for arm in json.loads(arms_path.read_text(encoding="utf-8"))["arms"]:
                if arm.get("usd_per_mtok") is not None:
                    prices[str(arm["name"])] = float(arm["usd_per_mtok"])
        known = list(dict.fromkeys(name for row in rows for name in row["outcomes"]))
        unknown = [a for a in arms if a not in known]
        if unknown:
            raise ValueError(f"arm {unknown[0]!r} is not in {path}; its arms: {', '.join(known)}")
        return cls(rows, prices, list(arms) or known, **options)

    def row_for(self, query: str) -> dict[str, Any]:
        i = self._by_query.get(query.strip())
        if i is None:
            i = zlib.crc32(query.strip().encode()) % len(self.rows)
        return self.rows[i]

    def outcome(self, arm: str, query: str) -> tuple[dict[str, Any], Outcome]:
        """The row answering ``query`` and what ``arm`` recorded for it."""
        row = self.row_for(query)
        recorded = row["outcomes"].get(arm) or {}
        n = max(int(recorded.get("output_tokens", 16)), 1)
        text = self._answer(row, arm, recorded.get("accuracy"))
        words = re.findall(r"\s*\S+", text)  # "The", " answer", " is", " (X)."
        filler = [_FILLER[k % len(_FILLER)] for k in range(max(n - len(words), 0))]
        if filler:
            filler[0] = filler[0].lstrip()
            words[0] = " " + words[0]
        tokens = (*filler, *words)
        first_ms, per_token_ms = self._fits.get(arm, (0.0, 0.0))
        latency_ms = float(recorded.get("latency_ms", first_ms + per_token_ms * n))
        first_ms = min(first_ms, latency_ms)
        per_token_ms = (latency_ms - first_ms) / max(len(tokens) - 1, 1)
        prompt = max(len(row["query"]) // 4, 1)
        price = self.prices.get(arm)
        if price and recorded.get("cost_usd") is not None:  # the cost recorded = price * tokens
            prompt = max(round(float(recorded["cost_usd"]) * 1e6 / price) - n, 1)
        scale = 1000.0 * self.speed
        return row, Outcome(tokens, prompt, first_ms / scale, per_token_ms / scale)

    @staticmethod
    def _answer(row: Mapping[str, Any], arm: str, accuracy: Any) -> str:
        letters = options(row["query"])
        key = answer_key(str(row["id"]), row["query"])
        if key is None:
            return f"An answer from {arm}."
        if accuracy is not None and float(accuracy) >= 0.5:
            return f"The answer is ({key})."
        wrong = [x for x in letters if x != key]
        return f"The answer is ({wrong[zlib.crc32(arm.encode()) % len(wrong)]})."

    # The ASGI app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"].rstrip("/"), scope["method"]
        if self.api_key is not None and not _bearer(scope, self.api_key):
            await _json(send, 401, _error("invalid api key", "invalid_request_error", None))
            return
        if path.endswith("/models") and method == "GET":
            data = [
                {"id": a, "object": "model", "created": 0, "owned_by": "replay"} for a in self.arms
            ]
            await _json(send, 200, {"object": "list", "data": data})
            return
        if not path.endswith("/chat/completions") or method != "POST":
            await _json(
                send, 404, _error(f"no route {method} {path}", "invalid_request_error", None)
            )
            return
        body = await read_body(receive)
        if body is not None:
            await self._chat(body, receive, send)

    async def _chat(self, raw: bytes, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        try:
            request = orjson.loads(raw)
            arm, messages = request["model"], request["messages"]
            query = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
            if not isinstance(query, str):
                raise TypeError("content must be a string")
        except (orjson.JSONDecodeError, KeyError, TypeError, StopIteration):
            await _json(
                send, 400, _error("messages: a user message with text is needed", None, None)
            )
            return
        if arm not in self.arms:
            message = f"The model `{arm}` does not exist; this server has {', '.join(self.arms)}"
            await _json(send, 404, _error(message, "invalid_request_error", "model_not_found"))
            return
        self.requests += 1
        if self.fail_status is not None:
            await _json(
                send, self.fail_status, _error("the replay upstream is down", "server_error", None)
            )
            return
        row, outcome = self.outcome(arm, query)
        completion_id = f"chatcmpl-{row['id']}-{self.requests}"
        usage = {
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": len(outcome.tokens),
            "total_tokens": outcome.prompt_tokens + len(outcome.tokens),
        }
        if not request.get("stream"):
            await _sleep_until(start + outcome.latency_s)
            answer = {"role": "assistant", "content": outcome.text}
            choice = {"index": 0, "message": answer, "finish_reason": "stop"}
            await _json(send, 200, _completion(completion_id, arm, [choice], usage))
            return
        with_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        async with watched(receive) as gone:
            await send({"type": "http.response.start", "status": 200, "headers": [SSE]})
            for k, token in enumerate(outcome.tokens):
                await _sleep_until(start + outcome.first_token_s + k * outcome.per_token_s)
                if gone.is_set():
                    self.cancelled += 1
                    return
                delta = {"role": "assistant", "content": token} if k == 0 else {"content": token}
                last = k == len(outcome.tokens) - 1
                choice = {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
                chunk = _completion(completion_id, arm, [choice], None, "chat.completion.chunk")
                await send(_event(chunk))
            if with_usage:
                await send(
                    _event(_completion(completion_id, arm, [], usage, "chat.completion.chunk"))
                )
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def read_body(receive: Receive) -> bytes | None:
    """A request's whole body; None when the client left before it ended."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


@contextlib.asynccontextmanager
async def watched(receive: Receive) -> AsyncIterator[asyncio.Event]:
    """An event set once the client disconnects, watched while the block runs (its body read)."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        yield gone
    finally:
        watcher.cancel()


def _bearer(scope: Scope, key: str) -> bool:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bool(value.decode("latin-1") == f"Bearer {key}")
    return False


def _error(message: str, kind: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _completion(
    completion_id: str,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None,
    kind: str = "chat.completion",
) -> dict[str, Any]:
    out = {"id": completion_id, "object": kind, "created": int(time.time()), "model": model}
    out["choices"] = choices
    if usage is not None:
        out["usage"] = usage
    return out


def _event(data: dict[str, Any]) -> Message:
    return {
        "type": "http.response.body",
        "body": b"data: " + orjson.dumps(data) + b"\n\n",
        "more_body": True,
    }


async def _json(send: Send, status: int, data: dict[str, Any]) -> None:
    body = orjson.dumps(data)
    headers = [JSON, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _sleep_until(at: float) -> None:
    left = at - time.perf_counter()
    if left > 0:
        await asyncio.sleep(left)
