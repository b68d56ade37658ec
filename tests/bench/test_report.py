"""bench/report.py: rewriting a report keeps its hand-written part; targets.toml's targets are
judged from the JSON; every committed report is its JSON rendered."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.bench.helpers import ROOT, load_script


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return load_script("report")


def verdicts(report: ModuleType, benchmark: str, payload: dict[str, Any]) -> dict[str, Any]:
    targets = [t for t in report.load_targets() if t["benchmark"] == benchmark]
    return dict(report.judge(t, payload)[::2] for t in targets)  # text -> holds


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
    assert text.split(report.HAND_WRITTEN)[1] == "\n\n## Analysis\n\nmy notes\n"  # as it was


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


def test_quality_targets_judge_the_measured_numbers(report: ModuleType) -> None:
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
    payload = {"config": {"plain": ["papers"]}, "results": runs}
    assert verdicts(report, "quality", payload) == {
        "SimVQ fixed-set usage >= 95% at K <= 8192": True,  # the fixed set, not the window
        "SimVQ fixed-set usage >= 80% at K = 65536": True,
        "STE usage falls as K grows": True,
        "rotation vs STE at K >= 8192: usage >= 5x": True,
        "rotation vs STE at K >= 8192: PSNR not lower": True,
        "FSQ usage >= 95% at every size": True,
        "best held-out PSNR >= 24 dB at f=8": True,
    }
    low = [*runs[:4], {**runs[4], "fixed_usage": 0.90}, {**runs[5], "fixed_usage": 0.75}, runs[6]]
    low[2] = {**low[2], "psnr": 20.5}  # rotation below STE's 21.0 at K = 8192
    low[1] = {**low[1], "window_usage": 0.6}  # STE usage rises with K
    got = verdicts(report, "quality", {**payload, "results": low})
    assert got == {
        "SimVQ fixed-set usage >= 95% at K <= 8192": False,
        "SimVQ fixed-set usage >= 80% at K = 65536": False,
        "STE usage falls as K grows": False,
        "rotation vs STE at K >= 8192: usage >= 5x": False,  # 0.6 vs 0.6
        "rotation vs STE at K >= 8192: PSNR not lower": False,
        "FSQ usage >= 95% at every size": True,
        "best held-out PSNR >= 24 dB at f=8": True,
    }
    # Runs without the figure (recorded before it existed), failed runs, runs of another
    # setting of the plain codebooks: not judged.
    old = [{k: v for k, v in r.items() if k != "fixed_usage"} for r in runs]
    assert not {
        v
        for t, v in verdicts(report, "quality", {**payload, "results": old}).items()
        if "fixed" in t
    } - {None}
    failed = [*runs[:6], {**runs[6], "error": "RuntimeError: boom"}]
    assert (
        verdicts(report, "quality", {**payload, "results": failed})[
            "FSQ usage >= 95% at every size"
        ]
        is None
    )
    recipe = [{**r, "setting": "recipe"} if r["method"] == "ste" else r for r in runs]
    assert (
        verdicts(report, "quality", {**payload, "results": recipe})["STE usage falls as K grows"]
        is None
    )


METHODS = ("ste", "rotation", "simvq", "simvq_rotation")


def _result(impl: str, method: str, k: int, seconds: float, rss: float = 500.0) -> dict:
    levels = [8, 5, 5, 5] if method == "fsq" else None
    task = {"impl": impl, "method": method, "k": k, "levels": levels}
    return {"task": task, "status": "ok", "times_s": [seconds], "peak_rss_mib": rss}


def test_quantizer_targets_follow_the_numbers(report: ModuleType) -> None:
    n, results = 16384, []
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
    payload = {"config": {"n": n}, "results": results}
    got = list(verdicts(report, "quantizers", payload).values())
    assert got == [True, False, False, False, True, True]
    # A failed reference run: that comparison is not measured.
    oom = [{**r, "status": "OOM"} if r["task"]["impl"] == "reference" else r for r in results]
    assert list(verdicts(report, "quantizers", {**payload, "results": oom}).values())[0] is None


def test_load_targets_take_the_budget_and_deadline_from_the_json(report: ModuleType) -> None:
    phase = {"statuses": {"200": 10}, "peak_rss_mib": 900, "p99_ms": 900, "healthz_p99_ms": 50}
    drain = {**phase, "statuses": {"200": 3, "lost (ReadError)": 1}, "p99_ms": 9000}
    payload = {"phases": [phase, drain], "budget": "1G", "budget_bytes": 2**30, "deadline_s": 1.0}
    assert verdicts(report, "load", payload) == {
        "0 x 5xx (other than 503 shedding)": True,
        "RSS under the budget (1G)": True,
        "p99 of accepted requests within the deadline (1 s)": True,  # the drain's not judged
        "/healthz p99 under 100 ms during load": True,
        "0 requests lost on SIGTERM (connected, never answered)": False,
    }
    small = {**payload, "budget": "512M", "budget_bytes": 2**29, "deadline_s": 0.5}
    assert not any(list(verdicts(report, "load", small).values())[1:3])


def test_targets_toml_names_a_known_figure_and_one_test(report: ModuleType, tmp_path: Path) -> None:
    bad = tmp_path / "targets.toml"
    bad.write_text('x = [{ text = "t", figure = "nope", at_least = 1 }]\n')
    with pytest.raises(ValueError, match="figure 'nope' is not one of"):
        report.load_targets(bad)
    bad.write_text('x = [{ text = "t", figure = "field", at_least = 1, below = 2 }]\n')
    with pytest.raises(ValueError, match="'t' needs one of"):
        report.load_targets(bad)


def test_missing_figures_render_as_n_a(report: ModuleType) -> None:
    assert report.fmt(math.nan, ".2f") == "n/a" and report.fmt(None, ".2f") == "n/a"
    assert report.fmt(0.5, ".1%") == "50.0%" and report.fmt("failed: x", ".2f") == "failed: x"


def _partial(name: str) -> dict[str, Any]:
    """A committed JSON with the parts a --quick run may lack left out."""
    p = json.loads((ROOT / "docs" / "benchmarks" / name).read_text())
    if name == "throughput.json":
        del p["kodak"], p["onnxruntime"]
        p["search"] = [{k: v for k, v in x.items() if k != "faiss"} for x in p["search"]]
    if name == "quantizers.json":
        p["results"] = [r for r in p["results"] if r["task"]["impl"] == "ours"]
    if name == "data.json":
        del p["predict"], p["setup"]
    if name == "kodak_default/kodak.json":
        p["tokenizers"] = []
    return p


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("throughput.json", "Skipped: no `--kodak` folder."),
        ("quantizers.json", "| ste | 57 | skipped | n/a |"),
        ("data.json", "| predict >= 0.85x Tokenizer.encode throughput | n/a | not measured |"),
        ("kodak_default/kodak.json", "| codec | quality | bpp |"),
    ],
)
def test_a_run_without_some_parts_renders_them_not_measured(
    report: ModuleType, name: str, shown: str
) -> None:
    p = _partial(name)
    text = report.markdown(p, p.get("benchmark", "kodak"), ROOT / "nowhere")
    assert shown in text and "](kodak_crops.png)" not in text


COMMITTED = sorted((ROOT / "docs" / "benchmarks").rglob("*.json"))


@pytest.mark.parametrize(
    "path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT / "docs" / "benchmarks"))
)
def test_each_committed_report_is_its_json_rendered(
    report: ModuleType, path: Path, tmp_path: Path
) -> None:
    committed = path.with_suffix(".md").read_text()
    out = tmp_path / path.with_suffix(".md").name
    out.write_text(committed)
    report.render(path, out)
    assert out.read_text() == committed  # the hand-written part too, byte for byte
