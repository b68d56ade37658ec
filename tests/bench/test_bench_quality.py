"""bench/quality.py: every configuration trains through vq-train (Lightning's Trainer) and the
--quick run's JSON holds finite figures for each; resume continues unfinished runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "quality.py"
METHODS = ("ste", "rotation", "simvq", "simvq_rotation", "fsq")
# The quick runs train 10 tiny models through Lightning: minutes on a busy 2-core machine.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    return load_script("quality")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quality")
    _run("--out", str(out))
    return out


def test_quick_json_has_every_configuration_with_finite_figures(quick_run: Path) -> None:
    payload = json.loads((quick_run / "quality.json").read_text())
    results = payload["results"]
    assert [(r["method"], r["nominal_size"]) for r in results] == [
        (m, k) for k in (256, 1024) for m in METHODS
    ]
    tokens_per_code = payload["config"]["tokens_per_code"]
    for r in results:
        assert r["error"] is None, r
        for key in ("psnr", "ssim", "window_usage", "fixed_usage", "quant_error", "train_seconds"):
            assert math.isfinite(r[key]), (r["method"], key, r[key])
        assert 0 < r["window_usage"] <= 1 and 0 < r["fixed_usage"] <= 1
        # The window holds at least 4 K tokens, the fixed set tokens_per_code per code.
        assert r["window_tokens"] >= 4 * r["codebook_size"]
        assert r["fixed_tokens"] >= tokens_per_code * r["codebook_size"]
        # Usage vs step comes from the run's own log, up to the last step.
        assert r["history"] and r["history"][-1]["step"] == 6
        assert r["setting"] == ("papers" if r["method"] in ("ste", "rotation") else "")
    fsq = {r["nominal_size"]: r for r in results if r["method"] == "fsq"}
    assert fsq[1024]["levels"] == [8, 5, 5, 5] and fsq[1024]["codebook_size"] == 1000


def test_each_configuration_is_a_vq_train_run(quick_run: Path) -> None:
    for method in METHODS:
        run = quick_run / "work" / f"{method}_K256" / "version_0"
        assert (run / "checkpoints" / "last.ckpt").is_file(), method
        assert (run / "artifact" / "config.json").is_file(), method
        assert (run / "config.yaml").is_file()  # LightningCLI's record of the run's options


def test_report_and_plots_are_rendered_from_the_json(quick_run: Path) -> None:
    report = (quick_run / "quality.md").read_text()
    for needle in ("## Targets", "## K = 256", "## K = 1,024", "| fsq | 1,000 ([8, 5, 5, 5]) |"):
        assert needle in report, needle
    for name in ("quality_usage_vs_step.png", "quality_usage_vs_k.png", "quality_psnr_vs_k.png"):
        assert (quick_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in report


def test_fit_args_are_the_config_with_k_budget_and_setting(quality: ModuleType) -> None:
    cfg = quality.replace(quality.BenchConfig(), steps=400, overrides=("model.optimizer.lr=1e-3",))
    args = quality.fit_args("rotation", 8192, cfg, Path("/tmp/w"))
    assert args[:3] == ["fit", "--config", str(ROOT / "configs" / "rotation.yaml")]
    opts = dict(zip(args[3::2], args[4::2], strict=True))
    q = json.loads(opts["--model.vqvae.quantizer"])  # the config's quantizer, whole
    assert q["codebook_size"] == 8192 and q["grad_estimator"] == "rotation"
    assert q["codebook_init"] == "uniform" and q["dead_code_threshold"] == 0  # the papers'
    assert opts["--trainer.max_steps"] == "400" and opts["--model.optimizer.lr"] == "0.001"
    assert opts["--model.optimizer.warmup_steps"] == str(quality.warmup_steps("rotation", 400))
    assert "--ckpt_path" not in opts  # nothing to resume in an empty folder

    def quantizer(method: str, size: int, config: object) -> dict:
        args = quality.fit_args(method, size, config, Path("/w"))
        return json.loads(args[args.index("--model.vqvae.quantizer") + 1])

    recipe = quality.replace(cfg, plain=("recipe",))
    assert quantizer("rotation", 8192, recipe)["codebook_init"] == "data"
    fsq = quantizer("fsq", 65536, cfg)
    assert fsq["kind"] == "fsq" and fsq["levels"] == [8, 8, 8, 5, 5, 5]
    beta = quality.replace(cfg, overrides=("model.vqvae.quantizer.beta=0.5",))
    assert quantizer("simvq", 1024, beta) == {**quantizer("simvq", 1024, cfg), "beta": 0.5}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        quality.fit_args("ste", 1024, quality.replace(cfg, overrides=("lr",)), Path("/w"))


def test_plain_codebooks_run_once_per_setting(quality: ModuleType) -> None:
    cfg = quality.replace(quality.QUICK, plain=("papers", "rotation-paper"))
    runs = quality.configurations(["rotation", "fsq"], [256], cfg)
    assert runs == [
        ("rotation", 256, "papers"),
        ("rotation", 256, "rotation-paper"),
        ("fsq", 256, ""),
    ]
    assert [quality.run_name(*r) for r in runs] == [
        "rotation_K256",
        "rotation-rotation-paper_K256",
        "fsq_K256",
    ]
    args = quality.fit_args("rotation", 256, cfg, Path("/w"), "rotation-paper")
    q = json.loads(args[args.index("--model.vqvae.quantizer") + 1])
    # The rotation-trick paper's VQ-VAE: cosine EMA codebook with decay 0.8, commitment 1.0,
    # kaiming-scale init.
    assert (q["codebook_update"], q["ema_decay"], q["beta"]) == ("ema", 0.8, 1.0)
    assert (q["codebook_norm"], q["codebook_init"]) == ("l2", "kaiming")
    assert q["grad_estimator"] == "rotation"


@pytest.mark.parametrize(
    ("size", "levels"),
    [(256, (8, 6, 5)), (1024, (8, 5, 5, 5)), (8192, (8, 8, 8, 6, 5)), (65536, (8, 8, 8, 5, 5, 5))],
)
def test_fsq_levels_nearest_recommended(quality: ModuleType, size: int, levels: tuple) -> None:
    assert quality.fsq_levels_for(size) == levels


def test_an_interrupted_run_resumes_to_the_same_numbers(quick_run: Path, tmp_path: Path) -> None:
    """A run stopped at step 3 (its last.ckpt kept) and resumed with --resume ends where the
    uninterrupted run ends."""
    same = ["--set", "model.optimizer.total_steps=6", "--set", "data.samples_per_epoch=24"]
    args = ["--methods", "fsq", "--sizes", "256", "--out", str(tmp_path), *same]
    _run(*args, "--steps", "3")
    (tmp_path / "work" / "fsq_K256" / "result.json").unlink()  # as if cut off before the end
    assert "Restored all states" in _run(*args, "--resume").stderr
    (resumed,) = json.loads((tmp_path / "quality.json").read_text())["results"]
    reference = next(
        r
        for r in json.loads((quick_run / "quality.json").read_text())["results"]
        if (r["method"], r["nominal_size"]) == ("fsq", 256)
    )
    for key in ("psnr", "window_usage", "fixed_usage", "quant_error"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-5), key


def test_a_finished_run_is_skipped_on_resume_and_kept_without_it(
    quality: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work" / "ste_K256"
    work.mkdir(parents=True)
    done = quality.RunResult("ste", 256, codebook_size=256, psnr=20.0, window_usage=0.5)
    (work / "result.json").write_text(json.dumps(quality.asdict(done)))
    common = ["--quick", "--methods", "ste", "--sizes", "256", "--out", str(tmp_path)]
    assert quality.main(common) == 2
    assert "holds an earlier run; pass --resume" in capsys.readouterr().err
    assert quality.main([*common, "--resume"]) == 0
    (result,) = json.loads((tmp_path / "quality.json").read_text())["results"]
    assert result["psnr"] == 20.0  # not trained again


def test_a_failing_run_is_recorded_not_raised(
    quality: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(args: object) -> None:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(quality.cli, "main", out_of_memory)
    result = quality.run_one("simvq", 256, quality.QUICK, tmp_path / "w")
    assert result.error is not None and "out of memory" in result.error


def test_bad_arguments_are_rejected(
    quality: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert quality.main(["--quick", "--crop", "30"]) == 2
    assert quality.main(["--quick", "--jobs", "0"]) == 2
    assert "--jobs=0 must be >= 1" in capsys.readouterr().err
    assert quality.main(["--corpus", "/nonexistent"]) == 2
    assert "has no train/ folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--methods", "nope"])


def test_default_outputs_are_not_docs(quality: ModuleType) -> None:
    for folder in (quality.common.out_dir(None, "quality", q) for q in (False, True)):
        assert "docs" not in folder.relative_to(ROOT).parts
