"""End-to-end `vq-train fit` through the CLI in a subprocess, one per quantizer config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vq
from tests.train.helpers import (
    CONFIGS,
    QUANTIZER_CONFIGS,
    REPO,
    TINY_OVERRIDES,
    run_cli,
    scalar_tags,
    write_image,
)
from train.cli import latest_resumable_version, main
from train.export import module_from_checkpoint, read_checkpoint

MONITOR_KEYS = (
    "usage/batch_usage",
    "usage/window_usage",
    "usage/perplexity",
    "usage/dead_codes",
    "usage/unseen_codes",
    "val/epoch_usage",
    "val/epoch_perplexity",
    "val/psnr",
    "val/ssim",
    "val/loss",
    "train/loss",
    "train/mse",
    "train/quant_loss",
)


def _fit(config: str, root: Path, *extra: str) -> None:
    proc = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / f"{config}.yaml"),
            *TINY_OVERRIDES,
            f"--trainer.default_root_dir={root}",
            *extra,
        ],
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("config", QUANTIZER_CONFIGS)
def test_fit_writes_checkpoints_artifact_and_usage_logs(config: str, tmp_path: Path) -> None:
    _fit(config, tmp_path)
    run = tmp_path / "version_0"
    ckpts = run / "checkpoints"
    assert (ckpts / "last.ckpt").is_file()
    best = sorted(ckpts.glob("best-*.ckpt"))
    assert len(best) == 1

    # The artifact is the best checkpoint, with its validation metrics.
    tokenizer = vq.load_tokenizer(run / "artifact", precision="fp32")
    meta = json.loads((run / "artifact" / "config.json").read_text())
    for key in ("psnr", "ssim", "epoch_usage"):
        assert isinstance(meta["metrics"][key], float)
    assert 0.0 < meta["metrics"]["epoch_usage"] <= 1.0
    module = module_from_checkpoint(read_checkpoint(best[0]))
    images = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    expected = module.model.encode(images.float() / 127.5 - 1.0)
    assert torch.equal(tokenizer.encode(images), expected)

    tags = scalar_tags(run)
    missing = [k for k in MONITOR_KEYS if k not in tags]
    assert not missing, f"not logged: {missing}; logged: {sorted(tags)}"
    assert any(t.startswith("lr-") for t in tags)
    # docs/training.md's TensorBoard table names every scalar this run logged.
    table = (REPO / "docs" / "training.md").read_text().split("## Monitoring (TensorBoard)")[1]
    table = table.split("\n## ")[0]
    lightning = ("epoch", "hp_metric")  # Lightning's own bookkeeping, not our figures
    undocumented = [
        t for t in tags if ":" not in t and t not in lightning and f"`{t}`" not in table
    ]
    assert not undocumented, f"logged but not in training.md's table: {undocumented}"
    assert "image:val/usage_histogram" in tags and "image:val/reconstructions" in tags
    # train figures every log_every_n_steps=1 step, epoch usage at each of the 2 validations
    assert len(tags["usage/window_usage"]) == 4
    assert len(tags["val/epoch_usage"]) == 2
    assert all(0.0 < v <= 1.0 for _, v in tags["usage/batch_usage"])


def test_fit_resume_last_then_predict(tmp_path: Path, one_thread: None) -> None:
    # In-process through the same entry point as the console script (saves two start-ups).
    args = [
        "fit",
        "--config",
        str(CONFIGS / "rotation.yaml"),
        *TINY_OVERRIDES,
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    main(args)
    first = read_checkpoint(tmp_path / "version_0" / "checkpoints" / "last.ckpt")
    assert first["global_step"] == 4
    assert latest_resumable_version(tmp_path) == "version_0"

    main([*args, "--ckpt_path=last", "--trainer.max_steps=6"])
    # Same run directory (no version_1), the step count went on from 4 to 6, and the
    # codebook went on from the checkpoint's (the resumed run's first step saw it).
    assert not (tmp_path / "version_1").exists()
    resumed = read_checkpoint(tmp_path / "version_0" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 6
    steps = [s for s, _ in scalar_tags(tmp_path / "version_0")["train/loss"]]
    # 4 + 2 points, the resumed ones after the first run's (Lightning's logger step may
    # skip one at the resume boundary).
    assert len(steps) == len(set(steps)) == 6 and sorted(steps)[:4] == [0, 1, 2, 3]

    images = tmp_path / "images"
    write_image(images / "a.png", 40, 56)
    write_image(images / "sub" / "b.jpg", 37, 50, seed=1)
    (images / "bad.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        main(
            [
                "predict",
                "--config",
                str(tmp_path / "version_0" / "config.yaml"),
                f"--ckpt_path={tmp_path / 'version_0' / 'checkpoints' / 'last.ckpt'}",
                f"--data.predict_root={images}",
                f"--predict_writer.out_dir={tmp_path / 'codes'}",
            ]
        )
    manifest = (tmp_path / "codes" / "manifest-rank0.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["path"] for line in manifest) == ["a.png", "sub/b.jpg"]
    skipped = (tmp_path / "codes" / "skipped-rank0.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in skipped] == ["bad.png"]
    assert not (tmp_path / "version_1").exists()  # predict leaves no empty run directory

    # validate logs nowhere new: no version_1, and the run's own files are untouched.
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    main(
        [
            "validate",
            "--config",
            str(tmp_path / "version_0" / "config.yaml"),
            f"--ckpt_path={tmp_path / 'version_0' / 'checkpoints' / 'last.ckpt'}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_print_config_and_bad_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "fsq.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "kind: fsq" in printed and "codebook_monitor:" in printed

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "ste.yaml"),
                *TINY_OVERRIDES,
                f"--data.root={empty}",
                f"--trainer.default_root_dir={tmp_path / 'runs'}",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "holds no image files" in err and str(empty) in err


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_default_config_without_a_corpus_says_what_to_pass_and_leaves_no_run(
    subcommand: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VQ_DATA_ROOT", raising=False)
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                subcommand,
                "--config",
                str(CONFIGS / "default.yaml"),
                "--trainer.precision=32-true",
                f"--trainer.default_root_dir={runs}",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "VQ_DATA_ROOT" in err and "--data.root" in err and "docs/data.md" in err
    assert not runs.exists()

    monkeypatch.setenv("VQ_DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit):
        main(
            ["fit", "--config", str(CONFIGS / "default.yaml"), f"--trainer.default_root_dir={runs}"]
        )
    err = capsys.readouterr().err
    assert "does not exist: pass a folder of images or shards with --data.root" in err
    assert not runs.exists()


@pytest.mark.parametrize(("max_epochs", "expected"), [(-1, "Epoch 3"), (5, "Epoch 3/4")])
def test_progress_bar_epoch_has_no_negative_end(max_epochs: int, expected: str) -> None:
    from types import SimpleNamespace

    from train.cli import OpenEndedRichProgressBar

    bar = OpenEndedRichProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=max_epochs)  # type: ignore[assignment]
    assert bar._get_train_description(3).strip() == expected
