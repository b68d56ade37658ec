"""bench/common.py: a benchmark writes into docs/ only when told; the timing loop keeps to its
repeats and budget."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench.helpers import ROOT, load_script


@pytest.fixture(scope="module")
def common() -> ModuleType:
    return load_script("common")


def test_runs_go_under_runs_unless_told(common: ModuleType) -> None:
    assert common.out_dir(None, "x", quick=False) == ROOT / "runs" / "bench" / "x"
    assert common.out_dir(None, "x", quick=True) == ROOT / "runs" / "bench-quick" / "x"
    assert common.out_dir(Path("docs/benchmarks"), "x", quick=True) == Path("docs/benchmarks")
    args = common.parser(None, "x").parse_args(["--quick"])
    assert args.quick and args.out is None


def test_timed_stops_at_the_repeats_or_the_budget(common: ModuleType) -> None:
    calls: list[int] = []
    times = common.timed(lambda: calls.append(1), repeats=5, budget_s=60.0, warmup=2)
    assert len(times) == 5 and len(calls) == 7 and all(t >= 0 for t in times)
    slow = common.timed(lambda: time.sleep(0.02), repeats=100, budget_s=0.05, warmup=0)
    assert 1 <= len(slow) < 10


def test_save_writes_json_and_the_rendered_report(common: ModuleType, tmp_path: Path) -> None:
    payload = {
        "benchmark": "recipe_step",
        "command": "python bench/recipe_step.py",
        "date": "2026-01-01",
        "machine": "m",
        "torch": "2",
        "precision": "32-true",
        "batch": [8, 3, 96, 96],
        "steps": 2,
        "rounds": 1,
        "seconds_per_step": {"mse": 1.0, "recipe": 1.5},
        "ratio_to_mse": {"mse": 1.0, "recipe": 1.5},
        "target_max_ratio": 2.0,
    }
    path = common.save(payload, tmp_path)
    assert (
        path == tmp_path / "recipe_step.json"
        and "× MSE step" in path.with_suffix(".md").read_text()
    )
