"""Load control: memory budget, bounded queues, deadlines, abandoned requests, slow bodies,
SIGTERM drain, precision setting. Against apps in this process (so the model can be made
slow on purpose) and a real ``vq-serve`` process where signals and sockets matter."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.batcher import DeadlineExceeded, MicroBatcher, QueueFull
from service.budget import BudgetExceeded, MemoryBudget, ModelCost, current_rss, per_pixel
from service.cli import build_parser, settings_from_args
from service.loader import StartupError
from service.settings import Settings
from tests.service.helpers import (
    encode_file,
    make_settings,
    random_image,
    serving,
    start_server,
    stop_server,
    wait_until,
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def shed(text: str, reason: str, op: str = "tokenize") -> float:
    key = ("vq_requests_shed_total", (("model", "default"), ("op", op), ("reason", reason)))
    return samples(text).get(key, 0.0)


def png_b64(side: int = 8, seed: int = 0) -> str:
    return base64.b64encode(encode_file(random_image(side, side, seed=seed))).decode()


class SlowEncode:
    """Replaces a tokenizer's encode: waits on ``gate`` (or ``delay_s``) and counts calls."""

    def __init__(self, original: Callable[[torch.Tensor], torch.Tensor], delay_s: float) -> None:
        self.original = original
        self.delay_s = delay_s
        self.calls = 0
        self.images = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += int(images.shape[0])
        time.sleep(self.delay_s)
        return self.original(images)


# -- precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["fp32", "bf16"])
def test_service_reports_the_precision_it_runs(artifact_dir: Path, value: str) -> None:
    with TestClient(create_app(make_settings(artifact_dir, precision=value))) as client:
        assert client.get("/v1/models/default").json()["precision"] == value


def test_auto_precision_follows_the_hardware(artifact_dir: Path) -> None:
    from vq.precision import default_precision

    with TestClient(create_app(make_settings(artifact_dir, precision="auto"))) as client:
        assert client.get("/v1/models/default").json()["precision"] == default_precision("cpu")


def test_bad_precision_is_refused_naming_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"precision='fp16' is not allowed.*fp32.*bf16"):
        Settings(precision="fp16")
    monkeypatch.setenv("VQ_PRECISION", "int8")
    with pytest.raises(ValueError, match="precision='int8'"):
        Settings()
    args = build_parser().parse_args(["--precision", "bf16", "--memory-budget", "3G"])
    settings = settings_from_args(args)
    assert settings.precision == "bf16" and settings.memory_budget == 3 * 2**30


@pytest.mark.parametrize("value", ["12 apples", "-1G", "1K"])
def test_bad_memory_budget(value: str) -> None:
    with pytest.raises(ValueError, match="memory_budget"):
        Settings(memory_budget=value)


# -- memory budget --------------------------------------------------------------------------


def test_budget_waits_first_come_first_served_and_never_oversubscribes() -> None:
    async def scenario() -> list[str]:
        budget = MemoryBudget(100)
        order: list[str] = []
        peak = 0

        async def job(name: str, nbytes: int, hold_s: float) -> None:
            nonlocal peak
            async with budget.reserve(nbytes):
                peak = max(peak, budget.used)
                order.append(name)
                await asyncio.sleep(hold_s)

        await asyncio.gather(
            job("a", 60, 0.05), job("big", 90, 0.01), job("small", 10, 0.0), job("c", 30, 0.0)
        )
        assert peak <= budget.capacity and budget.used == 0
        with pytest.raises(BudgetExceeded, match="VQ_MEMORY_BUDGET"):
            await budget.acquire(101)
        return order

    # "small" would fit next to "a" but queues behind "big": no starvation of large requests.
    assert asyncio.run(scenario()) == ["a", "big", "small", "c"]


def test_cancelled_waiter_leaves_the_queue() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(10)
        await budget.acquire(10)
        waiter = asyncio.ensure_future(budget.acquire(5))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.sleep(0.01)
        assert budget.waiting == 0
        budget.release(10)
        assert budget.used == 0

    asyncio.run(scenario())


def test_measured_costs_are_per_pixel_and_positive(artifact_dir: Path) -> None:
    with TestClient(create_app(make_settings(artifact_dir))) as client:
        cost = client.app.state.service.models["default"].cost  # type: ignore[attr-defined]
    assert isinstance(cost, ModelCost)
    assert cost.encode_per_pixel >= per_pixel(0, 1) and cost.decode_per_pixel >= per_pixel(0, 1)
    assert cost.tokenize(100, 100) == 100 * (16 + cost.encode_per_pixel)


