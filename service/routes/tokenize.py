"""POST /v1/tokenize: images -> code grids, through the model's micro-batcher."""

from __future__ import annotations

import asyncio
import binascii
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from service.admission import (
    guarded,
    metered,
    pass_memory,
    pieces,
    refusals,
    request_deadline,
    reserved,
)
from service.bodies import tokenize_images
from service.budget import IMAGES_JSON_BYTES_PER_IMAGE, images_json_bytes, upload_bytes
from service.chunked import b64decode, dump, grid_json, json_array, json_object
from service.deps import SettingsDep, StateDep
from service.errors import APIError, ErrorCode, ErrorResponse
from service.images import FitMode, fitted_size, header_size, load_image
from service.schemas import TokenizeJSONRequest, TokenizeResponse
from service.settings import Settings
from service.state import ServedModel, ServiceState

router = APIRouter(prefix="/v1", tags=["tokenize"])

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 408, 413, 415, 422, 500, 503)
}

IMAGE_MEDIA_TYPES = "image/png, image/jpeg, image/webp, image/bmp, image/gif"

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "format": "binary"},
                            "description": "Image files: PNG, JPEG, WebP, BMP or GIF",
                        }
                    },
                    "required": ["files"],
                },
                "encoding": {"files": {"contentType": IMAGE_MEDIA_TYPES}},
            },
            "application/json": {"schema": TokenizeJSONRequest.model_json_schema()},
        },
    }
}


_WHITESPACE = b" \t\n\r\f\v"


def _b64decode(texts: list[str], i: int, label: str) -> bytes:
    """``texts[i]`` (an ``images[i]`` entry) -> the file's bytes; the text is dropped from
    ``texts`` once converted, and whitespace in one pass over bytes (never a string per run
    of it), so that at most two copies of the entry live beside the result: what
    ``images_json_bytes`` priced."""
    try:
        data = texts[i].encode("ascii")
    except UnicodeEncodeError:
        raise APIError(
            ErrorCode.INVALID_BASE64, f"{label} is not valid base64: it holds non-ASCII text"
        ) from None
    texts[i] = ""
    if data.startswith(b"data:"):
        # data:image/png;base64,....
        header, sep, data = data.partition(b",")
        if not sep or not header.endswith(b";base64"):
            raise APIError(
                ErrorCode.INVALID_BASE64, f"{label} is a data: URL without ';base64,' data"
            )
    data = data.translate(None, _WHITESPACE)
    try:
        return b64decode(data)
    except (binascii.Error, ValueError) as exc:
        raise APIError(ErrorCode.INVALID_BASE64, f"{label} is not valid base64: {exc}") from None


async def _multipart_payloads(request: Request, settings: Settings) -> list[tuple[str, bytes]]:
    limit = settings.max_images_per_request
    try:
        form = await request.form(max_files=limit, max_fields=16)
    except HTTPException as exc:
        # Starlette stops at max_files with a 400 of its own; too many images is one error,
        # the same for multipart and JSON bodies.
        if str(exc.detail).startswith("Too many files"):
            raise APIError(
                ErrorCode.TOO_MANY_IMAGES,
                f"more than {limit} images in one request; the limit is {limit} "
                "(setting max_images_per_request)",
            ) from None
        raise
    try:
        parts = form.getlist("files")
        if not parts:
            raise APIError(
                ErrorCode.NO_IMAGES, "no images: send them as multipart file fields named 'files'"
            )
        payloads = []
        for i, part in enumerate(parts):
            if not isinstance(part, UploadFile):
                raise APIError(
                    ErrorCode.NOT_A_FILE,
                    f"files[{i}] is a text field; send image files under 'files'",
                )
            payloads.append((f"files[{i}] ({part.filename})", await part.read()))
        return payloads
    finally:
        await form.close()


def _parse_json(body: bytes, settings: Settings) -> list[tuple[str, bytes]]:
    """``{"images": [base64, ...]}`` -> (label, file bytes) per image, typed (``service.bodies``:
    a body of the wrong types ends at its first wrong element)."""
    texts = tokenize_images(body, max_images=settings.max_images_per_request)
    if len(texts) > settings.max_images_per_request:
        raise APIError(
            ErrorCode.TOO_MANY_IMAGES,
            f"{len(texts)} images in one request; the limit is "
            f"{settings.max_images_per_request} (setting max_images_per_request)",
        )
    return [(f"images[{i}]", _b64decode(texts, i, f"images[{i}]")) for i in range(len(texts))]


async def _json_payloads(request: Request, settings: Settings) -> list[tuple[str, bytes]]:
    body = await request.body()
    # Parsing and base64-decoding take time in proportion to the body: off the event loop.
    return await run_in_threadpool(_parse_json, body, settings)


def _prepare(
    payloads: list[tuple[str, bytes]], *, f: int, fit: FitMode, max_side: int
) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    out = []
    for label, data in payloads:
        arr, size = load_image(data, label=label, f=f, fit=fit, max_side=max_side)
        out.append((torch.from_numpy(arr).permute(2, 0, 1), size))  # (H, W, 3) -> (3, H, W)
    return out


