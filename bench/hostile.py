"""Request bodies of the wrong JSON types, shapes and sizes (issue 36): what a careless or
hostile client may send. Each should get a 4xx within milliseconds of its last byte and
cost the server no more memory than its bytes are priced at; the whitespace-padded image is
valid and should get 200. Used by bench/load_scenarios.py and tests/service."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

MiB = 2**20


def _repeat(item: bytes, size: int) -> bytes:
    """``item,item,...`` of about ``size`` bytes."""
    return b",".join([item] * max(1, size // (len(item) + 1)))


def padded_png(size: int) -> bytes:
    """A 64 x 64 PNG as base64, every character followed by spaces, then spaces up to
    ``size`` bytes: a valid tokenize body that is almost all whitespace."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    text = base64.b64encode(buf.getvalue())
    padded = b"   ".join(text[i : i + 1] for i in range(len(text)))
    body = b'{"images": ["' + padded
    return body + b" " * max(0, size - len(body) - 3) + b'"]}'


def corpus(scale: float = 1.0) -> dict[str, tuple[str, bytes]]:
    """name -> (path, JSON body); ``scale`` multiplies the sizes (1: 0.1 to 4 MiB each)."""

    def size(mib: float) -> int:
        return int(mib * scale * MiB)

    return {
        "ints-for-base64": ("/v1/tokenize", b'{"images": [' + _repeat(b"1", size(1.5)) + b"]}"),
        "floats-in-grid": ("/v1/detokenize", b'{"codes": [[' + _repeat(b"1.5", size(1.5)) + b"]]}"),
        "strings-in-grid": ("/v1/detokenize", b'{"codes": [[' + _repeat(b'"7"', size(4)) + b"]]}"),
        "strings-in-batch": (
            "/v1/detokenize/batch",
            b'{"batch": [[[' + _repeat(b'"ab"', size(2)) + b"]]]}",
        ),
        "too-deep-grid": (
            "/v1/detokenize",
            b'{"codes": ' + b"[" * size(0.2) + b"]" * size(0.2) + b"}",
        ),
        "too-deep-array": ("/v1/detokenize/batch", b"[" * size(0.2) + b"]" * size(0.2)),
        "too-deep-object": (
            "/v1/detokenize",
            b'{"codes": [[1]], "x": ' + b'{"x": ' * size(0.1) + b"1" + b"}" * size(0.1) + b"}",
        ),
        "too-deep-images": (
            "/v1/tokenize",
            b'{"images": [' + _repeat(b'["QUFB"]', size(1)) + b"]}",
        ),
        "too-shallow-batch": (
            "/v1/detokenize/batch",
            b'{"batch": [' + _repeat(b"1", size(1)) + b"]}",
        ),
        "huge-number": ("/v1/detokenize", b'{"codes": [[1' + b"0" * size(1) + b"]]}"),
        "huge-float": ("/v1/detokenize", b'{"codes": [[1e400, ' + _repeat(b"1", size(1)) + b"]]}"),
        "many-big-ints": (
            "/v1/detokenize",
            b'{"codes": [[' + _repeat(b"9" * 4000, size(2)) + b"]]}",
        ),
        "one-element-rows": ("/v1/detokenize", b'{"codes": [' + _repeat(b"[1]", size(4)) + b"]}"),
        "10k-grid-batch": (
            "/v1/detokenize/batch",
            b'{"batch": [' + _repeat(b"[[1]]", 60_000) + b"]}",
        ),
        "many-tiny-images": ("/v1/tokenize", b'{"images": [' + _repeat(b'"QUFB"', size(2)) + b"]}"),
        "object-for-grid": ("/v1/detokenize", b'{"codes": {"a": ' + _repeat(b"1", size(1)) + b"}}"),
        "unknown-field-first": (
            "/v1/detokenize",
            b'{"colour": [' + _repeat(b"1", size(1)) + b'], "codes": [[1]]}',
        ),
    }
