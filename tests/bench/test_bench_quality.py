"""bench/quality.py: the --quick run writes its report, JSON and plots; targets and failures
are reported, not hidden."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from tests.bench.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "quality.py"


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    return load_script("quality")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quality") / "quality.md"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_quick_writes_report_json_and_plots(quick_run: Path) -> None:
    report = quick_run.read_text()
    for name in ("quality_usage_vs_step.png", "quality_usage_vs_k.png", "quality_psnr_vs_k.png"):
        png = quick_run.parent / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in report
    for needle in ("## Targets", "## K = 256", "## K = 1,024", "- Command: `", "- Machine: "):
        assert needle in report, needle


def test_quick_reports_every_configuration_with_finite_numbers(quick_run: Path) -> None:
    payload = json.loads(quick_run.with_suffix(".json").read_text())
    results = payload["results"]
    methods = ("ste", "rotation", "simvq", "simvq_rotation", "fsq")
    seen = {(r["method"], r["nominal_size"]) for r in results}
    assert seen == {(m, k) for m in methods for k in (256, 1024)}
    report = quick_run.read_text()
    for r in results:
        assert r["error"] is None, r
        for key in ("psnr", "ssim", "epoch_usage", "window_usage", "quant_error", "train_seconds"):
            assert math.isfinite(r[key]), (r["method"], key, r[key])
        assert 0.0 <= r["window_usage"] <= 1.0 and 0.0 <= r["epoch_usage"] <= 1.0
        # The window holds at least 4 K tokens; usage vs step was recorded during training.
        assert r["window_tokens"] >= 4 * r["codebook_size"]
        assert r["val_tokens"] > 0 and r["history"] and r["history"][-1]["step"] == 6
        assert f"| {r['method']} | " in report
        # The recipe is the method's config, trained through train.module.VQVAEModule.
        assert r["recipe"]["config"] == f"configs/{r['method']}.yaml"
    # FSQ runs at the recommended levels nearest K, with the true size in the table.
    fsq = {r["nominal_size"]: r for r in results if r["method"] == "fsq"}
    assert fsq[1024]["levels"] == [8, 5, 5, 5] and fsq[1024]["codebook_size"] == 1000
    assert "| fsq | 1,000 ([8, 5, 5, 5]) |" in report


def test_rewrite_keeps_hand_written_analysis(quality: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "quality.md"
    out.write_text(f"old generated part\n{quality.ANALYSIS_MARKER}\n## Analysis\n\nmy notes\n")
    cfg = quality.QUICK
    results = [quality.RunResult(method="ste", nominal_size=256, error="RuntimeError: boom")]
    meta = quality.run_metadata("python bench/quality.py --x", 1.0, cfg)
    quality.write_outputs(results, cfg, out, meta, plots=False)
    text = out.read_text()
    assert "my notes" in text and "old generated part" not in text
    assert "failed: RuntimeError: boom" in text
    # Re-rendering from the JSON gives the same report (and keeps the notes).
    assert quality.main(["--from-json", str(out.with_suffix(".json")), "--out", str(out)]) == 0
    assert out.read_text().split("- Date")[1] == text.split("- Date")[1]


def test_a_failing_run_is_recorded_not_raised(
    quality: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(quality, "train", out_of_memory)
    data = quality.BenchData(train_crops=None, val_crops=None, description="")
    result = quality.run_one("simvq", 256, data, quality.QUICK, log=lambda s: None)
    assert not result.ok and "out of memory" in result.error
    assert result.codebook_size == 256


@pytest.mark.parametrize(
    ("size", "levels"),
    [(256, (8, 6, 5)), (1024, (8, 5, 5, 5)), (8192, (8, 8, 8, 6, 5)), (65536, (8, 8, 8, 5, 5, 5))],
)
def test_fsq_levels_nearest_recommended(quality: ModuleType, size: int, levels: tuple) -> None:
    assert quality.fsq_levels_for(size) == levels


def _result(quality: ModuleType, method: str, k: int, usage: float, psnr: float) -> object:
    return quality.RunResult(
        method=method, nominal_size=k, codebook_size=k, window_usage=usage, psnr=psnr
    )


def test_targets_judge_the_measured_numbers(quality: ModuleType) -> None:
    runs = [
        _result(quality, "ste", 1024, 0.5, 20.0),
        _result(quality, "ste", 8192, 0.1, 21.0),
        _result(quality, "rotation", 8192, 0.6, 21.5),
        _result(quality, "simvq", 1024, 0.99, 24.5),
        _result(quality, "simvq", 8192, 0.90, 24.0),
        _result(quality, "fsq", 1000, 0.97, 23.0),
    ]
    checks = {c.name: c.holds for c in quality.check_targets(runs)}
    assert checks["SimVQ usage >= 95% at every K"] is False  # 90% at 8192
    assert checks["STE usage falls as K grows"] is True
    assert checks["rotation vs STE at K >= 8192: usage >= 5x, PSNR not lower"] is True
    assert checks["FSQ usage >= 95% at every size"] is True
    assert checks["best PSNR >= 24 dB at f=8"] is True


def test_bad_arguments_are_rejected(quality: ModuleType) -> None:
    assert quality.main(["--quick", "--crop", "30"]) == 2
    with pytest.raises(SystemExit):
        quality.main(["--methods", "nope"])


def test_jobs_runs_in_parallel_processes_with_the_same_numbers(
    quick_run: Path, tmp_path: Path
) -> None:
    """--jobs 2 trains runs in worker processes; each run is seeded the same way, so it gives the
    numbers of the sequential run, and the report keeps the sequential order."""
    out = tmp_path / "quality.md"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--jobs", "2", "--methods", "fsq", "ste"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parallel = json.loads(out.with_suffix(".json").read_text())["results"]
    sequential = {
        (r["method"], r["nominal_size"]): r
        for r in json.loads(quick_run.with_suffix(".json").read_text())["results"]
    }
    order = [(r["method"], r["nominal_size"]) for r in parallel]
    assert order == [("fsq", 256), ("ste", 256), ("fsq", 1024), ("ste", 1024)]
    for r in parallel:
        ref = sequential[(r["method"], r["nominal_size"])]
        for key in ("psnr", "window_usage", "epoch_usage", "dead_codes", "quant_error"):
            assert r[key] == pytest.approx(ref[key], rel=1e-5), (r["method"], key)


def test_jobs_must_be_positive(quality: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert quality.main(["--quick", "--jobs", "0", "--out", "/nonexistent/q.md"]) == 2
    assert "--jobs=0 must be >= 1" in capsys.readouterr().err


def test_recipe_comes_from_the_configs(quality: ModuleType) -> None:
    """The bench trains configs/<method>.yaml's model options; only K, the plain-codebook
    setting, the schedule length and explicit --set overrides change."""
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "rotation.yaml").read_text())["model"]
    cfg = quality.replace(quality.BenchConfig(), steps=400)
    papers = quality.recipe("rotation", 8192, cfg).module_args
    assert papers["lr"] == config["lr"] and papers["weight_decay"] == config["weight_decay"]
    assert papers["vqvae"]["widths"] == config["vqvae"]["widths"]
    q = papers["vqvae"]["quantizer"]
    assert q["codebook_size"] == 8192 and q["grad_estimator"] == "rotation"
    assert q["codebook_init"] == "uniform" and q["dead_code_threshold"] == 0.0
    assert papers["total_steps"] == 400
    assert papers["warmup_steps"] == round(config["warmup_steps"] * 400 / 200)
    ours = quality.recipe("rotation", 8192, quality.replace(cfg, plain="recipe")).module_args
    assert ours["vqvae"]["quantizer"]["codebook_init"] == "data"
    assert ours["vqvae"]["quantizer"]["dead_code_threshold"] > 0
    over = quality.replace(cfg, overrides=("model.lr=1e-3", "model.vqvae.quantizer.beta=0.5"))
    args = quality.recipe("simvq", 1024, over).module_args
    assert args["lr"] == 1e-3 and args["vqvae"]["quantizer"]["beta"] == 0.5
    fsq = quality.recipe("fsq", 65536, cfg).module_args["vqvae"]
    assert fsq["quantizer"]["levels"] == [8, 8, 8, 5, 5, 5] and fsq["code_dim"] == 6
    for bad, match in (("model.nope=1", "no option 'nope'"), ("lr=1", "model.KEY=VALUE")):
        with pytest.raises(ValueError, match=match):
            quality.recipe("ste", 1024, quality.replace(cfg, overrides=(bad,)))


def test_training_uses_the_modules_loss(
    quality: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from train.module import VQVAEModule

    calls = []
    real = VQVAEModule.compute_losses

    def counted(self: VQVAEModule, images: object) -> object:
        calls.append(1)
        return real(self, images)

    monkeypatch.setattr(VQVAEModule, "compute_losses", counted)
    cfg = quality.QUICK
    data = quality.load_data(cfg, with_codecs=False)
    module, rec = quality.build_module("ste", 64, cfg)
    quality.train(module, rec, data, cfg, quality.RunResult("ste", 64), log=lambda s: None)
    assert len(calls) == cfg.steps


def test_an_interrupted_run_resumes_to_the_same_numbers(
    quality: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """State is saved as it goes (here every step); a run cut off at step 4 and resumed
    ends where an uninterrupted run ends."""
    from train.module import VQVAEModule

    cfg = quality.replace(quality.QUICK, save_every=0.0)
    data = quality.load_data(cfg, with_codecs=False)
    whole = quality.run_one("rotation", 64, data, cfg, tmp_path / "whole", log=lambda s: None)
    assert whole.ok, whole.error

    real, calls = VQVAEModule.compute_losses, []

    def dies_at_step_4(self: VQVAEModule, images: object) -> object:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # not an Exception: run_one must not swallow it
        return real(self, images)

    monkeypatch.setattr(VQVAEModule, "compute_losses", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        quality.run_one("rotation", 64, data, cfg, tmp_path / "cut", log=lambda s: None)
    assert torch.load(tmp_path / "cut" / "state.pt", weights_only=False)["step"] == 3
    assert not (tmp_path / "cut" / "result.json").exists()
    monkeypatch.setattr(VQVAEModule, "compute_losses", real)
    logs: list[str] = []
    resumed = quality.run_one("rotation", 64, data, cfg, tmp_path / "cut", log=logs.append)
    assert any("resumed at step 3" in line for line in logs)
    for key in ("final_train_mse", "psnr", "window_usage", "dead_codes", "quant_error"):
        assert getattr(resumed, key) == pytest.approx(getattr(whole, key), rel=1e-6), key
    assert resumed.history == whole.history


def test_resume_skips_finished_configurations_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "quality.md"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--methods", "fsq", "--sizes", "64"]
    cmd += ["--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    resumed = subprocess.run(
        [*cmd, "--resume"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "fsq K=64: finished earlier, skipped" in resumed.stdout
    before = json.loads(out.with_suffix(".json").read_text())["results"]
    assert before[0]["method"] == "fsq" and before[0]["error"] is None


KODAK = ROOT.parent / "shared" / "data" / "kodak"


def test_a_corpus_run_evaluates_full_kodak_images(tmp_path: Path) -> None:
    """A corpus folder (train/, kodak/) trains on train/ and evaluates on the whole Kodak
    images with JPEG/WebP beside them: here a tiny corpus, with the first real Kodak photo
    when ../shared/data is there and a synthetic 768x512 image otherwise."""
    from PIL import Image

    corpus = tmp_path / "corpus"
    for sub in ("train", "kodak"):
        (corpus / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((128, 96)).save(corpus / "train" / f"t{i}.png")
    real = sorted(KODAK.glob("*.png"))[:1] if KODAK.is_dir() else []
    if real:
        shutil.copy(real[0], corpus / "kodak" / real[0].name)
    else:
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).resize((768, 512)).save(
            corpus / "kodak" / "synthetic.png"
        )
    out = tmp_path / "quality.md"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--corpus", str(corpus)]
    cmd += ["--methods", "ste", "--sizes", "64", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    payload = json.loads(out.with_suffix(".json").read_text())
    assert "1 training images, 1 held-out" in payload["meta"]["data"]  # split by image
    k = payload["results"][0]["kodak"]
    assert k["tokens"] == 768 * 512 // 64 and k["bpp_nominal"] == pytest.approx(6 / 64)
    assert 0 < k["usage"] <= 1 and math.isfinite(k["psnr"])
    assert {p["codec"] for p in payload["meta"]["codecs"]} == {"jpeg", "webp"}
    assert "| jpeg | 1 |" in out.read_text() and "Kodak (K = 64)" in out.read_text()
    assert (tmp_path / "quality_rd.png").read_bytes()[:4] == b"\x89PNG"


def test_usage_trend_fits_log_steps_and_extrapolates(quality: ModuleType) -> None:
    history = [{"step": s, "window_usage": 0.1 + 0.05 * math.log2(s)} for s in (50, 100, 200, 400)]
    trend = quality.usage_trend(history, target=0.95, first_step=100)
    assert trend.per_doubling == pytest.approx(0.05)
    assert trend.steps_to_target == pytest.approx(2**17)  # 0.1 + 0.05 * 17 = 0.95
    # Too few points after first_step: no trend; falling usage never reaches the target.
    assert quality.usage_trend(history, target=0.95, first_step=300) is None
    falling = [{"step": s, "window_usage": 1.0 - s / 1000} for s in (100, 200, 300)]
    trend = quality.usage_trend(falling, target=0.95, first_step=0)
    assert trend.per_doubling < 0 and trend.steps_to_target is None
