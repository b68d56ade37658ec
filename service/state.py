"""What one running app holds: the loaded tokenizers, their batchers, the memory budget and
the served-usage stats.

Built by the app factory, filled by the lifespan (``load``), emptied on shutdown (``close``).
All inference runs on one dedicated thread: forward passes of different models and
requests would only fight over the same cores, and one thread keeps torch's intra-op
parallelism the only parallelism.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

import vq
from service.backends import Backend, import_onnxruntime, make_backend
from service.batcher import MicroBatcher
from service.budget import (
    INPUT_SHARE,
    PROBES,
    MemoryBudget,
    ModelCost,
    current_rss,
    default_budget,
    fix_mmap_threshold,
    measure_peak,
    peak_bytes_of,
    per_pixel,
    process_peak,
)
from service.errors import RETRY_NOW, APIError, ErrorCode
from service.metrics import LoadSnapshot, ServiceMetrics
from service.schemas import UsageResponse
from service.settings import Settings
from service.usage_history import UsageHistory, UsagePoint
from vq.hub import looks_like_repo_id, resolve_artifact
from vq.precision import bf16_native

logger = logging.getLogger("service")

PROCESS = f"{socket.gethostname()}:{os.getpid()}"  # which process a usage report describes


class InvalidCodes(RuntimeError):
    """The network produced code ids outside [0, codebook_size): a server fault (e.g.
    non-finite weights), never the client's."""


