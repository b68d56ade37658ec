"""Lanes (issue 23, fairness): a small item runs while a large item's pass is still going,
on its own inference thread, and the two lanes answer as one batcher."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from service.batcher import MicroBatcher, QueueFull
from service.budget import measure_alone
from service.lanes import Lanes
from tests.service.helpers import encode_file, make_settings, random_image, serving, wait_until

SPLIT = 16  # elements: (4, 4) items are small, (8, 8) large


class HeldLarge:
    """A batch function whose passes over large items hold until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.large_running = threading.Event()
        self.threads: dict[int, str] = {}  # item numel -> the thread that ran it

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.threads[x[0].numel()] = threading.current_thread().name
        if x[0].numel() > SPLIT:
            self.large_running.set()
            assert self.release.wait(10.0), "the test never released the large pass"
        return x * 10


def lanes(fn: HeldLarge, small: ThreadPoolExecutor, large: ThreadPoolExecutor, **kw: int) -> Lanes:
    def batcher(pool: ThreadPoolExecutor) -> MicroBatcher:
        return MicroBatcher(fn, executor=pool, max_batch_size=4, max_wait_s=0.0)

    return Lanes(batcher(small), batcher(large), split_numel=SPLIT, **kw)


def test_a_small_item_completes_while_a_large_pass_runs() -> None:
    fn = HeldLarge()

    async def scenario(router: Lanes) -> None:
        router.start()
        try:
            big = asyncio.ensure_future(router.submit(torch.ones(8, 8)))
            while not fn.large_running.is_set():
                await asyncio.sleep(0.01)
            small = await asyncio.wait_for(router.submit(torch.ones(4, 4)), 5.0)
            assert torch.equal(small, torch.full((4, 4), 10.0))
            assert not big.done()  # the large pass is still running
            fn.release.set()
            assert torch.equal(await big, torch.full((8, 8), 10.0))
        finally:
            fn.release.set()
            await router.stop()

    with (
        ThreadPoolExecutor(1, thread_name_prefix="small") as small,
        ThreadPoolExecutor(1, thread_name_prefix="large") as large,
    ):
        asyncio.run(scenario(lanes(fn, small, large)))
    assert fn.threads[16].startswith("small") and fn.threads[64].startswith("large")


def test_a_request_across_both_lanes_keeps_its_order_and_one_queue_limit() -> None:
    fn = HeldLarge()
    fn.release.set()
    items = [torch.full((8, 8), 1.0), torch.full((4, 4), 2.0), torch.full((8, 8), 3.0)]

    async def scenario(router: Lanes) -> None:
        router.start()
        try:
            with pytest.raises(QueueFull):  # 3 items, limit 2: none is queued
                router.submit_many(items + [torch.ones(4, 4)], deadline=time.monotonic() + 5)
            assert router.queue_depth == 0
            results = await asyncio.gather(*router.submit_many(items[:2]))
            results.append(await router.submit(items[2]))
        finally:
            await router.stop()
        for item, result in zip(items, results, strict=True):
            assert torch.equal(result, item * 10)
        assert router.items_run == 3 and router.queue_depth == 0
        assert (router.small.items_run, router.large.items_run) == (1, 2)

    with ThreadPoolExecutor(1) as small, ThreadPoolExecutor(1) as large:
        asyncio.run(scenario(lanes(fn, small, large, max_queue=2)))


def test_lanes_refuse_a_shared_executor_and_their_own_queue_limits() -> None:
    fn = HeldLarge()
    with ThreadPoolExecutor(1) as one, ThreadPoolExecutor(1) as other:
        same = MicroBatcher(fn, executor=one, max_batch_size=1, max_wait_s=0.0)
        with pytest.raises(ValueError, match="executor"):
            Lanes(
                same,
                MicroBatcher(fn, executor=one, max_batch_size=1, max_wait_s=0.0),
                split_numel=1,
            )
        bounded = MicroBatcher(fn, executor=other, max_batch_size=1, max_wait_s=0.0, max_queue=3)
        with pytest.raises(ValueError, match="max_queue"):
            Lanes(same, bounded, split_numel=1)
        free = MicroBatcher(fn, executor=other, max_batch_size=1, max_wait_s=0.0)
        with pytest.raises(ValueError, match="split_numel=0"):
            Lanes(same, free, split_numel=0)


class HeldEncode:
    """The model's encode, held for images larger than ``side`` until ``release`` is set."""

    def __init__(self, original: object, side: int) -> None:
        self.original = original
        self.side = side
        self.release = threading.Event()
        self.large_running = threading.Event()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] > self.side:
            self.large_running.set()
            assert self.release.wait(20.0), "the test never released the large pass"
        return self.original(images)  # type: ignore[operator, no-any-return]


def post(url: str, image: bytes) -> httpx.Response:
    files = [("files", ("image.png", image, "image/png"))]
    return httpx.post(f"{url}/v1/tokenize", files=files, timeout=30)


def test_a_small_request_is_answered_while_a_large_image_is_encoded(artifact_dir: Path) -> None:
    settings = make_settings(artifact_dir, batch_wait_ms=0.0, lane_split_pixels=32 * 32)
    with serving(settings) as (url, state, _):
        served = state.models["default"]
        held = HeldEncode(served.tokenizer.encode, side=32)
        served.tokenizer.encode = held  # type: ignore[method-assign]
        with ThreadPoolExecutor(1) as pool:
            large = pool.submit(post, url, encode_file(random_image(64, 64)))
            try:
                wait_until(held.large_running.is_set)
                small = post(url, encode_file(random_image(16, 16)))
                assert small.status_code == 200, small.text
                assert not large.done()  # answered while the large image's pass still runs
            finally:
                held.release.set()
            assert large.result().status_code == 200


def first_op_threads() -> int:
    torch.zeros(1).add_(1)
    return torch.get_num_threads()


def test_each_lane_thread_keeps_its_own_torch_threads(artifact_dir: Path) -> None:
    before = torch.get_num_threads()
    settings = make_settings(artifact_dir, torch_threads=2, small_lane_threads=1)
    try:
        with serving(settings) as (_, state, _):
            assert state.executor is not None and state.small_executor is not None
            assert state.executor.submit(torch.get_num_threads).result() == 2
            assert state.small_executor.submit(torch.get_num_threads).result() == 1
            with ThreadPoolExecutor(1) as fresh:  # a thread started later gets torch_threads
                assert fresh.submit(first_op_threads).result() == 2
    finally:
        torch.set_num_threads(before)


def test_lane_split_pixels_zero_is_one_lane(artifact_dir: Path) -> None:
    with serving(make_settings(artifact_dir, lane_split_pixels=0)) as (_, state, _):
        assert state.small_executor is None
        assert isinstance(state.models["default"].encoder, MicroBatcher)


def test_a_pass_beside_another_is_not_a_memory_measurement() -> None:
    both = threading.Barrier(2, timeout=10)

    def pass_beside_another() -> int:
        both.wait()  # the two passes overlap
        return 1

    with ThreadPoolExecutor(2) as pool:
        side_by_side = list(pool.map(lambda _: measure_alone(pass_beside_another), range(2)))
    assert [peak for _, peak in side_by_side] == [None, None]
    result, peak = measure_alone(lambda: bytearray(1 << 20))
    assert len(result) == 1 << 20 and peak is not None  # alone: measured
