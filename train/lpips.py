"""LPIPS (Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric"), version 0.1 with the VGG16 backbone, from weights the user supplies.

Two files, neither shipped nor downloaded here:
- the backbone: torchvision's ImageNet VGG16 state dict (``vgg16-397923af.pth``; only its
  ``features.*`` tensors are used), looked up in torch's hub cache
  (``$TORCH_HOME/hub/checkpoints/``) unless a path is given;
- the linear heads: LPIPS v0.1's ``vgg.pth`` (keys ``lin{0..4}.model.1.weight``), looked up
  in an installed ``lpips`` package (``pip install --no-deps lpips``) unless a path is given.

d(x, y) = Σ_l mean_hw( w_l · (φ̂_l(x) - φ̂_l(y))² ), φ̂_l the channel-normalised VGG16
activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 (paper eq. 1).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

VGG16_FILE = "vgg16-397923af.pth"
# VGG16's convolution widths ("M" = 2×2 max-pool): configuration D of Simonyan & Zisserman
# 2015, Table 1, in torchvision's ``features`` numbering.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# ``features`` indices after which LPIPS taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_TAPS = (3, 8, 15, 22, 29)
_TAP_WIDTHS = (64, 128, 256, 512, 512)
# LPIPS's input scaling for images in [-1, 1] (its ScalingLayer constants).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

HOW_TO_GET = (
    "LPIPS needs two weight files that nothing here downloads: torchvision's ImageNet VGG16 "
    f"({VGG16_FILE}, e.g. from torchvision.models.vgg16(weights='IMAGENET1K_V1') on a machine "
    "with internet, copied into $TORCH_HOME/hub/checkpoints/ or passed as "
    "model.perceptual.backbone=PATH) and LPIPS v0.1's vgg.pth heads "
    "(`pip install --no-deps lpips`, or model.perceptual.heads=PATH); "
    "or use model.perceptual.kind=ms_ssim, which needs no weights"
)


def default_backbone_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def default_heads_path() -> Path | None:
    """``weights/v0.1/vgg.pth`` of an installed ``lpips`` package (found, not imported: the
    package imports torchvision)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / "vgg.pth"


def resolve_weights(backbone: str | Path | None, heads: str | Path | None) -> tuple[Path, Path]:
    """The two weight files' paths (defaults filled in); ValueError saying how to get them
    when either is missing. Cheap: run it where a config is validated."""
    backbone_path = Path(backbone) if backbone is not None else default_backbone_path()
    heads_path = Path(heads) if heads is not None else default_heads_path()
    if not backbone_path.is_file():
        raise ValueError(f"VGG16 backbone {str(backbone_path)!r} not found. {HOW_TO_GET}")
    if heads_path is None:
        raise ValueError(f"no LPIPS heads given and no lpips package installed. {HOW_TO_GET}")
    if not heads_path.is_file():
        raise ValueError(f"LPIPS heads {str(heads_path)!r} not found. {HOW_TO_GET}")
    return backbone_path, heads_path


def _load(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ValueError(
            f"{what} {str(path)!r} is not a torch state dict ({exc}). {HOW_TO_GET}"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{what} {str(path)!r} is not a state dict. {HOW_TO_GET}")
    return state


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` layout up to relu5_3 (indices 0..29)."""
    layers: list[nn.Module] = []
    width = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            assert isinstance(item, int)
            layers += [nn.Conv2d(width, item, 3, padding=1), nn.ReLU()]
            width = item
    return nn.Sequential(*layers)


def _normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)  # unit length over channels


class LPIPS(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> LPIPS distance (B,). Frozen: no parameter trains."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, backbone: str | Path | None = None, heads: str | Path | None = None):
        super().__init__()
        backbone_path, heads_path = resolve_weights(backbone, heads)
        features = vgg16_features()
        vgg = _load(backbone_path, "VGG16 backbone")
        wanted = {
            k.removeprefix("features."): v for k, v in vgg.items() if k.startswith("features.")
        }
        try:
            features.load_state_dict(wanted, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"VGG16 backbone {str(backbone_path)!r} is not torchvision's vgg16 layout: {exc}"
            ) from None
        self.features = features
        lin = _load(heads_path, "LPIPS heads")
        self.heads = nn.ParameterList()
        for i, width in enumerate(_TAP_WIDTHS):
            w = lin.get(f"lin{i}.model.1.weight")
            if w is None or tuple(w.shape) != (1, width, 1, 1):
                raise ValueError(
                    f"LPIPS heads {str(heads_path)!r}: lin{i}.model.1.weight must be "
                    f"(1, {width}, 1, 1), got {None if w is None else tuple(w.shape)}"
                )
            self.heads.append(nn.Parameter(w.float().view(1, width, 1, 1), requires_grad=False))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always eval: no dropout, frozen statistics

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).float()
        h = (h - self.shift) / self.scale  # (2B, 3, H, W)
        dist = h.new_zeros(x.shape[0])
        start = 0
        for tap, head in zip(_TAPS, self.heads, strict=True):
            h = self.features[start : tap + 1](h)
            start = tap + 1
            fx, fy = _normalize(h).chunk(2)  # (B, C, h, w) each
            dist = dist + ((fx - fy).pow(2) * head).sum(dim=1).mean(dim=(1, 2))
        return dist
