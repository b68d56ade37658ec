"""Prometheus metrics, in a registry of the app's own (two apps in one process never clash).

Request metrics come from a pure ASGI middleware labelled by route template
(``/v1/models/{name}``, not the raw path, to keep label cardinality bounded). The codebook
gauges are read from the live ``CodebookUsage`` at scrape time by a custom collector, so a
scrape always sees the current window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.schemas import UsageResponse

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_BYTES_PER_PIXEL_BUCKETS = (8, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 2048, 4096)


@dataclass(frozen=True)
class LoadSnapshot:
    """Queues and memory at scrape time. queues: (model, op) -> (depth, expired, cancelled)."""

    queues: dict[tuple[str, str], tuple[int, int, int]]
    budget_capacity: int
    budget_used: int
    budget_waiting: int
    rss: int
    peak_rss: int


class _LoadCollector(Collector):
    def __init__(self, snapshot: Callable[[], LoadSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        depth = GaugeMetricFamily(
            "vq_queue_depth", "Items (images or grids) waiting to run", labels=["model", "op"]
        )
        dropped = CounterMetricFamily(
            "vq_items_dropped",
            "Queued items that never ran: reason=deadline (expired in the queue) or "
            "cancelled (their request was abandoned or timed out)",
            labels=["model", "op", "reason"],
        )
        for (model, op), (n, expired, cancelled) in snap.queues.items():
            depth.add_metric([model, op], n)
            dropped.add_metric([model, op, "deadline"], expired)
            dropped.add_metric([model, op, "cancelled"], cancelled)
        yield depth
        yield dropped
        yield GaugeMetricFamily(
            "vq_memory_pool_bytes",
            "Bytes requests may reserve (memory_budget less the resident size after loading)",
            value=snap.budget_capacity,
        )
        yield GaugeMetricFamily(
            "vq_memory_reserved_bytes", "Bytes reserved by requests now", value=snap.budget_used
        )
        yield GaugeMetricFamily(
            "vq_memory_waiting_requests",
            "Requests waiting for memory budget",
            value=snap.budget_waiting,
        )
        yield GaugeMetricFamily(
            "vq_resident_memory_bytes", "Resident set size of this process", value=snap.rss
        )
        yield GaugeMetricFamily(
            "vq_resident_memory_peak_bytes",
            "Largest resident set size of this process since it started (to compare with "
            "memory_budget)",
            value=snap.peak_rss,
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _UsageCollector(Collector):
    def __init__(self, snapshots: Callable[[], Iterable[UsageResponse]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        families = {
            "window_usage": GaugeMetricFamily(
                "vq_codebook_window_usage",
                "Fraction of codes hit at least once in the served-traffic window",
                labels=["model"],
            ),
            "perplexity": GaugeMetricFamily(
                "vq_codebook_perplexity",
                "exp(entropy) of the served-traffic code histogram over the window",
                labels=["model"],
            ),
            "dead_codes": GaugeMetricFamily(
                "vq_codebook_dead_codes",
                "Codes with zero hits in the full served-traffic window; 0 while the window "
                "is filling (see vq_codebook_unseen_codes)",
                labels=["model"],
            ),
            "unseen_codes": GaugeMetricFamily(
                "vq_codebook_unseen_codes",
                "Codes with no hit yet while the served-traffic window is filling; 0 once it "
                "is full, when codes without a hit count as dead",
                labels=["model"],
            ),
            "codebook_size": GaugeMetricFamily(
                "vq_codebook_size", "Number of codes of the model", labels=["model"]
            ),
        }
        for snap in self._snapshots():
            families["window_usage"].add_metric([snap.model], snap.window_usage)
            families["perplexity"].add_metric([snap.model], snap.perplexity)
            families["dead_codes"].add_metric([snap.model], snap.dead_codes)
            families["unseen_codes"].add_metric([snap.model], snap.unseen_codes)
            families["codebook_size"].add_metric([snap.model], snap.codebook_size)
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())


class ServiceMetrics:
    """All metrics of one app."""

    def __init__(
        self,
        snapshots: Callable[[], Iterable[UsageResponse]],
        load: Callable[[], LoadSnapshot],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "vq_http_requests",
            "HTTP requests by endpoint (route template), method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vq_http_request_duration_seconds",
            "HTTP request latency by endpoint (route template), method and status",
            ["endpoint", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "vq_batch_size",
            "Items per forward pass of the micro-batcher",
            ["model", "op"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.pass_bytes_per_pixel = Histogram(
            "vq_pass_bytes_per_pixel",
            "Resident memory one forward pass took, per pixel: what the memory budget's charge "
            "(the start-up log's 'memory per pixel') is checked against",
            ["model", "op"],
            buckets=_BYTES_PER_PIXEL_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "vq_images",
            "Images processed: op=tokenize (encoded) or detokenize (decoded)",
            ["model", "op"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "vq_tokens_served",
            "Code tokens produced by tokenize (op=tokenize) or consumed by detokenize",
            ["model", "op"],
            registry=self.registry,
        )
        self.shed = Counter(
            "vq_requests_shed",
            "Requests refused or dropped under load, by reason: queue_full (503 at once), "
            "deadline (503 after request_timeout_s), memory (413: can never fit the budget), "
            "client_disconnected (the client left before its answer; work not run)",
            ["model", "op", "reason"],
            registry=self.registry,
        )
        self.registry.register(_UsageCollector(snapshots))
        self.registry.register(_LoadCollector(load))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts every HTTP request and times it, labelled by the matched route's template.
    A request refused before routing (at admission, by a body limit, while draining) is
    labelled by the route its path matches, looked up in ``routes``; "unmatched" only when
    no route matches."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _endpoint(self, scope: Scope) -> str:
        route: Any = scope.get("route")
        if route is None:
            route = next((r for r in _leaf_routes(self.routes) if _matches(r, scope)), None)
        return getattr(route, "path", None) or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            labels = (self._endpoint(scope), scope.get("method", ""), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """The routes with a path template, looking through included routers (which newer
    FastAPI versions keep as wrappers holding the router they include)."""
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            yield from _leaf_routes(inner)
        elif getattr(route, "path", None):
            yield route


def _matches(route: BaseRoute, scope: Scope) -> bool:
    match, _ = route.matches(scope)
    return bool(match == Match.FULL)
