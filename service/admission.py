"""Getting one request's work done within the service's limits, or refusing it clearly.

``guarded`` runs a request's work (reserve memory, decode, queue, wait for the batcher)
against two things that end it early: the request's deadline (``request_timeout_s``) and
the client going away. Either way the work is cancelled, which cancels the request's
queued items, so the batcher drops them before they run (``service.batcher``). Every way a
request is refused under load maps to one status here:

    BudgetExceeded    413 memory_budget       can never fit the memory pool
    MemoryBusy        503 overloaded          Retry-After, at once: a body's parse memory
    WontFinish        503 overloaded          Retry-After, at once: memory not before deadline
    QueueFull         503 overloaded          Retry-After, at once
    DeadlineExceeded  503 timeout             Retry-After, the work never ran (or was dropped)
    client left       499 client_disconnected nobody reads it; counted in /metrics
    BatcherClosed     503 shutting_down       the batcher stopped (shutting down)

The state's own errors (an unknown model, not ready, impossible codes) pass through to
``service.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Message

from service.batcher import BatcherClosed, DeadlineExceeded, QueueFull
from service.budget import (
    BudgetExceeded,
    MemoryBudget,
    MemoryBusy,
    Reservation,
    WontFinish,
)
from service.errors import RETRY_NOW, APIError, ErrorCode
from service.state import ServiceState

logger = logging.getLogger("service")

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected while its request waited."""


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects. Call only after the body has been read: from
    then on the server's ``receive`` yields nothing but ``http.disconnect``."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def guarded(request: Request, deadline: float, work: Callable[[], Awaitable[T]]) -> T:
    """``await work()``, cancelled when ``deadline`` (time.monotonic) passes or the client
    disconnects (``DeadlineExceeded`` / ``ClientGone``)."""
    if time.monotonic() >= deadline:
        raise DeadlineExceeded("the request's deadline passed before its work began")
    task = asyncio.ensure_future(work())
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        timeout = max(0.0, deadline - time.monotonic())
        done, _ = await asyncio.wait(
            {task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            return task.result()
        if watcher in done:
            raise ClientGone()
        raise DeadlineExceeded("the request's deadline passed")
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


@contextlib.contextmanager
def refusals(state: ServiceState, model: str, op: str) -> Iterator[None]:
    """Turn the load-control exceptions of one request into their statuses (module docstring)
    and count each in ``vq_requests_shed_total``."""
    settings = state.settings
    shed = state.metrics.shed
    retry = {"Retry-After": str(max(1, round(settings.request_timeout_s / 10)))}
    try:
        yield
    except BudgetExceeded as exc:
        shed.labels(model, op, "memory").inc()
        raise APIError(ErrorCode.MEMORY_BUDGET, f"this request {exc}") from None
    except MemoryBusy as exc:
        shed.labels(model, op, "memory").inc()
        raise APIError(
            ErrorCode.OVERLOADED, f"overloaded: this request {exc}; retry later", headers=retry
        ) from None
    except WontFinish as exc:
        shed.labels(model, op, "memory_wait").inc()
        wait = {"Retry-After": str(max(1, math.ceil(exc.wait_s)))}
        raise APIError(
            ErrorCode.OVERLOADED, f"overloaded: this request {exc}", headers=wait
        ) from None
    except QueueFull as exc:
        shed.labels(model, op, "queue_full").inc()
        raise APIError(
            ErrorCode.OVERLOADED, f"overloaded: {exc}; retry later", headers=retry
        ) from None
    except DeadlineExceeded:
        shed.labels(model, op, "deadline").inc()
        raise APIError(
            ErrorCode.TIMEOUT,
            f"not answered within {settings.request_timeout_s:g} s (setting request_timeout_s); "
            "the service is busy, retry later",
            headers=retry,
        ) from None
    except ClientGone:
        shed.labels(model, op, "client_disconnected").inc()
        logger.info("%s for %r: the client disconnected; its queued work was dropped", op, model)
        raise APIError(ErrorCode.CLIENT_DISCONNECTED, "the client disconnected") from None
    except BatcherClosed as exc:
        raise APIError(ErrorCode.SHUTTING_DOWN, str(exc), headers=RETRY_NOW) from None


def metered(request: Request, held: Reservation, price: Callable[[bytes], int]) -> Request:
    """``request`` whose body grows ``held`` by ``price(chunk)`` for each chunk as it
    arrives, before the app keeps it (``MemoryBusy`` when the pool is full now,
    ``BudgetExceeded`` as soon as the body can never fit, mid-body). Bodies are reserved as
    they arrive, not from their declared length up front, so slow uploads hold only what
    they have sent, and a reservation never waits."""

    async def receive() -> Message:
        message = await request.receive()
        if message["type"] == "http.request":
            held.resize(held.nbytes + price(message.get("body", b"")))
        return message

    return Request(request.scope, receive)


@contextlib.asynccontextmanager
async def reserved(
    budget: MemoryBudget, nbytes: int, deadline: float
) -> AsyncIterator[Reservation]:
    """Hold ``nbytes`` of ``budget`` for the block, waiting for them at most until
    ``deadline`` (``DeadlineExceeded``); ``BudgetExceeded`` at once if they can never fit."""
    budget.check_fits(nbytes)
    try:
        await asyncio.wait_for(budget.acquire(nbytes), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise DeadlineExceeded("the request's deadline passed waiting for memory") from None
    held = Reservation(budget, nbytes)
    try:
        yield held
    finally:
        held.release()


def pieces(sizes: list[int], quota: int) -> list[slice]:
    """Consecutive runs of items whose sizes (bytes to reserve) add up to at most ``quota``
    (one item at least): a large request runs as several, each reserving and releasing its
    own memory, so that requests behind it get their turn between them (docs/operations.md,
    "Fairness"), and a request larger than the pool still runs."""
    out, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > quota:
            out.append(slice(start, i))
            start, total = i, 0
        total += size
    if sizes:
        out.append(slice(start, len(sizes)))
    return out


@contextlib.asynccontextmanager
async def pass_memory(
    state: ServiceState, nbytes: int, deadline: float, *, small: bool = False
) -> AsyncIterator[Reservation]:
    """Hold ``nbytes`` of the model-pass pool, first come first served (``small``: a piece
    whose items all run in the small lane, which may go past waiters blocked by large
    holders, ``MemoryBudget``); refused at once (``WontFinish``) when the work already
    admitted would not free them before ``deadline``.
    The estimate: the inference backlog (every batcher's ``backlog_s``) in proportion to
    the share of the reserved bytes that must be released first."""
    budget = state.budget
    budget.check_fits(nbytes)
    shortfall = budget.shortfall(nbytes, small=small)
    if shortfall:
        wait = state.backlog_s() * min(1.0, shortfall / max(1, budget.used))
        if wait > deadline - time.monotonic():
            raise WontFinish(wait)
    async with budget.reserve(nbytes, small=small) as held:
        yield held


def request_deadline(state: ServiceState, request: Request) -> float:
    """``request_timeout_s`` after the request arrived (stamped by ConcurrencyMiddleware),
    so time spent waiting before the handler ran counts too."""
    arrival = request.scope.get("state", {}).get("arrival", time.monotonic())
    return float(arrival) + state.settings.request_timeout_s
