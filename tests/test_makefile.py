"""The Makefile does what the README says, checked in dry runs (`make -n`: the commands are
printed, nothing is installed, downloaded or trained): which torch build `make install` takes,
where `make train` gets its data."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(
    tmp_path: Path, *args: str, target: str = "install", path: str | None = None
) -> list[str]:
    """The commands `make TARGET` would run with a fresh venv under tmp_path."""
    env = dict(os.environ)
    # MAKELEVEL/MAKEFLAGS: under `make test` this make is a sub-make, which would print
    # "Entering/Leaving directory" lines among the commands.
    for name in ("TORCH", "DATA", "VQ_DATA_ROOT", "MAKELEVEL", "MAKEFLAGS", "MFLAGS"):
        env.pop(name, None)
    if path is not None:
        env["PATH"] = path
    out = subprocess.run(
        [
            shutil.which("make") or "make",
            "-n",
            "--no-print-directory",
            target,
            f"VENV={tmp_path / 'venv'}",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()


def pip_installs(lines: list[str]) -> list[str]:
    return [line for line in lines if "/bin/pip install" in line and "--upgrade pip" not in line]


def test_cpu_install_takes_torch_from_the_cpu_index_first(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "TORCH=cpu")
    installs = pip_installs(lines)
    assert len(installs) == 2, installs
    torch_line, project_line = installs
    assert f"--extra-index-url {CPU_INDEX}" in torch_line and torch_line.endswith(" torch")
    assert "-c constraints.txt" in torch_line and "-c constraints.txt" in project_line
    # Torch alone from the CPU index (its dependencies come with the project's install, which
    # keeps the torch in place and asks only the configured indexes for the rest).
    assert "--no-deps" in torch_line
    assert "-e '.[dev]'" in project_line and CPU_INDEX not in project_line
    # A CUDA build (the CPU index unreachable and the default index serving CUDA) is refused.
    check = lines[lines.index(project_line) + 1]
    assert "torch.version.cuda is None" in check


def test_gpu_install_uses_the_default_index(tmp_path: Path) -> None:
    installs = pip_installs(dry_run(tmp_path, "TORCH=gpu"))
    assert len(installs) == 1 and CPU_INDEX not in installs[0]
    assert "-c constraints.txt" in installs[0]


def test_cpu_is_the_default_without_nvidia_smi(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "make"):  # a PATH that has make's needs but no nvidia-smi
        (bare / tool).symlink_to(shutil.which(tool) or tool)
    installs = pip_installs(dry_run(tmp_path, path=str(bare)))
    assert CPU_INDEX in installs[0]


def test_an_unknown_torch_choice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        dry_run(tmp_path, "TORCH=cuda")
    assert "TORCH=cpu" in info.value.stderr and "TORCH=gpu" in info.value.stderr


def test_train_takes_the_corpus_from_data(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "DATA=/corpus", target="train")
    assert lines[-1].startswith("VQ_DATA_ROOT='/corpus' ")
    assert lines[-1].endswith("vq-train fit --config configs/default.yaml")


def test_train_without_data_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        dry_run(tmp_path, target="train")
    assert "make train DATA=DIR" in info.value.stderr and "VQ_DATA_ROOT" in info.value.stderr


def test_lpips_weights_installs_then_converts(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "TORCH=cpu", target="lpips-weights")
    assert pip_installs(lines), "make lpips-weights must install the project first"
    assert lines[-1] == f"{tmp_path / 'venv'}/bin/vq-lpips-weights"


def test_ci_fetches_the_lpips_weights_before_the_tests() -> None:
    """The real-weights tests of tests/train/test_lpips.py skip without the weights: CI makes
    them after the install and before `make test`."""
    steps = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("make ")
    ]
    assert steps.index("make install") < steps.index("make lpips-weights")
    assert steps.index("make lpips-weights") < steps.index("make test")


def test_serve_prints_the_url_it_serves(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "TORCH=cpu", "PORT=8080", target="serve")
    echo = [line for line in lines if line.startswith("echo")]
    assert echo and "http://127.0.0.1:8080/" in echo[0] and "Ctrl-C" in echo[0]
    assert lines.index(echo[0]) < next(i for i, x in enumerate(lines) if "vq-serve --host" in x)
