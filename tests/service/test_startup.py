"""Start-up and signals: the port opens before the models load (/healthz answers, /readyz
503 ``loading``), a taken port or a bad artifact stops ``vq-serve`` with one line, and
SIGTERM, SIGINT and SIGHUP all drain in-flight requests and exit 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service import loader
from service.app import create_app
from service.cli import DrainingServer
from service.state import ServedModel
from tests.service.helpers import encode_file, free_port, make_settings, random_image, wait_until

REPO = Path(__file__).resolve().parents[2]
PNG = encode_file(random_image(8, 8))


@contextmanager
def loading_server(artifact_dir: Path, gate: threading.Event) -> Iterator[str]:
    """A server whose model load waits for ``gate``; loading in the background as vq-serve's."""
    port = free_port()
    original = loader.load_model

    def slow_load(*args: Any) -> ServedModel:
        assert gate.wait(30)
        return original(*args)

    failures: list[str] = []
    app = create_app(make_settings(artifact_dir), on_load_failure=failures.append)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = DrainingServer(config, app.state.service)
    loader.load_model = slow_load
    thread = threading.Thread(target=server.run, daemon=True)
    try:
        thread.start()
        wait_until(lambda: server.started, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        gate.set()
        server.should_exit = True
        thread.join(timeout=20)
        loader.load_model = original
    assert failures == []


def test_probes_answer_while_the_models_load(artifact_dir: Path) -> None:
    gate = threading.Event()
    with loading_server(artifact_dir, gate) as url:
        assert httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        ready = httpx.get(f"{url}/readyz", timeout=2)
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        files = {"files": ("a.png", PNG, "image/png")}
        refused = httpx.post(f"{url}/v1/tokenize", files=files, timeout=2)
        assert refused.status_code == 503 and refused.json()["code"] == "not_ready"
        assert "Retry-After" in refused.headers
        gate.set()
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200)
        assert httpx.post(f"{url}/v1/tokenize", files=files, timeout=10).status_code == 200


def serve(args: list[str], port: int, *, slow_encode_s: float = 0.0) -> subprocess.Popen[str]:
    """``vq-serve`` in a child process; ``slow_encode_s`` makes every encode pass that slow,
    so that a request is surely in flight when a signal arrives."""
    code = (
        "import sys, time\n"
        "import service.backends as b\n"
        f"delay = {slow_encode_s}\n"
        "if delay:\n"
        "    original = b.TorchBackend.encode\n"
        "    b.TorchBackend.encode = lambda self, x: (time.sleep(delay), original(self, x))[1]\n"
        "from service.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    cmd = [sys.executable, "-c", code, "--host", "127.0.0.1", "--port", str(port), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_taken_port_fails_before_loading(artifact_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = serve(["--model", f"default={artifact_dir}"], port)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"vq-serve: error: cannot listen on 127.0.0.1:{port}" in err
    assert "--port" in err
    assert "loaded model" not in out + err and "ready: serving" not in out + err


def test_a_bad_artifact_is_one_line_naming_the_file_and_the_fix(
    artifact_dir: Path, tmp_path: Path
) -> None:
    served = tmp_path / "tok"
    served.mkdir()
    for name in ("config.json", "model.safetensors"):
        (served / name).write_bytes((artifact_dir / name).read_bytes())
    (served / "model.safetensors").write_bytes(b"not the weights")
    process = serve(["--model", f"default={served}"], free_port())
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "Traceback" not in out + err
    (line,) = [x for x in err.splitlines() if x.startswith("vq-serve: error:")]
    assert f"model 'default': {served / 'model.safetensors'} is damaged" in line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_every_stop_signal_drains_and_exits_0(artifact_dir: Path, sig: signal.Signals) -> None:
    port = free_port()
    args = ["--model", f"default={artifact_dir}", "--torch-threads", "1"]
    process = serve(args, port, slow_encode_s=1.5)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url), timeout=60)
        with ThreadPoolExecutor(1) as pool:
            files = {"files": ("a.png", PNG, "image/png")}
            in_flight = pool.submit(httpx.post, f"{url}/v1/tokenize", files=files, timeout=30)
            time.sleep(0.5)  # inside the slow encode
            process.send_signal(sig)
            assert in_flight.result().status_code == 200
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
