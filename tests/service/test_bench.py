"""bench/service.py and bench.load --quick run end to end and write their JSON and report."""

from __future__ import annotations

import json
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
    cmd = [sys.executable, "-m", "bench.load", "--quick", "--model", str(artifact_dir)]
    cmd += ["--size", "16", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "load.json").read_text())
    phases = {r["name"]: r for r in result["phases"]}
    assert list(phases) == ["sustained", "overload", "SIGTERM drain"]
    assert [r["concurrency"] for r in phases.values()] == [8, 32, 8]
    assert result["exit_code"] == 0
    for r in phases.values():
        assert r["sent"] == sum(r["statuses"].values()) > 0
        assert not [s for s in r["statuses"] if s.startswith("5") and s != "503"], r
        assert 0 < r["peak_rss_mib"] * 2**20 <= result["budget_bytes"]
    assert phases["sustained"]["statuses"].get("200", 0) > 0
    # A drain that cut in-flight requests would lose one per client (8 here). A single
    # ReadError in ~400 drain requests shows up now and then on a busy machine (cause not
    # established; the benchmark reports it as a missed target): tolerate one, not more.
    drain = phases["SIGTERM drain"]["statuses"]
    assert sum(n for s, n in drain.items() if s.startswith("lost")) <= 1, drain
    assert "| SIGTERM drain |" in (tmp_path / "load.md").read_text()
