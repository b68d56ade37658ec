"""Work that grows with a request, done in pieces short enough that the event loop keeps up.

Moving a request's parsing or serialization to a worker thread frees the event loop only
while that thread gives the GIL back, and one long C call (a base64 decode of a whole
upload, pydantic dumping a response of a million codes) holds it from start to end: the
loop, and /healthz with it, waits as long as if the work ran on the loop. So the functions
here cut such work into calls over bounded pieces (``PIECE`` bytes or codes), and the
routes run them on a worker thread (``starlette.concurrency.run_in_threadpool``); between
two pieces the interpreter hands the GIL to the loop when it asks for it.

The JSON bodies built here are byte for byte what FastAPI sends for the same response
model (``pydantic``'s compact JSON); tests/service/test_event_loop.py checks that.
"""

from __future__ import annotations

import base64
import binascii

import pydantic_core
import torch

# Bytes of base64 text (a multiple of 4) or codes handled by one call.
PIECE = 1 << 16


def dump(value: object) -> bytes:
    """A small value (a name, a number, a list of sizes) as pydantic writes it in a body."""
    return pydantic_core.to_json(value)


def json_object(**fields: bytes) -> bytes:
    """``{"name":value,...}`` of already-encoded values, in the order given (a response
    model's field order)."""
    return (
        b"{"
        + b",".join(b'"%s":%s' % (name.encode(), value) for name, value in fields.items())
        + b"}"
    )


def json_array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def grid_json(codes: torch.Tensor) -> bytes:
    """An integer (h, w) grid as the JSON ``[[...],...]`` of its rows, converted a block of
    rows (about ``PIECE`` codes) at a time."""
    h, w = codes.shape
    step = max(1, PIECE // max(1, w))
    blocks = [pydantic_core.to_json(codes[i : i + step].tolist())[1:-1] for i in range(0, h, step)]
    return json_array(blocks)


def b64_json_string(data: bytes) -> bytes:
    """``data`` base64-encoded as a JSON string, encoded ``PIECE`` bytes (a multiple of 3,
    so the pieces join without padding between them) at a time."""
    step = PIECE // 4 * 3
    view = memoryview(data)
    return (
        b'"'
        + b"".join(base64.b64encode(view[i : i + step]) for i in range(0, len(data), step))
        + b'"'
    )


def b64decode(text: str | bytes) -> bytes:
    """``base64.b64decode(text, validate=True)``, a ``PIECE`` of text at a time: the same
    bytes, or the same exception (a text the pieces refuse is decoded whole, which raises
    what it would have raised). Padding may end only the last piece."""
    pieces = [text[i : i + PIECE] for i in range(0, len(text), PIECE)]
    try:
        if any(("=" in p) if isinstance(p, str) else (b"=" in p) for p in pieces[:-1]):
            raise ValueError("padding before the end")
        return b"".join(base64.b64decode(piece, validate=True) for piece in pieces)
    except (binascii.Error, ValueError):
        return base64.b64decode(text, validate=True)
