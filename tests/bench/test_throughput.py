"""bench/throughput.py: the --quick run measures every section and writes JSON and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "throughput.md"
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    for heading in ("GEMM peak", "Encode and decode", "Kodak", "Training", "faiss", "Targets"):
        assert heading in report
    raw = json.loads(out.with_suffix(".json").read_text())
    configs = {row["config"] for row in raw["encode_decode"]}
    assert configs == {
        "fp32 NCHW eager",
        "fp32 channels_last",
        "bf16 channels_last",
        "bf16 Tokenizer (chunked)",
    }
    assert all(row["encode_img_s"] > 0 and row["decode_gflops"] > 0 for row in raw["encode_decode"])
    # The search is exact on every route.
    assert all(row["identical_to_fp32"] == 1.0 for row in raw["search"])
    assert all(0.0 <= row["data_wait"] < 1.0 for row in raw["training"])
