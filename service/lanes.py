"""Lanes: small items run beside large ones, not behind them.

One ``MicroBatcher`` runs one pass at a time, and one large image is one pass that cannot
be split (the network sees the whole image), so a small request that arrives while it runs
would wait for all of it. ``Lanes`` sends each item by its size to one of two batchers,
each with its own inference thread: items of at most ``split_numel`` elements to the small
lane, the others to the large lane. A small pass then runs while a large one is still
computing (docs/operations.md, "Fairness").

Memory is not a lane's business: every request reserves its pieces' memory from the one
pool before it submits (``service.admission.pass_memory``), so passes running side by side
are covered by their requests' reservations.

``Lanes`` answers like one batcher: ``submit_many`` is all or none against one
``max_queue`` for both lanes, and the load figures (``queue_depth``, ``backlog_s``, items
expired, cancelled and run) are the two lanes' sums, so the metrics and the early refusal
see the model and direction as before.
"""

from __future__ import annotations

import asyncio
import math

import torch

from service.batcher import MicroBatcher, check_room


class Lanes:
    """Routes items to ``small`` (at most ``split_numel`` elements each) or ``large``.

    The two batchers must run on different executors (else nothing runs side by side) and
    have no ``max_queue`` of their own: ``max_queue`` here bounds both together.
    """

    def __init__(
        self,
        small: MicroBatcher,
        large: MicroBatcher,
        *,
        split_numel: int,
        max_queue: int | None = None,
    ) -> None:
        if split_numel < 1:
            raise ValueError(f"split_numel={split_numel} is not allowed; expected >= 1")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue={max_queue} is not allowed; expected >= 1")
        if small.executor is large.executor:
            raise ValueError("the small and large lanes share one executor; give each its own")
        if small.max_queue is not None or large.max_queue is not None:
            raise ValueError("the lanes' batchers must have max_queue=None; Lanes bounds both")
        self.small = small
        self.large = large
        self.split_numel = split_numel
        self.max_queue = max_queue

    @property
    def lanes(self) -> tuple[MicroBatcher, MicroBatcher]:
        return self.small, self.large

    def lane_of(self, tensor: torch.Tensor) -> MicroBatcher:
        """The batcher ``tensor`` runs on."""
        return self.lanes[self._index(tensor)]

    def _index(self, tensor: torch.Tensor) -> int:
        return 0 if tensor.numel() <= self.split_numel else 1

    @property
    def queue_depth(self) -> int:
        return sum(lane.queue_depth for lane in self.lanes)

    @property
    def items_expired(self) -> int:
        return sum(lane.items_expired for lane in self.lanes)

    @property
    def items_cancelled(self) -> int:
        return sum(lane.items_cancelled for lane in self.lanes)

    @property
    def items_run(self) -> int:
        return sum(lane.items_run for lane in self.lanes)

    @property
    def batches_run(self) -> int:
        return sum(lane.batches_run for lane in self.lanes)

    @property
    def largest_batch(self) -> int:
        return max(lane.largest_batch for lane in self.lanes)

    @property
    def backlog_s(self) -> float:
        """Both lanes' backlogs added: they share the cores, so the work here takes about as
        long as the two lanes' work one after the other."""
        return sum(lane.backlog_s for lane in self.lanes)

    @property
    def running(self) -> bool:
        return all(lane.running for lane in self.lanes)

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

    async def stop(self) -> None:
        for lane in self.lanes:
            await lane.stop()

    async def submit(self, tensor: torch.Tensor, deadline: float = math.inf) -> torch.Tensor:
        """Queue one item on its lane and wait for its result."""
        (future,) = self.submit_many([tensor], deadline=deadline)
        return await future

    def submit_many(
        self, tensors: list[torch.Tensor], *, deadline: float = math.inf
    ) -> list[asyncio.Future[torch.Tensor]]:
        """``MicroBatcher.submit_many`` over both lanes: all or none under ``max_queue``
        (``QueueFull``), one future per item in the order given."""
        check_room(self.queue_depth, len(tensors), self.max_queue)
        routed: dict[int, list[int]] = {}  # lane index -> positions in tensors
        for i, tensor in enumerate(tensors):
            routed.setdefault(self._index(tensor), []).append(i)
        futures: list[asyncio.Future[torch.Tensor] | None] = [None] * len(tensors)
        submitted: list[asyncio.Future[torch.Tensor]] = []
        try:
            for lane, positions in routed.items():
                got = self.lanes[lane].submit_many(
                    [tensors[i] for i in positions], deadline=deadline
                )
                submitted.extend(got)
                for i, future in zip(positions, got, strict=True):
                    futures[i] = future
        except BaseException:
            for future in submitted:  # all or none: drop what the other lane took
                future.cancel()
            raise
        return [future for future in futures if future is not None]
