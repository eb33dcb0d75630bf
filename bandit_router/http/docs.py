"""API docs that render with no internet access: Swagger UI served by the app itself.

FastAPI's default pages load their JavaScript from a CDN, so offline they show a blank page. The
assets here come from the pinned ``fastapi-offline`` package (Swagger UI 5); only its files are
used, the app stays a plain FastAPI. ReDoc is left out: even bundled, it loads its logo from the
internet.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
DOCS_URL = "/docs"


def _assets_dir() -> str:
    return str(files("fastapi_offline") / "static")


def register_docs(app: FastAPI) -> None:
    """Serve ``/docs`` from local assets (build the app with ``docs_url=None``)."""
    app.mount(ASSETS_URL, StaticFiles(directory=_assets_dir()), name="docs-assets")
    redirect_url = app.swagger_ui_oauth2_redirect_url or f"{DOCS_URL}/oauth2-redirect"

    # The routes reach the app through the request: FastAPI caches each endpoint function
    # process-wide, so one that held the app would keep it (and its models) alive for good.
    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        this: FastAPI = request.app
        return get_swagger_ui_html(
            openapi_url=f"{root}{this.openapi_url}",
            title=f"{this.title} - API",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=this.swagger_ui_parameters,
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
