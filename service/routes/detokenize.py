"""POST /v1/detokenize: code grids -> images (PNG)."""

from __future__ import annotations

import asyncio
import base64

import torch
from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from service.batcher import BatcherClosed
from service.deps import SettingsDep, StateDep
from service.errors import APIError, unprocessable
from service.images import encode_png
from service.schemas import DetokenizeBatchResponse, DetokenizeRequest, ErrorResponse
from vqio import format_size

router = APIRouter(prefix="/v1", tags=["detokenize"])

_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "content": {
            "image/png": {"description": "with 'codes': the image"},
            "application/json": {"schema": DetokenizeBatchResponse.model_json_schema()},
        },
        "description": "'codes' -> image/png; 'batch' -> JSON with base64 PNGs",
    },
    **{code: {"model": ErrorResponse} for code in (404, 413, 422, 503)},
}


def check_grid(
    rows: list[list[int]], *, label: str, codebook_size: int, max_side: int
) -> torch.Tensor:
    """A JSON grid -> int64 (h, w); 422 naming the problem if it is empty, ragged, too big
    or holds ids outside [0, codebook_size)."""
    if not rows or not rows[0]:
        raise unprocessable(
            f"{label} is empty; expected a [h][w] grid with h, w >= 1", "invalid_codes"
        )
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


@router.post("/detokenize", summary="Code grids -> images", responses=_RESPONSES)
async def detokenize(body: DetokenizeRequest, state: StateDep, settings: SettingsDep) -> Response:
    """`{"codes": [[...]]}` returns one image/png; `{"batch": [grid, ...]}` returns JSON
    with one base64 PNG per grid, in request order."""
    served = state.get(body.model)
    if body.codes is not None:
        grids = [("codes", body.codes)]
    else:
        assert body.batch is not None  # the request model requires one of the two
        if not body.batch:
            raise unprocessable("batch is empty; give at least one grid", "invalid_codes")
        if len(body.batch) > settings.max_images_per_request:
            raise unprocessable(
                f"{len(body.batch)} grids in one request; the limit is "
                f"{settings.max_images_per_request} (setting max_images_per_request)",
                "too_many_images",
            )
        grids = [(f"batch[{i}]", grid) for i, grid in enumerate(body.batch)]
    tensors = [
        check_grid(
            rows, label=label, codebook_size=served.codebook_size, max_side=settings.max_grid_side
        )
        for label, rows in grids
    ]
    assert served.decoder is not None  # set when the model is loaded
    try:
        images = await asyncio.gather(*(served.decoder.submit(t) for t in tensors))
    except BatcherClosed as exc:
        raise APIError(503, "not_ready", str(exc)) from None
    except ValueError as exc:
        raise unprocessable(str(exc)) from None
    state.metrics.images.labels(body.model, "detokenize").inc(len(images))
    state.metrics.tokens.labels(body.model, "detokenize").inc(sum(t.numel() for t in tensors))

    pngs = await run_in_threadpool(_to_pngs, list(images))
    if body.codes is not None:
        h, w = images[0].shape[-2:]
        return Response(
            content=pngs[0],
            media_type="image/png",
            headers={"X-Model": body.model, "X-Image-Size": f"{h}x{w}"},
        )
    payload = DetokenizeBatchResponse(
        model=body.model,
        images=[base64.b64encode(png).decode("ascii") for png in pngs],
        image_size=[(int(img.shape[-2]), int(img.shape[-1])) for img in images],
    )
    return Response(content=payload.model_dump_json(), media_type="application/json")
