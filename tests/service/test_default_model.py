"""The shipped tokenizer through the service (skipped until models/default exists)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.client import Client
from service.settings import Settings

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "default"

pytestmark = pytest.mark.skipif(
    not (DEFAULT / "config.json").is_file(), reason="models/default is not there yet"
)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def test_round_trip_reconstructs_at_the_model_quality() -> None:
    from skimage import data

    image = np.asarray(data.coffee())[:256, :256]  # (256, 256, 3) uint8, a natural photo
    with TestClient(create_app(Settings(models={"default": str(DEFAULT)}))) as http:
        client = Client(http=http)
        info = client.model("default")
        result = client.tokenize([image])[0]
        assert result.grid == (256 // info["f"], 256 // info["f"])
        recon = np.asarray(Image.open(io.BytesIO(client.detokenize(result.codes))).convert("RGB"))
    assert recon.shape == image.shape
    card_psnr = info["metrics"].get("psnr")
    floor = card_psnr - 6.0 if isinstance(card_psnr, int | float) else 15.0
    assert psnr(recon, image) > floor