def test_a_budget_that_cannot_take_the_largest_request_refuses_to_start(
    artifact_dir: Path,
) -> None:
    budget = current_rss() + 300 * 2**20  # whatever the loaded test process holds, + 300 MiB
    app = create_app(make_settings(artifact_dir, memory_budget=budget, max_image_side=20_000))
    with (
        pytest.raises(StartupError, match=r"max_image_side 20000 \(at most \d+\).*memory_budget"),
        TestClient(app),
    ):
        pass


def test_a_request_larger_than_the_pool_runs_in_pieces(artifact_dir: Path) -> None:
    budget = current_rss() + 200 * 2**20
    settings = make_settings(
        artifact_dir, memory_budget=budget, max_image_side=512, max_grid_side=128
    )
    app = create_app(settings)
    with TestClient(app) as client:
        state = app.state.service
        cost = state.models["default"].cost.tokenize(512 * 512, 512 * 512)
        n = state.budget.capacity // cost + 2  # together they cannot fit the pool
        assert n <= 16, n
        peak = 0
        acquire = state.budget.acquire

        async def watched(nbytes: int, *, small: bool = False) -> None:
            nonlocal peak
            await acquire(nbytes, small=small)
            peak = max(peak, state.budget.used)

        state.budget.acquire = watched
        image = encode_file(random_image(512, 512))
        files = [("files", (f"{i}.png", image, "image/png")) for i in range(n)]
        response = client.post("/v1/tokenize", files=files)
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == n
        assert cost * n > state.budget.capacity >= peak > 0


# -- load shedding ----------------------------------------------------------------------------


def test_batcher_queue_bound_deadline_and_cancellation() -> None:
    ran: list[float] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        ran.extend(float(v) for v in x.flatten())
        time.sleep(0.05)
        return x

    async def scenario(pool: ThreadPoolExecutor) -> None:
        b = MicroBatcher(fn, executor=pool, max_batch_size=1, max_wait_s=0.0, max_queue=3)
        b.start()
        try:
            first = b.submit_many([torch.tensor([1.0])])
            await asyncio.sleep(0.01)  # 1.0 is running now
            later = b.submit_many([torch.tensor([2.0]), torch.tensor([3.0])])
            expired = b.submit_many([torch.tensor([4.0])], deadline=time.monotonic() + 0.01)
            with pytest.raises(QueueFull, match="max_queue"):
                b.submit_many([torch.tensor([5.0])])
            assert b.queue_depth == 3
            later[0].cancel()  # 2.0's client left
            assert (await asyncio.gather(*first))[0].item() == 1.0
            assert (await later[1]).item() == 3.0
            with pytest.raises(DeadlineExceeded):
                await expired[0]
            await asyncio.sleep(0)  # done-callbacks run on the next loop iteration
            assert b.queue_depth == 0 and b.items_cancelled == 1 and b.items_expired == 1
        finally:
            await b.stop()

    with ThreadPoolExecutor(1) as pool:
        asyncio.run(scenario(pool))
    assert ran == [1.0, 3.0]  # neither the abandoned nor the expired item ran


def test_overload_is_503_with_retry_after_and_deadline_drops_work(artifact_dir: Path) -> None:
    settings = make_settings(
        artifact_dir, max_queue=2, request_timeout_s=1.5, batch_wait_ms=0.0, max_batch_size=1
    )
    with serving(settings) as (url, state, _):
        served = state.models["default"]
        slow = SlowEncode(served.tokenizer.encode, delay_s=1.0)
        served.tokenizer.encode = slow  # type: ignore[method-assign]
        body = {"images": [png_b64()]}
        with ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(httpx.post, f"{url}/v1/tokenize", json=body, timeout=10)
                for _ in range(6)
            ]
            responses = [f.result() for f in futures]
        statuses = sorted(r.status_code for r in responses)
        assert 200 in statuses and set(statuses) <= {200, 503}
        overloaded = [r for r in responses if r.json().get("code") == "overloaded"]
        timed_out = [r for r in responses if r.json().get("code") == "timeout"]
        assert overloaded and all("Retry-After" in r.headers for r in overloaded)
        assert timed_out and all("Retry-After" in r.headers for r in timed_out)
        time.sleep(1.5)  # let anything still queued come due
        ok = statuses.count(200)
        # Work ran only for answered requests, plus at most the one running at the deadline.
        assert slow.images <= ok + 1
        metrics = httpx.get(f"{url}/metrics").text
        assert shed(metrics, "queue_full") == len(overloaded)
        assert shed(metrics, "deadline") == len(timed_out)
        assert samples(metrics)[("vq_queue_depth", (("model", "default"), ("op", "tokenize")))] == 0


