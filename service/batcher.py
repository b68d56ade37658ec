"""Micro-batching: concurrent requests share one forward pass.

Requests ``submit`` one item each (an image (3, H, W) or a code grid (h, w)) and await a
future. A collector task on the event loop groups waiting items by shape (only same-sized
tensors stack), and once a group holds ``max_batch_size`` items, or its oldest item has
waited ``max_wait_s``, runs ``fn`` on the stacked group in the inference thread (never on
the event loop) and hands each row back to its own future.

Under load nothing waits for the timer: items that arrive while a batch is computing are
already older than ``max_wait_s`` when it finishes, so the next batch starts at once with
everything that queued up. ``max_batch_size=1`` turns batching off (one item per pass).

Load shedding lives here too, because only the batcher knows what is waiting: at most
``max_queue`` items wait (``submit_many`` refuses the whole request with ``QueueFull``
beyond that), an item whose deadline has passed when its batch forms fails with
``DeadlineExceeded`` instead of running, and an item whose future was cancelled (its
client left, or gave up at the deadline) frees its place at once and never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch

BatchFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Item:
    tensor: torch.Tensor
    future: asyncio.Future[torch.Tensor]
    deadline: float = math.inf  # time.monotonic() after which the item must not run
    enqueued: float = field(default_factory=time.perf_counter)
    waiting: bool = True  # counted in queue_depth until it runs or is dropped


class BatcherClosed(RuntimeError):
    """The batcher was stopped while the item waited."""


class QueueFull(RuntimeError):
    """The request's items would take the queue past ``max_queue``."""


class DeadlineExceeded(RuntimeError):
    """The item's deadline passed before its batch ran."""


def check_room(queued: int, more: int, max_queue: int | None) -> None:
    """Raise ``QueueFull`` when ``more`` items would take ``queued`` past ``max_queue``."""
    if max_queue is not None and queued + more > max_queue:
        raise QueueFull(
            f"{queued} items are queued; {more} more would pass the limit of {max_queue} "
            "(setting max_queue)"
        )


