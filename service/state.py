"""What one running app holds: the loaded tokenizers, their batchers and served-usage stats.

Built by the app factory, filled by the lifespan (``load``), emptied on shutdown (``close``).
All inference runs on one dedicated thread: forward passes of different models and
requests would only fight over the same cores, and one thread keeps torch's intra-op
parallelism the only parallelism.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import vq
from service.batcher import MicroBatcher
from service.errors import APIError
from service.metrics import ServiceMetrics, UsageSnapshot
from service.settings import Settings

logger = logging.getLogger("service")


@dataclass
class UsageReport:
    """The served-traffic codebook statistics of one model (docs/design.md, "Codebook usage: definitions")."""

    window: int
    window_tokens: int
    tokens_seen: int
    window_usage: float
    perplexity: float
    dead_codes: int
    histogram: list[int]


@dataclass
class ServedModel:
    name: str
    path: Path
    tokenizer: vq.Tokenizer
    usage: vq.CodebookUsage
    encoder: MicroBatcher | None = None
    decoder: MicroBatcher | None = None
    # CodebookUsage is updated on the inference thread and read by handlers and scrapes.
    usage_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def codebook_size(self) -> int:
        return self.tokenizer.codebook_size

    @property
    def f(self) -> int:
        return self.tokenizer.f

    def encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> int64 (N, H/f, W/f); counts the codes as served traffic."""
        codes = self.tokenizer.encode(images)
        with self.usage_lock:
            self.usage.update(codes)
        return codes

    def decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 (N, h, w) -> uint8 (N, 3, h*f, w*f)."""
        return self.tokenizer.decode(codes)

    def usage_report(self, *, with_histogram: bool = True) -> UsageReport:
        with self.usage_lock:
            u = self.usage
            histogram = u.histogram.tolist() if with_histogram else []
            return UsageReport(
                window=int(u.window),
                window_tokens=int(u.window_tokens),
                tokens_seen=int(u.tokens_seen),
                window_usage=float(u.window_usage),
                perplexity=float(u.perplexity),
                dead_codes=int(u.dead_codes),
                histogram=histogram,
            )


def resolve_artifact_path(path: str) -> Path:
    """Relative paths are relative to the current directory (where ``vq-serve`` starts)."""
    return Path(path).expanduser().resolve()


class ServiceState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, ServedModel] = {}
        self.ready = False
        self.metrics = ServiceMetrics(self.usage_snapshots)
        self._executor: ThreadPoolExecutor | None = None

    def usage_snapshots(self) -> list[UsageSnapshot]:
        out = []
        for model in list(self.models.values()):
            report = model.usage_report(with_histogram=False)
            out.append(
                UsageSnapshot(
                    model.name,
                    model.codebook_size,
                    report.window_usage,
                    report.perplexity,
                    report.dead_codes,
                )
            )
        return out

    def _load_one(self, name: str, path: str) -> ServedModel:
        root = resolve_artifact_path(path)
        tokenizer = vq.load_tokenizer(root, device=self.settings.device)
        usage = vq.CodebookUsage(tokenizer.codebook_size, window=self.settings.usage_window)
        logger.info("loaded model %r from %s: %r", name, root, tokenizer)
        return ServedModel(name=name, path=root, tokenizer=tokenizer, usage=usage)

    async def load(self) -> None:
        """Load every configured artifact (off the event loop) and start the batchers."""
        settings = self.settings
        if settings.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device=cuda was asked for but torch sees no CUDA device")
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vq-inference")
        for name, path in settings.models.items():
            model = await asyncio.to_thread(self._load_one, name, path)
            wait_s = settings.batch_wait_ms / 1000.0
            model.encoder = MicroBatcher(
                model.encode_batch,
                executor=self._executor,
                max_batch_size=settings.effective_batch_size,
                max_wait_s=wait_s,
                max_batch_numel=3 * settings.max_batch_pixels,  # items are (3, H, W)
                on_batch=self._batch_observer(name, "tokenize"),
            )
            model.decoder = MicroBatcher(
                model.decode_batch,
                executor=self._executor,
                max_batch_size=settings.effective_batch_size,
                max_wait_s=wait_s,
                # items are (h, w) code grids; each becomes h * w * f^2 pixels
                max_batch_numel=max(1, settings.max_batch_pixels // model.f**2),
                on_batch=self._batch_observer(name, "detokenize"),
            )
            model.encoder.start()
            model.decoder.start()
            self.models[name] = model
        self.ready = True

    def _batch_observer(self, name: str, op: str) -> Any:
        histogram = self.metrics.batch_size.labels(name, op)
        return histogram.observe

    async def close(self) -> None:
        self.ready = False
        for model in self.models.values():
            for batcher in (model.encoder, model.decoder):
                if batcher is not None:
                    await batcher.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def require_ready(self) -> None:
        if not self.ready:
            raise APIError(503, "not_ready", "models are still loading; retry shortly")

    def get(self, name: str) -> ServedModel:
        self.require_ready()
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise APIError(
                404, "unknown_model", f"model {name!r} is not served; known models: {known}"
            )
        return model
