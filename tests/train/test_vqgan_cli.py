"""architecture=vqgan through the trainer: fit (with usage monitoring), artifact, predict."""

from __future__ import annotations

import json
from pathlib import Path

import vq
from tests.train.helpers import CONFIGS, TINY_OVERRIDES, scalar_tags, write_image
from train.cli import main


def test_vqgan_architecture_trains_exports_and_predicts(tmp_path: Path, one_thread: None) -> None:
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "ste.yaml"),
            *TINY_OVERRIDES,
            "--model.vqvae.architecture=vqgan",
            "--model.vqvae.widths=[32, 32, 32, 32]",
            "--model.vqvae.attn_levels=[3]",
            "--model.vqvae.quantizer.codebook_norm=l2",
            # LlamaGen's lookup: no data init or restarts (configs/ste.yaml turns them on).
            "--model.vqvae.quantizer.codebook_init=uniform",
            "--model.vqvae.quantizer.dead_code_threshold=0",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    run = tmp_path / "version_0"
    tok = vq.load_tokenizer(run / "artifact", precision="fp32")
    assert tok.config.architecture == "vqgan" and tok.config.attn_levels == (3,)
    assert json.loads((run / "artifact" / "config.json").read_text())["architecture"] == "vqgan"
    assert "usage/window_usage" in scalar_tags(run)

    write_image(tmp_path / "images" / "a.png", 40, 56)
    main(
        [
            "predict",
            "--config",
            str(run / "config.yaml"),
            f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            f"--data.predict_root={tmp_path / 'images'}",
            f"--predict_writer.out_dir={tmp_path / 'codes'}",
        ]
    )
    manifest = (tmp_path / "codes" / "manifest-rank0.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in manifest] == ["a.png"]
