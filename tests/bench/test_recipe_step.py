"""bench/recipe_step.py --quick runs every variant and writes its JSON and report where told."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.bench.helpers import ROOT


def test_recipe_step_quick_writes_json_and_report(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "recipe_step.py"), "--quick", "--out", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "recipe_step.json").read_text())
    assert set(result["seconds_per_step"]) == {"mse", "recipe", "recipe_decoder_only"}
    assert all(v > 0 for v in result["seconds_per_step"].values())
    assert result["ratio_to_mse"]["mse"] == 1.0
    report = (tmp_path / "recipe_step.md").read_text()
    assert "× MSE step" in report and ("holds" in report or "missed" in report)
