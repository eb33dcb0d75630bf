"""The operators' dashboard: one page and its two static files, served by the app itself.

The page's script reads ``GET /stats`` every few seconds and draws the charts as SVG; no chart
library and nothing fetched from elsewhere, so it works on a machine with no internet access.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from bandit_router.http.openapi import OPS

STATIC_URL = "/static"
# The page runs its own script and reads /stats and /deployments, all from its origin: a value
# that ever reached its markup could run no script there, and no other site may frame it.
PAGE_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "x-frame-options": "DENY",  # frame-ancestors, for browsers without it
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _static_dir() -> str:
    return str(files("bandit_router.http") / "static")


def register_dashboard(app: FastAPI, dependencies: Sequence[Any]) -> None:
    """Add ``GET /dashboard`` and the ``/static`` files it loads (they hold no data)."""
    app.mount(STATIC_URL, StaticFiles(directory=_static_dir()), name="static")
    page = (files("bandit_router.http") / "static" / "dashboard.html").read_text(encoding="utf-8")

    @app.get(
        "/dashboard",
        response_class=HTMLResponse,
        tags=["operations"],
        dependencies=list(dependencies),
        responses=OPS,
    )
    async def dashboard() -> HTMLResponse:
        """The live dashboard page: traffic, rewards, exploration, baselines and settings,
        refreshed from `GET /stats` every 5 s (`?refresh=SECONDS`, `?window=EVENTS`)."""
        return HTMLResponse(page, headers=PAGE_HEADERS)
