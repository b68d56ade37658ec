"""What the service benchmarks share (bench/service.py, bench/load.py, bench/load_scenarios.py):
request bodies, a ``vq-serve`` child process on a free loopback port, a /healthz and memory
probe, and one HTTP load generator. Loopback only."""

from __future__ import annotations

import asyncio
import io
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

DEFAULT_MODEL = common.ROOT / "models" / "default"


def synthetic_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth gradients, a few discs and mild noise: PNG sizes like photos', not like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for _ in range(n):
        base = np.stack(
            [rng.uniform(0, 255) * (a * xx + (1 - a) * yy) for a in rng.uniform(0, 1, 3)], -1
        )
        for _ in range(4):
            cy, cx, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.3)]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            base[mask] = rng.uniform(0, 255, 3)
        base += rng.normal(0, 6, base.shape)
        images.append(np.clip(base, 0, 255).astype(np.uint8))
    return images


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def resolve_model(path: str | None, workdir: Path) -> tuple[Path, str]:
    """The artifact to serve and a sentence saying which it is."""
    if path:
        return Path(path), f"`{path}`"
    if (DEFAULT_MODEL / "config.json").is_file():
        return DEFAULT_MODEL, "`models/default` (the shipped tokenizer)"
    import torch

    import vq

    torch.manual_seed(0)
    out = workdir / "untrained-default"
    vq.save_tokenizer(vq.VQVAE(vq.VQVAEConfig()), out)
    return out, (
        "an untrained artifact of the default `VQVAEConfig()` (models/default was absent); "
        "speed does not depend on the weights"
    )


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); NaN without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``vq-serve --model default=MODEL ARGS`` in a child process on a free loopback port."""

    def __init__(
        self, model: Path, args: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "service.cli", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--model", f"default={model}", *args]
        full_env = {**os.environ, "PYTHONPATH": str(common.ROOT), **(env or {})}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=common.ROOT
            )

    def wait_ready(self, timeout: float = 240) -> bool:
        """True once /readyz is 200; False if the process exited (its log says why)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"vq-serve not ready after {timeout} s:\n{self.log.read_text()}")

    def __enter__(self) -> Server:
        """Wait until ready; raise with the server's log if it exited."""
        if not self.wait_ready():
            raise RuntimeError(f"vq-serve exited:\n{self.log.read_text()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of each sample named ``name`` on /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        families = text_string_to_metric_families(text)
        return [(s.labels, s.value) for f in families for s in f.samples if s.name == name]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (NaN: none)."""
        values = [v for got, v in self.samples(name) if labels.items() <= got.items()]
        return float(sum(values)) if values else math.nan

    def metric_by(self, name: str, label: str) -> dict[str, float]:
        """The samples named ``name`` summed per value of ``label``."""
        out: dict[str, float] = {}
        for labels, value in self.samples(name):
            out[labels[label]] = out.get(labels[label], 0.0) + value
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Probe:
    """/healthz latencies (every 100 ms) and the server's peak VmRSS (every 50 ms), sampled
    on a thread of their own: the load generator's event loop would delay the probe."""

    url: str
    pid: int
    healthz_ms: list[float] = field(default_factory=list)
    peak_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            tick = 0
            while not self._stop.is_set():
                self.peak_rss = max(self.peak_rss, 1024 * common.status_kib("VmRSS", self.pid))
                if tick % 2 == 0:
                    start = time.perf_counter()
                    try:
                        client.get(f"{self.url}/healthz")
                        self.healthz_ms.append(1000 * (time.perf_counter() - start))
                    except httpx.HTTPError:
                        pass
                tick += 1
                self._stop.wait(0.05)

    def summary(self) -> dict[str, float]:
        """Peak RSS (MiB) and /healthz p50, p99 and max (ms)."""
        return {
            "peak_rss_mib": self.peak_rss / 2**20,
            "healthz_p50_ms": pct(self.healthz_ms, 50),
            "healthz_p99_ms": pct(self.healthz_ms, 99),
            "healthz_max_ms": max(self.healthz_ms, default=math.nan),
        }


Call = Callable[[httpx.AsyncClient, int], Awaitable[bool]]
Send = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


def tokenize(bodies: Sequence[bytes], images: int = 1) -> Send:
    """Request i: a multipart tokenize of ``images`` copies of PNG ``bodies[i % len(bodies)]``."""

    def send(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        body = bodies[i % len(bodies)]
        files = [("files", (f"{i}-{k}.png", body, "image/png")) for k in range(images)]
        return client.post("/v1/tokenize", files=files)

    return send


def record(
    send: Send,
    statuses: Counter[str] | None = None,
    ms: list[float] | None = None,
    label: str = "",
) -> Call:
    """A load generator call that sends request i and counts its answer (or transport error)
    by status under ``label`` in ``statuses`` and keeps the latency of each 200 in ``ms``;
    without ``statuses`` anything but a 200 raises."""

    async def call(client: httpx.AsyncClient, i: int) -> bool:
        t0 = time.perf_counter()
        try:
            r = await send(client, i)
        except httpx.HTTPError as exc:
            if statuses is None:
                raise
            statuses[f"{label}{type(exc).__name__}"] += 1
            return True
        if statuses is None:
            r.raise_for_status()
        else:
            statuses[f"{label}{r.status_code}"] += 1
        if ms is not None and r.status_code == 200:
            ms.append(1000 * (time.perf_counter() - t0))
        return True

    return call


async def clients(
    url: str,
    concurrency: int,
    call: Call,
    requests: float = math.inf,
    *,
    max_seconds: float = math.inf,
    delay: float = 0.0,
    warmup: bool = False,
    on_start: Callable[[], None] | None = None,
) -> float:
    """The load generator: after ``delay`` seconds, ``concurrency`` clients on one
    connection pool await ``call(client, i)`` for i = 0, 1, ... until ``requests`` calls were
    made or ``max_seconds`` passed; a client stops early when its call returns False.
    ``warmup``: one untimed call per client first (index -1: connections open, the server
    warms up); ``on_start`` runs when the clock starts. Returns the wall seconds of the timed
    part."""
    await asyncio.sleep(delay)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    next_index = 0
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        if warmup:
            await asyncio.gather(*(call(client, -1) for _ in range(concurrency)))
        start = time.perf_counter()
        if on_start is not None:
            on_start()

        async def loop() -> None:
            nonlocal next_index
            while next_index < requests and time.perf_counter() - start < max_seconds:
                i = next_index
                next_index += 1
                if not await call(client, i):
                    return

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return time.perf_counter() - start


def run(*loads: Awaitable[Any]) -> list[Any]:
    """Run load generators (and other work) at once; their results."""

    async def together() -> list[Any]:
        return list(await asyncio.gather(*loads))

    return asyncio.run(together())
