"""The JSON request bodies, parsed typed and bounded (msgspec), so their memory is known
before the parse begins.

A generic JSON parse (``json.loads``, pydantic) first builds a Python object for every
element and only then checks types: two bytes of JSON (``1,``) become a 30-odd byte int and a
pointer, and a body of the wrong types is parsed whole, each element then reported in its
own error object. Here, instead:

1. **Bounds from byte counts**, before any parse (``bytes.count`` runs at memory speed): a
   tokenize body with more ``[`` or ``,`` than the largest request within the limits can
   hold is refused at once (``check_structure``); a grid with more rows or codes than
   ``max_grid_side`` allows, before it is decoded (``grid_rows``).
2. **A typed parse that stops at the first wrong element** (msgspec): ``{"images": [1, ...]}``
   ends at ``images[0]`` with one error, whatever follows it.
3. **One grid at a time**: the top level keeps the grids as raw bytes (``msgspec.Raw``, a
   view of the body), split at each grid's end; each grid is then checked against the side limit by its bytes and
   decoded on its own, so at most one grid's Python lists exist at once and no single call
   (which holds the GIL, and the event loop with it) runs longer than a grid's decode.

So a detokenize body costs at most its bytes, one raw grid's copy, the int64 tensors (8 bytes
per code, at least 2 bytes of JSON each) and one grid's lists (``GRID_PARSE_BYTES``), and a
tokenize body its bytes, the decoded strings and one image's working copies: both priced per
byte as the body arrives (``service.budget``). Wrong types, shapes and sizes are 422s named by
their place in the body (``images.0``, ``batch.3.0.1``).
"""

from __future__ import annotations

import re
from typing import Annotated, NoReturn

import msgspec
from fastapi.exceptions import RequestValidationError

from service.errors import APIError, ErrorCode
from vqio import format_size

# msgspec's names for JSON types, as the rest of the service's messages say them.
_TYPE_WORDS = {"int": "integer", "str": "string", "array": "array", "object": "object"}
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_GRID_END = re.compile(rb"\]\s*\]")  # a grid's last row closes, then the grid
_SPACE = re.compile(rb"\s*")
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")


class _Images(msgspec.Struct, forbid_unknown_fields=True):
    images: Annotated[list[str], msgspec.Meta(min_length=1)]


class _Grid(msgspec.Struct, forbid_unknown_fields=True):
    codes: msgspec.Raw
    model: str = "default"


class _Batch(msgspec.Struct, forbid_unknown_fields=True):
    batch: msgspec.Raw  # split into grids by ``_split_batch``
    model: str = "default"


_Row = Annotated[list[int], msgspec.Meta(min_length=1)]
_GridRows = Annotated[list[_Row], msgspec.Meta(min_length=1)]

_IMAGES = msgspec.json.Decoder(_Images)
_GRID = msgspec.json.Decoder(_Grid)
_BATCH = msgspec.json.Decoder(_Batch)
_ROWS = msgspec.json.Decoder(_GridRows)
_SYNTAX = msgspec.json.Decoder(msgspec.Raw)  # checks the syntax only; builds nothing
_FIELDS = {_Images: "images", _Grid: "model, codes", _Batch: "model, batch"}


def _message(text: str) -> str:
    for name, word in _TYPE_WORDS.items():
        text = text.replace(f"`{name}`", word)
    text = re.sub(r"of length >= (\d+)", r"of at least \1 item(s)", text)
    return re.sub(r"of length <= (\d+)", r"of at most \1 item(s)", text)


def _refuse(body: bytes, exc: msgspec.MsgspecError, fields: str) -> NoReturn:
    """Raise the 422 of a body msgspec refused: malformed JSON as such, even where a wrong
    field came before the fault (the typed parse stops at whichever it meets first)."""
    if isinstance(exc, msgspec.ValidationError):
        try:
            _SYNTAX.decode(body)
        except msgspec.DecodeError as malformed:
            exc = malformed
        except RecursionError:
            _too_deep()
    _invalid(exc, (), fields)


def _invalid(exc: msgspec.MsgspecError, loc: tuple[str | int, ...], fields: str = "") -> NoReturn:
    """Raise the 422 of msgspec's error ``exc``, placed under ``loc`` in the body."""
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"the body is not valid JSON: {text}", "type": "json"}]
        )
    match = _AT.search(text)
    if match is not None:
        text = text[: match.start()]
        for name, index in _STEP.findall(match.group("path")):
            loc += (name,) if name else (int(index),)
    if fields and "unknown field" in text:
        text += f"; the fields are {fields}"
    raise RequestValidationError(
        [{"loc": ("body", *loc), "msg": _message(text), "type": "type_error"}]
    )


