"""Bodies of the wrong JSON types, shapes and sizes (bench/hostile.py, issue 36): each gets a 4xx
(never a 5xx) soon after its last byte, the server's memory stays near where it was, and
/healthz keeps answering meanwhile. Against a real ``vq-serve`` on 127.0.0.1; every body is
bounded (at most 19 MiB, under the 20 MiB upload limit) and sent a bounded number of times."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bench.hostile import corpus, padded_png
from tests.service.helpers import LiveServer, start_server, stop_server

MiB = 2**20


def _repeat(item: bytes, size: int) -> bytes:
    return b",".join([item] * (size // (len(item) + 1)))


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def server(artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("hostile") / "vq-serve.log"
    live = start_server(
        [
            "--model",
            f"default={artifact_dir}",
            "--torch-threads",
            "1",
            "--memory-budget",
            "1G",
            "--max-image-side",
            "1024",
        ],
        log,
    )
    try:
        yield live
    finally:
        stop_server(live.process)


class HealthWatch:
    """Polls /healthz every 20 ms on its own connection; ``worst`` is the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    ok = client.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.worst = max(self.worst, time.perf_counter() - start)
                self.failures += not ok
                self._stop.wait(0.02)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def post(url: str, path: str, body: bytes) -> tuple[int, str, float]:
    """(status, error code, seconds from the end of the upload to the answer)."""
    sent = 0.0

    def content() -> Iterator[bytes]:
        nonlocal sent
        for i in range(0, len(body), MiB):
            yield body[i : i + MiB]
        sent = time.perf_counter()

    with httpx.Client(base_url=url, timeout=60.0) as client:
        response = client.post(
            path,
            content=content(),
            headers={"content-type": "application/json", "content-length": str(len(body))},
        )
    elapsed = time.perf_counter() - sent
    code = response.json().get("code", "") if response.status_code >= 400 else ""
    return response.status_code, code, elapsed


def test_each_hostile_body_gets_a_4xx_soon_and_memory_stays_put(server: LiveServer) -> None:
    pid = server.process.pid
    bodies = corpus()
    post(server.url, *bodies["floats-in-grid"])  # warm up: first allocations, imports
    before = rss_kib(pid, "VmRSS")
    results = {}
    with HealthWatch(server.url) as health:
        for name, (path, body) in bodies.items():
            results[name] = post(server.url, path, body)
        # Three at once, as in the issue (1 MiB of ints where base64 belongs, each).
        ints = b'{"images": [' + _repeat(b"1", MiB) + b"]}"
        with ThreadPoolExecutor(3) as pool:
            concurrent = list(pool.map(lambda _: post(server.url, "/v1/tokenize", ints), range(3)))
    peak = rss_kib(pid, "VmHWM")
    for name, (status, code, elapsed) in [*results.items(), *enumerate(concurrent)]:
        assert 400 <= status < 500, (name, status, code)
        # The issue asks for 100 ms on a quiet machine; a shared, busy one (2 cores at a
        # load of 10 or more) takes seconds for anything: this catches a parse of the
        # whole body, not a slow scheduler.
        assert elapsed < 3.0, (name, elapsed)
    # Not one body took the server more than a few tens of MiB above where it was (each
    # of them took it hundreds of MiB, or GiBs, up before they were parsed typed).
    assert (peak - before) * 1024 < 64 * MiB, (before, peak)
    assert health.failures == 0
    assert health.worst < 3.0, health.worst


def test_whitespace_padded_base64_is_decoded_within_its_price(server: LiveServer) -> None:
    body = padded_png(12 * MiB)  # a 64 x 64 PNG in 12 MiB of whitespace
    before = rss_kib(server.process.pid, "VmHWM")
    status, code, _ = post(server.url, "/v1/tokenize", body)
    assert status == 200, code
    grown = rss_kib(server.process.pid, "VmHWM") - before
    # The body's price (5 bytes per byte) bounds what it may take: 60 MiB.
    assert grown * 1024 < 60 * MiB, grown
