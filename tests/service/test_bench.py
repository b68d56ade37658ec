"""bench/service.py --quick runs end to end and writes its report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_service_benchmark_quick(artifact_dir: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "service.py"), "--quick", "--model"]
    cmd += [str(artifact_dir), "--size", "32", "--concurrency", "1", "4", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "service.json").read_text())
    rows = {(r["mode"], r["concurrency"]): r for r in result["results"]}
    assert set(rows) == {(m, c) for m in ("batched", "unbatched") for c in (1, 4)}
    for r in rows.values():
        assert r["requests"] >= 4 and r["img_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["mean_batch"] >= 1.0
    assert rows[("unbatched", 4)]["mean_batch"] == 1.0  # one image per forward pass
    assert all(c["batch_img_s"] > 0 and c["single_img_s"] > 0 for c in result["ceilings"])
    assert "| batched | 4 |" in (tmp_path / "service.md").read_text()


def test_load_benchmark_quick(artifact_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "load.md"
    cmd = [sys.executable, "-m", "bench.load", "--quick", "--model", str(artifact_dir)]
    cmd += ["--size", "16", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    for needle in (
        "| sustained | 8 |",
        "| overload | 32 |",
        "| SIGTERM drain |",
        "exited with code 0",
    ):
        assert needle in report, report
    assert "| 0 x 5xx (other than 503 shedding) | 0 | holds |" in report
    # A drain that cut in-flight requests would lose one per client (8 here). A single
    # ReadError in ~400 drain requests shows up now and then on a busy machine (cause not
    # established; the benchmark reports it as a missed target): tolerate one, not more.
    lost = re.search(r"\| 0 requests lost on SIGTERM \| (\d+) \|", report)
    assert lost is not None, report
    assert int(lost.group(1)) <= 1, report


def test_load_scenarios_replace_only_their_own_section(tmp_path: Path) -> None:
    from bench.load_scenarios import SECTION, write_section

    out = tmp_path / "load.md"
    out.write_text("# Load\n\nnotes kept\n\n## Later notes\n\nkept too\n")
    write_section(out, f"{SECTION}\n\nfirst\n")
    write_section(out, f"{SECTION}\n\nsecond\n")
    text = out.read_text()
    assert text.count(SECTION) == 1 and "second" in text and "first" not in text
    assert "notes kept" in text and "## Later notes\n\nkept too" in text
