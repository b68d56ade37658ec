"""Loading the served models into a ``ServiceState``: resolve each artifact (a local path or
a Hub id), verify and open it (``vq.load_tokenizer``, the backend), measure its memory cost,
wire its batchers to the one inference thread, then size the memory budget from what the
loaded process holds.

Everything here runs before the service is ready; what stops start-up is a ``StartupError``
whose one-line message says why and what to change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import torch

import vq
from service.backends import Backend, import_onnxruntime, make_backend
from service.batcher import BatchFn, MicroBatcher
from service.budget import (
    INPUT_SHARE,
    PROBES,
    MemoryBudget,
    ModelCost,
    current_rss,
    default_budget,
    fix_mmap_threshold,
    measure_alone,
    peak_bytes_of,
    per_pixel,
)
from service.lanes import Lanes
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.state import InvalidCodes, ServedModel, ServiceState
from service.usage_history import UsageHistory
from vq.hub import looks_like_repo_id, resolve_artifact
from vq.precision import bf16_native

logger = logging.getLogger("service")


class StartupError(RuntimeError):
    """The service cannot start as configured; the message says why and what to change."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def is_hub_id(path: str) -> bool:
    """A model spec names a Hub repo when no such local path exists and it reads "owner/name"."""
    return not Path(path).expanduser().exists() and looks_like_repo_id(path)


def resolve_artifact_path(path: str) -> Path:
    """A model spec -> a local artifact directory. A path that exists wins (relative paths are
    relative to the current directory, where ``vq-serve`` starts); else a Hugging Face Hub repo
    id ("owner/name") is fetched through ``vq.hub`` (its cache, or the network); else the path
    itself, which loading then reports missing. StartupError when the Hub cannot provide it."""
    if not is_hub_id(path):
        return Path(path).expanduser().resolve()
    try:
        return resolve_artifact(path)
    except ValueError as exc:  # vq.hub.HubError: offline, not found, huggingface_hub missing
        raise StartupError(str(exc)) from None


def check_models(settings: Settings) -> None:
    """Fetch every Hub id among the models into the local Hub cache, so that a model that
    cannot be had stops start-up with one clear message (StartupError) before the server
    starts; loading then finds it in the cache."""
    for name, path in settings.models.items():
        try:
            resolve_artifact_path(path)
        except StartupError as exc:
            raise StartupError(f"model {name!r}: {exc}") from None


def check_backend_available(settings: Settings) -> None:
    """StartupError naming the fix when the configured backend's library is missing."""
    if settings.backend == "onnxruntime":
        try:
            import_onnxruntime()
        except RuntimeError as exc:
            raise StartupError(str(exc)) from None


def precision_reason(tokenizer: vq.Tokenizer, requested: str | None, backend: str) -> str:
    """Why ``tokenizer`` runs at its precision, for the start-up log."""
    if backend == "onnxruntime":
        return "backend onnxruntime runs the float32 ONNX graphs"
    if requested is not None:
        return "set by VQ_PRECISION / --precision"
    if tokenizer.metadata.get("recommended_precision") == "fp32":
        return "auto: the artifact's config.json recommends fp32"
    if bf16_native(tokenizer.device):
        return f"auto: {tokenizer.device} computes bf16 natively"
    return f"auto: {tokenizer.device} has no native bf16 (emulated bf16 is slower than fp32)"


