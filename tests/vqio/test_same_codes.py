"""One file, one set of codes: ``vq-train predict``, the library and ``POST /v1/tokenize``
decode through vqio and crop through ``vqio.center_crop``, so odd files (alpha, 16-bit,
EXIF orientation, palette, multi-frame, CMYK) get identical codes on all three paths.

All three run in float32: predict with ``--trainer.precision=32-true``, the library with
``precision="fp32"``, the service through the artifact's ``recommended_precision`` (and
``VQ_PRECISION`` where the service has that setting).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import vq
import vqio
from service.app import create_app
from service.settings import Settings
from tests.vqio.odd_files import photo, write_odd_files
from train.cli import main as vq_train
from train.export import export_module
from train.module import VQVAEModule

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
# configs/fsq.yaml with narrow widths: FSQ's codes vary even untrained (a random plain
# codebook would map most vectors to a few codes and make "identical" easy).
WIDTHS = [8, 8, 16, 16]


def _module() -> VQVAEModule:
    torch.manual_seed(0)
    cfg = vq.VQVAEConfig(
        f=8,
        widths=tuple(WIDTHS),
        num_res_blocks=1,
        code_dim=4,
        quantizer=vq.QuantizerConfig(kind="fsq", codebook_size=1000, levels=[8, 5, 5, 5]),
    )
    return VQVAEModule(cfg).eval()


def _checkpoint(module: VQVAEModule, path: Path) -> Path:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, max_steps=0
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def _predict(ckpt: Path, images: Path, out: Path) -> dict[str, np.ndarray]:
    vq_train(
        [
            "predict",
            "--config",
            str(REPO / "configs" / "fsq.yaml"),
            f"--model.vqvae.widths={WIDTHS}",
            "--trainer.precision=32-true",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={out.parent}",
            f"--ckpt_path={ckpt}",
            f"--data.predict_root={images}",
            f"--predict_writer.out_dir={out}",
        ]
    )
    codes = {}
    for line in (out / "manifest-rank0.jsonl").read_text().splitlines():
        entry = json.loads(line)
        codes[entry["path"]] = np.load(out / entry["shard"])[entry["row"]].astype(np.int64)
    return codes


def _serve(artifact: Path, paths: list[Path]) -> tuple[dict[str, np.ndarray], str]:
    settings = Settings(models={"default": str(artifact)})
    with TestClient(create_app(settings)) as client:
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
        response = client.post("/v1/tokenize?fit=crop", files=files)
        assert response.status_code == 200, response.text
        served = client.app.state.service.models["default"]  # type: ignore[attr-defined]
        precision = served.tokenizer.precision
    results = response.json()["results"]
    return {p.name: np.asarray(r["codes"]) for p, r in zip(paths, results, strict=True)}, precision


def test_predict_library_and_service_give_identical_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VQ_PRECISION", "fp32")
    torch.set_num_threads(1)
    images = tmp_path / "images"
    paths = write_odd_files(images)  # 70 x 101 photos: cropped to 64 x 96 at f = 8
    module = _module()
    ckpt = _checkpoint(module, tmp_path / "model.ckpt")
    artifact = export_module(module, tmp_path / "artifact")
    config = json.loads((artifact / "config.json").read_text())
    (artifact / "config.json").write_text(json.dumps({**config, "recommended_precision": "fp32"}))

    predicted = _predict(ckpt, images, tmp_path / "codes")
    tokenizer = vq.load_tokenizer(artifact, precision="fp32")
    library = {}
    for path in paths:
        image = vqio.read_image(path)
        rows, cols = vqio.center_crop(*image.shape[:2], tokenizer.f)
        library[path.name] = tokenizer.encode(image[rows, cols]).numpy()[0]
    served, precision = _serve(artifact, paths)

    assert precision == "fp32"
    assert sorted(predicted) == sorted(library) == sorted(served) == sorted(p.name for p in paths)
    for name in library:
        assert library[name].shape == ((12, 8) if name == "exif_rotated.jpg" else (8, 12)), name
        assert len(np.unique(library[name])) > 10, name  # real codes, not one repeated id
        np.testing.assert_array_equal(predicted[name], library[name], err_msg=f"predict {name}")
        np.testing.assert_array_equal(served[name], library[name], err_msg=f"service {name}")

    # The check can fail: the old training decoder dropped alpha, and that changes codes.
    rgb = photo()[3:67, 2:98]
    assert (tokenizer.encode(rgb).numpy()[0] != library["rgba.png"]).mean() > 0.2
