"""A live service for tests that need real HTTP from outside the process: uvicorn on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn

from bandit_router.http.app import create_app
from bandit_router.settings import Settings
from tests.conftest import SettingsFactory, _free_port


@pytest.fixture
def serve(make_settings: SettingsFactory) -> Iterator[Callable[..., str]]:
    """Start the app under uvicorn on a free loopback port; returns its base URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(log_level: str = "warning", root_path: str = "", **overrides: Any) -> str:
        settings: Settings = make_settings(**overrides)
        port = _free_port()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level=log_level,  # "info" writes an access line a request, as the CLI's default
            root_path=root_path,  # what a proxy mounting the app under a path prefix sets
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=20)
