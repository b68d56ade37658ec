"""POST /v1/detokenize (one grid -> image/png) and /v1/detokenize/batch (grids -> JSON)."""

from __future__ import annotations

import asyncio
import base64

import torch
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from service.admission import guarded, refusals, request_deadline
from service.deps import SettingsDep, StateDep
from service.errors import unprocessable
from service.images import encode_png
from service.schemas import (
    DetokenizeBatchRequest,
    DetokenizeBatchResponse,
    DetokenizeRequest,
    ErrorResponse,
)
from service.settings import Settings
from service.state import ServedModel, ServiceState
from vqio import format_size

router = APIRouter(prefix="/v1", tags=["detokenize"])

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (404, 408, 413, 422, 500, 503)
}
_PNG: dict[int | str, dict[str, object]] = {
    200: {"content": {"image/png": {}}, "description": "The image, PNG"},
    **_ERRORS,
}


def check_grid(
    rows: list[list[int]], *, label: str, codebook_size: int, max_side: int
) -> torch.Tensor:
    """A JSON grid -> int64 (h, w): the one check of code ids on the detokenize path.
    422 naming the problem if it is ragged, too big or holds ids outside [0, codebook_size);
    the schema has already refused empty grids and non-integers."""
    h, w = len(rows), len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != w:
            raise unprocessable(
                f"{label} is ragged: row {i} has {len(row)} codes, row 0 has {w}; "
                "every row needs the same length",
                "invalid_codes",
            )
    if h > max_side or w > max_side:
        raise unprocessable(
            f"{label} is {format_size(h, w)} codes; the limit is {max_side} codes per side "
            "(setting max_grid_side)",
            "grid_too_large",
        )
    low = min(min(row) for row in rows)
    high = max(max(row) for row in rows)
    if low < 0 or high >= codebook_size:
        bad = low if low < 0 else high
        raise unprocessable(
            f"{label} holds code id {bad}; ids must lie in [0, {codebook_size})", "invalid_codes"
        )
    return torch.tensor(rows, dtype=torch.int64)  # (h, w)


def _to_pngs(images: list[torch.Tensor]) -> list[bytes]:
    return [encode_png(img.permute(1, 2, 0).contiguous().numpy()) for img in images]  # (H, W, 3)


async def _decode(
    served: ServedModel, grids: list[torch.Tensor], state: ServiceState, deadline: float
) -> list[bytes]:
    """Reserve the memory of the grids' images, decode them in the batcher, encode PNGs."""
    pixels = sum(g.numel() * served.f**2 for g in grids)
    async with state.budget.reserve(served.cost.detokenize(pixels)):
        futures = served.decoder.submit_many(grids, deadline=deadline)
        try:
            images = await asyncio.gather(*futures)
        finally:
            for future in futures:
                future.cancel()  # a no-op for those that ran; drops the rest unrun
        return await run_in_threadpool(_to_pngs, list(images))


async def _detokenize(
    request: Request,
    state: ServiceState,
    settings: Settings,
    model: str,
    grids: list[tuple[str, list[list[int]]]],
) -> tuple[list[bytes], list[tuple[int, int]]]:
    deadline = request_deadline(state, request)
    served = state.get(model)
    if len(grids) > settings.max_images_per_request:
        raise unprocessable(
            f"{len(grids)} grids in one request; the limit is "
            f"{settings.max_images_per_request} (setting max_images_per_request)",
            "too_many_images",
        )
    tensors = [
        check_grid(
            rows, label=label, codebook_size=served.codebook_size, max_side=settings.max_grid_side
        )
        for label, rows in grids
    ]
    with refusals(state, model, "detokenize"):
        pngs = await guarded(request, deadline, lambda: _decode(served, tensors, state, deadline))
    state.metrics.images.labels(model, "detokenize").inc(len(pngs))
    state.metrics.tokens.labels(model, "detokenize").inc(sum(t.numel() for t in tensors))
    sizes = [(int(t.shape[0]) * served.f, int(t.shape[1]) * served.f) for t in tensors]
    return pngs, sizes


@router.post(
    "/detokenize",
    summary="One code grid -> image/png",
    response_class=Response,
    responses=_PNG,
)
async def detokenize(
    body: DetokenizeRequest, request: Request, state: StateDep, settings: SettingsDep
) -> Response:
    """`{"model": ..., "codes": [[...], ...]}` -> the image as PNG; `X-Image-Size` is `HxW`."""
    pngs, sizes = await _detokenize(request, state, settings, body.model, [("codes", body.codes)])
    h, w = sizes[0]
    return Response(
        content=pngs[0],
        media_type="image/png",
        headers={"X-Model": body.model, "X-Image-Size": f"{h}x{w}"},
    )


@router.post(
    "/detokenize/batch",
    summary="Several code grids -> base64 PNGs",
    responses=_ERRORS,
)
async def detokenize_batch(
    body: DetokenizeBatchRequest, request: Request, state: StateDep, settings: SettingsDep
) -> DetokenizeBatchResponse:
    """`{"model": ..., "batch": [grid, ...]}` -> one base64 PNG per grid, in request order."""
    grids = [(f"batch[{i}]", grid) for i, grid in enumerate(body.batch)]
    pngs, sizes = await _detokenize(request, state, settings, body.model, grids)
    return DetokenizeBatchResponse(
        model=body.model,
        images=[base64.b64encode(png).decode("ascii") for png in pngs],
        image_size=[list(size) for size in sizes],
    )
