"""Fixtures for the service tests: a tiny untrained artifact, apps, clients, a live server."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import vq
from service.app import create_app

with warnings.catch_warnings():
    # Starlette's TestClient warns that it will move from httpx to httpx2; nothing to act on.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from tests.service.helpers import (
    F,
    LiveServer,
    make_settings,
    start_server,
    stop_server,
    tiny_config,
)


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained VQ tokenizer (f=4, 64 codes); seconds to build, milliseconds to run."""
    import torch

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    vq.save_tokenizer(vq.VQVAE(tiny_config()), out, metrics={"psnr": 12.5})
    return out


@pytest.fixture(scope="session")
def fsq_artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "tiny-fsq"
    cfg = vq.VQVAEConfig(
        f=F,
        widths=(8, 8, 8),
        num_res_blocks=0,
        quantizer=vq.QuantizerConfig(kind="fsq", codebook_size=240, levels=[8, 6, 5]),
    )
    vq.save_tokenizer(vq.VQVAE(cfg), out)
    return out


@pytest.fixture(scope="session")
def tokenizer(artifact_dir: Path) -> vq.Tokenizer:
    return vq.load_tokenizer(artifact_dir)


@pytest.fixture(scope="module")
def app_client(artifact_dir: Path, fsq_artifact_dir: Path) -> Iterator[TestClient]:
    """One app (models loaded via the lifespan) shared by a test module."""
    settings = make_settings(artifact_dir, batch_wait_ms=1.0)
    settings.models["fsq"] = str(fsq_artifact_dir)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session")
def live_server(
    artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """``vq-serve`` as a real uvicorn process on a free loopback port.

    batch-wait 50 ms so that concurrent test requests reliably share batches.
    """
    log = tmp_path_factory.mktemp("live") / "vq-serve.log"
    server = start_server(
        ["--model", f"default={artifact_dir}", "--batch-wait-ms", "50", "--torch-threads", "1"],
        log,
    )
    try:
        yield server
    finally:
        stop_server(server.process)
