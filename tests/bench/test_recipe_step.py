"""bench/recipe_step.py --quick runs every variant and writes its JSON and report where told;
the LPIPS rows run where the converted weights are and are skipped with a note elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.helpers import ROOT, load_script
from train.lpips import weights_file

BASE = {"mse", "recipe", "recipe_decoder_only"}
LPIPS_ROWS = {"recipe_lpips", "recipe_lpips_decoder_only"}


def test_recipe_step_quick_writes_json_and_report(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "recipe_step.py"), "--quick", "--out", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "recipe_step.json").read_text())
    has_weights = weights_file("vgg").is_file()
    assert set(result["seconds_per_step"]) == (BASE | LPIPS_ROWS if has_weights else BASE)
    assert all(v > 0 for v in result["seconds_per_step"].values())
    assert result["ratio_to_mse"]["mse"] == 1.0
    report = (tmp_path / "recipe_step.md").read_text()
    assert "× MSE step" in report and ("holds" in report or "missed" in report)
    assert "the LPIPS recipe step <= 3x an MSE step" in report
    if has_weights:
        assert result["lpips_note"] is None and "| recipe_lpips |" in report
    else:
        assert "LPIPS rows not measured" in report and "vq-lpips-weights" in report


def test_without_the_weights_the_lpips_rows_are_left_out_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VQ_LPIPS_DIR", str(tmp_path))  # an empty folder
    variants, note = load_script("recipe_step").runnable_variants()
    assert set(variants) == BASE
    assert note is not None and str(tmp_path) in note and "vq-lpips-weights" in note
