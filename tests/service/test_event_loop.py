"""Work that grows with a request stays off the event loop (issue 23: /healthz p99 within
100 ms in every load scenario): /healthz answers while a large request body is decoded or a
large response serialized, and the bodies built in pieces for that are byte for byte what
FastAPI and the standard library give."""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from pydantic import TypeAdapter

from service.chunked import PIECE, b64decode
from service.routes.detokenize import _batch_body, check_grid
from service.routes.tokenize import _body
from service.schemas import DetokenizeBatchResponse, TokenizeResponse, TokenizeResult
from tests.service.helpers import encode_file, make_settings, serving

NAMES = ["default", 'a "quoted" name', "ümlaut/⚙", "back\\slash\n"]


@pytest.mark.parametrize("name", NAMES)
def test_tokenize_body_is_what_fastapi_sends(name: str) -> None:
    rng = np.random.default_rng(0)
    # Narrow, wide (a row longer than a piece) and tall grids: every way the pieces cut.
    shapes = [(1, 1), (3, 5), (1, PIECE + 7), (PIECE // 3 + 1, 3), (300, 300)]
    codes = [torch.from_numpy(rng.integers(0, 65536, shape)) for shape in shapes]
    sizes = [(h * 4, w * 4 + 1) for h, w in shapes]
    expected = TokenizeResponse(
        model=name,
        codebook_size=65536,
        results=[
            TokenizeResult(codes=c.tolist(), grid=list(c.shape), image_size=list(size))
            for c, size in zip(codes, sizes, strict=True)
        ],
    )
    # FastAPI's serialization of a response model (fastapi.routing, the dump_json path).
    assert _body(name, 65536, codes, sizes) == TypeAdapter(TokenizeResponse).dump_json(expected)
    assert _body(name, 8, [], []) == TypeAdapter(TokenizeResponse).dump_json(
        TokenizeResponse(model=name, codebook_size=8, results=[])
    )


@pytest.mark.parametrize("name", NAMES)
def test_detokenize_batch_body_is_what_fastapi_sends(name: str) -> None:
    step = PIECE // 4 * 3  # bytes per base64 piece
    rng = np.random.default_rng(1)
    pngs = [rng.bytes(n) for n in (0, 1, 2, step - 1, step, step + 1, 3 * step + 2)]
    sizes = [(8 * i, 16) for i in range(len(pngs))]
    expected = DetokenizeBatchResponse(
        model=name,
        images=[base64.b64encode(png).decode("ascii") for png in pngs],
        image_size=[list(size) for size in sizes],
    )
    assert _batch_body(name, pngs, sizes) == TypeAdapter(DetokenizeBatchResponse).dump_json(
        expected
    )


def _outcome(fn: Callable[[], bytes]) -> tuple[str, str | bytes]:
    try:
        return "ok", fn()
    except (binascii.Error, ValueError) as exc:
        return type(exc).__name__, str(exc)


def test_b64decode_in_pieces_gives_the_standard_librarys_bytes_and_errors() -> None:
    rng = np.random.default_rng(2)
    good = base64.b64encode(rng.bytes(3 * PIECE + 1)).decode("ascii")
    one_piece = base64.b64encode(b"abcd").decode("ascii")  # "YWJjZA=="
    texts = [
        "",
        good,
        good[:-1],  # a length that is no multiple of 4
        good[:PIECE] + "=" + good[PIECE + 1 :],  # padding inside
        one_piece[:-2] + "==" + good,  # padding at the end of a piece (not the last)
        good[: PIECE - 4] + "YQ==" + good,  # padding exactly ending the first piece
        good[:100] + "*" + good[101:],  # not base64
        good[:100] + "é" + good[101:],  # not ASCII
        good + "====",  # excess padding
    ]
    for text in texts:
        ours = _outcome(lambda text=text: b64decode(text))
        theirs = _outcome(lambda text=text: base64.b64decode(text, validate=True))
        assert ours == theirs, text[:20]


def test_grids_convert_in_blocks_to_the_same_tensor() -> None:
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (1, PIECE + 3), (PIECE // 2 + 5, 2), (257, 255)]:
        rows = rng.integers(0, 1000, shape).tolist()
        got = check_grid(rows, label="codes", codebook_size=1000, max_side=PIECE + 10)
        assert torch.equal(got, torch.tensor(rows, dtype=torch.int64))


def healthz_while(
    url: str, send: Callable[[httpx.Client], httpx.Response]
) -> tuple[httpx.Response, list[tuple[float, float]], float]:
    """(the response of ``send``, (start, end) of each /healthz probed meanwhile, the
    ``time.monotonic()`` the response arrived)."""
    probes: list[tuple[float, float]] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not done.is_set():
                start = time.monotonic()
                assert client.get("/healthz").status_code == 200
                probes.append((start, time.monotonic()))
                time.sleep(0.01)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=120) as client:
            response = send(client)
            arrived = time.monotonic()
    finally:
        done.set()
        thread.join(timeout=120)
    return response, probes, arrived


class OneCodePerPixel:
    """An encoder that gives one code per pixel at once: a large result from a cheap
    request. Notes when it last returned."""

    returned = 0.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        self.returned = time.monotonic()
        return torch.zeros((n, h, w), dtype=torch.int64)


def test_healthz_answers_while_a_large_tokenize_response_is_serialized(
    artifact_dir: Path,
) -> None:
    """From the last encoder pass to the answer, the request's only work is turning 8 M
    codes into JSON. If that ran on the event loop (or held the GIL throughout), a /healthz
    probed meanwhile would wait for most of it; off the loop it answers in a fraction. A
    fraction of that time, not a fixed bound: on a loaded machine both slow down together."""
    side, images = 1024, 8
    png = encode_file(np.full((side, side, 3), 120, dtype=np.uint8))
    files = [("files", (f"{i}.png", png, "image/png")) for i in range(images)]
    encoder = OneCodePerPixel()
    with serving(make_settings(artifact_dir, batch_wait_ms=0.0)) as (url, state, _):
        state.models["default"].tokenizer.encode = encoder  # type: ignore[method-assign]
        response, probes, arrived = healthz_while(
            url, lambda client: client.post("/v1/tokenize", files=files)
        )
    assert response.status_code == 200, response.text[:300]
    results = response.json()["results"]
    assert len(results) == images and results[0]["grid"] == [side, side]
    serializing = arrived - encoder.returned
    during = [end - start for start, end in probes if start >= encoder.returned]
    assert during, (serializing, probes[-5:])
    assert max(during) < serializing / 3, (max(during), serializing)


def test_validation_error_body_is_what_error_response_gives() -> None:
    from fastapi.exceptions import RequestValidationError

    from service.errors import ErrorCode, _validation_response, error_response

    raw = [
        {
            "loc": ("body", "batch", i, 0),
            "msg": f"Input should be a valid integer ü{i}",
            "type": "int_type",
        }
        for i in range(7)
    ]
    got = _validation_response(RequestValidationError(raw))
    errors = [
        {"loc": f"batch.{i}.0", "msg": e["msg"], "type": "int_type"} for i, e in enumerate(raw)
    ]
    summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5])
    want = error_response(ErrorCode.INVALID_REQUEST, summary, errors=errors, errors_total=7)
    assert (got.status_code, got.body) == (want.status_code, want.body)
    assert got.headers == want.headers
    empty = error_response(ErrorCode.INVALID_REQUEST, "invalid request", errors=[], errors_total=0)
    assert _validation_response(RequestValidationError([])).body == empty.body


def test_validation_error_lists_the_first_errors_and_counts_them_all() -> None:
    import json

    from fastapi.exceptions import RequestValidationError

    from service.errors import MAX_LISTED_ERRORS, _validation_response

    n = MAX_LISTED_ERRORS * 3 + 1
    raw = [{"loc": ("body", "grid", i), "msg": "bad", "type": "int_type"} for i in range(n)]
    body = json.loads(_validation_response(RequestValidationError(raw)).body)
    assert body["errors_total"] == n
    assert [e["loc"] for e in body["errors"]] == [f"grid.{i}" for i in range(MAX_LISTED_ERRORS)]
