"""GET /healthz (the process answers) and GET /readyz (models loaded)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.deps import StateDep
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: 200 once every model is loaded, 503 while loading or draining",
    responses={503: {"model": Readiness, "description": "loading, or draining after SIGTERM"}},
)
async def readyz(state: StateDep, response: Response) -> Readiness:
    """Route traffic here only while this answers 200. It turns 503 at once on SIGTERM
    (draining: in-flight requests finish, new ones are refused) and stays 503 until exit."""
    status = "draining" if state.draining else "ready" if state.ready else "loading"
    if status != "ready":
        response.status_code = 503
    return Readiness(status=status, models=sorted(state.models))
