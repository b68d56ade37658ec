"""Headless Chromium for the page tests: the DOM after scripts ran, and screenshots.

CI installs Debian's ``chromium`` (.ci/run); elsewhere the tests skip without it. The flags
keep Chromium from reaching the network on its own (updates, sync, field trials), so a page
that renders here renders offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def chromium() -> str:
    """Path of the browser, or skip (fail under CI, which must install it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; CI must install it (see .ci/run)")
    pytest.skip("chromium is not installed")


def _run(url: str, profile: Path, *extra: str, budget_ms: int) -> subprocess.CompletedProcess[str]:
    cmd = [
        chromium(),
        *_FLAGS,
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        *extra,
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def dump_dom(
    url: str, profile: Path, budget_ms: int = 5000, size: tuple[int, int] = (1280, 800)
) -> str:
    """The DOM of ``url`` after its scripts ran ``budget_ms`` of virtual time, in a
    window of ``size`` = (width, height) CSS pixels."""
    window = f"--window-size={size[0]},{size[1]}"
    return _run(url, profile, window, "--dump-dom", budget_ms=budget_ms).stdout


def screenshot(
    url: str, out: Path, profile: Path, size: tuple[int, int] = (1280, 900), budget_ms: int = 5000
) -> Path:
    """A PNG of the first ``size`` = (width, height) CSS pixels of ``url`` (the fold)."""
    _run(
        url,
        profile,
        f"--screenshot={out}",
        f"--window-size={size[0]},{size[1]}",
        budget_ms=budget_ms,
    )
    assert out.is_file() and out.stat().st_size > 0
    return out
