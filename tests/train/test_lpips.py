"""LPIPS from user-supplied weights: the loading of both files in their real formats (made
here with random values), the math against a direct computation, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from train.lpips import LPIPS, vgg16_features

WIDTHS = (64, 128, 256, 512, 512)


def write_weights(tmp_path: Path, seed: int = 0) -> tuple[Path, Path]:
    """A torchvision-layout vgg16 state dict (features.* and classifier.*) and an LPIPS v0.1
    heads file (lin{i}.model.1.weight), random but in the real key layout."""
    torch.manual_seed(seed)
    features = vgg16_features()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.randn(8, 8)  # torchvision's file has a classifier too
    backbone = tmp_path / "vgg16-397923af.pth"
    torch.save(state, backbone)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, w, 1, 1) for i, w in enumerate(WIDTHS)}
    heads_path = tmp_path / "vgg.pth"
    torch.save(heads, heads_path)
    return backbone, heads_path


def reference_lpips(x: torch.Tensor, y: torch.Tensor, backbone: Path, heads: Path) -> torch.Tensor:
    """LPIPS written out layer by layer from the paper's eq. 1, with F.conv2d."""
    vgg = torch.load(backbone, weights_only=True)
    lin = torch.load(heads, weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    convs = [i for i in range(30) if f"features.{i}.weight" in vgg]
    taps = {3: 0, 8: 1, 15: 2, 22: 3, 29: 4}
    pools = {4, 9, 16, 23}
    hx, hy = (x - shift) / scale, (y - shift) / scale
    total = torch.zeros(x.shape[0])
    for i in range(30):
        if i in convs:
            w, b = vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"]
            hx, hy = F.conv2d(hx, w, b, padding=1), F.conv2d(hy, w, b, padding=1)
        elif i in pools:
            hx, hy = F.max_pool2d(hx, 2), F.max_pool2d(hy, 2)
        else:
            hx, hy = hx.relu(), hy.relu()
        if i in taps:
            nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = lin[f"lin{taps[i]}.model.1.weight"]
            total = total + F.conv2d((nx - ny) ** 2, w).mean(dim=(1, 2, 3))
    return total


def test_lpips_matches_the_formula_and_is_a_distance(tmp_path: Path) -> None:
    backbone, heads = write_weights(tmp_path)
    lpips = LPIPS(backbone, heads)
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 48, 48) * 2 - 1, torch.rand(2, 3, 48, 48) * 2 - 1
    d = lpips(x, y)
    assert d.shape == (2,)
    assert torch.allclose(d, reference_lpips(x, y, backbone, heads), rtol=1e-4, atol=1e-6)
    assert torch.allclose(lpips(x, x), torch.zeros(2), atol=1e-6)
    assert torch.allclose(lpips(y, x), d, rtol=1e-5)
    assert (d > 0).all()


def test_lpips_is_frozen_but_passes_gradients(tmp_path: Path) -> None:
    lpips = LPIPS(*write_weights(tmp_path))
    assert not any(p.requires_grad for p in lpips.parameters())
    lpips.train()
    assert not lpips.training
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    lpips(x, torch.zeros(1, 3, 32, 32)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_missing_weights_say_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    _, heads = write_weights(tmp_path)
    with pytest.raises(ValueError, match=r"vgg16-397923af\.pth.*IMAGENET1K_V1"):
        LPIPS(None, heads)
    with pytest.raises(ValueError, match="ms_ssim, which needs no weights"):
        LPIPS(tmp_path / "nope.pth", heads)


def test_wrong_files_are_named(tmp_path: Path) -> None:
    backbone, heads = write_weights(tmp_path)
    torch.save({"lin0.model.1.weight": torch.rand(1, 3, 1, 1)}, tmp_path / "bad_heads.pth")
    with pytest.raises(ValueError, match=r"lin0\.model\.1\.weight must be \(1, 64, 1, 1\)"):
        LPIPS(backbone, tmp_path / "bad_heads.pth")
    torch.save({"features.0.weight": torch.rand(2, 2)}, tmp_path / "bad_vgg.pth")
    with pytest.raises(ValueError, match="not torchvision's vgg16 layout"):
        LPIPS(tmp_path / "bad_vgg.pth", heads)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a torch state dict"):
        LPIPS(tmp_path / "junk.pth", heads)
