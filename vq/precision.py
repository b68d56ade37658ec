"""Inference and training precision: the one place that decides whether bf16 runs natively.

"fp32" runs the encoder and decoder in float32; "bf16" runs their convolutions under bf16
autocast. Both run in channels_last memory format, oneDNN's and cuDNN's fast layout
(docs/benchmarks/throughput.md compares it with NCHW). Either way every quantization decision (the
nearest-code search, FSQ's bounding and rounding) runs in float32 inside ``vq``: the codes
never depend on a bf16 rounding of a distance, only on the (slightly different) encoder
output that feeds the search.

Under bf16 the layers that touch data run in float32 (``float32_input``, ``float32_output``):
the encoder's first convolution reads the pixels unrounded, its last block and its last
convolution write the latent in float32, and the decoder's last convolution writes the pixels
in float32. bf16 keeps 8 bits of mantissa, so rounding a pixel in [-1, 1] moves it by up to
2^-8 (a third of an 8-bit level near ±1) and rounding the latent moves it by up to 0.4 % of
its value, enough to push FSQ's rounding or the nearest-code search across a boundary. Keeping
these few layers in float32 costs a small share of the FLOPs and raises the share of tokens
identical to float32's; docs/benchmarks/throughput.md measures that agreement for the
shipped model.

bf16 is fast only where the hardware has bf16 arithmetic: CUDA GPUs of compute capability
8.0+ and CPUs with AVX-512 BF16 or AMX. Elsewhere PyTorch emulates it and it is slower than
float32, so the default is chosen from the hardware, never assumed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, get_args

import torch
from torch import nn

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def check_precision(value: object) -> Precision:
    """``value`` if it names a precision, else ValueError naming the allowed values."""
    if value not in PRECISIONS or not isinstance(value, str):
        raise ValueError(f"precision={value!r} is not allowed; choose one of {list(PRECISIONS)}")
    return value  # type: ignore[return-value]


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 matmuls/convolutions in hardware (not emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(
            torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        )
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def default_precision(device: torch.device | str) -> Precision:
    """ "bf16" where ``device`` runs it natively, else "fp32"."""
    return "bf16" if bf16_native(device) else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: Precision) -> Iterator[None]:
    """bf16 autocast on ``device`` for precision "bf16"; nothing for "fp32"."""
    device = torch.device(device)
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


def float32_input(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed in float32 from an unrounded ``x`` (pixels, codes); the output is
    in the autocast dtype when autocast is on, so the layers after it run as before."""
    device = x.device.type
    with torch.autocast(device_type=device, enabled=False):
        y = layer(x.float())
    return y.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else y


def float32_output(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed and returned in float32 (the latent, the output pixels)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return layer(x.float())
