"""Request body limits: size (413) and arrival time (408), enforced while the body streams in.

A declared Content-Length over the limit is refused before reading a byte; a body without
one (chunked) is counted as it arrives and refused as soon as it passes the limit, so a
client cannot make the service buffer more than ``max_bytes``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import h11
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import RETRY_NOW, CodedHTTPException, ErrorCode, error_response


class BodyTooLarge(CodedHTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            ErrorCode.TOO_LARGE,
            f"request body is larger than the limit of {max_bytes} bytes "
            "(setting max_upload_bytes, env VQ_MAX_UPLOAD_BYTES)",
        )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False  # the server rejects a malformed header itself
            if too_big:
                detail = str(BodyTooLarge(self.max_bytes).detail)
                response = error_response(ErrorCode.TOO_LARGE, detail)
                await response(scope, receive, send)
                return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the handler's body read: the app's HTTPException handler
                    # turns it into a 413 JSON response.
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class BodyTimeout(CodedHTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.BODY_TIMEOUT, detail)


class SlowBodyMiddleware:
    """Cuts off request bodies that arrive too slowly (408), so a slow or stalled client
    holds a connection for a bounded time and never blocks other requests.

    The body must be complete within ``timeout_s``; after ``grace_s`` it must also have
    averaged at least ``min_rate`` bytes/s. Time counts only while the server waits in
    ``receive`` for the client, so a server busy under load never blames its clients for
    its own delay. Each ``receive`` waits only until the earliest
    moment one of the two rules could fail, so a client that sends nothing is cut off too.
    Once the body is complete, ``receive`` passes through untouched (it then only reports a
    disconnect, which the handlers watch for).
    """

    def __init__(self, app: ASGIApp, timeout_s: float, grace_s: float, min_rate: int) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.min_rate = min_rate

    def _wait_limit(self, elapsed: float, received: int) -> float:
        """Seconds the next chunk may take before a rule fails (at least a little)."""
        limit = self.timeout_s - elapsed
        if self.min_rate > 0:
            # received + rate * 0 >= min_rate * t  <=>  t <= received / min_rate
            limit = min(limit, max(self.grace_s, received / self.min_rate) - elapsed)
        return max(limit, 0.001)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        waited = 0.0  # seconds spent waiting for the client's bytes
        received = 0
        complete = False

        async def timed_receive() -> Message:
            nonlocal received, complete, waited
            if complete:
                return await receive()
            start = time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), self._wait_limit(waited, received))
            except TimeoutError:
                elapsed = waited + time.monotonic() - start
                raise BodyTimeout(
                    f"request body too slow: {received} bytes in {elapsed:.1f} s; bodies must "
                    f"arrive within {self.timeout_s:g} s (setting body_timeout_s) at "
                    f"{self.min_rate} bytes/s or more after {self.grace_s:g} s "
                    "(settings min_body_rate, body_grace_s)"
                ) from None
            waited += time.monotonic() - start
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, timed_receive, send)


class DrainMiddleware:
    """While the service drains (after SIGTERM): requests with a body are refused here with
    503 ``shutting_down`` after their body has been read (answering before it and closing
    would make the kernel reset the connection, and the client would see an error instead of
    the 503), and every response carries ``Connection: close``, so keep-alive clients
    reconnect (to another replica) instead of reusing a connection that is about to close.
    Requests already inside the app when draining began are not touched."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and self.draining():
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        if self.draining() and scope.get("method") in ("POST", "PUT", "PATCH"):
            more = True
            while more:
                try:
                    message = await receive()
                except HTTPException:  # too large or too slow: stop reading, refuse anyway
                    break
                more = message["type"] == "http.request" and message.get("more_body", False)
            detail = "the service is shutting down; retry on another replica"
            response = error_response(ErrorCode.SHUTTING_DOWN, detail, headers=RETRY_NOW)
            await response(scope, receive, send_wrapper)
            return
        await self.app(scope, receive, send_wrapper)


class Overloaded(CodedHTTPException):
    """Raised from ``receive`` when a body completes and the app is full: a 503."""

    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.OVERLOADED, detail, headers=RETRY_NOW)


class ConcurrencyMiddleware:
    """Admission at the door: at most ``limit`` work requests (POST) processed at once, and
    at most ``max_reading`` whose bodies are still arriving.

    Under overload the costly part of a request is not always the model: parsing bodies and
    decoding images run on the same few cores, and hundreds of admitted requests would all
    slow down together, past any deadline. A request counts against ``limit`` from the
    moment its body is complete (when the work begins); beyond it the request is refused
    with 503 ``overloaded`` + Retry-After (its body read, so the connection stays clean).
    While its body arrives it counts only against ``max_reading``: slow uploads cost a
    connection and the bytes received so far, not a place of the requests being processed,
    so they cannot keep other requests out; beyond ``max_reading`` a new POST is refused at
    once. It also stamps each request's arrival time, from which the request deadline runs.
    """

    def __init__(
        self, app: ASGIApp, limit: int, max_reading: int, on_shed: Callable[[], None]
    ) -> None:
        self.app = app
        self.limit = limit
        self.max_reading = max_reading
        self.on_shed = on_shed
        self.inside = 0  # bodies complete, being processed
        self.reading = 0  # bodies still arriving

    def _refusal(self, detail: str) -> JSONResponse:
        self.on_shed()
        return error_response(ErrorCode.OVERLOADED, detail, headers=RETRY_NOW)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["arrival"] = time.monotonic()
        if scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if self.reading >= self.max_reading:
            detail = (
                f"overloaded: {self.reading} request bodies are arriving, the limit is "
                f"{self.max_reading} (setting max_reading_bodies); retry later"
            )
            await self._refusal(detail)(scope, receive, send)
            return
        phase = "reading"  # then "inside" (admitted) or "done" (refused, or the body failed)
        self.reading += 1

        def stop_reading() -> None:
            nonlocal phase
            self.reading -= 1
            phase = "done"

        def admit() -> None:
            nonlocal phase
            stop_reading()
            if self.inside >= self.limit:
                self.on_shed()
                raise Overloaded(
                    f"overloaded: {self.inside} requests are in progress, the limit is "
                    f"{self.limit} (setting max_concurrent_requests); retry later"
                )
            self.inside += 1
            phase = "inside"

        async def counted_receive() -> Message:
            try:
                message = await receive()
            except BaseException:  # too large, too slow
                if phase == "reading":
                    stop_reading()
                raise
            if phase == "reading":
                more = message["type"] == "http.request" and message.get("more_body", False)
                if not more:
                    admit()
            return message

        try:
            await self.app(scope, counted_receive, send)
        finally:
            if phase == "reading":
                self.reading -= 1
            elif phase == "inside":
                self.inside -= 1


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request header is not
    complete ``timeout_s`` after the connection opened, or after the first byte of the
    next request on a kept-alive one (uvicorn has no header timeout of its own, so a client
    could hold a connection open indefinitely by sending a header a byte at a time)."""

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
