"""bench/kodak.py: a tokenizer's Kodak figures (quality, sharpness, usage, rate), the JPEG/WebP
sweep and the crops picture, on small synthetic images (the Kodak set is not in the project)."""

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
    # Large enough for MS-SSIM's 5 scales (a side of at least 161).
    for i, (h, w) in enumerate([(176, 192), (192, 176)]):
        # Smooth content (codecs behave as on photos), not white noise.
        base = rng.integers(0, 255, size=(h // 8, w // 8, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        im.save(folder / f"im{i}.png")
    return folder


def test_psnr_and_entropy(kodak: ModuleType) -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    assert kodak.metrics.psnr_uint8(a, a) == math.inf
    b = a.copy()
    b[...] = 1  # MSE 1
    assert kodak.metrics.psnr_uint8(a, b) == pytest.approx(10 * math.log10(255**2))
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
                "--no-lpips",
            ]
        )
        == 0
    )
    payload = json.loads((out / "kodak.json").read_text())
    (tok,) = payload["tokenizers"]
    assert tok["name"] == "tiny" and tok["tokens"] == 2 * (176 * 192) // 64
    assert tok["bpp_nominal"] == pytest.approx(6 / 64)
    assert 0 < tok["bpp_entropy"] <= tok["bpp_nominal"] + 1e-9
    assert 0 < tok["usage"] <= 1 and tok["dead_codes"] == round(64 * (1 - tok["usage"]))
    assert len(tok["per_image"]) == 2 and tok["lpips_vgg"] is None
    assert tok["invented"] == sum(r["hf_ratio"] > 1.3 for r in tok["per_image"])
    for key in ("psnr", "ssim", "ms_ssim", "vif", "hf_ratio", "spectral_error", "delta_e"):
        assert math.isfinite(tok[key]), key
        mean = np.mean([r[key] for r in tok["per_image"]])
        assert tok[key] == pytest.approx(mean), key  # the mean of the per-image figures
    assert tok["hf_ratio"] > 0
    assert any("LPIPS not measured" in note for note in payload["notes"])
    for codec in ("jpeg", "webp"):
        pts = [p for p in payload["codecs"] if p["codec"] == codec]
        assert [p["quality"] for p in pts] == list(kodak.QUICK_QUALITIES)
        # Higher quality costs more bits, reconstructs better and keeps more detail.
        for key in ("bpp", "psnr", "ms_ssim"):  # VIF: at the matched settings only
            assert [p[key] for p in pts] == sorted(p[key] for p in pts), (codec, key)
    matched = [p for p in payload["codecs"] if p["matched"]]
    assert [(p["codec"], p["quality"]) for p in matched] == [("jpeg", 5), ("webp", 5)]
    assert all(math.isfinite(p["delta_e"]) and len(p["per_image"]) == 2 for p in matched)
    assert all(p["delta_e"] is None for p in payload["codecs"] if not p["matched"])
    assert [w["name"] for w in tok["worst"]["images"]] == [
        r["name"] for r in sorted(tok["per_image"], key=lambda r: -r["spectral_error"])
    ]
    assert len(payload["crops"]["regions"]) == 2  # the first image's centre, the flattest block
    for name in ("kodak_rd.png", "kodak_crops.png", "kodak_worst_tiny.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    report = (out / "kodak.md").read_text()
    assert (
        "| tiny | 64 |" in report and "spectral err." in report and "](kodak_crops.png)" in report
    )
    assert "](kodak_worst_tiny.png)" in report


def test_lpips_columns_from_the_converted_weights(
    kodak: ModuleType, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.train.test_lpips import write_weights

    monkeypatch.setenv("VQ_LPIPS_DIR", str(tmp_path / "lpips"))
    (tmp_path / "lpips").mkdir()
    for net in ("vgg", "alex"):
        write_weights(tmp_path / "lpips", net)
    scorer, note = kodak.lpips_scorer()
    assert scorer is not None and "VGG16 and AlexNet" in note
    loaded = kodak.load_images(images)
    im = loaded.pixels[0]
    assert scorer.score("a", im, im) == {"lpips_vgg": 0.0, "lpips_alex": 0.0}
    worse = im // 2 + 60
    first = scorer.score("a", im, worse)
    assert all(v > 0 for v in first.values()) and len(scorer.references) == 2  # kept per image
    assert scorer.score("a", im, worse) == first
    monkeypatch.setenv("VQ_LPIPS_DIR", str(tmp_path / "none"))
    assert "vq-lpips-weights" in kodak.lpips_scorer()[1]


def test_the_flattest_region_is_found(kodak: ModuleType) -> None:
    rng = np.random.default_rng(0)
    busy = rng.integers(0, 255, size=(256, 320, 3), dtype=np.uint8)
    busy[32:96, 200:264] = 128  # a flat wall inside a busy photo
    name, top, left, side = kodak.flattest_region(kodak.Images(["b.png"], [busy]), side=64)
    assert (name, side) == ("b.png", 64) and abs(top - 32) <= 16 and abs(left - 200) <= 16


def test_without_images_it_fails_naming_the_option(
    kodak: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kodak.main(["--out", str(tmp_path / "o")]) == 2
    assert "pass --kodak DIR" in capsys.readouterr().err
    assert kodak.main(["--kodak", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "absent is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_default_output_is_not_docs(kodak: ModuleType) -> None:
    for folder in (kodak.common.out_dir(None, "kodak", q) for q in (False, True)):
        assert "docs" not in folder.relative_to(ROOT).parts


def test_images_not_divisible_by_f_are_rejected(kodak: ModuleType, tmp_path: Path) -> None:
    config = VQVAEConfig(
        f=8,
        widths=(8, 8, 16, 16),
        quantizer=QuantizerConfig(kind="fsq", codebook_size=240, levels=(8, 6, 5)),
    )
    tok = kodak.load_tokenizer(save_tokenizer(VQVAE(config), tmp_path / "t"), precision="fp32")
    odd = kodak.Images(["odd.png"], [np.zeros((50, 64, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"odd.png: 50x64 \(HxW\) is not divisible by f=8"):
        kodak.evaluate_tokenizer(tok, odd)


class _PooledFeatures(torch.nn.Module):
    """Stands in for Inception-v3's TorchScript: the same call, tiny features."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert return_features
        return torch.nn.functional.adaptive_avg_pool2d(x / 255, 2).flatten(1)  # (N, 12)


def test_rfid_from_a_torchscript_feature_extractor(kodak: ModuleType, tmp_path: Path) -> None:
    inception = tmp_path / "inception.pt"
    torch.jit.script(_PooledFeatures()).save(str(inception))
    features, note = kodak.fid_extractor(inception)
    assert features is not None and "HiFiC" in note
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(384, 384, 3), dtype=np.uint8) for _ in range(3)]
    reference = features(images)
    assert reference.shape == (3 * 2, 12)  # the grid and the shifted grid: 2 patches each
    assert kodak.metrics.frechet_distance(reference, features(images)) == pytest.approx(0, abs=1e-9)
    darker = [(im // 2).astype(np.uint8) for im in images]
    assert kodak.metrics.frechet_distance(reference, features(darker)) > 0.01


def test_rfid_weights_missing_or_wrong_fail_naming_the_option(
    kodak: ModuleType, tmp_path: Path
) -> None:
    assert kodak.fid_extractor(None)[0] is None
    with pytest.raises(ValueError, match="--fid-inception .*no such file.*inception-2015-12-05"):
        kodak.fid_extractor(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not TorchScript"):
        kodak.fid_extractor(junk)