def check_structure(body: bytes, *, lists: int, commas: int, what: str) -> None:
    """422 if ``body`` holds more ``[`` than ``lists`` or more ``,`` than ``commas``: the
    most a request within the limits can hold (``what`` says which limits). Brackets and
    commas inside strings count too; no valid body has them there."""
    found_lists, found_commas = body.count(b"["), body.count(b",")
    if found_lists > lists or found_commas > commas:
        raise RequestValidationError(
            [
                {
                    "loc": ("body",),
                    "msg": f"the body holds {found_lists} arrays and {found_commas} commas; "
                    f"a request within the limits ({what}) holds at most {lists} and {commas}",
                    "type": "too_large",
                }
            ]
        )


def tokenize_images(body: bytes, *, max_images: int) -> list[str]:
    """``{"images": [base64, ...]}`` -> the strings (422 for anything else)."""
    # Commas: between the images and one in each data: URL prefix.
    check_structure(
        body,
        lists=1,
        commas=2 * max_images,
        what=f"{max_images} images, setting max_images_per_request",
    )
    try:
        return _IMAGES.decode(body).images
    except msgspec.MsgspecError as exc:
        _refuse(body, exc, _FIELDS[_Images])


def detokenize_grids(
    body: bytes, *, batch: bool, max_images: int, max_side: int
) -> tuple[str, list[tuple[str, memoryview]]]:
    """``{"model", "codes": grid}`` or ``{"model", "batch": [grid, ...]}`` -> the model and
    each grid's (label, raw JSON), not yet decoded (``grid_rows``)."""
    try:
        if batch:
            parsed_batch = _BATCH.decode(body)
            raws = _split_batch(memoryview(parsed_batch.batch), max_images)
            labelled = [(f"batch[{i}]", raw) for i, raw in enumerate(raws)]
            return parsed_batch.model, labelled
        parsed = _GRID.decode(body)
    except msgspec.MsgspecError as exc:
        _refuse(body, exc, _FIELDS[_Batch if batch else _Grid])
    except RecursionError:  # msgspec's depth limit, met skipping a raw value
        _too_deep()
    return parsed.model, [("codes", memoryview(parsed.codes))]


def _too_deep() -> NoReturn:
    _type_error((), "the body nests arrays or objects too deep; a grid is an array of rows")


def _type_error(loc: tuple[str | int, ...], message: str) -> NoReturn:
    raise RequestValidationError([{"loc": ("body", *loc), "msg": message, "type": "type_error"}])


def _split_batch(array: memoryview, max_images: int) -> list[memoryview]:
    """The raw JSON of ``batch`` (syntax already checked) -> each grid's raw JSON, found from
    where each grid starts and where its rows end, never by building the array: a batch of
    a million scalars is refused at the first one, a batch of too many grids at the one past
    the limit. A grid cut wrongly (it was not an array of arrays of integers) fails its own
    decode (``grid_rows``)."""
    if array[:1] != b"[":
        _type_error(("batch",), "Expected array")
    pos = _SPACE.match(array, 1).end()  # type: ignore[union-attr]
    if array[pos : pos + 1] == b"]":
        _type_error(("batch",), "Expected array of at least 1 item(s)")
    grids: list[memoryview] = []
    while True:
        if array[pos : pos + 1] != b"[":
            _type_error(("batch", len(grids)), "Expected array (a grid of rows of codes)")
        if len(grids) == max_images:
            raise APIError(
                ErrorCode.TOO_MANY_IMAGES,
                f"more than {max_images} grids in one request; the limit is {max_images} "
                "(setting max_images_per_request)",
            )
        end = _GRID_END.search(array, pos)
        if end is None:
            _type_error(("batch", len(grids)), "Expected array of arrays of integers")
        grids.append(array[pos : end.end()])
        pos = _SPACE.match(array, end.end()).end()  # type: ignore[union-attr]
        if array[pos : pos + 1] != b",":
            return grids  # the closing bracket (or a grid cut wrongly: its decode says so)
        pos = _SPACE.match(array, pos + 1).end()  # type: ignore[union-attr]


def _loc(label: str) -> tuple[str | int, ...]:
    """``batch[3]`` -> ("batch", 3); ``codes`` -> ("codes",)."""
    name, _, index = label.partition("[")
    return (name, int(index[:-1])) if index else (name,)


def grid_rows(raw: memoryview, *, label: str, max_side: int) -> list[list[int]]:
    """One grid's raw JSON (a view of the body) -> its rows, refused by its bytes (422
    ``grid_too_large``) before it is decoded when it holds more rows or codes than a grid
    within ``max_side`` can."""
    data = bytes(raw)  # one grid's copy at a time
    rows, codes = data.count(b"[") - 1, data.count(b",") + 1
    if rows > max_side or codes > max_side * max_side:
        raise APIError(
            ErrorCode.GRID_TOO_LARGE,
            f"{label} holds more than {format_size(max_side, max_side)} codes; the limit is "
            f"{max_side} codes per side (setting max_grid_side)",
        )
    try:
        decoded: list[list[int]] = _ROWS.decode(data)
    except msgspec.MsgspecError as exc:
        _invalid(exc, _loc(label))
    return decoded
