"""bench/quantizers.py: the --quick run measures every configuration and writes its JSON and
report (its targets are judged in tests/bench/test_report.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.bench.helpers import ROOT

SCRIPT = ROOT / "bench" / "quantizers.py"
METHODS = ("ste", "rotation", "simvq", "simvq_rotation")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return (out / "quantizers.md").read_text(), json.loads((out / "quantizers.json").read_text())


def test_quick_run_measures_every_configuration(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, payload = quick_run
    results = payload["results"]
    measured = {(r["task"]["impl"], r["task"]["method"]) for r in results}
    for impl in ("ours", "reference"):
        for method in (*METHODS, "fsq"):
            assert (impl, method) in measured
    assert ("ours", "search") in measured
    for r in results:
        assert r["status"] == "ok", r
        assert r["times_s"] and all(t > 0 for t in r["times_s"])
        assert r["peak_rss_mib"] > 0
    assert payload["config"]["ks"] == [256] and payload["quick"]


def test_quick_report_has_a_row_per_method(quick_run: tuple[str, dict[str, Any]]) -> None:
    text, _ = quick_run
    for method in METHODS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        assert float(row.strip("|").split("|")[3]) > 0  # ratio
