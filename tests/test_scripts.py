"""scripts/fetch_data.sh (for online users; never run with arguments here: it downloads)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FETCH = ROOT / "scripts" / "fetch_data.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_fetch_script_parses() -> None:
    subprocess.run(["bash", "-n", str(FETCH)], check=True)


def test_fetch_script_without_a_folder_prints_usage_and_downloads_nothing() -> None:
    proc = subprocess.run(["bash", str(FETCH)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "train/, val/ and kodak/" in proc.stderr