class MicroBatcher:
    """Gathers items into batches of up to ``max_batch_size`` for ``fn``.

    fn: stacked items (N, *shape) -> results (N, ...); runs on ``executor``.
    max_batch_numel: caps a batch's total elements as well (N * numel of one item), so
        that large images batch fewer at a time; one item always fits.
    on_batch: called on the event loop with each batch's size (metrics).
    max_queue: most items waiting at once (None: unbounded).
    """

    def __init__(
        self,
        fn: BatchFn,
        *,
        executor: Executor,
        max_batch_size: int,
        max_wait_s: float,
        max_batch_numel: int | None = None,
        on_batch: Callable[[int], None] | None = None,
        max_queue: int | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} is not allowed; expected >= 1")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s={max_wait_s} is not allowed; expected >= 0")
        if max_batch_numel is not None and max_batch_numel < 1:
            raise ValueError(f"max_batch_numel={max_batch_numel} is not allowed; expected >= 1")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue={max_queue} is not allowed; expected >= 1")
        self.fn = fn
        self.max_queue = max_queue
        self.queue_depth = 0  # items submitted that have neither run nor been dropped
        self.items_expired = 0  # dropped at their deadline, never run
        self.items_cancelled = 0  # dropped because their waiter left, never run
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_batch_numel = max_batch_numel
        self.on_batch = on_batch
        self.batches_run = 0
        self.items_run = 0
        # What waits and runs, in elements, and how long an element takes (a moving average
        # of the passes run): how long the work already here will take (``backlog_s``).
        self.pending_numel = 0
        self.seconds_per_numel = 0.0
        self.largest_batch = 0
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        # shape -> items waiting, in arrival order; dicts keep insertion order, so the first
        # key is the group whose oldest item has waited longest.
        self._groups: dict[tuple[int, ...], list[_Item]] = {}

    @property
    def backlog_s(self) -> float:
        """Seconds the items waiting and running will take, at the recent pace (0 before
        the first pass)."""
        return self.pending_numel * self.seconds_per_numel

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the collector on the running event loop."""
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        """Stop collecting; waiting items fail with ``BatcherClosed``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        leftovers = [item for group in self._groups.values() for item in group]
        self._groups.clear()
        while self._queue is not None and not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for item in leftovers:
            if not item.future.done():
                item.future.set_exception(BatcherClosed("the service is shutting down"))

    async def submit(self, tensor: torch.Tensor, deadline: float = math.inf) -> torch.Tensor:
        """Queue one item and wait for its row of the batch result."""
        (future,) = self.submit_many([tensor], deadline=deadline)
        return await future

    def submit_many(
        self, tensors: list[torch.Tensor], *, deadline: float = math.inf
    ) -> list[asyncio.Future[torch.Tensor]]:
        """Queue a request's items, all or none, and return one future per item.

        ``deadline`` is a ``time.monotonic()`` instant. Cancelling a future drops its item
        if it has not run yet. Raises ``QueueFull`` (nothing queued) when the items do not
        fit under ``max_queue``, ``BatcherClosed`` when the batcher is not running.
        """
        if self._queue is None or not self.running:
            raise BatcherClosed("the batcher is not running")
        check_room(self.queue_depth, len(tensors), self.max_queue)
        loop = asyncio.get_running_loop()
        futures = []
        for tensor in tensors:
            item = _Item(tensor, loop.create_future(), deadline)
            self.queue_depth += 1
            self.pending_numel += tensor.numel()
            item.future.add_done_callback(functools.partial(self._on_done, item))
            self._queue.put_nowait(item)
            futures.append(item.future)
        return futures

    def _on_done(self, item: _Item, future: asyncio.Future[torch.Tensor]) -> None:
        self._leave(item)

    def _leave(self, item: _Item, *, running: bool = False) -> None:
        """The item stops waiting: it runs now, or its future finished while it waited."""
        if not item.waiting:
            return
        item.waiting = False
        self.queue_depth -= 1
        if not running:
            self.pending_numel -= item.tensor.numel()
        if not running and item.future.cancelled():
            self.items_cancelled += 1

    def _add(self, item: _Item) -> None:
        if item.future.done():  # the client went away while queued
            return
        self._groups.setdefault(tuple(item.tensor.shape), []).append(item)

    def _drain(self) -> None:
        assert self._queue is not None
        while not self._queue.empty():
            self._add(self._queue.get_nowait())

    def batch_limit(self, shape: tuple[int, ...]) -> int:
        """How many items of ``shape`` one forward pass takes."""
        if self.max_batch_numel is None:
            return self.max_batch_size
        per_item = max(1, math.prod(shape))
        return max(1, min(self.max_batch_size, self.max_batch_numel // per_item))

    def _full_group(self) -> tuple[int, ...] | None:
        for key, items in self._groups.items():
            if len(items) >= self.batch_limit(key):
                return key
        return None

    async def _collect(self) -> None:
        assert self._queue is not None
        while True:
            if not self._groups:
                self._add(await self._queue.get())
                continue
            self._drain()
            key = self._full_group()
            if key is None:
                oldest = next(iter(self._groups.values()))[0]
                remaining = oldest.enqueued + self.max_wait_s - time.perf_counter()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        self._add(await asyncio.wait_for(self._queue.get(), remaining))
                    continue
                key = next(iter(self._groups))
            group = self._groups.pop(key)
            limit = self.batch_limit(key)
            batch, rest = group[:limit], group[limit:]
            if rest:
                # Keep the leftovers' place at the back; they go out with the next batch.
                self._groups[key] = rest
            await self._run(batch)

    async def _run(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live = []
        for item in batch:
            if item.future.done():
                continue
            if now > item.deadline:
                self.items_expired += 1
                self._leave(item)
                item.future.set_exception(DeadlineExceeded("the request's deadline passed"))
                continue
            self._leave(item, running=True)
            live.append(item)
        batch = live
        if not batch:
            return
        tensors = [item.tensor for item in batch]
        numel = sum(t.numel() for t in tensors)
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            # Stacked on the inference thread too: a copy of the whole batch.
            results = await loop.run_in_executor(self.executor, _stack_and_run, self.fn, tensors)
        except Exception as exc:  # every waiter learns what went wrong; the loop goes on
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self.pending_numel -= numel
        took = (time.perf_counter() - start) / max(1, numel)
        self.seconds_per_numel = (
            took if not self.seconds_per_numel else (0.7 * self.seconds_per_numel + 0.3 * took)
        )
        self.batches_run += 1
        self.items_run += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)


def _stack_and_run(fn: BatchFn, tensors: list[torch.Tensor]) -> torch.Tensor:
    return fn(torch.stack(tensors))  # (N, *shape)
