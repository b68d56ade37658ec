"""bench/report.py: rewriting a report keeps its hand-written part; targets.toml's targets are
judged from the results."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench.helpers import ROOT, load_script


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return load_script("report")


def test_rewrite_replaces_the_generated_part_and_keeps_the_analysis(
    report: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "r.md"
    report.write(path, "# first\n\n| a |")
    text = path.read_text()
    assert text.startswith("# first") and report.HAND_WRITTEN in text
    path.write_text(text + "\n## Analysis\n\nmy notes\n")
    report.write(path, "# second")
    text = path.read_text()
    assert "# second" in text and "# first" not in text
    assert text.split(report.HAND_WRITTEN)[1].strip() == "## Analysis\n\nmy notes"


def _r(method: str, k: int, usage: float, psnr: float, fixed: float | None = None) -> dict:
    return {
        "method": method,
        "nominal_size": k,
        "codebook_size": k,
        "window_usage": usage,
        "fixed_usage": usage if fixed is None else fixed,
        "psnr": psnr,
        "error": None,
    }


def test_targets_judge_the_measured_numbers(report: ModuleType) -> None:
    runs = [
        _r("ste", 1024, 0.5, 20.0),
        _r("ste", 8192, 0.1, 21.0),
        _r("rotation", 8192, 0.6, 21.5),
        _r("simvq", 1024, 0.80, 24.5, fixed=0.99),
        _r("simvq", 8192, 0.70, 24.0, fixed=0.96),
        # Under the 95 % floor of K <= 8192, over the 80 % one of K = 65536: judged by its own.
        _r("simvq", 65536, 0.50, 24.0, fixed=0.85),
        _r("fsq", 1000, 0.97, 23.0),
    ]
    targets = report.load_targets()
    verdicts = {t["name"]: report.check_target(t, runs)[0] for t in targets}
    assert verdicts == {
        "SimVQ fixed-set usage >= 95% at K <= 8192": True,  # the fixed set, not the window
        "SimVQ fixed-set usage >= 80% at K = 65536": True,
        "STE usage falls as K grows": True,
        "rotation vs STE at K >= 8192: usage >= 5x, PSNR not lower": True,
        "FSQ usage >= 95% at every size": True,
        "best held-out PSNR >= 24 dB at f=8": True,
    }
    low = [*runs[:4], {**runs[4], "fixed_usage": 0.90}, {**runs[5], "fixed_usage": 0.75}, runs[6]]
    verdicts = {t["name"]: report.check_target(t, low)[0] for t in targets}
    assert not verdicts["SimVQ fixed-set usage >= 95% at K <= 8192"]
    assert not verdicts["SimVQ fixed-set usage >= 80% at K = 65536"]
    # A run without the figure (recorded before it existed) is not judged.
    old = [{k: v for k, v in r.items() if k != "fixed_usage"} for r in runs]
    simvq = next(t for t in targets if t.get("metric") == "fixed_usage")
    assert report.check_target(simvq, old) == (None, "not run")
    failed = [*runs[:6], {**runs[6], "error": "RuntimeError: boom"}]
    fsq = next(t for t in targets if t["methods"] == ["fsq"])
    assert report.check_target(fsq, failed) == (None, "not run")


def test_an_unknown_kind_is_named(report: ModuleType) -> None:
    with pytest.raises(ValueError, match="kind 'nope'"):
        report.check_target({"kind": "nope", "name": "x"}, [])


def test_missing_figures_render_as_n_a(report: ModuleType) -> None:
    assert report.fmt(math.nan, ".2f") == "n/a" and report.fmt(None, ".2f") == "n/a"
    assert report.fmt(0.5, ".1%") == "50.0%"


# quality.md predates the renderer's present quality tables; the quality benchmark running
# now writes both anew (strict: this fails once they agree, so the mark goes then).
STALE = pytest.mark.xfail(reason="quality.md predates the renderer", strict=True)
COMMITTED = [
    pytest.param(
        p,
        id=str(p.relative_to(ROOT / "docs" / "benchmarks")),
        marks=[STALE] if p == ROOT / "docs" / "benchmarks" / "quality.json" else [],
    )
    for p in sorted((ROOT / "docs" / "benchmarks").rglob("*.json"))
]


@pytest.mark.parametrize("path", COMMITTED)
def test_each_committed_report_is_its_json_rendered(
    report: ModuleType, path: Path, tmp_path: Path
) -> None:
    committed = path.with_suffix(".md").read_text()
    out = tmp_path / path.with_suffix(".md").name
    out.write_text(committed)
    report.render(path, out)
    generated = out.read_text().split(report.HAND_WRITTEN)[0]
    assert generated == committed.split(report.HAND_WRITTEN)[0]
