"""bench/quantizers.py: the --quick run writes the report; the verdicts follow the numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "quantizers.py"
METHODS = ("ste", "rotation", "simvq", "simvq_rotation")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("quantizers")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict]]:
    out = tmp_path_factory.mktemp("bench")
    report, raw = out / "quantizers.md", out / "quantizers.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--output", str(report), "--json", str(raw)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return report.read_text(), json.loads(raw.read_text())


def test_quick_run_measures_every_configuration(quick_run: tuple[str, list[dict]]) -> None:
    _, results = quick_run
    measured = {(r["task"]["impl"], r["task"]["method"]) for r in results}
    for impl in ("ours", "reference"):
        for method in (*METHODS, "fsq"):
            assert (impl, method) in measured
    assert ("ours", "search") in measured
    for r in results:
        assert r["status"] == "ok", r
        assert r["times_s"] and all(t > 0 for t in r["times_s"])
        assert r["peak_rss_mib"] > 0


def test_quick_report_has_the_tables(quick_run: tuple[str, list[dict]]) -> None:
    text, _ = quick_run
    for heading in ("## Run", "## K = 256", "## Nearest-code search alone", "## Where we stand"):
        assert heading in text
    assert "torch 2." in text and "nproc" in text
    for method in METHODS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        float(cells[1].replace(",", ""))  # ours (ms)
        float(cells[2].replace(",", ""))  # reference (ms)
        assert float(cells[3]) > 0  # ratio
    search = next(line for line in text.splitlines() if line.startswith("| 256 |"))
    assert float(search.split("|")[3]) > 0  # GFLOP/s


def _result(bench: ModuleType, impl: str, method: str, k: int, seconds: float, rss: float = 500.0):
    task = bench.Task(impl, method, k, [8, 5, 5, 5] if method == "fsq" else None)
    return bench.Result(task, times_s=[seconds], peak_rss_mib=rss)


def test_targets_follow_the_numbers(bench: ModuleType) -> None:
    n = 16384
    results = []
    for method in METHODS:
        results += [
            _result(bench, "ours", method, 1024, 0.1),
            _result(bench, "reference", method, 1024, 0.4),  # 0.25x: holds (<= 0.5)
            _result(bench, "ours", method, 16384, 1.0),
            _result(bench, "reference", method, 16384, 2.0),  # 0.5x: fails (<= 0.25)
            _result(bench, "ours", method, 65536, 1.0, rss=900.0),
            _result(bench, "ours", method, 262144, 1.0, rss=1500.0),  # over 1 GiB
        ]
    flops = 2 * n * 64
    results += [
        _result(bench, "ours", "search", 1024, flops * 1024 / 55e9),  # 55 GFLOP/s
        _result(bench, "ours", "search", 16384, flops * 16384 / 70e9),
        _result(bench, "ours", "search", 65536, flops * 65536 / 59e9),  # below 60
        _result(bench, "ours", "fsq", 1000, 0.010),
        _result(bench, "reference", "fsq", 1000, 0.012),
    ]
    verdicts = [t.verdict for t in bench.evaluate(results, n)]
    assert verdicts == [
        "holds",
        "does not hold",
        "does not hold",
        "does not hold",
        "holds",
        "holds",
    ]


def test_failed_reference_is_not_measured(bench: ModuleType) -> None:
    results = [_result(bench, "ours", m, 1024, 0.1) for m in METHODS]
    results += [bench.Result(bench.Task("reference", m, 1024), status="OOM") for m in METHODS]
    target = bench.evaluate(results, 16384)[0]
    assert target.verdict == "not measured"
