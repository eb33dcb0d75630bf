"""The gateway's streaming path and its upstream calls against a provider that misbehaves, and
a client that leaves: the app under uvicorn, scripted upstreams on loopback speaking HTTP and
server-sent events byte for byte (``tests.upstreams.Scripted``), real Redis, the official OpenAI
SDK and httpx as clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest

from tests.live import serve
from tests.upstreams import DONE, Script, Scripted, chunk, scripted

__all__ = ["scripted", "serve"]  # the fixtures, imported

Serve = Callable[..., str]
Start = Callable[[dict[str, Script]], tuple[str, Scripted]]
KEY = "service-key-1"
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
HI = [{"role": "user", "content": "hi"}]
USAGE = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
)
GOOD = Script((chunk("a"), chunk("b"), USAGE, DONE))


def _gateway(serve: Serve, url: str, scripts: dict[str, Script], **overrides: Any) -> str:
    """The gateway with one arm a script, named as the script, its upstream model the same."""
    arms = [{"name": n, "upstream": {"base_url": url, "model": n}} for n in scripts]
    return serve(arms=orjson.dumps(arms).decode(), api_keys=KEY, **overrides)


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)


def _body(model: str, stream: bool) -> bytes:
    return orjson.dumps({"model": model, "messages": HI, "stream": stream})


def _failures(base: str) -> list[str]:
    text = httpx.get(f"{base}/metrics").text
    return [line for line in text.splitlines() if line.startswith("bandit_gateway_upstream_fail")]


# Redirects


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("stream", [False, True])
def test_a_redirect_is_not_followed(
    serve: Serve, scripted: Start, status: int, stream: bool
) -> None:
    """An upstream's redirect would send the query (a 307: the key too, on the same origin) to
    another address and pass back what answered there: it is the arm's failure instead."""
    elsewhere, target = scripted({"m": GOOD})
    moved = {"moved": Script((), status, "text/plain", (("location", elsewhere + "/x"),))}
    url, _ = scripted(moved | {"good": GOOD})
    base = _gateway(serve, url, moved | {"good": GOOD}, gateway_retries=0)
    refused = httpx.post(
        f"{base}/v1/chat/completions", content=_body("moved", stream), headers=AUTH
    )
    assert refused.status_code == 502, refused.text
    assert f"moved: status {status}, a redirect" in refused.json()["detail"]
    assert target.requests == 0
    assert 'bandit_gateway_upstream_failures_total{arm="moved",kind="status"} 1.0' in _failures(
        base
    )
