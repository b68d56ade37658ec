"""What one running app holds: the served models, their batchers, the memory budget, the
inference threads and the served-usage stats; and the registry's domain errors.

Built by the app factory, filled by ``service.loader`` (which loads the models), emptied on
shutdown (``close``). It raises plain domain errors (``ServingError``: ``UnknownModel``,
``NotReady``, ``ShuttingDown``, ``InvalidCodes``); ``service.errors`` turns them into HTTP
responses.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import vq
from service.backends import Backend
from service.batcher import MicroBatcher
from service.budget import MemoryBudget, ModelCost, current_rss, process_peak
from service.lanes import Lanes
from service.metrics import LoadSnapshot, ServiceMetrics
from service.schemas import UsageResponse
from service.settings import Settings
from service.usage_history import UsageHistory, UsagePoint

logger = logging.getLogger("service")

PROCESS = f"{socket.gethostname()}:{os.getpid()}"  # which process a usage report describes


class ServingError(Exception):
    """Why the state cannot serve a request; ``service.errors`` maps each kind to HTTP."""


class UnknownModel(ServingError):
    """A model name that is not served; the message lists those that are."""


class NotReady(ServingError):
    """The models (or the memory budget sized from them) are still loading."""


class ShuttingDown(ServingError):
    """The service drains after a stop signal and takes no new work."""


class InvalidCodes(ServingError):
    """The network produced code ids outside [0, codebook_size): a server fault (e.g.
    non-finite weights), never the client's."""


@dataclass
class ServedModel:
    """One served artifact with everything it needs, built complete by ``service.loader``."""

    name: str
    path: Path
    tokenizer: vq.Tokenizer  # the artifact's metadata and config; also the torch backend's
    backend: Backend  # what the batchers run (service/backends.py)
    usage: vq.CodebookUsage
    cost: ModelCost
    encoder: MicroBatcher | Lanes
    decoder: MicroBatcher | Lanes
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
                unseen_codes=int(u.unseen_codes),
                histogram=u.histogram.tolist() if with_histogram else [],
            )


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
        # The inference threads every model's batchers run on (service.loader starts them):
        # the large lane's (the only one when lane_split_pixels is 0) and the small lane's.
        self.executor: ThreadPoolExecutor | None = None
        self.small_executor: ThreadPoolExecutor | None = None

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

    def hold(self, model: ServedModel) -> None:
        """Serve ``model`` (its batchers started) under its name."""
        model.encoder.start()
        model.decoder.start()
        self.models[model.name] = model

    def open(self, budget: MemoryBudget, input_budget: MemoryBudget) -> None:
        """Every model is held: take the pools requests reserve from and turn ready."""
        self._budget, self._input_budget = budget, input_budget
        self.ready = True
        logger.info("ready: serving %s", ", ".join(self.models))

    @property
    def budget(self) -> MemoryBudget:
        """The pool of model passes, decoded pixels and result images."""
        if self._budget is None:
            self.require_ready()
            raise NotReady("the memory budget is not set up yet")
        return self._budget

    @property
    def input_budget(self) -> MemoryBudget:
        """The pool of request bodies being read and parsed."""
        if self._input_budget is None:
            self.require_ready()
            raise NotReady("the memory budget is not set up yet")
        return self._input_budget

    def backlog_s(self) -> float:
        """Seconds of inference already admitted, all models, directions and lanes (summed:
        the lanes share the cores)."""
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
        for executor in (self.executor, self.small_executor):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        self.executor = self.small_executor = None

    def require_ready(self) -> None:
        if self.draining:
            raise ShuttingDown("the service is shutting down; retry on another replica")
        if not self.ready:
            raise NotReady("models are still loading; retry shortly")

    def get(self, name: str) -> ServedModel:
        self.require_ready()
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(f"model {name!r} is not served; known models: {known}")
        return model
