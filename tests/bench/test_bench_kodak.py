"""bench/kodak.py: a tokenizer's Kodak figures (PSNR, usage, rate) and the JPEG/WebP sweep,
on small synthetic images (the Kodak set itself is not in the project)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from tests.bench.helpers import load_script
from vq import VQVAE, QuantizerConfig, VQVAEConfig, save_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kodak() -> ModuleType:
    return load_script("kodak")


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(48, 64), (64, 48)]):
        # Smooth content (codecs behave as on photos), not white noise.
        base = rng.integers(0, 255, size=(h // 8, w // 8, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        im.save(folder / f"im{i}.png")
    return folder


def test_psnr_and_entropy(kodak: ModuleType) -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    assert kodak.psnr_uint8(a, a) == math.inf
    b = a.copy()
    b[...] = 1  # MSE 1
    assert kodak.psnr_uint8(a, b) == pytest.approx(10 * math.log10(255**2))
    assert kodak.code_entropy_bits(torch.ones(1024)) == pytest.approx(10.0)
    assert kodak.code_entropy_bits(torch.tensor([5, 0, 0])) == 0.0


def test_cli_evaluates_a_tokenizer_and_the_codecs(
    kodak: ModuleType, images: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    config = VQVAEConfig(
        f=8, widths=(8, 8, 16, 16), code_dim=4, quantizer=QuantizerConfig(codebook_size=64)
    )
    artifact = save_tokenizer(VQVAE(config), tmp_path / "tiny")
    out = tmp_path / "out"
    assert (
        kodak.main(
            [
                "--tokenizer",
                f"tiny={artifact}",
                "--kodak",
                str(images),
                "--out",
                str(out),
                "--quick",
            ]
        )
        == 0
    )
    payload = json.loads((out / "kodak.json").read_text())
    (tok,) = payload["tokenizers"]
    assert tok["name"] == "tiny" and tok["tokens"] == 2 * (48 * 64) // 64
    assert tok["bpp_nominal"] == pytest.approx(6 / 64)
    assert 0 < tok["bpp_entropy"] <= tok["bpp_nominal"] + 1e-9
    assert 0 < tok["usage"] <= 1 and tok["dead_codes"] == round(64 * (1 - tok["usage"]))
    assert math.isfinite(tok["psnr"]) and len(tok["per_image"]) == 2
    for codec in ("jpeg", "webp"):
        pts = [p for p in payload["codecs"] if p["codec"] == codec]
        assert [p["quality"] for p in pts] == list(kodak.QUICK_QUALITIES)
        # Higher quality costs more bits and reconstructs better.
        assert [p["bpp"] for p in pts] == sorted(p["bpp"] for p in pts)
        assert [p["psnr"] for p in pts] == sorted(p["psnr"] for p in pts)
    assert (out / "kodak_rd.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_images_skip_cleanly(
    kodak: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kodak.main(["--kodak", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()


def test_images_not_divisible_by_f_are_rejected(kodak: ModuleType, tmp_path: Path) -> None:
    config = VQVAEConfig(
        f=8,
        widths=(8, 8, 16, 16),
        quantizer=QuantizerConfig(kind="fsq", codebook_size=240, levels=(8, 6, 5)),
    )
    tok = kodak.load_tokenizer(save_tokenizer(VQVAE(config), tmp_path / "t"), precision="fp32")
    odd = kodak.Images(["odd.png"], [np.zeros((50, 64, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"odd.png: 64x50 \(WxH\) is not divisible by f=8"):
        kodak.evaluate_tokenizer(tok, odd)
