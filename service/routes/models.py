"""GET /v1/models, /v1/models/{name}, /v1/models/{name}/usage, /v1/models/{name}/card."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from service.deps import StateDep
from service.errors import APIError, ErrorCode, ErrorResponse
from service.schemas import (
    ModelInfo,
    ModelList,
    UsageHistoryPoint,
    UsageHistoryResponse,
    UsageResponse,
)
from service.state import ServedModel

router = APIRouter(prefix="/v1/models", tags=["models"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}


# The artifact's own card first (models/default/card.md), else a Hub card (vq.hub writes one).
CARD_NAMES = ("card.md", "README.md")


def model_info(model: ServedModel) -> ModelInfo:
    """What the artifact's config.json says about the model (vq/artifact.py, format 1)."""
    meta = model.tokenizer.metadata
    quantizer = meta.get("quantizer") or {}
    levels = quantizer.get("levels")
    return ModelInfo(
        name=model.name,
        kind=str(quantizer.get("kind", model.tokenizer.config.quantizer.kind)),
        codebook_size=model.codebook_size,
        f=model.f,
        code_dim=model.tokenizer.code_dim,
        levels=list(levels) if levels is not None else None,
        codebook=quantizer.get("codebook"),
        grad_estimator=quantizer.get("grad_estimator"),
        image_range=list(meta.get("image_range", [-1.0, 1.0])),
        format_version=meta.get("format_version"),
        created=meta.get("created"),
        versions=dict(meta.get("versions") or {}),
        metrics=dict(meta.get("metrics") or {}),
        card=any((model.path / card).is_file() for card in CARD_NAMES),
        device=str(model.tokenizer.device),
        backend=model.backend.name,
        precision=model.backend.precision,
    )


@router.get("", summary="Served models and their metadata", responses=_ERRORS)
async def list_models(state: StateDep) -> ModelList:
    state.require_ready()
    return ModelList(models=[model_info(state.get(name)) for name in state.models])


@router.get("/{name}", summary="One model's metadata", responses=_ERRORS)
async def get_model(name: str, state: StateDep) -> ModelInfo:
    return model_info(state.get(name))


@router.get("/{name}/usage", summary="Served-traffic codebook usage", responses=_ERRORS)
async def get_usage(name: str, state: StateDep) -> UsageResponse:
    """Statistics of the codes this service has produced for `name` (tokenize traffic),
    over the last `window` tokens: the definitions of docs/design.md."""
    return state.get(name).usage_report()


@router.get(
    "/{name}/usage/history", summary="Window usage and perplexity since start", responses=_ERRORS
)
async def get_usage_history(name: str, state: StateDep) -> UsageHistoryResponse:
    """At most ~257 points spanning the time since the model was loaded (the dashboard's
    usage-over-time line); empty before the first tokenize request."""
    model = state.get(name)
    points, spacing = model.usage_history()
    return UsageHistoryResponse(
        model=model.name,
        codebook_size=model.codebook_size,
        spacing_s=spacing,
        points=[
            UsageHistoryPoint(
                t=p.t,
                tokens_seen=p.tokens_seen,
                window_usage=p.window_usage,
                perplexity=p.perplexity,
            )
            for p in points
        ],
    )


@router.get(
    "/{name}/card",
    summary="The model card (Markdown): what the model is, its full-image figures",
    response_class=PlainTextResponse,
    # Its errors are JSON although its answer is text: said per status, not by the class.
    responses={
        **{
            status: {
                "description": "Error",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                },
            }
            for status in _ERRORS
        },
        200: {"content": {"text/markdown": {}}},
    },
)
async def get_card(name: str, state: StateDep) -> PlainTextResponse:
    """The artifact's ``card.md`` (or Hub ``README.md``), as text/markdown; 404 ``not_found``
    when the artifact has none. The dashboard links it beside the training card."""
    model = state.get(name)
    for card in CARD_NAMES:
        path = model.path / card
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")
    raise APIError(
        ErrorCode.NOT_FOUND,
        f"model {name!r} has no model card ({' or '.join(CARD_NAMES)} in its artifact folder)",
    )
