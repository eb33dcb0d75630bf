"""A live service for tests that need real HTTP from outside the process: uvicorn on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2 as httpx
import openai
import pytest
import uvicorn

from bandit_router.http.app import create_app
from bandit_router.http.heads import head_deadline
from bandit_router.settings import Settings
from tests.conftest import SettingsFactory, _free_port


class Servers:
    """ASGI apps served by uvicorn, each in a thread on a free loopback port, stopped together."""

    def __init__(self) -> None:
        self._running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(self, app: Any, what: str, **config: Any) -> int:
        """Serve ``app`` (``config``: uvicorn's options); its port, once it listens."""
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        self._running.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.02)
        return port

    def start_service(self, settings: Settings, http: str = "auto", **config: Any) -> int:
        """The service's app for ``settings``, served as `serve` serves it (its heads and
        sends timed); its port."""
        protocol = head_deadline(settings.head_timeout_s, http, settings.send_timeout_s)
        return self.start(create_app(settings), "the service", http=protocol, **config)

    @property
    def running(self) -> list[uvicorn.Server]:
        """The servers, in the order started."""
        return [server for server, _ in self._running]

    def stop(self) -> None:
        for server, thread in self._running:
            server.should_exit = True
            thread.join(timeout=20)


@pytest.fixture
def serve(make_settings: SettingsFactory) -> Iterator[Callable[..., str]]:
    """Start the app under uvicorn on a free loopback port; returns its base URL."""
    servers = Servers()

    def start(
        log_level: str = "warning", root_path: str = "", http: str = "auto", **overrides: Any
    ) -> str:
        settings: Settings = make_settings(**overrides)
        port = servers.start_service(
            settings,
            http,
            log_level=log_level,  # "info" writes an access line a request, as the CLI's default
            root_path=root_path,  # what a proxy mounting the app under a path prefix sets
        )
        return f"http://127.0.0.1:{port}"

    yield start
    servers.stop()


# The gateway's tests: the official OpenAI SDK on a served gateway, and the reward it recorded.

_SDK: list[openai.OpenAI] = []


def sdk_client(base: str, key: str) -> openai.OpenAI:
    """The OpenAI SDK on the gateway at ``base`` (no retries: a test sees each answer), closed
    after the test by ``close_sdk_clients``."""
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    _SDK.append(client)
    return client


@pytest.fixture(autouse=True)
def close_sdk_clients() -> Iterator[None]:
    """Closes the clients ``sdk_client`` made (autouse where imported)."""
    yield
    while _SDK:
        _SDK.pop().close()


def final_parts(base: str, event_id: str, key: str) -> dict[str, float]:
    """Close the event's reward now (``final``); the parts the gateway had recorded."""
    done = httpx.post(
        f"{base}/reward", json={"event_id": event_id, "final": True}, headers={"x-api-key": key}
    )
    assert done.status_code == 200, done.text
    parts: dict[str, float] = done.json()["parts"]
    return parts
