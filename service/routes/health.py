"""GET /healthz (the process answers) and GET /readyz (models loaded)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import StateDep
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: 200 once every model is loaded, 503 before",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
)
async def readyz(state: StateDep) -> Readiness | JSONResponse:
    ready = Readiness(status="ready" if state.ready else "loading", models=sorted(state.models))
    if not state.ready:
        return JSONResponse(ready.model_dump(), status_code=503)
    return ready
