"""POST /v1/detokenize (one grid -> image/png) and /v1/detokenize/batch (grids -> JSON)."""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.admission import (
    guarded,
    metered,
    pass_memory,
    pieces,
    refusals,
    request_deadline,
    reserved,
)
from service.bodies import detokenize_grids, grid_rows
from service.budget import grid_json_bytes, grid_parse_bytes
from service.chunked import PIECE, b64_json_string, dump, json_array, json_object
from service.deps import SettingsDep, StateDep
from service.errors import APIError, ErrorCode, ErrorResponse
from service.images import encode_png
from service.schemas import (
    DetokenizeBatchRequest,
    DetokenizeBatchResponse,
    DetokenizeRequest,
)
from service.settings import Settings
from service.state import ServedModel, ServiceState
from vqio import format_size

router = APIRouter(prefix="/v1", tags=["detokenize"])

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (404, 408, 413, 415, 422, 500, 503)
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
            raise APIError(
                ErrorCode.INVALID_CODES,
                f"{label} is ragged: row {i} has {len(row)} codes, row 0 has {w}; "
                "every row needs the same length",
            )
    if h > max_side or w > max_side:
        raise APIError(
            ErrorCode.GRID_TOO_LARGE,
            f"{label} is {format_size(h, w)} codes; the limit is {max_side} codes per side "
            "(setting max_grid_side)",
        )
    low = min(min(row) for row in rows)
    high = max(max(row) for row in rows)
    if low < 0 or high >= codebook_size:
        bad = low if low < 0 else high
        raise APIError(
            ErrorCode.INVALID_CODES,
            f"{label} holds code id {bad}; ids must lie in [0, {codebook_size})",
        )
    # Converted a block of rows at a time (service/chunked.py): one call over a whole
    # large grid would hold the GIL, and the event loop with it, until it ends.
    out = torch.empty((h, w), dtype=torch.int64)
    step = max(1, PIECE // w)
    for i in range(0, h, step):
        out[i : i + step] = torch.tensor(rows[i : i + step], dtype=torch.int64)
    return out  # (h, w)


def _to_pngs(images: list[torch.Tensor]) -> list[bytes]:
    return [encode_png(img.permute(1, 2, 0).contiguous().numpy()) for img in images]  # (H, W, 3)


async def _decode(
    served: ServedModel, grids: list[torch.Tensor], state: ServiceState, deadline: float
) -> list[bytes]:
    """Per piece of the request (``pieces``): reserve the memory of its grids' images,
    decode them in the batcher, encode PNGs, release."""
    pixels = [g.numel() * served.f**2 for g in grids]
    costs = [served.cost.detokenize(n) for n in pixels]
    split = state.settings.lane_split_pixels
    quota = min(state.budget.capacity, served.cost.detokenize(state.settings.max_batch_pixels))
    pngs: list[bytes] = []
    for piece in pieces(costs, quota):
        small = all(n <= split for n in pixels[piece])
        async with pass_memory(state, sum(costs[piece]), deadline, small=small):
            futures = served.decoder.submit_many(grids[piece], deadline=deadline)
            try:
                images = await asyncio.gather(*futures)
            finally:
                for future in futures:
                    future.cancel()  # a no-op for those that ran; drops the rest unrun
            pngs.extend(await run_in_threadpool(_to_pngs, list(images)))
            del images
    return pngs


def _parse(
    body: bytes, batch: bool, state: ServiceState, settings: Settings
) -> tuple[str, list[torch.Tensor]]:
    """JSON -> (the model, its grids as int64 tensors), on a worker thread, typed and one
    grid at a time (``service.bodies``): a body of the wrong types ends at its first wrong
    element, and no one call holds the event loop for more than a grid's decode."""
    model, grids = detokenize_grids(
        body,
        batch=batch,
        max_images=settings.max_images_per_request,
        max_side=settings.max_grid_side,
    )
    served = state.get(model)
    tensors = [
        check_grid(
            grid_rows(raw, label=label, max_side=settings.max_grid_side),
            label=label,
            codebook_size=served.codebook_size,
            max_side=settings.max_grid_side,
        )
        for label, raw in grids
    ]
    # Each grid's lists are gone once converted: only the tensors (8 bytes per code) remain.
    return model, tensors


async def _detokenize(
    request: Request, state: ServiceState, settings: Settings, *, batch: bool
) -> tuple[str, list[bytes], list[tuple[int, int]]]:
    """Read, reserve, parse, decode. The body and its parse are priced in the input pool
    before either is allocated: one grid's lists up front, the rest per byte as the body
    arrives (``service.bodies`` says why that bounds it); the images in the main pool
    before the model runs."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):  # as tokenize answers
        raise APIError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"content-type {media or 'missing'!r} is not supported; send application/json "
            "with {'model': ..., 'codes': [[...], ...]} (batch: {'batch': [grid, ...]})",
        )
    deadline = request_deadline(state, request)
    with refusals(state, "*", "detokenize"):
        lists = grid_parse_bytes(settings.max_grid_side)
        async with reserved(state.input_budget, lists, deadline) as held:
            # Priced chunk by chunk as it arrives: a body whose parse can never fit is
            # refused (413) mid-body, before the rest of it is received.
            body = await metered(request, held, grid_json_bytes).body()
            model, tensors = await run_in_threadpool(_parse, body, batch, state, settings)
            held.resize(len(body) + sum(8 * t.numel() for t in tensors))
            served = state.get(model)
            with refusals(state, model, "detokenize"):
                pngs = await guarded(
                    request, deadline, lambda: _decode(served, tensors, state, deadline)
                )
    state.metrics.images.labels(model, "detokenize").inc(len(pngs))
    state.metrics.tokens.labels(model, "detokenize").inc(sum(t.numel() for t in tensors))
    sizes = [(int(t.shape[0]) * served.f, int(t.shape[1]) * served.f) for t in tensors]
    return model, pngs, sizes


def _json_body(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its JSON itself (to price it first)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema.model_json_schema()}},
        }
    }


@router.post(
    "/detokenize",
    summary="One code grid -> image/png",
    response_class=Response,
    responses=_PNG,
    openapi_extra=_json_body(DetokenizeRequest),
)
async def detokenize(request: Request, state: StateDep, settings: SettingsDep) -> Response:
    """`{"model": ..., "codes": [[...], ...]}` -> the image as PNG; `X-Image-Size` is `HxW`."""
    model, pngs, sizes = await _detokenize(request, state, settings, batch=False)
    h, w = sizes[0]
    return Response(
        content=pngs[0],
        media_type="image/png",
        headers={"X-Model": model, "X-Image-Size": f"{h}x{w}"},
    )


def _batch_body(model: str, pngs: list[bytes], sizes: list[tuple[int, int]]) -> bytes:
    """The JSON of ``DetokenizeBatchResponse``, byte for byte, built a piece at a time
    (``service.chunked``): run on a worker thread, it leaves the event loop free."""
    return json_object(
        model=dump(model),
        images=json_array([b64_json_string(png) for png in pngs]),
        image_size=dump(sizes),
    )


@router.post(
    "/detokenize/batch",
    summary="Several code grids -> base64 PNGs",
    response_model=DetokenizeBatchResponse,
    responses=_ERRORS,
    openapi_extra=_json_body(DetokenizeBatchRequest),
)
async def detokenize_batch(request: Request, state: StateDep, settings: SettingsDep) -> Response:
    """`{"model": ..., "batch": [grid, ...]}` -> one base64 PNG per grid, in request order."""
    model, pngs, sizes = await _detokenize(request, state, settings, batch=True)
    # A DetokenizeBatchResponse (response_model, the OpenAPI docs), serialized here.
    content = await run_in_threadpool(_batch_body, model, pngs, sizes)
    return Response(content=content, media_type="application/json")
