"""Tokenizer artifacts: save/load round trip, corrupted files, the uint8 Tokenizer API."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from vq.artifact import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ArtifactError,
    load_tokenizer,
    save_tokenizer,
)
from vq.model import VQVAE, QuantizerConfig, VQVAEConfig
from vq.pixels import float_to_uint8, uint8_to_float
from vq.tokenizer import Tokenizer

QUANTIZERS = {
    "ste": QuantizerConfig(kind="vq", codebook_size=16),
    "rotation": QuantizerConfig(kind="vq", codebook_size=16, grad_estimator="rotation"),
    "simvq": QuantizerConfig(kind="vq", codebook_size=16, codebook="linear"),
    "ste-data-init": QuantizerConfig(kind="vq", codebook_size=16, codebook_init="data"),
    "fsq": QuantizerConfig(kind="fsq", codebook_size=15, levels=(5, 3)),
}


def tiny_model(quantizer: str = "ste", f: int = 4) -> VQVAE:
    n_levels = int(math.log2(f)) + 1
    widths = tuple([8] + [16] * (n_levels - 1))
    cfg = VQVAEConfig(f=f, widths=widths, num_res_blocks=1, quantizer=QUANTIZERS[quantizer])
    return VQVAE(cfg).eval()


def random_images(b: int = 2, h: int = 8, w: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    return save_tokenizer(tiny_model(), tmp_path / "tok")


# --- round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_round_trip_gives_identical_codes(tmp_path: Path, quantizer: str) -> None:
    model = tiny_model(quantizer)
    images = random_images()
    expected = model.encode(uint8_to_float(images))
    save_tokenizer(model, tmp_path / "tok")

    # A fresh model draws fresh random weights (and a fresh SimVQ C): equal codes prove
    # every tensor that matters was saved and restored.
    tok = load_tokenizer(tmp_path / "tok", precision="fp32")
    assert isinstance(tok, Tokenizer)
    assert not tok.model.training
    assert torch.equal(tok.encode(images), expected)
    # The Tokenizer runs channels_last: other convolution kernels, float32 rounding only.
    torch.testing.assert_close(tok.model.decode(expected), model.decode(expected))
    assert tok.config == model.config
    assert (tok.f, tok.codebook_size, tok.code_dim) == (4, model.codebook_size, model.code_dim)
    assert tok.device == torch.device("cpu")


def test_config_json_contents(tmp_path: Path) -> None:
    model = tiny_model("fsq")
    metrics = {"psnr": torch.tensor(25.5), "ssim": 0.8, "epoch_usage": 1.0}
    save_tokenizer(model, tmp_path / "tok", metrics=metrics, extra={"steps": 10})
    data = json.loads((tmp_path / "tok" / CONFIG_NAME).read_text())
    assert data["format_version"] == 1
    assert VQVAEConfig.from_dict(data["model"]) == model.config
    assert data["quantizer"] == {
        "kind": "fsq",
        "codebook_size": 15,
        "code_dim": 2,
        "levels": [5, 3],
        "grad_estimator": None,
        "codebook": None,
        "codebook_norm": None,
    }
    assert data["f"] == 4 and data["image_range"] == [-1.0, 1.0]
    assert set(data["versions"]) == {"vq_tokenizer", "torch", "safetensors"}
    assert data["metrics"] == {"psnr": 25.5, "ssim": 0.8, "epoch_usage": 1.0}
    assert data["extra"] == {"steps": 10}
    assert load_tokenizer(tmp_path / "tok").metadata == data


def test_simvq_frozen_codebook_is_saved(tmp_path: Path) -> None:
    model = tiny_model("simvq")
    save_tokenizer(model, tmp_path / "tok")
    saved = safetensors.torch.load_file(str(tmp_path / "tok" / WEIGHTS_NAME))
    # Every persistent tensor is saved (the random C too), under its state-dict key.
    keys = {f"quantizer.{name}" for name in model.quantizer.state_dict()}
    assert "quantizer.frozen_codebook" in keys and keys <= set(saved)
    assert torch.equal(saved["quantizer.frozen_codebook"], model.quantizer.book.frozen_codebook)


def test_non_finite_metric_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"metrics.psnr=inf"):
        save_tokenizer(tiny_model(), tmp_path / "tok", metrics={"psnr": float("inf")})


def test_overwrite_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_tokenizer(tiny_model(), tmp_path / "tok")
    save_tokenizer(tiny_model(), tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_saved_files_are_readable_by_other_users(tmp_path: Path) -> None:
    # A service account or a container's non-root user must be able to load the artifact.
    old = os.umask(0o022)
    try:
        out = save_tokenizer(tiny_model(), tmp_path / "tok")
    finally:
        os.umask(old)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert (out / name).stat().st_mode & 0o777 == 0o644


def test_loading_imports_no_lightning(artifact: Path) -> None:
    code = (
        "import sys; import vq.artifact as a; a.load_tokenizer(sys.argv[1]); "
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'fastapi') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(artifact)], check=True, timeout=120)


# --- corrupted artifacts ---------------------------------------------------------------------


def _rewrite_config(root: Path, edit) -> None:  # type: ignore[no-untyped-def]
    data = json.loads((root / CONFIG_NAME).read_text())
    edit(data)
    (root / CONFIG_NAME).write_text(json.dumps(data))


def _rewrite_weights(root: Path, state: dict[str, torch.Tensor]) -> None:
    """Replace the weights and record their new checksum, as a consistent artifact with
    wrong tensors would have (the checksum test is in test_artifact_integrity.py)."""
    with safetensors.safe_open(str(root / WEIGHTS_NAME), framework="pt") as f:
        meta = f.metadata()
    safetensors.torch.save_file(state, str(root / WEIGHTS_NAME), metadata=meta)
    blob = (root / WEIGHTS_NAME).read_bytes()
    record = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    _rewrite_config(root, lambda d: d["files"].update({WEIGHTS_NAME: record}))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


def test_path_is_a_file(artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="not a directory"):
        load_tokenizer(artifact / CONFIG_NAME)


def test_missing_config(artifact: Path) -> None:
    (artifact / CONFIG_NAME).unlink()
    with pytest.raises(ArtifactError, match=r"config\.json is missing"):
        load_tokenizer(artifact)


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe"])
def test_bad_json(artifact: Path, text: str) -> None:
    (artifact / CONFIG_NAME).write_text(text, encoding="latin-1")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_tokenizer(artifact)


def test_json_not_an_object(artifact: Path) -> None:
    (artifact / CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="JSON object"):
        load_tokenizer(artifact)


@pytest.mark.parametrize("version", [None, 2, "1", 0])
def test_unsupported_format_version(artifact: Path, version: object) -> None:
    def edit(d: dict) -> None:
        if version is None:
            del d["format_version"]
        else:
            d["format_version"] = version

    _rewrite_config(artifact, edit)
    with pytest.raises(ArtifactError, match=rf"format_version={version!r}.*\[1\]"):
        load_tokenizer(artifact)


def test_invalid_model_section(artifact: Path) -> None:
    _rewrite_config(artifact, lambda d: d["model"].update(f=3))
    with pytest.raises(ArtifactError, match=r"'model' section is invalid: f=3"):
        load_tokenizer(artifact)
    _rewrite_config(artifact, lambda d: d.pop("model"))
    with pytest.raises(ArtifactError, match="no 'model' section"):
        load_tokenizer(artifact)


def test_summary_disagreeing_with_model_config(artifact: Path) -> None:
    _rewrite_config(artifact, lambda d: d.update(f=8))
    with pytest.raises(ArtifactError, match=r"f=8 \(the model section gives 4\)"):
        load_tokenizer(artifact)


def test_missing_weights(artifact: Path) -> None:
    (artifact / WEIGHTS_NAME).unlink()
    with pytest.raises(ArtifactError, match=r"model\.safetensors is missing"):
        load_tokenizer(artifact)


@pytest.mark.parametrize("keep", [0, 4, 100, -16])
def test_truncated_weights(artifact: Path, keep: int) -> None:
    path = artifact / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ArtifactError, match=r"model\.safetensors is damaged: \d+ bytes where"):
        load_tokenizer(artifact)
    _rewrite_config(artifact, lambda d: d.pop("files"))  # an artifact without checksums
    with pytest.raises(ArtifactError, match=r"truncated or corrupt"):
        load_tokenizer(artifact, allow_unverified=True)


def test_mismatched_shape_is_named(artifact: Path) -> None:
    path = artifact / WEIGHTS_NAME
    state = safetensors.torch.load_file(str(path))
    state["encoder.stem.weight"] = torch.zeros(4, 3, 3, 3)
    _rewrite_weights(artifact, state)
    with pytest.raises(
        ArtifactError, match=r"shape mismatches: encoder\.stem\.weight: file \(4, 3, 3, 3\)"
    ):
        load_tokenizer(artifact)


def test_missing_and_unexpected_keys_are_named(artifact: Path) -> None:
    path = artifact / WEIGHTS_NAME
    state = safetensors.torch.load_file(str(path))
    del state["decoder.conv_out.bias"]
    state["decoder.extra.weight"] = torch.zeros(1)
    _rewrite_weights(artifact, state)
    with pytest.raises(ArtifactError) as info:
        load_tokenizer(artifact)
    message = str(info.value)
    assert "missing tensors: decoder.conv_out.bias" in message
    assert "unexpected tensors: decoder.extra.weight" in message


def test_config_for_another_architecture(artifact: Path) -> None:
    # Weights of a width-8/16 model under a config that asks for wider layers.
    _rewrite_config(artifact, lambda d: d["model"].update(widths=[8, 32, 32]))
    with pytest.raises(ArtifactError, match="shape mismatches"):
        load_tokenizer(artifact)


def test_artifact_error_is_a_value_error() -> None:
    assert issubclass(ArtifactError, ValueError)


# --- the uint8 Tokenizer API -------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
@pytest.mark.parametrize("f", [4, 8, 16])
def test_tokenizer_shapes_and_dtypes(tmp_path: Path, quantizer: str, f: int) -> None:
    tok = load_tokenizer(save_tokenizer(tiny_model(quantizer, f), tmp_path / "tok"))
    codes = tok.encode(random_images(2, 2 * f, 3 * f))
    assert codes.dtype == torch.int64 and codes.shape == (2, 2, 3)
    images = tok.decode(codes)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 2 * f, 3 * f)
    assert not codes.requires_grad
    # Decoding then encoding is well defined (the service's detokenize -> tokenize path).
    assert tok.encode(images).shape == codes.shape


def test_tokenizer_accepts_smaller_integer_dtypes(artifact: Path) -> None:
    tok = load_tokenizer(artifact)
    codes = torch.randint(0, tok.codebook_size, (1, 2, 2))
    assert torch.equal(tok.decode(codes.to(torch.int32)), tok.decode(codes))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(1, 3, 8, 8), r"uint8.*float32"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int64), r"uint8.*int64"),
        (torch.zeros(8, 8, dtype=torch.uint8), r"\(C, H, W\)"),
        (torch.zeros(1, 4, 8, 8, dtype=torch.uint8), r"takes 3 \(RGB\).*x\[:, :3\]"),
        (torch.zeros(1, 3, 8, 10, dtype=torch.uint8), r"multiples of f=4.*8x10"),
        (torch.zeros(1, 3, 0, 8, dtype=torch.uint8), r"multiples of f=4"),
        ([[0]], "uint8 torch tensor"),
    ],
)
def test_tokenizer_encode_validation(artifact: Path, images: object, message: str) -> None:
    tok = load_tokenizer(artifact)
    with pytest.raises(ValueError, match=message):
        tok.encode(images)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (torch.full((1, 2, 2), 16), r"\[0, 16\).*\[16, 16\]"),
        (torch.full((1, 2, 2), -1), r"\[0, 16\)"),
        (torch.zeros(1, 2, 2), r"integer.*\[0, 16\).*float32"),
        (torch.zeros(1, 2, 2, dtype=torch.bool), r"integer.*bool"),
        (torch.zeros(2, 2, dtype=torch.long), r"\(B, h, w\)"),
        (torch.zeros(1, 1, 2, 2, dtype=torch.long), r"\(B, h, w\)"),
        (torch.zeros(1, 0, 2, dtype=torch.long), r"h, w >= 1"),
        ([[0]], "torch.Tensor"),
    ],
)
def test_tokenizer_decode_validation(artifact: Path, codes: object, message: str) -> None:
    tok = load_tokenizer(artifact)
    with pytest.raises(ValueError, match=message):
        tok.decode(codes)  # type: ignore[arg-type]


def test_tokenizer_to_device(artifact: Path) -> None:
    tok = load_tokenizer(artifact).to("cpu")
    assert tok.device == torch.device("cpu")
    assert next(tok.model.parameters()).device == torch.device("cpu")
    assert "codebook_size=16" in repr(tok)


def test_pixel_mapping() -> None:
    levels = torch.arange(256, dtype=torch.uint8)
    x = uint8_to_float(levels)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(float_to_uint8(x), levels)
    # Out-of-range decoder output is clamped, not wrapped around.
    assert float_to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]
