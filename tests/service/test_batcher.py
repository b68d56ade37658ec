"""The micro-batcher on its own: grouping, ordering, limits, failures."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.batcher import BatcherClosed, MicroBatcher


class Recorder:
    """A batch function that records what it was given and returns rows * 10."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.batches: list[tuple[int, ...]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(tuple(x.shape))
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and bool((x == self.fail_on).any()):
            raise ValueError("poisoned batch")
        return x * 10


def run(coro_fn: object, **kwargs: object) -> object:
    return asyncio.run(coro_fn(**kwargs))  # type: ignore[operator]


async def _submit_all(batcher: MicroBatcher, items: list[torch.Tensor]) -> list[object]:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(t) for t in items), return_exceptions=True)
    finally:
        await batcher.stop()


@pytest.mark.parametrize("max_batch_size", [1, 3, 8])
def test_each_caller_gets_its_own_row_and_batches_respect_the_limit(max_batch_size: int) -> None:
    fn = Recorder()
    items = [torch.full((2, 2), float(i)) for i in range(8)]
    with ThreadPoolExecutor(1, thread_name_prefix="infer") as pool:
        batcher = MicroBatcher(fn, executor=pool, max_batch_size=max_batch_size, max_wait_s=0.05)
        results = asyncio.run(_submit_all(batcher, items))
    for i, result in enumerate(results):
        assert torch.equal(result, torch.full((2, 2), 10.0 * i))
    sizes = [shape[0] for shape in fn.batches]
    assert sum(sizes) == 8 and max(sizes) <= max_batch_size
    assert max(sizes) == min(max_batch_size, 8)  # all 8 arrive at once: batches fill up
    assert batcher.largest_batch == max(sizes) and batcher.items_run == 8
    assert all(name.startswith("infer") for name in fn.threads)  # never on the event loop


def test_items_of_different_shapes_are_batched_apart() -> None:
    fn = Recorder()
    items = [torch.zeros(2, 2), torch.ones(3, 3), torch.zeros(2, 2) + 2, torch.ones(3, 3) + 2]
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(fn, executor=pool, max_batch_size=8, max_wait_s=0.05)
        results = asyncio.run(_submit_all(batcher, items))
    assert sorted(fn.batches) == [(2, 2, 2), (2, 3, 3)]
    for item, result in zip(items, results, strict=True):
        assert torch.equal(result, item * 10)


def test_a_failing_batch_fails_only_its_callers_and_the_batcher_goes_on() -> None:
    fn = Recorder(fail_on=-1.0)

    async def scenario() -> tuple[list[object], object]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(fn, executor=pool, max_batch_size=4, max_wait_s=0.02)
            batcher.start()
            first = await asyncio.gather(
                batcher.submit(torch.tensor([-1.0])),
                batcher.submit(torch.tensor([1.0])),
                return_exceptions=True,
            )
            later = await batcher.submit(torch.tensor([2.0]))
            await batcher.stop()
            return first, later

    first, later = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) for r in first)  # same batch, same fate
    assert torch.equal(later, torch.tensor([20.0]))


def test_submit_after_stop_raises_batcher_closed() -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(Recorder(), executor=pool, max_batch_size=2, max_wait_s=0.0)
            batcher.start()
            await batcher.stop()
            with pytest.raises(BatcherClosed):
                await batcher.submit(torch.zeros(1))

    asyncio.run(scenario())


@pytest.mark.parametrize(("size", "wait"), [(0, 0.0), (2, -1.0)])
def test_bad_limits_raise(size: int, wait: float) -> None:
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="max_"):
        MicroBatcher(Recorder(), executor=pool, max_batch_size=size, max_wait_s=wait)


def test_batch_numel_cap_limits_large_items() -> None:
    fn = Recorder()
    small = [torch.zeros(2, 2) + i for i in range(6)]  # 4 elements each: 3 fit in 12
    large = [torch.zeros(4, 4) + i for i in range(2)]  # 16 elements: alone anyway
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(
            fn, executor=pool, max_batch_size=8, max_wait_s=0.05, max_batch_numel=12
        )
        assert batcher.batch_limit((2, 2)) == 3 and batcher.batch_limit((4, 4)) == 1
        results = asyncio.run(_submit_all(batcher, small + large))
    assert sorted(fn.batches) == [(1, 4, 4), (1, 4, 4), (3, 2, 2), (3, 2, 2)]
    for item, result in zip(small + large, results, strict=True):
        assert torch.equal(result, item * 10)