@dataclass
class ServedModel:
    """One served artifact with everything it needs, built complete by ``ServiceState``."""

    name: str
    path: Path
    tokenizer: vq.Tokenizer  # the artifact's metadata and config; also the torch backend's
    backend: Backend  # what the batchers run (service/backends.py)
    usage: vq.CodebookUsage
    cost: ModelCost
    encoder: MicroBatcher
    decoder: MicroBatcher
    precision_reason: str
    # Window usage and perplexity since loading (the dashboard's line), under usage_lock.
    history: UsageHistory
    # CodebookUsage is updated on the inference thread and read by handlers and scrapes.
    usage_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def codebook_size(self) -> int:
        return self.tokenizer.codebook_size

    @property
    def f(self) -> int:
        return self.tokenizer.f

    def usage_history(self) -> tuple[list[UsagePoint], float]:
        """(points, their spacing in seconds), read together."""
        with self.usage_lock:
            return self.history.points(), self.history.spacing

    def usage_report(self, *, with_histogram: bool = True) -> UsageResponse:
        """The served-traffic statistics (docs/design.md definitions), in their one shape."""
        with self.usage_lock:
            u = self.usage
            return UsageResponse(
                model=self.name,
                codebook_size=self.codebook_size,
                process=PROCESS,
                window=int(u.window),
                window_tokens=int(u.window_tokens),
                tokens_seen=int(u.tokens_seen),
                window_usage=float(u.window_usage),
                perplexity=float(u.perplexity),
                dead_codes=int(u.dead_codes),
                histogram=u.histogram.tolist() if with_histogram else [],
            )


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
    (``vq_pass_bytes_per_pixel``: what the budget's charge is checked against)."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        out, peak = measure_peak(lambda: fn(batch))
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


class ServiceState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, ServedModel] = {}
        self.ready = False
        self.draining = False
        # Sized once the models are loaded: the pool for model passes (and decoded pixels,
        # PNGs) and the input pool for reading and parsing bodies (service/budget.py).
        self._budget: MemoryBudget | None = None
        self._input_budget: MemoryBudget | None = None
        self.metrics = ServiceMetrics(self.usage_snapshots, self.load_snapshot)
        self._executor: ThreadPoolExecutor | None = None

    def usage_snapshots(self) -> list[UsageResponse]:
        return [m.usage_report(with_histogram=False) for m in list(self.models.values())]

    def load_snapshot(self) -> LoadSnapshot:
        queues = {}
        for model in list(self.models.values()):
            for op, batcher in (("tokenize", model.encoder), ("detokenize", model.decoder)):
                queues[(model.name, op)] = (
                    batcher.queue_depth,
                    batcher.items_expired,
                    batcher.items_cancelled,
                )
        pools = [b for b in (self._budget, self._input_budget) if b is not None]
        return LoadSnapshot(
            queues=queues,
            budget_capacity=sum(b.capacity for b in pools),
            budget_used=sum(b.used for b in pools),
            budget_waiting=sum(b.waiting for b in pools),
            rss=current_rss(),
            peak_rss=process_peak(),
        )

    def _measure_cost(self, backend: Backend, f: int) -> ModelCost:
        """Peak bytes per pixel of encode and decode on the backend at its precision: the
        largest of PROBES probes on a trimmed heap, after a warm-up (so one-time allocations
        such as oneDNN's caches are excluded), times the margin (service/budget.py)."""
        side = max(f, self.settings.memory_probe_side // f * f)
        image = torch.zeros(1, 3, side, side, dtype=torch.uint8)
        codes = torch.zeros(1, side // f, side // f, dtype=torch.int64)
        backend.encode(image)
        encode = max(peak_bytes_of(lambda: backend.encode(image)) for _ in range(PROBES))
        backend.decode(codes)
        decode = max(peak_bytes_of(lambda: backend.decode(codes)) for _ in range(PROBES))
        return ModelCost(per_pixel(encode, side * side), per_pixel(decode, side * side))

    def _load_one(self, name: str, path: str, executor: Executor) -> ServedModel:
        settings = self.settings
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
        cost = self._measure_cost(backend, tokenizer.f)
        usage = vq.CodebookUsage(tokenizer.codebook_size, window=settings.usage_window)
        lock = threading.Lock()
        history = UsageHistory(time.monotonic())
        wait_s = settings.batch_wait_ms / 1000.0
        per_pixel_seen = self.metrics.pass_bytes_per_pixel
        encoder = MicroBatcher(
            _encode_fn(
                backend,
                tokenizer.codebook_size,
                usage,
                lock,
                history,
                per_pixel_seen.labels(name, "tokenize").observe,
            ),
            executor=executor,
            max_batch_size=settings.effective_batch_size,
            max_wait_s=wait_s,
            max_batch_numel=3 * settings.max_batch_pixels,  # items are (3, H, W)
            on_batch=self.metrics.batch_size.labels(name, "tokenize").observe,
            max_queue=settings.max_queue,
        )
        f = tokenizer.f
        decoder = MicroBatcher(
            _measured(
                backend.decode,
                lambda c: c.numel() * f * f,
                per_pixel_seen.labels(name, "detokenize").observe,
            ),
            executor=executor,
            max_batch_size=settings.effective_batch_size,
            max_wait_s=wait_s,
            # items are (h, w) code grids; each becomes h * w * f^2 pixels
            max_batch_numel=max(1, settings.max_batch_pixels // tokenizer.f**2),
            on_batch=self.metrics.batch_size.labels(name, "detokenize").observe,
            max_queue=settings.max_queue,
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

    def _make_budget(self) -> tuple[MemoryBudget, MemoryBudget]:
        """The pools requests reserve from, (model passes, bodies): the budget less what the
        loaded process holds, split INPUT_SHARE for reading and parsing bodies."""
        settings = self.settings
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
        for model in self.models.values():
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

    async def load(self) -> None:
        """Load every configured artifact (off the event loop) and start the batchers."""
        settings = self.settings
        if settings.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device=cuda was asked for but torch sees no CUDA device")
        check_backend_available(settings)
        fix_mmap_threshold()
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="vq-inference",
            initializer=_lower_priority,
            initargs=(settings.inference_nice,),
        )
        loop = asyncio.get_running_loop()
        for name, path in settings.models.items():
            try:
                model = await loop.run_in_executor(
                    self._executor, self._load_one, name, path, self._executor
                )
            except (StartupError, ValueError, OSError) as exc:  # vq.ArtifactError, a bad file
                raise StartupError(f"model {name!r}: {_one_line(exc)}") from None
            model.encoder.start()
            model.decoder.start()
            self.models[name] = model
        self._budget, self._input_budget = self._make_budget()
        self.ready = True
        logger.info("ready: serving %s", ", ".join(self.models))

    async def load_or_report(self, on_failure: Callable[[str], None]) -> None:
        """``load``, for a server that already listens: a failure is reported as one line
        (``on_failure``, which stops the server), a bug with its traceback as well."""
        try:
            await self.load()
        except (StartupError, RuntimeError, ValueError, OSError) as exc:
            on_failure(_one_line(exc))
        except Exception as exc:
            logger.exception("loading the models failed")
            on_failure(f"loading the models failed: {type(exc).__name__}: {_one_line(exc)}")

    @property
    def budget(self) -> MemoryBudget:
        """The pool of model passes, decoded pixels and result images."""
        if self._budget is None:
            self.require_ready()
            raise APIError(ErrorCode.NOT_READY, "the memory budget is not set up yet")
        return self._budget

    @property
    def input_budget(self) -> MemoryBudget:
        """The pool of request bodies being read and parsed."""
        if self._input_budget is None:
            self.require_ready()
            raise APIError(ErrorCode.NOT_READY, "the memory budget is not set up yet")
        return self._input_budget

    def backlog_s(self) -> float:
        """Seconds of inference already admitted, all models and directions (one thread)."""
        return sum(
            batcher.backlog_s
            for model in list(self.models.values())
            for batcher in (model.encoder, model.decoder)
        )

    def begin_drain(self) -> None:
        """SIGTERM: readiness turns 503 and new work is refused; in-flight work goes on."""
        if not self.draining:
            logger.info("draining: readiness is 503, new requests are refused")
        self.draining = True

    async def close(self) -> None:
        self.ready = False
        for model in self.models.values():
            for batcher in (model.encoder, model.decoder):
                await batcher.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def require_ready(self) -> None:
        if self.draining:
            raise APIError(
                ErrorCode.SHUTTING_DOWN,
                "the service is shutting down; retry on another replica",
                headers=RETRY_NOW,
            )
        if not self.ready:
            raise APIError(
                ErrorCode.NOT_READY, "models are still loading; retry shortly", headers=RETRY_NOW
            )

    def get(self, name: str) -> ServedModel:
        self.require_ready()
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise APIError(
                ErrorCode.UNKNOWN_MODEL, f"model {name!r} is not served; known models: {known}"
            )
        return model
