"""diagnostics/fsq_usage.py: the occupancy arithmetic behind its verdict, and its --quick run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import skimage.data
import torch
from PIL import Image

from tests.bench.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "diagnostics" / "fsq_usage.py"


@pytest.fixture(scope="module")
def fsq_usage() -> ModuleType:
    return load_script("fsq_usage", "diagnostics")


def test_independent_uniform_channels_give_the_occupancy_formula(fsq_usage: ModuleType) -> None:
    levels, tokens = [8, 5, 5], 300
    marginals = [torch.full((level,), 1.0 / level, dtype=torch.float64) for level in levels]
    k = 8 * 5 * 5
    expected = k * (1 - (1 - 1 / k) ** tokens)
    assert fsq_usage.expected_distinct_independent(marginals, tokens) == pytest.approx(expected)


def test_a_dead_level_removes_every_code_that_contains_it(fsq_usage: ModuleType) -> None:
    # Channel 1 never leaves level 0: at most 4 x 1 codes, however many tokens.
    marginals = [torch.full((4,), 0.25, dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0])]
    assert fsq_usage.expected_distinct_independent(marginals, 10**6) == pytest.approx(4.0)


def test_level_histograms_are_per_channel_frequencies(fsq_usage: ModuleType) -> None:
    ids = torch.tensor([[0, 1], [0, 2], [3, 2], [0, 0]])
    h0, h1 = fsq_usage.level_histograms(ids, [4, 3])
    assert h0.tolist() == [0.75, 0.0, 0.0, 0.25] and h1.tolist() == [0.25, 0.25, 0.5]


def test_quick_run_reports_observed_and_independent_usage(tmp_path: Path) -> None:
    # Two of scikit-image's photographs stand in for Kodak (not in the project, docs/data.md).
    for name in ("chelsea", "coffee"):
        photo = getattr(skimage.data, name)()[:256, :256]
        Image.fromarray(photo).save(tmp_path / f"{name}.png")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--kodak", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "codes hit:" in proc.stdout and "if the channels were independent" in proc.stdout


def test_without_kodak_it_fails_naming_the_option(
    fsq_usage: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fsq_usage.main([]) == 2
    assert "--kodak" in capsys.readouterr().err
    assert fsq_usage.main(["--kodak", str(tmp_path / "absent")]) == 2
    assert "absent is not a folder" in capsys.readouterr().err