def _measured(
    fn: Callable[[torch.Tensor], torch.Tensor],
    pixels: Callable[[torch.Tensor], int],
    observe: Callable[[float], None],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn``, with the resident memory each pass takes per pixel reported to ``observe``
    (``vq_pass_bytes_per_pixel``: what the budget's charge is checked against), for passes
    that ran alone (``measure_alone``: the lanes' passes beside each other are not
    measurements)."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        out, peak = measure_alone(lambda: fn(batch))
        if peak is not None:
            observe(peak / max(1, pixels(batch)))
        return out

    return run


def _encode_fn(
    backend: Backend,
    codebook_size: int,
    usage: vq.CodebookUsage,
    lock: threading.Lock,
    history: UsageHistory,
    observe: Callable[[float], None],
) -> Callable[[torch.Tensor], torch.Tensor]:
    encode = _measured(backend.encode, lambda x: x.shape[0] * x.shape[2] * x.shape[3], observe)

    def encode_batch(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> int64 (N, H/f, W/f); counts the codes as served traffic."""
        codes = encode(images)
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= codebook_size:
            raise InvalidCodes(
                f"the model produced code ids in [{low}, {high}], outside "
                f"[0, {codebook_size}); its weights may be corrupt"
            )
        with lock:
            usage.update(codes)
            history.record(
                time.monotonic(), usage.tokens_seen, usage.window_usage, usage.perplexity
            )
        return codes

    return encode_batch


def _lower_priority(nice: int) -> None:
    """Raise this thread's nice value (Linux: PRIO_PROCESS with a thread id is per thread;
    the torch worker threads it starts inherit it). The event loop keeps its priority, so
    /healthz, admission and shedding answer while inference saturates the cores."""
    if nice > 0 and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as exc:
            logger.warning("could not lower the inference thread's priority: %s", exc)


def _inference_thread(nice: int, threads: int) -> None:
    """Start one lane's inference thread: its priority, and its own count of intra-op torch
    threads. torch keeps that count per thread (OpenMP's, set by torch.set_num_threads in
    the calling thread) but initialises a thread's count from the process-wide last value on
    its first parallel op; running one op right after setting it makes the count this
    thread's own, whatever another thread sets later."""
    _lower_priority(nice)
    torch.set_num_threads(threads)
    torch.zeros(1).add_(1)


def _batcher(
    fn: BatchFn,
    settings: Settings,
    executors: tuple[Executor, Executor | None],
    *,
    numel: Callable[[int], int],
    on_batch: Callable[[int], None],
) -> MicroBatcher | Lanes:
    """The batcher of one model and direction: two lanes split at ``lane_split_pixels``
    when there is a small lane's executor, else one. ``numel``: the elements of the items
    that stand for so many pixels."""
    large, small = executors

    def lane(executor: Executor, max_queue: int | None) -> MicroBatcher:
        return MicroBatcher(
            fn,
            executor=executor,
            max_batch_size=settings.effective_batch_size,
            max_wait_s=settings.batch_wait_ms / 1000.0,
            max_batch_numel=max(1, numel(settings.max_batch_pixels)),
            on_batch=on_batch,
            max_queue=max_queue,
        )

    if small is None:
        return lane(large, settings.max_queue)
    return Lanes(
        lane(small, None),
        lane(large, None),
        split_numel=max(1, numel(settings.lane_split_pixels)),
        max_queue=settings.max_queue,
    )


def measure_cost(backend: Backend, f: int, probe_side: int) -> ModelCost:
    """Peak bytes per pixel of encode and decode on the backend at its precision: the
    largest of PROBES probes on a trimmed heap, after a warm-up (so one-time allocations
    such as oneDNN's caches are excluded), times the margin (service/budget.py)."""
    side = max(f, probe_side // f * f)
    image = torch.zeros(1, 3, side, side, dtype=torch.uint8)
    codes = torch.zeros(1, side // f, side // f, dtype=torch.int64)
    backend.encode(image)
    encode = max(peak_bytes_of(lambda: backend.encode(image)) for _ in range(PROBES))
    backend.decode(codes)
    decode = max(peak_bytes_of(lambda: backend.decode(codes)) for _ in range(PROBES))
    return ModelCost(per_pixel(encode, side * side), per_pixel(decode, side * side))


def load_model(
    name: str,
    path: str,
    settings: Settings,
    metrics: ServiceMetrics,
    executors: tuple[Executor, Executor | None],
) -> ServedModel:
    """One artifact, verified, on its backend, measured, with its batchers (not started).
    ``executors``: the large lane's inference thread and the small lane's (None: one
    lane)."""
    root = resolve_artifact_path(path)
    onnx = settings.backend == "onnxruntime"
    precision = "fp32" if onnx else settings.precision  # the ONNX graphs are float32
    # A Hub id is loaded by its id (a cache hit by now): vq.load_tokenizer then trusts the
    # snapshot's links into the cache's blobs/, which it refuses in a plain directory.
    source = path if is_hub_id(path) else root
    tokenizer = vq.load_tokenizer(
        source,
        device=settings.device,
        precision=precision,
        allow_unverified=settings.allow_unverified,
    )
    reason = precision_reason(tokenizer, settings.precision, settings.backend)
    backend = make_backend(
        settings.backend,
        tokenizer,
        root,
        threads=settings.torch_threads,
        allow_unverified=settings.allow_unverified,
    )
    cost = measure_cost(backend, tokenizer.f, settings.memory_probe_side)
    usage = vq.CodebookUsage(tokenizer.codebook_size, window=settings.usage_window)
    lock = threading.Lock()
    history = UsageHistory(time.monotonic())
    per_pixel_seen = metrics.pass_bytes_per_pixel
    encoder = _batcher(
        _encode_fn(
            backend,
            tokenizer.codebook_size,
            usage,
            lock,
            history,
            per_pixel_seen.labels(name, "tokenize").observe,
        ),
        settings,
        executors,
        numel=lambda pixels: 3 * pixels,  # items are (3, H, W)
        on_batch=metrics.batch_size.labels(name, "tokenize").observe,
    )
    f = tokenizer.f
    decoder = _batcher(
        _measured(
            backend.decode,
            lambda c: c.numel() * f * f,
            per_pixel_seen.labels(name, "detokenize").observe,
        ),
        settings,
        executors,
        numel=lambda pixels: pixels // f**2,  # items are (h, w) grids of h * w * f^2 pixels
        on_batch=metrics.batch_size.labels(name, "detokenize").observe,
    )
    logger.info(
        "loaded model %r from %s: %r; backend %s (%s); precision %s (%s); memory per pixel: "
        "encode %d B, decode %d B",
        name,
        root,
        tokenizer,
        backend.name,
        backend.source,
        backend.precision,
        reason,
        cost.encode_per_pixel,
        cost.decode_per_pixel,
    )
    return ServedModel(
        name=name,
        path=root,
        tokenizer=tokenizer,
        backend=backend,
        usage=usage,
        cost=cost,
        encoder=encoder,
        decoder=decoder,
        precision_reason=reason,
        usage_lock=lock,
        history=history,
    )


def size_budgets(
    settings: Settings, models: Iterable[ServedModel]
) -> tuple[MemoryBudget, MemoryBudget]:
    """The pools requests reserve from, (model passes, bodies): the budget less what the
    loaded process holds, split INPUT_SHARE for reading and parsing bodies. StartupError
    when a model cannot run one request of the largest admitted size in its pool."""
    total = settings.memory_budget or default_budget()
    baseline = current_rss()
    pool = total - baseline
    if pool < 16 * 2**20:
        raise StartupError(
            f"memory_budget={total} bytes leaves {pool} bytes for requests after the "
            f"loaded models ({baseline} bytes resident); raise VQ_MEMORY_BUDGET"
        )
    logger.info(
        "memory budget %.2f GiB: %.2f GiB resident after loading, %.2f GiB for requests",
        total / 2**30,
        baseline / 2**30,
        pool / 2**30,
    )
    inputs = int(pool * INPUT_SHARE)
    compute = pool - inputs
    for model in models:
        side = int((compute / model.cost.tokenize(1, 1)) ** 0.5) // model.f * model.f
        logger.info(
            "model %r: the largest single image the pool takes is %dx%d (max_image_side %d)",
            model.name,
            side,
            side,
            settings.max_image_side,
        )
        image_side = int((compute / model.cost.tokenize(1, 1)) ** 0.5)
        grid_side = int((compute / model.cost.detokenize(1)) ** 0.5) // model.f
        too_big = []
        if settings.max_image_side > image_side:
            too_big.append(f"max_image_side {settings.max_image_side} (at most {image_side})")
        if settings.max_grid_side > grid_side:
            too_big.append(f"max_grid_side {settings.max_grid_side} (at most {grid_side})")
        if too_big:
            raise StartupError(
                f"model {model.name!r} cannot run one request of the largest admitted size "
                f"in the {compute / 2**20:.0f} MiB the budget leaves for model passes: "
                f"{' and '.join(too_big)}; raise memory_budget (VQ_MEMORY_BUDGET) or lower "
                "those settings"
            )
    return MemoryBudget(compute), MemoryBudget(inputs)


async def load_models(state: ServiceState) -> None:
    """Load every configured artifact into ``state`` (off the event loop, on the inference
    thread), start its batchers, size the budget, and turn the state ready."""
    settings = state.settings
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but torch sees no CUDA device")
    check_backend_available(settings)
    fix_mmap_threshold()
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    threads = torch.get_num_threads()
    # One inference thread per lane for every model and request: the large lane's runs
    # every pass when there is one lane; with two, the small lane's runs items of at most
    # lane_split_pixels beside it, with fewer intra-op threads (service/lanes.py).
    executor = state.executor = ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix="vq-inference",
        initializer=_inference_thread,
        initargs=(settings.inference_nice, threads),
    )
    small: ThreadPoolExecutor | None = None
    if settings.lane_split_pixels > 0:
        small = state.small_executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="vq-inference-small",
            initializer=_inference_thread,
            initargs=(settings.inference_nice, settings.small_lane_threads or max(1, threads // 2)),
        )
    loop = asyncio.get_running_loop()
    # Start both threads now, then put the process-wide count back (each thread keeps its
    # own): threads that start later (the request handlers') get torch_threads as before.
    for started in (executor, small):
        if started is not None:
            await loop.run_in_executor(started, torch.get_num_threads)
    torch.set_num_threads(threads)
    for name, path in settings.models.items():
        try:
            model = await loop.run_in_executor(
                executor, load_model, name, path, settings, state.metrics, (executor, small)
            )
        except (StartupError, ValueError, OSError) as exc:  # vq.ArtifactError, a bad file
            raise StartupError(f"model {name!r}: {_one_line(exc)}") from None
        state.hold(model)
    state.open(*size_budgets(settings, state.models.values()))


async def load_or_report(state: ServiceState, on_failure: Callable[[str], None]) -> None:
    """``load_models``, for a server that already listens: a failure is reported as one line
    (``on_failure``, which stops the server), a bug with its traceback as well."""
    try:
        await load_models(state)
    except (StartupError, RuntimeError, ValueError, OSError) as exc:
        on_failure(_one_line(exc))
    except Exception as exc:
        logger.exception("loading the models failed")
        on_failure(f"loading the models failed: {type(exc).__name__}: {_one_line(exc)}")
