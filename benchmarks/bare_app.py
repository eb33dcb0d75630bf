"""The reference for ``/choose``: a bare FastAPI POST endpoint with the same bodies.

It validates the same request model and returns a fixed response of the same shape, so the
ratio against it measures what features, VW and Redis add on top of FastAPI and uvicorn.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI

from bandit_router.http.contract import ChooseRequest, ChooseResponse

_PROBABILITIES = {"4b": 0.016666666666666666, "7b": 0.016666666666666666, "14b": 0.9666666666666667}


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/choose")
    async def choose(body: ChooseRequest) -> ChooseResponse:
        return ChooseResponse(
            event_id=uuid.uuid4().hex,
            arm="14b",
            probability=_PROBABILITIES["14b"],
            probabilities=_PROBABILITIES,
            policy="egreedy:epsilon=0.05",
            model_version=0,
        )

    return app
