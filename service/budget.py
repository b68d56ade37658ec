"""Memory as a budget: what a request will cost, measured per model, and a byte semaphore.

A request's peak memory is predictable from its pixel count: the convolutions' activations
grow linearly with H * W and everything else (weights, code) is fixed. At start-up the
service measures each model's bytes per pixel for encode and decode, at the precision it
runs, by running probe images and reading the kernel's peak-RSS counter (VmHWM, reset
through /proc/self/clear_refs). A probe reads low when the allocator serves it from memory
the process already holds, so the heap is trimmed before each probe (glibc malloc_trim)
and large blocks always come from (and go back to) the kernel (mallopt M_MMAP_THRESHOLD
fixed), and the charge is the largest of PROBES probes times SAFETY_FACTOR. While serving,
each forward pass is measured the same way and exported (``vq_pass_bytes_per_pixel``), so
the charge can be checked against what passes really take. Requests then reserve their predicted cost from a
``MemoryBudget`` before any pixel is decoded: a cost larger than the whole pool can never
run (413), a cost that does not fit now waits, first come first served. Because every byte
that requests hold is reserved first, no mix of requests takes the process past its budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import math
import os
import resource
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Decoding one image file costs a few bytes per pixel on top of the network: Pillow's
# decoded frame (up to 4 B/px for RGBA), the alpha composite (4), the RGB array (3), the
# fitted copy (3) and the (3, H, W) tensor view (0): 16 B/px covers the worst path.
DECODE_BYTES_PER_PIXEL = 16
# PNG encoding of a decoded image: the (H, W, 3) array (3 B/px) plus the compressed file
# (at most about the raw size at compress_level=1) and its base64 copy (4/3).
PNG_BYTES_PER_PIXEL = 8
# Reading and parsing request bodies: the input pool (INPUT_SHARE of the pool), reserved
# before the body is read and grown (never waited for) once its structure is known.
INPUT_SHARE = 0.25
# A multipart body as received, plus one copy per parsed part (a file part).
UPLOAD_BYTES_PER_BODY_BYTE = 3
# A JSON body parsed by service.bodies, per byte of it: the body (twice while its chunks
# are joined), the parsed strings or one raw grid's copy, and a detokenize body's int64
# codes (8 bytes for at least 2 of JSON: 4) and its big ints' digits; a tokenize body's
# base64 text as bytes, without whitespace, and decoded (3/4).
GRID_JSON_BYTES_PER_BYTE = 7
IMAGES_JSON_BYTES_PER_BYTE = 5
# ... and per entry, reserved up front for the most a request may send: its string, bytes
# and label.
IMAGES_JSON_BYTES_PER_IMAGE = 512
# One grid's Python lists while it is converted (service.bodies decodes one at a time):
# per code a pointer and an int object, per row a list, with a margin.
GRID_BYTES_PER_CODE = 64
GRID_BYTES_PER_ROW = 128
# Measurements carry allocator slack (freed blocks kept, page granularity): a margin on top.
SAFETY_FACTOR = 1.5
PROBES = 3  # the charge is the largest of this many probes
# Below this the probe is noise (tiny test models); no real network costs less.
MIN_BYTES_PER_PIXEL = 32


class BudgetExceeded(RuntimeError):
    """The request needs more memory than the whole pool; it can never run."""


class WontFinish(RuntimeError):
    """The request could not get its memory before its deadline: refused at once (503 +
    Retry-After) instead of waiting the deadline out. ``wait_s``: the estimate."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(
            f"would wait about {wait_s:.0f} s for memory, past its deadline; retry later"
        )
        self.wait_s = wait_s


class MemoryBusy(RuntimeError):
    """A reservation could not grow now (its holder never waits, so holders cannot
    deadlock); the request is refused with 503 + Retry-After."""


