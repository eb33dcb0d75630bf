"""Replay through a running service: every step is a real ``POST /choose`` and ``POST /reward``.

End to end (HTTP, Redis, the service's own policy and settings), so its numbers can be checked
against the in-process replay of the same seed. Standard library only (one keep-alive
connection).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from bandit_router.policies.base import Arm
from bandit_router.sim.dataset import Row


class ServiceError(RuntimeError):
    """The service answered with an error; the message carries its status and detail."""


class HttpStepper:
    """A ``replay.Stepper`` that asks the service at ``url`` to choose and learn."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--via must be an http(s) URL, got {url!r}")
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        self._conn = kind(parts.hostname, parts.port, timeout=timeout_s)
        self._base = parts.path.rstrip("/")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if data else {}
        self._conn.request(method, self._base + path, body=data, headers=headers)
        response = self._conn.getresponse()
        payload = response.read()
        if response.status != 200:
            said = " ".join(payload.decode(errors="replace").split())[:300]  # one line
            raise ServiceError(f"{method} {path}: HTTP {response.status}: {said}")
        return json.loads(payload)

    def policy(self) -> str:
        """The policy spec the service runs (from ``GET /stats``)."""
        return str(self.request("GET", "/stats")["policy"])

    def step(self, i: int, row: Row, arms: Sequence[Arm]) -> tuple[str, float]:
        body: dict[str, Any] = {"query": row.query, "arms": [a.name for a in arms]}
        if row.context:
            body["features"] = dict(row.context)
        decision = self.request("POST", "/choose", body)
        parts = row.outcomes[decision["arm"]].present()
        # A replay row holds every part there will ever be: the event is complete now.
        body = {"event_id": decision["event_id"], **parts, "final": True}
        result = self.request("POST", "/reward", body)
        return str(decision["arm"]), float(result["reward"])

    def close(self) -> None:
        self._conn.close()
