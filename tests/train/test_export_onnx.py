"""vq-export --onnx from an artifact directory and from a vq-train checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import vq
from train.export import main as export_main
from train.module import VQVAEModule

ort = pytest.importorskip("onnxruntime")


def _check(out: Path, tok: vq.Tokenizer) -> None:
    images = torch.randint(0, 256, (2, 3, 16, 24), dtype=torch.uint8)
    codes = ort.InferenceSession(str(out / "encoder.onnx")).run(None, {"images": images.numpy()})[0]
    assert (codes == tok.encode(images).numpy()).mean() >= 0.999
    decoded = ort.InferenceSession(str(out / "decoder.onnx")).run(None, {"codes": codes})[0]
    assert decoded.shape == (2, 3, 16, 24) and decoded.dtype == np.uint8


def test_onnx_from_artifact_and_from_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = vq.VQVAEConfig(f=4, widths=(8, 16, 16), quantizer=vq.VQConfig(codebook_size=32))
    module = VQVAEModule(cfg)
    vq.save_tokenizer(module.model, tmp_path / "artifact")
    tok = vq.load_tokenizer(tmp_path / "artifact", precision="fp32")
    assert export_main(["--onnx", str(tmp_path / "artifact"), str(tmp_path / "a")]) == 0
    _check(tmp_path / "a", tok)

    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save(ckpt, tmp_path / "m.ckpt")
    assert export_main(["--onnx", str(tmp_path / "m.ckpt"), str(tmp_path / "c")]) == 0
    _check(tmp_path / "c", tok)


def test_onnx_export_of_a_missing_source_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export_main(["--onnx", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
