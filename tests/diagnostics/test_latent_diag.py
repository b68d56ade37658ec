"""diagnostics/latent_diag.py runs end to end and reports the latent's spectrum, dimension and code hits
at each snapshot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_latent_diag_reports_spectrum_and_codes_hit() -> None:
    cmd = [
        sys.executable,
        str(ROOT / "diagnostics" / "latent_diag.py"),
        "--steps",
        "2",
        "--size",
        "64",
    ]
    proc = subprocess.run(
        [*cmd, "--snapshots", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    shares = [float(x) for x in re.search(r"directions: \[(.*)\]", out).group(1).split(",")]
    assert len(shares) == 4 and all(0 <= x <= 1 for x in shares) and sum(shares) <= 1 + 1e-6
    assert shares == sorted(shares, reverse=True)
    hit = int(re.search(r"codes hit on held-out tokens: (\d+) of 64", out).group(1))
    assert 1 <= hit <= 64
    # one report per snapshot and one at the end, each with the latent's and codes' dimension
    assert re.findall(r"^step (\d+):$", out, re.M) == ["1", "2"]
    dims = [float(x) for x in re.findall(r"effective dimension of e: ([\d.]+) of 32", out)]
    assert len(dims) == 2 and all(1 <= d <= 32 for d in dims)
    assert len(re.findall(r"code spread / e spread .*: \[(.*)\]", out)) == 2