def machine_memory() -> int:
    """Bytes of memory this process may use: the cgroup limit if one is set, else RAM."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            text = Path(path).read_text().strip()
            if text != "max":
                return min(ram, int(text))
    return ram


def default_budget() -> int:
    """Half the machine: leaves room for the OS, page cache and a neighbour process."""
    return machine_memory() // 2


def _status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def current_rss() -> int:
    """Resident bytes of this process now (0 where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return 1024 * kib if kib is not None else 0


_peak_before_reset = 0  # the largest VmHWM seen before a reset (see process_peak)
_reset_lock = threading.Lock()  # held while resetting VmHWM and folding what it held


def process_peak() -> int:
    """The largest resident size of this process since it started: VmHWM, which
    ``peak_bytes_of`` resets, folded with what it read before each reset."""
    kib = _status_kib("VmHWM")
    return max(_peak_before_reset, 1024 * kib if kib is not None else 0)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fix_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Blocks of ``nbytes`` or more are mapped from the kernel and unmapped when freed:
    glibc otherwise raises the threshold after the first large free and keeps the large
    activations of a pass in its heap, where the next measurement cannot see them."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, nbytes)


def trim_heap() -> None:
    """Give freed heap memory back to the kernel (glibc), so a measurement sees all of it."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def measure_peak(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` and how far it raised this process's resident memory above where it began.

    Linux: reset the high-water mark (``echo 5 > /proc/self/clear_refs``, proc(5)) and read
    VmHWM after. Elsewhere ru_maxrss, which only rises, so the figure is a lower bound
    there; MIN_BYTES_PER_PIXEL and SAFETY_FACTOR cover it.
    """
    global _peak_before_reset
    try:
        with _reset_lock:  # the inference lanes' threads reset it too
            _peak_before_reset = process_peak()
            Path("/proc/self/clear_refs").write_text("5")
        before = current_rss()
        result = fn()
        peak = _status_kib("VmHWM")
        if peak is None:
            raise OSError("no VmHWM")
        return result, max(0, 1024 * peak - before)
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result = fn()
        return result, max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)


_passes_lock = threading.Lock()
_passes: dict[int, bool] = {}  # the measured passes running now -> ran beside another
_pass_ids = count()


def measure_alone(fn: Callable[[], T]) -> tuple[T, int | None]:
    """``measure_peak`` for passes that may run side by side (the two inference lanes,
    service/lanes.py): the peak, or None when another such pass ran at any time during this
    one, because VmHWM is the process's: the reading would hold the other pass's memory
    too, or miss part of this one's where the other reset it."""
    with _passes_lock:
        key = next(_pass_ids)
        for other in _passes:
            _passes[other] = True
        _passes[key] = bool(_passes)
    try:
        result, peak = measure_peak(fn)
    finally:
        with _passes_lock:
            overlapped = _passes.pop(key)
    return result, None if overlapped else peak


def peak_bytes_of(fn: Callable[[], object]) -> int:
    """How far ``fn`` raises this process's resident memory, measured on a trimmed heap."""
    trim_heap()
    return measure_peak(fn)[1]


@dataclass(frozen=True)
class ModelCost:
    """Predicted peak bytes per request pixel of one model (measured, margin included)."""

    encode_per_pixel: int  # per input pixel (H * W after fit)
    decode_per_pixel: int  # per output pixel (h * f * w * f)

    def tokenize(self, decoded_pixels: int, fitted_pixels: int) -> int:
        return DECODE_BYTES_PER_PIXEL * decoded_pixels + self.encode_per_pixel * fitted_pixels

    def detokenize(self, pixels: int) -> int:
        return (self.decode_per_pixel + PNG_BYTES_PER_PIXEL) * pixels


def grid_parse_bytes(max_side: int) -> int:
    """The memory of the Python lists of one grid of at most ``max_side`` x ``max_side``
    codes, reserved before a detokenize body is read (its bytes are priced as they come)."""
    return max_side * max_side * GRID_BYTES_PER_CODE + max_side * GRID_BYTES_PER_ROW


def upload_bytes(chunk: bytes) -> int:
    """The memory a multipart body's ``chunk`` takes: itself and its parsed copies."""
    return UPLOAD_BYTES_PER_BODY_BYTE * len(chunk)


def grid_json_bytes(chunk: bytes) -> int:
    """The memory a detokenize JSON body's ``chunk`` takes, parsed (one grid's lists apart:
    ``grid_parse_bytes``)."""
    return GRID_JSON_BYTES_PER_BYTE * len(chunk)


def images_json_bytes(chunk: bytes) -> int:
    """The memory a tokenize JSON body's ``chunk`` takes, parsed and base64-decoded."""
    return IMAGES_JSON_BYTES_PER_BYTE * len(chunk)


def per_pixel(measured_bytes: int, pixels: int) -> int:
    """Measured bytes of a probe of ``pixels`` -> the bytes per pixel the budget charges."""
    return max(MIN_BYTES_PER_PIXEL, math.ceil(SAFETY_FACTOR * measured_bytes / pixels))


