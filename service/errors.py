"""One error shape for every failure: ``{"detail": "<what was wrong>", "code": "<ErrorCode>"}``.

``ErrorCode`` is every code the service answers with, each with one meaning and one HTTP
status (docs/api.md, "Errors"); an ``APIError`` is built from a code alone, so no status and
code can disagree. The handlers here are where exceptions become responses: ``APIError``,
the state's domain errors (``service.state.ServingError``), the framework's own HTTP errors,
validation errors and, as a backstop for bugs, everything else (500). Bad input is always a 4xx with a message naming the problem and what is allowed.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from service.state import InvalidCodes, NotReady, ServingError, ShuttingDown, UnknownModel

logger = logging.getLogger("service")


class ErrorCode(StrEnum):
    """The ``code`` of an error response; ``status`` is its one HTTP status."""

    status: int

    def __new__(cls, value: str, status: int) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        return member

    BAD_REQUEST = "bad_request", 400
    INVALID_IMAGE = "invalid_image", 400
    EMPTY_IMAGE = "empty_image", 400
    INVALID_BASE64 = "invalid_base64", 400
    UNAUTHORIZED = "unauthorized", 401
    NOT_FOUND = "not_found", 404
    UNKNOWN_MODEL = "unknown_model", 404
    METHOD_NOT_ALLOWED = "method_not_allowed", 405
    BODY_TIMEOUT = "body_timeout", 408
    TOO_LARGE = "too_large", 413
    IMAGE_TOO_LARGE = "image_too_large", 413
    MEMORY_BUDGET = "memory_budget", 413
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type", 415
    NOT_A_FILE = "not_a_file", 422
    BAD_IMAGE_SIZE = "bad_image_size", 422
    INVALID_CODES = "invalid_codes", 422
    GRID_TOO_LARGE = "grid_too_large", 422
    TOO_MANY_IMAGES = "too_many_images", 422
    NO_IMAGES = "no_images", 422
    INVALID_REQUEST = "invalid_request", 422
    # nginx's status for "client closed the request"; logged and counted, never seen by a client
    CLIENT_DISCONNECTED = "client_disconnected", 499
    INTERNAL_ERROR = "internal_error", 500
    NOT_READY = "not_ready", 503
    SHUTTING_DOWN = "shutting_down", 503
    OVERLOADED = "overloaded", 503
    TIMEOUT = "timeout", 503


class ErrorResponse(BaseModel):
    """The body of every error response (the OpenAPI docs' schema)."""

    detail: str = Field(description="What was wrong and what is allowed")
    code: ErrorCode = Field(description="Machine-readable error kind (docs/api.md, Errors)")


class APIError(Exception):
    """An error the client caused (or a state it must wait out); its status is its code's."""

    def __init__(
        self, code: ErrorCode, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        if not isinstance(code, ErrorCode):
            raise TypeError(f"code must be an ErrorCode, not {code!r}")
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.headers = headers

    @property
    def status_code(self) -> int:
        return self.code.status


def error_body(code: ErrorCode, detail: str, **extra: Any) -> dict[str, Any]:
    if not isinstance(code, ErrorCode):
        raise TypeError(f"code must be an ErrorCode, not {code!r}")
    return {"detail": detail, "code": code.value, **extra}


def error_response(
    code: ErrorCode, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The JSON response of ``code``, at its status."""
    return JSONResponse(error_body(code, detail, **extra), status_code=code.status, headers=headers)


class CodedHTTPException(StarletteHTTPException):
    """An HTTPException with its ``ErrorCode``, for the body limits that raise from
    ``receive``: FastAPI passes an HTTPException raised while it reads a body on, and turns
    anything else into a bare 400."""

    def __init__(
        self, code: ErrorCode, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=code.status, detail=detail, headers=headers)
        self.code = code


# The HTTP errors the framework raises itself (routing, multipart parsing).
_FRAMEWORK_CODES = {
    code.status: code
    for code in (ErrorCode.BAD_REQUEST, ErrorCode.NOT_FOUND, ErrorCode.METHOD_NOT_ALLOWED)
}
RETRY_NOW = {"Retry-After": "1"}

# The state's domain errors (service/state.py) -> their codes: the one place they meet HTTP.
_SERVING_ERRORS: dict[type[ServingError], ErrorCode] = {
    UnknownModel: ErrorCode.UNKNOWN_MODEL,
    NotReady: ErrorCode.NOT_READY,
    ShuttingDown: ErrorCode.SHUTTING_DOWN,
    InvalidCodes: ErrorCode.INTERNAL_ERROR,
}


def serving_error(exc: ServingError) -> APIError:
    """The HTTP error of a domain error; a 503 says when to retry, a 500 says it is ours."""
    code = _SERVING_ERRORS[type(exc)]
    if code.status == 500:
        return APIError(code, f"internal error: {exc}")
    return APIError(code, str(exc), headers=RETRY_NOW if code.status == 503 else None)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


_render = JSONResponse(content=None).render  # what a JSONResponse writes for its content


# A body of N bad elements holds N errors: the 422 lists the first ones (its size bounded, as
# nothing prices it against the memory budget) and counts them all.
MAX_LISTED_ERRORS = 100


def _validation_response(exc: RequestValidationError) -> Response:
    """The 422 of a validation error, listing the first ``MAX_LISTED_ERRORS`` errors. A large invalid body can hold
    an error per element, so the list is written one error at a time (one call over all of
    them would hold the GIL, and the event loop with it): the bytes ``error_response``
    gives, run on a worker thread."""
    found = exc.errors()
    errors = [
        {
            "loc": _location(e.get("loc", ())),
            "msg": str(e.get("msg", "")),
            "type": e.get("type"),
        }
        for e in found[:MAX_LISTED_ERRORS]
    ]
    summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5]) or "invalid request"
    head = _render(error_body(ErrorCode.INVALID_REQUEST, summary))  # {"detail":..,"code":..}
    listed = b",".join(_render(e) for e in errors)
    body = (
        head[:-1] + b',"errors":[' + listed + b'],"errors_total":' + str(len(found)).encode() + b"}"
    )
    status = ErrorCode.INVALID_REQUEST.status
    return Response(body, status_code=status, media_type=JSONResponse.media_type)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.code, exc.detail, headers=exc.headers)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        error = serving_error(exc)
        if error.status_code == 500:
            logger.error("%s %s: %s", request.method, request.url.path, exc)
        return await _api_error(request, error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers a JSON body that is not UTF-8 with a bare 400; JSON that
            # cannot be read is the documented 422 like any other invalid body.
            detail = f"body: the JSON body is not valid UTF-8 ({exc.__cause__.reason})"
            return error_response(ErrorCode.INVALID_REQUEST, detail)
        code = exc.code if isinstance(exc, CodedHTTPException) else None
        code = code or _FRAMEWORK_CODES.get(exc.status_code)
        if code is None:  # no route of this app raises other statuses: a server fault
            logger.error(
                "%s %s: HTTP %d from the framework: %s",
                request.method,
                request.url.path,
                exc.status_code,
                exc.detail,
            )
            return error_response(ErrorCode.INTERNAL_ERROR, f"internal error: {exc.detail}")
        return error_response(code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        # A large invalid body can hold an error per element: listed and serialized on a
        # worker thread, off the event loop.
        return await run_in_threadpool(_validation_response, exc)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, exc: ClientDisconnect) -> Response:
        # Nobody is left to read an answer; one line, no traceback (it is not a fault).
        logger.info(
            "%s %s: the client disconnected while sending its body",
            request.method,
            request.url.path,
        )
        return Response(status_code=ErrorCode.CLIENT_DISCONNECTED.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ErrorCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}")