def test_abandoned_requests_never_run(artifact_dir: Path) -> None:
    settings = make_settings(artifact_dir, batch_wait_ms=0.0, max_batch_size=1)
    with serving(settings) as (url, state, _):
        served = state.models["default"]
        slow = SlowEncode(served.tokenizer.encode, delay_s=3.0)
        served.tokenizer.encode = slow  # type: ignore[method-assign]
        body = {"images": [png_b64()]}
        first = threading.Thread(
            target=httpx.post, args=(f"{url}/v1/tokenize",), kwargs={"json": body, "timeout": 30}
        )
        first.start()
        wait_until(lambda: slow.calls == 1)  # the first request holds the inference thread
        host, port = url.removeprefix("http://").split(":")
        payload = httpx.Request("POST", f"{url}/v1/tokenize?model=default", json=body)
        raw = (
            f"POST /v1/tokenize HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload.content)}\r\n\r\n"
        ).encode() + payload.content
        for _ in range(3):  # three clients that give up while queued
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(raw)
                wait_until(lambda: served.encoder.queue_depth == 1)
            wait_until(lambda: served.encoder.queue_depth == 0)  # dropped on disconnect
        assert slow.calls == 1
        first.join()
        time.sleep(0.2)
        assert slow.calls == 1  # only the first request's image was encoded
        metrics = httpx.get(f"{url}/metrics").text
        assert shed(metrics, "client_disconnected") == 3
        images = samples(metrics)[("vq_images_total", (("model", "default"), ("op", "tokenize")))]
        assert images == 1
        ok = (
            "vq_http_requests_total",
            (("endpoint", "/v1/tokenize"), ("method", "POST"), ("status", "200")),
        )
        assert samples(metrics)[ok] == 1