class MemoryBudget:
    """An asyncio byte semaphore, first come first served (a large request is not starved
    by a stream of small ones behind it), with one exception for small requests: while the
    first waiter waits for memory that large holders have (it would not fit even if every
    small holder left), a small request that fits in what is free now goes past it. It
    cannot delay that waiter, which waits for a large holder's release anyway; once only
    small holders stand in its way, small requests queue behind it again, so it is never
    starved. Without this a small request waits for a whole large pass whenever a second
    large request waits for the memory a first one holds (docs/operations.md, "Fairness")."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} is not allowed; expected >= 1 byte")
        self.capacity = capacity
        self.used = 0
        self.small_used = 0  # of used, what small requests hold
        self._waiters: deque[tuple[int, bool, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _head(self) -> tuple[int, bool, asyncio.Future[None]] | None:
        while self._waiters and self._waiters[0][2].done():
            self._waiters.popleft()
        return self._waiters[0] if self._waiters else None

    def _may_pass(self, nbytes: int) -> bool:
        """Whether a small request of ``nbytes`` may go past the waiters now."""
        head = self._head()
        if head is None or self.used + nbytes > self.capacity:
            return False
        return self.used - self.small_used + head[0] > self.capacity

    def shortfall(self, nbytes: int, *, small: bool = False) -> int:
        """Bytes that must be released before ``nbytes`` would be granted (0: at once)."""
        if small and self._may_pass(nbytes):
            return 0
        ahead = sum(n for n, _, future in self._waiters if not future.done())
        if not ahead and self.used + nbytes <= self.capacity:
            return 0
        return self.used + ahead + nbytes - self.capacity

    async def acquire(self, nbytes: int, *, small: bool = False) -> None:
        self.check_fits(nbytes)
        if (self._head() is None and self.used + nbytes <= self.capacity) or (
            small and self._may_pass(nbytes)
        ):
            self._take(nbytes, small)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, small, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(nbytes, small=small)  # granted just as the waiter gave up
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()  # the head may have been the one blocking the others
            raise

    def _take(self, nbytes: int, small: bool) -> None:
        self.used += nbytes
        if small:
            self.small_used += nbytes

    def release(self, nbytes: int, *, small: bool = False) -> None:
        self.used -= nbytes
        if small:
            self.small_used -= nbytes
        self._wake()

    def check_fits(self, nbytes: int) -> None:
        if nbytes > self.capacity:
            raise BudgetExceeded(
                f"needs {nbytes / 2**20:.0f} MiB of working memory; the pool is "
                f"{self.capacity / 2**20:.0f} MiB (setting memory_budget, env VQ_MEMORY_BUDGET)"
            )

    def try_grow(self, extra: int, *, small: bool = False) -> bool:
        """Take ``extra`` more bytes for a holder, now or not at all (never waits)."""
        if self.used + extra > self.capacity:
            return False
        self._take(extra, small)
        return True

    def _wake(self) -> None:
        while (head := self._head()) is not None and self.used + head[0] <= self.capacity:
            nbytes, small, future = self._waiters.popleft()
            self._take(nbytes, small)
            future.set_result(None)
        for entry in list(self._waiters)[1:]:
            nbytes, small, future = entry
            if small and not future.done() and self._may_pass(nbytes):
                self._waiters.remove(entry)
                self._take(nbytes, small)
                future.set_result(None)

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, *, small: bool = False) -> AsyncIterator[Reservation]:
        await self.acquire(nbytes, small=small)
        held = Reservation(self, nbytes, small=small)
        try:
            yield held
        finally:
            held.release()


class Reservation:
    """Bytes one request holds in a ``MemoryBudget``; resized as the request learns what it
    needs. Growing never waits (``MemoryBusy`` if the pool is full now): only a request that
    holds nothing in a pool waits in it, so no two requests can wait on each other."""

    def __init__(self, budget: MemoryBudget, nbytes: int, *, small: bool = False) -> None:
        self.budget = budget
        self.nbytes = nbytes
        self.small = small

    def resize(self, nbytes: int) -> None:
        extra = nbytes - self.nbytes
        if extra > 0:
            self.budget.check_fits(nbytes)
            if not self.budget.try_grow(extra, small=self.small):
                raise MemoryBusy(
                    f"needs {nbytes / 2**20:.0f} MiB to read its body and the memory for "
                    "request bodies is in use now"
                )
        elif extra < 0:
            self.budget.release(-extra, small=self.small)
        self.nbytes = nbytes

    def release(self) -> None:
        self.budget.release(self.nbytes, small=self.small)
        self.nbytes = 0
