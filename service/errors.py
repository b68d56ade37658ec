"""One error shape for every failure: ``{"detail": "<what was wrong>", "code": "<slug>"}``.

Bad input is always a 4xx with a message naming the problem and what is allowed; the
catch-all 500 handler is a backstop for bugs, never the answer to bad input.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

logger = logging.getLogger("service")


class APIError(Exception):
    """An error the client caused (or a state it must wait out), with its HTTP status."""

    def __init__(
        self, status_code: int, code: str, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.headers = headers


def bad_request(detail: str, code: str = "bad_request") -> APIError:
    return APIError(400, code, detail)


def unprocessable(detail: str, code: str = "invalid_input") -> APIError:
    return APIError(422, code, detail)


def too_large(detail: str, code: str = "too_large") -> APIError:
    return APIError(413, code, detail)


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "code": code, **extra}


_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    503: "not_ready",
}


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.detail), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers a JSON body that is not UTF-8 with a bare 400; JSON that
            # cannot be read is the documented 422 like any other invalid body.
            detail = f"body: the JSON body is not valid UTF-8 ({exc.__cause__.reason})"
            return JSONResponse(error_body("invalid_request", detail), status_code=422)
        code = getattr(exc, "code", None) or _STATUS_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": _location(e.get("loc", ())),
                "msg": str(e.get("msg", "")),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]
        summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5]) or "invalid request"
        return JSONResponse(error_body("invalid_request", summary, errors=errors), status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, exc: ClientDisconnect) -> Response:
        # Nobody is left to read an answer; one line, no traceback (it is not a fault).
        logger.info(
            "%s %s: the client disconnected while sending its body",
            request.method,
            request.url.path,
        )
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", f"internal error: {type(exc).__name__}"),
            status_code=500,
        )