def _priced(
    payloads: list[tuple[str, bytes]], served: ServedModel, *, fit: FitMode, max_side: int
) -> list[tuple[int, int]]:
    """(predicted peak bytes, fitted pixels) of each image, from its header (nothing
    decoded). The EXIF orientation is not read (it may sit after the pixel data): a turn
    keeps the pixel count, and the fitted size is priced for both orientations."""
    out = []
    for label, data in payloads:
        h, w = header_size(data, label=label, max_side=max_side)
        fitted = max(
            fh * fw
            for fh, fw in (
                fitted_size(h, w, f=served.f, fit=fit),
                fitted_size(w, h, f=served.f, fit=fit),
            )
        )
        out.append((served.cost.tokenize(h * w, fitted), fitted))
    return out


async def _encode(
    state: ServiceState,
    served: ServedModel,
    payloads: list[tuple[str, bytes]],
    *,
    fit: FitMode,
    settings: Settings,
    deadline: float,
) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """Price the images, then per piece: reserve its memory, decode its images and run them
    through the batcher, release."""
    # Header reads, one per image: off the event loop like the decoding that follows.
    priced = await run_in_threadpool(
        _priced, payloads, served, fit=fit, max_side=settings.max_image_side
    )
    codes: list[torch.Tensor] = []
    sizes: list[tuple[int, int]] = []
    quota = min(
        state.budget.capacity,
        served.cost.tokenize(settings.max_batch_pixels, settings.max_batch_pixels),
    )
    for piece in pieces([cost for cost, _ in priced], quota):
        small = all(pixels <= settings.lane_split_pixels for _, pixels in priced[piece])
        cost = sum(cost for cost, _ in priced[piece])
        async with pass_memory(state, cost, deadline, small=small):
            prepared = await run_in_threadpool(
                _prepare, payloads[piece], f=served.f, fit=fit, max_side=settings.max_image_side
            )
            futures = served.encoder.submit_many(
                [image for image, _ in prepared], deadline=deadline
            )
            try:
                codes.extend(await asyncio.gather(*futures))
            finally:
                for future in futures:
                    future.cancel()  # a no-op for those that ran; drops the rest unrun
            sizes.extend(size for _, size in prepared)
            del prepared
    return codes, sizes


def _body(
    model: str, codebook_size: int, codes: list[torch.Tensor], sizes: list[tuple[int, int]]
) -> bytes:
    """The JSON of ``TokenizeResponse``, byte for byte, built a piece at a time
    (``service.chunked``): run on a worker thread, it leaves the event loop free."""
    results = [
        json_object(
            codes=grid_json(c), grid=dump([int(c.shape[0]), int(c.shape[1])]), image_size=dump(size)
        )
        for c, size in zip(codes, sizes, strict=True)
    ]
    return json_object(
        model=dump(model), codebook_size=dump(codebook_size), results=json_array(results)
    )


@router.post(
    "/tokenize",
    summary="Images -> code grids",
    response_model=TokenizeResponse,
    responses=_ERRORS,
    openapi_extra=_REQUEST_BODY,
)
async def tokenize(
    request: Request,
    state: StateDep,
    settings: SettingsDep,
    model: Annotated[str, Query(description="Name of a served model")] = "default",
    fit: Annotated[
        FitMode,
        Query(description="Sides not multiples of f: reject (422), crop, pad or resize"),
    ] = "reject",
) -> Response:
    """Send images as multipart `files` or as JSON `{"images": [base64, ...]}`; get one
    code grid per image, in request order."""
    deadline = request_deadline(state, request)
    served = state.get(model)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        read, price, upfront = _multipart_payloads, upload_bytes, 0
    elif media == "application/json" or media.endswith("+json"):
        read, price = _json_payloads, images_json_bytes
        upfront = IMAGES_JSON_BYTES_PER_IMAGE * settings.max_images_per_request
    else:
        raise APIError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"content-type {media or 'missing'!r} is not supported; send multipart/form-data "
            "with 'files' or application/json with {'images': [base64, ...]}",
        )
    with refusals(state, model, "tokenize"):
        # The body's memory is reserved as it arrives, before it is kept (service/budget.py).
        async with reserved(state.input_budget, upfront, deadline) as held:
            payloads = await read(metered(request, held, price), settings)
            codes, sizes = await guarded(
                request,
                deadline,
                lambda: _encode(
                    state, served, payloads, fit=fit, settings=settings, deadline=deadline
                ),
            )

    tokens = sum(int(np.prod(c.shape)) for c in codes)
    state.metrics.images.labels(model, "tokenize").inc(len(codes))
    state.metrics.tokens.labels(model, "tokenize").inc(tokens)
    # The body is a TokenizeResponse (response_model, the OpenAPI docs), serialized here.
    body = await run_in_threadpool(_body, model, served.codebook_size, codes, sizes)
    return Response(content=body, media_type="application/json")
