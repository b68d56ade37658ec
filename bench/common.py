"""What every benchmark shares: its command line, where it writes, the run's description and
the timing loop. A benchmark measures, then ``save`` writes ``OUT/<name>.json`` and renders
``OUT/<name>.md`` from it (``bench/report.py``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# bench/ is a folder of scripts that import each other and the repository's packages: both go
# on sys.path, appended, not prepended, so that bench/service.py does not shadow service/.
sys.path += [p for p in (str(ROOT), str(ROOT / "bench")) if p not in sys.path]

import report  # noqa: E402


def parser(doc: str | None, name: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark has: --quick and --out."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run, seconds")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for {name}.json and {name}.md (default runs/bench/{name}; "
        f"--quick: runs/bench-quick/{name})",
    )
    return p


def out_dir(out: Path | None, name: str, quick: bool) -> Path:
    """``--out``, else a folder under runs/: a benchmark writes into docs/ only when asked."""
    return out or ROOT / "runs" / ("bench-quick" if quick else "bench") / name


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def status_kib(field: str, pid: int | str = "self") -> int:
    """``field`` (VmRSS, VmHWM, ...) of process ``pid`` in KiB (0 where /proc is not there)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def meta(
    name: str, argv: Sequence[str] | None = None, quick: bool = False, script: str = ""
) -> dict[str, Any]:
    """The run's description: benchmark, command (``script``: default bench/NAME.py), date,
    machine, versions, threads, load average."""
    import torch

    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "benchmark": name,
        "quick": quick,
        "command": " ".join(["python", script or f"bench/{name}.py", *args]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load": [os.getloadavg()[0]],
    }


def timed(
    step: Callable[[], object], repeats: int, budget_s: float, warmup: int = 1
) -> list[float]:
    """Seconds of each of up to ``repeats`` calls of ``step`` after ``warmup`` untimed ones;
    the timed calls stop early once they have taken ``budget_s`` (at least one runs)."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    while len(times) < repeats and sum(times) < budget_s:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def save(payload: dict[str, Any], out: Path | None) -> Path:
    """Write ``NAME.json`` (NAME: its ``benchmark``; the load average at the end appended) into
    ``out_dir(out, ...)`` and render its report beside it."""
    payload.setdefault("load", []).append(os.getloadavg()[0])
    name = payload["benchmark"]
    out = out_dir(out, name, payload.get("quick", False))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    report.render(path, path.with_suffix(".md"))
    print(f"wrote {path} and {path.with_suffix('.md').name}", flush=True)
    return path
