"""The README's client example, run as is against a live service."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clients import python_httpx
from tests.live import serve

__all__ = ["serve"]  # the fixture, imported


def test_python_client_reports_latency_then_rating(
    serve: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    base = serve(reward_weights="rating=0.7,latency=0.3", api_keys="app-key")
    results = python_httpx.main(base, "app-key")
    assert len(results) == len(python_httpx.QUERIES)
    for result in results:
        assert result["status"] == "final"
        assert set(result["parts"]) == {"latency_ms", "rating"}
        assert 0 <= result["reward"] <= 1
    out = capsys.readouterr().out
    assert out.count("latency") >= 3 and "reported: pending" in out


def test_python_client_keeps_working_without_the_router(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert python_httpx.main("http://127.0.0.1:9") == []
    assert f"using {python_httpx.DEFAULT_ARM}" in capsys.readouterr().out
