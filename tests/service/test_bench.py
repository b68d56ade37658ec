"""bench/service.py --quick runs end to end and writes its report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_service_benchmark_quick(artifact_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "service.md"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "service.py"),
        "--quick",
        "--model",
        str(artifact_dir),
        "--size",
        "32",
        "--concurrency",
        "1",
        "4",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    for needle in (
        "| batched | 4 |",
        "| unbatched | 1 |",
        "ceiling",
        "batched service / unbatched",
    ):
        assert needle in report, report


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