def test_invalid_codes_from_the_model_are_a_500_not_a_client_error(artifact_dir: Path) -> None:
    app = create_app(make_settings(artifact_dir))
    with TestClient(app, raise_server_exceptions=False) as client:
        served = app.state.service.models["default"]

        def poisoned(images: torch.Tensor) -> torch.Tensor:
            n, _, h, w = images.shape
            return torch.full((n, h // 4, w // 4), -(2**63), dtype=torch.int64)

        served.tokenizer.encode = poisoned
        response = client.post("/v1/tokenize", json={"images": [png_b64()]})
        assert response.status_code == 500 and response.json()["code"] == "internal_error"
        assert "outside [0, 64)" in response.json()["detail"]


# -- slow clients, disconnects, shutdown (a real vq-serve process) -----------------------------


def _raw(port: int, head: bytes, chunks: list[bytes], pause_s: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head)
        answer = b""
        try:
            for chunk in chunks:
                time.sleep(pause_s)
                sock.sendall(chunk)
            sock.settimeout(5)
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:  # the server may close while we still send; keep what arrived
            with contextlib.suppress(OSError):
                answer += sock.recv(65536)
        return answer


def test_slow_body_is_408_and_others_are_served(
    artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VQ_BODY_TIMEOUT_S", "3")
    monkeypatch.setenv("VQ_BODY_GRACE_S", "0.5")
    monkeypatch.setenv("VQ_MIN_BODY_RATE", "1000")
    log = tmp_path / "serve.log"
    server = start_server(["--model", f"default={artifact_dir}", "--torch-threads", "1"], log)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        head = (
            b"POST /v1/detokenize HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 5000\r\n\r\n"
        )
        with ThreadPoolExecutor(2) as pool:
            stalled = pool.submit(_raw, port, head, [], 0.0)  # sends no body at all
            trickle = pool.submit(_raw, port, head, [b" "] * 40, 0.1)  # 10 bytes/s
            start = time.monotonic()
            for _ in range(5):  # meanwhile the service answers others
                assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
                time.sleep(0.1)
            for answer in (stalled.result(), trickle.result()):
                assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
                assert b"body_timeout_s" in answer and b'"code":"body_timeout"' in answer
            assert time.monotonic() - start < 6
    finally:
        stop_server(server.process)


def test_client_disconnect_mid_body_is_one_log_line(artifact_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    server = start_server(["--model", f"default={artifact_dir}", "--torch-threads", "1"], log)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        head = (
            b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100000\r\n\r\n"
        )
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(head + b'{"images": ["aGVsbG8')
                time.sleep(0.05)
        time.sleep(0.5)
        assert httpx.get(f"{server.url}/readyz").status_code == 200
    finally:
        stop_server(server.process)
    text = log.read_text()
    assert "Traceback" not in text and "Exception in ASGI application" not in text
    assert text.count("the client disconnected while sending its body") == 3


def test_non_utf8_json_is_the_documented_422(app_client: TestClient) -> None:
    for path in ("/v1/detokenize", "/v1/detokenize/batch", "/v1/tokenize"):
        response = app_client.post(
            path,
            content=b'{"codes": [[1]], "\xff": 1}',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422, (path, response.text)
        assert response.json()["code"] == "invalid_request"


def test_sigterm_drains_in_flight_and_refuses_new(artifact_dir: Path) -> None:
    settings = make_settings(
        artifact_dir, batch_wait_ms=0.0, max_batch_size=1, shutdown_delay_s=1.0
    )
    with serving(settings) as (url, state, server):
        served = state.models["default"]
        slow = SlowEncode(served.tokenizer.encode, delay_s=0.5)
        served.tokenizer.encode = slow  # type: ignore[method-assign]
        with ThreadPoolExecutor(3) as pool:
            body = {"images": [png_b64()]}
            in_flight = [
                pool.submit(httpx.post, f"{url}/v1/tokenize", json=body, timeout=10)
                for _ in range(3)
            ]
            wait_until(lambda: slow.calls + served.encoder.queue_depth == 3)  # all inside
            server.handle_exit(signal.SIGTERM, None)
            # During shutdown_delay_s the listener stays open: probes see 503 at once and new
            # work is refused with 503 (its body read first), on a connection that then closes.
            ready = httpx.get(f"{url}/readyz", timeout=2)
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            refused = httpx.post(f"{url}/v1/tokenize", json=body, timeout=2)
            assert refused.status_code == 503 and refused.json()["code"] == "shutting_down"
            assert refused.headers["connection"] == "close" and "Retry-After" in refused.headers
            answers = [f.result() for f in in_flight]
        assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
        wait_until(lambda: not server.started or server.should_exit)
        time.sleep(1.0)  # past the delay and the linger: the listener is closed
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/readyz", timeout=2)


def test_vq_serve_exits_cleanly_on_sigterm(artifact_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    server = start_server(["--model", f"default={artifact_dir}", "--torch-threads", "1"], log)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0
    assert "draining: readiness is 503" in log.read_text()


def test_draining_readiness_and_new_work(artifact_dir: Path) -> None:
    app = create_app(make_settings(artifact_dir))
    with TestClient(app) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        app.state.service.begin_drain()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        refused = client.post("/v1/tokenize", json={"images": [png_b64()]})
        assert refused.status_code == 503 and refused.json()["code"] == "shutting_down"
        assert "Retry-After" in refused.headers
        assert client.get("/healthz").status_code == 200  # alive while it drains


def test_requests_beyond_the_concurrency_limit_are_503_at_once(artifact_dir: Path) -> None:
    settings = make_settings(artifact_dir, max_concurrent_requests=1, batch_wait_ms=0.0)
    with serving(settings) as (url, state, _):
        served = state.models["default"]
        slow = SlowEncode(served.tokenizer.encode, delay_s=1.0)
        served.tokenizer.encode = slow  # type: ignore[method-assign]
        body = {"images": [png_b64()]}
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, f"{url}/v1/tokenize", json=body, timeout=10)
            wait_until(lambda: slow.calls == 1)
            start = time.monotonic()
            refused = httpx.post(f"{url}/v1/tokenize", json=body, timeout=10)
            assert time.monotonic() - start < 0.9  # not queued behind the first
            assert refused.status_code == 503 and refused.json()["code"] == "overloaded"
            assert "Retry-After" in refused.headers
            assert httpx.get(f"{url}/healthz").status_code == 200  # GETs are not limited
            assert first.result().status_code == 200
        key = ("vq_requests_shed_total", (("model", "*"), ("op", "*"), ("reason", "concurrency")))
        assert samples(httpx.get(f"{url}/metrics").text)[key] == 1
