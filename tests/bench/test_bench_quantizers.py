"""bench/quantizers.py: the --quick run measures every configuration and writes its JSON and
report; the verdicts (bench/report.py) follow the numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

from tests.bench.helpers import ROOT, load_script

SCRIPT = ROOT / "bench" / "quantizers.py"
METHODS = ("ste", "rotation", "simvq", "simvq_rotation")


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return load_script("report")


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


def _result(impl: str, method: str, k: int, seconds: float, rss: float = 500.0) -> dict:
    task = {
        "impl": impl,
        "method": method,
        "k": k,
        "levels": [8, 5, 5, 5] if method == "fsq" else None,
    }
    return {"task": task, "status": "ok", "times_s": [seconds], "peak_rss_mib": rss}


def test_targets_follow_the_numbers(report: ModuleType) -> None:
    n = 16384
    results = []
    for method in METHODS:
        results += [
            _result("ours", method, 1024, 0.1),
            _result("reference", method, 1024, 0.4),  # 0.25x: holds (<= 0.5)
            _result("ours", method, 16384, 1.0),
            _result("reference", method, 16384, 2.0),  # 0.5x: fails (<= 0.25)
            _result("ours", method, 65536, 1.0, rss=900.0),
            _result("ours", method, 262144, 1.0, rss=1500.0),  # over 1 GiB
        ]
    flops = 2 * n * 64
    results += [
        _result("ours", "search", 1024, flops * 1024 / 55e9),  # 55 GFLOP/s
        _result("ours", "search", 16384, flops * 16384 / 70e9),
        _result("ours", "search", 65536, flops * 65536 / 59e9),  # below 60
        _result("ours", "fsq", 1000, 0.010),
        _result("reference", "fsq", 1000, 0.012),
    ]
    verdicts = [holds for *_, holds in report.quantizer_targets(results, n)]
    assert verdicts == [True, False, False, False, True, True]


def test_failed_reference_is_not_measured(report: ModuleType) -> None:
    results = [_result("ours", m, 1024, 0.1) for m in METHODS]
    results += [{**_result("reference", m, 1024, 0.1), "status": "OOM"} for m in METHODS]
    assert report.quantizer_targets(results, 16384)[0][2] is None  # not measured
