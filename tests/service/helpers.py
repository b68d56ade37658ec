"""Helpers shared by the service tests: image files, settings, a live vq-serve process."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image

import vq
from service.app import create_app
from service.cli import DrainingServer
from service.client import Client
from service.limits import header_timeout_protocol
from service.settings import Settings
from service.state import ServiceState

F = 4  # the tiny model's downsampling factor
CODEBOOK_SIZE = 64


def tiny_config(**quantizer: object) -> vq.VQVAEConfig:
    q = {"codebook_size": CODEBOOK_SIZE, **quantizer}
    return vq.VQVAEConfig(
        f=F, widths=(8, 8, 8), num_res_blocks=0, code_dim=8, quantizer=vq.QuantizerConfig(**q)
    )


def make_settings(artifact_dir: Path, **overrides: object) -> Settings:
    return Settings(models={"default": str(artifact_dir)}, **overrides)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def encode_file(image: Image.Image | np.ndarray, fmt: str = "PNG") -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vq_serve_command() -> list[str]:
    """The installed console script, or the same entry point through this interpreter."""
    script = Path(sys.executable).with_name("vq-serve")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from service.cli import main; main()"]


class LiveServer:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log


def start_server(args: list[str], log: Path, timeout: float = 60.0) -> LiveServer:
    port = free_port()
    cmd = [*vq_serve_command(), "--host", "127.0.0.1", "--port", str(port), *args]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    client = Client(url, timeout=5.0)
    deadline = time.monotonic() + timeout
    try:
        while not client.ready():
            if process.poll() is not None:
                raise RuntimeError(f"vq-serve exited early:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vq-serve not ready after {timeout} s:\n{log.read_text()}")
            time.sleep(0.1)
    except BaseException:
        stop_server(process)
        raise
    finally:
        client.close()
    return LiveServer(url, process, log)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def png_with_header(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few dozen bytes that declares width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[str, ServiceState, DrainingServer]]:
    """The app under a real uvicorn server on a thread (a loopback port), so sockets can be
    dropped mid-request and the model patched from here."""
    port = free_port()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=10,
        http=header_timeout_protocol(settings.header_timeout_s),  # as vq-serve runs it
    )
    server = DrainingServer(config, app.state.service)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app.state.service, server
    finally:
        server.should_exit = True
        thread.join(timeout=20)
