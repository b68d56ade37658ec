"""Fairness (issue 23 item 3): a large request runs in pieces, so small requests behind it
are not held for its whole duration, and a request that could not get its memory before its
deadline is refused at once with 503 + Retry-After instead of waiting the deadline out."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from service.admission import pieces
from service.budget import MemoryBudget
from tests.service.helpers import encode_file, make_settings, random_image, serving, wait_until


def test_pieces_cover_every_item_once_within_the_quota() -> None:
    sizes = [5, 1, 1, 7, 3, 3, 3, 10, 1]
    runs = pieces(sizes, quota=6)
    assert [i for run in runs for i in range(len(sizes))[run]] == list(range(len(sizes)))
    assert all(sum(sizes[run]) <= 6 or run.stop - run.start == 1 for run in runs)
    assert pieces([], 6) == []


class Slow:
    """An encode that takes ``delay_s`` per pass."""

    def __init__(self, original: object, delay_s: float) -> None:
        self.original = original
        self.delay_s = delay_s
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.delay_s)
        return self.original(images)  # type: ignore[operator, no-any-return]


def post(url: str, images: list[bytes]) -> tuple[httpx.Response, float]:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    start = time.monotonic()
    response = httpx.post(f"{url}/v1/tokenize", files=files, timeout=60)
    return response, time.monotonic() - start


def test_a_small_request_is_not_held_behind_a_large_one(artifact_dir: Path) -> None:
    delay = 0.4
    # One large image per piece; six of them in one request.
    settings = make_settings(
        artifact_dir, max_batch_size=1, batch_wait_ms=0.0, max_batch_pixels=64 * 64
    )
    with serving(settings) as (url, state, _):
        served = state.models["default"]
        slow = Slow(served.tokenizer.encode, delay)
        served.tokenizer.encode = slow  # type: ignore[method-assign]
        # The pool holds the large request whole, and nothing besides.
        state._budget = MemoryBudget(6 * served.cost.tokenize(64 * 64, 64 * 64))
        big = [encode_file(random_image(64, 64, seed=i)) for i in range(6)]
        small = [encode_file(random_image(16, 16))]
        with ThreadPoolExecutor(2) as pool:
            large = pool.submit(post, url, big)
            wait_until(lambda: slow.calls >= 1)
            quick = pool.submit(post, url, small)
            (small_answer, small_s), (large_answer, large_s) = quick.result(), large.result()
    assert small_answer.status_code == 200 and large_answer.status_code == 200
    assert large_s >= 6 * delay
    assert small_s < 3 * delay + 0.5, (small_s, large_s)  # its turn came between the pieces


def test_a_request_that_cannot_get_memory_in_time_is_refused_at_once(artifact_dir: Path) -> None:
    delay = 1.5
    settings = make_settings(
        artifact_dir, max_batch_size=1, batch_wait_ms=0.0, request_timeout_s=1.2
    )
    with serving(settings) as (url, state, _):
        served = state.models["default"]
        image = [encode_file(random_image(64, 64))]
        slow = Slow(served.tokenizer.encode, delay)
        served.tokenizer.encode = slow  # type: ignore[method-assign]
        post(url, image)  # the pace of a pass is known (too slow for the deadline: 503)
        state._budget = MemoryBudget(served.cost.tokenize(64 * 64, 64 * 64))  # one at a time
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, url, image)
            wait_until(lambda: slow.calls >= 2)
            refused, took = post(url, image)
            first.result()
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "overloaded" and "memory" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert took < 0.8  # at once, not after the deadline


def test_a_small_reservation_goes_past_a_waiter_that_large_holders_block() -> None:
    import asyncio

    async def scenario() -> list[str]:
        budget = MemoryBudget(100)
        order: list[str] = []
        await budget.acquire(80)  # a large request's pass
        second = asyncio.ensure_future(budget.acquire(80))  # a second large one waits
        await asyncio.sleep(0)
        assert budget.waiting == 1
        # The waiter needs what the large holder has: a small one that fits goes past it.
        await asyncio.wait_for(budget.acquire(10, small=True), 1)
        order.append("small granted")
        # A small one that does not fit now waits, and a large one always queues.
        late_small = asyncio.ensure_future(budget.acquire(15, small=True))
        await asyncio.sleep(0)
        assert not late_small.done()
        budget.release(80)  # the first large pass ends: 10 + 80 fit, the waiter goes first
        await asyncio.wait_for(second, 1)
        order.append("second large granted")
        assert budget.used == 90 and budget.small_used == 10 and not late_small.done()
        budget.release(10, small=True)
        await asyncio.wait_for(late_small, 1)  # 80 + 15 fit
        order.append("late small granted")
        assert budget.small_used == 15
        return order

    assert asyncio.run(scenario()) == [
        "small granted",
        "second large granted",
        "late small granted",
    ]


def test_small_reservations_cannot_starve_a_large_waiter() -> None:
    import asyncio

    async def scenario() -> None:
        budget = MemoryBudget(100)
        await budget.acquire(30, small=True)  # small holders...
        await budget.acquire(30, small=True)
        large = asyncio.ensure_future(budget.acquire(60))  # ...are all that block it
        await asyncio.sleep(0)
        assert not large.done()
        # Small ones arriving now queue behind it: going past would delay it.
        small = asyncio.ensure_future(budget.acquire(5, small=True))
        await asyncio.sleep(0)
        assert not small.done() and budget.shortfall(5, small=True) > 0
        budget.release(30, small=True)
        await asyncio.wait_for(large, 1)
        await asyncio.wait_for(small, 1)  # 30 + 60 + 5 fit
        assert budget.used == 95 and budget.small_used == 35

    asyncio.run(scenario())


class SlowLarge(Slow):
    """``Slow`` for passes of images wider than ``side``; smaller ones at full speed."""

    def __init__(self, original: object, delay_s: float, side: int) -> None:
        super().__init__(original, delay_s)
        self.side = side

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] <= self.side:
            return self.original(images)  # type: ignore[operator, no-any-return]
        return super().__call__(images)


def test_a_small_request_is_not_held_behind_two_large_ones_under_a_tight_budget(
    artifact_dir: Path,
) -> None:
    """Issue 36: one large request holds the pool's memory, a second waits for it; a small
    request answers within the first's pass, not after both."""
    delay = 3.0  # per large pass: long beside what a small pass takes on a busy machine
    settings = make_settings(
        artifact_dir, max_batch_size=1, batch_wait_ms=0.0, lane_split_pixels=32 * 32
    )
    with serving(settings) as (url, state, _):
        served = state.models["default"]
        slow = SlowLarge(served.tokenizer.encode, delay, side=32)
        served.tokenizer.encode = slow  # type: ignore[method-assign]
        # Room for one large image and a few small ones: never two large at once.
        large_cost = served.cost.tokenize(64 * 64, 64 * 64)
        state._budget = MemoryBudget(large_cost + 4 * served.cost.tokenize(16 * 16, 16 * 16))
        big = [encode_file(random_image(64, 64, seed=1))]
        small = [encode_file(random_image(16, 16))]
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(post, url, big)
            wait_until(lambda: slow.calls >= 1)
            second = pool.submit(post, url, big)
            wait_until(lambda: state.budget.waiting >= 1)
            small_answer, small_s = post(url, small)
            answers = [first.result()[0], second.result()[0]]
    assert small_answer.status_code == 200, small_answer.text
    assert all(a.status_code == 200 for a in answers)
    assert small_s < 0.75 * delay, small_s  # within the first pass, not after it
