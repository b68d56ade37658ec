"""Kodak evaluation: a tokenizer's reconstruction quality, code usage and rate, against JPEG
and WebP on the same images.

    python bench/kodak.py --tokenizer models/default --out docs/benchmarks/kodak_default
    python bench/kodak.py --tokenizer a=runs/a/artifact --tokenizer b=runs/b/artifact --out /tmp/k
    python bench/kodak.py --quick --out /tmp/k       # 2 images, 3 codec settings (seconds)

The images are the full Kodak photographs (``../shared/data/kodak``: 24 PNGs, 768x512 or
512x768, both sides divisible by 8 and 16), evaluated whole, no crops. Writes
``kodak.json`` (every number, per image too) and ``kodak_rd.png`` (PSNR vs bits per pixel)
into ``--out``.

Figures, all on RGB uint8 images as stored (the tokenizer's reconstruction is uint8 too):

- PSNR per image = 10 log10(255² / MSE), MSE over every pixel and channel of the whole
  image; the reported PSNR is the **mean of the per-image PSNRs** (the convention of the
  learned-compression literature, e.g. CompressAI's Kodak tables), not the PSNR of the mean
  MSE. SSIM: torchmetrics' Gaussian SSIM on [0, 1] RGB, mean over images.
- A tokenizer's rate two ways: nominal ``log2(K) / f²`` bits per pixel (fixed-length code
  ids), and the empirical entropy of its code histogram over all Kodak tokens divided by f²
  (the rate an ideal entropy coder with one static distribution over the set would reach).
- Codebook usage over all Kodak tokens: the fraction of the K codes hit, perplexity
  exp(H) of the histogram, dead codes (never hit).
- JPEG and WebP from Pillow: each image encoded at each quality setting, bpp = file
  bytes * 8 / pixels, PSNR of the decoded image as above; per quality the mean bpp and mean
  PSNR over images (one point per setting on the plot).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make vq/ and train/ importable
    sys.path.insert(0, str(ROOT))

from train.images import find_images  # noqa: E402
from vq import Tokenizer, load_tokenizer  # noqa: E402
from vq.usage import histogram_perplexity  # noqa: E402
from vqio import read_image  # noqa: E402

DEFAULT_KODAK = ROOT.parent / "shared" / "data" / "kodak"
# Quality sweeps down to each codec's lowest setting (JPEG and WebP quality 1 is legal).
JPEG_QUALITIES = (1, 5, 10, 15, 20, 30, 40, 50, 60, 75, 90)
WEBP_QUALITIES = (0, 1, 5, 10, 20, 30, 40, 50, 60, 75, 90)
QUICK_QUALITIES = (1, 50, 90)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of the same shape, MSE over all pixels and channels."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 (H, W, 3) images (torchmetrics, Gaussian window, data range 1)."""

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(x, dtype=np.float32)).permute(2, 0, 1)[None] / 255

    value = structural_similarity_index_measure(t(a), t(b), data_range=1.0)
    assert isinstance(value, torch.Tensor)  # a tuple only with return_full_image=True
    return float(value)


def code_entropy_bits(hist: torch.Tensor) -> float:
    """Entropy in bits per token of a code histogram (0 log 0 = 0)."""
    p = hist.double() / hist.sum().clamp_min(1)
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


@dataclass
class Images:
    names: list[str]
    pixels: list[np.ndarray]  # uint8 (H, W, 3)

    @property
    def num_pixels(self) -> list[int]:
        return [im.shape[0] * im.shape[1] for im in self.pixels]


def load_images(folder: str | Path, limit: int | None = None) -> Images:
    """Every image under ``folder`` (sorted by path), decoded once by the training decoder."""
    paths = find_images(folder)
    if not paths:
        raise ValueError(f"no images under {str(folder)!r}")
    paths = paths[:limit] if limit else paths
    # np.array: writable copies (PIL's arrays are read-only, which torch.from_numpy warns about).
    return Images([p.name for p in paths], [np.array(read_image(p)) for p in paths])


@dataclass
class CodecPoint:
    """One codec setting, averaged over the images."""

    codec: str
    quality: int
    bpp: float
    psnr: float
    ssim: float


def codec_sweep(
    images: Images, codec: str, qualities: Sequence[int], *, ssim: bool = True
) -> list[CodecPoint]:
    """Encode every image with Pillow at each quality; mean bpp, PSNR and SSIM per quality."""
    fmt = {"jpeg": "JPEG", "webp": "WEBP"}[codec]
    points = []
    for quality in qualities:
        bpps, psnrs, ssims = [], [], []
        for im, pixels in zip(images.pixels, images.num_pixels, strict=True):
            buf = io.BytesIO()
            options: dict[str, Any] = {"quality": quality}
            if codec == "webp":
                options["method"] = 6  # the slowest, best-compressing WebP encoder effort
            Image.fromarray(im).save(buf, format=fmt, **options)
            decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            bpps.append(len(buf.getvalue()) * 8 / pixels)
            psnrs.append(psnr_uint8(im, decoded))
            if ssim:
                ssims.append(ssim_uint8(im, decoded))
        points.append(
            CodecPoint(
                codec,
                quality,
                float(np.mean(bpps)),
                float(np.mean(psnrs)),
                float(np.mean(ssims)) if ssims else math.nan,
            )
        )
    return points


@dataclass
class TokenizerResult:
    name: str
    path: str
    codebook_size: int
    f: int
    psnr: float  # mean of per-image PSNR
    ssim: float
    bpp_nominal: float  # log2(K) / f^2
    bpp_entropy: float  # empirical code entropy over the Kodak tokens / f^2
    entropy_bits_per_token: float
    usage: float  # fraction of the K codes hit over all Kodak tokens
    perplexity: float
    dead_codes: int
    tokens: int
    seconds: float
    per_image: list[dict[str, Any]] = field(default_factory=list)


def evaluate_tokenizer(
    tok: Tokenizer, images: Images, name: str = "tokenizer", path: str = ""
) -> TokenizerResult:
    """Encode and decode every image whole; quality, usage and rate as the module says."""
    start = time.perf_counter()
    hist = torch.zeros(tok.codebook_size, dtype=torch.long)
    per_image = []
    for image_name, im in zip(images.names, images.pixels, strict=True):
        h, w = im.shape[:2]
        if h % tok.f or w % tok.f:
            raise ValueError(
                f"{image_name}: {w}x{h} (WxH) is not divisible by f={tok.f}; "
                "the Kodak evaluation takes whole images"
            )
        codes = tok.encode(im)  # (1, h/f, w/f)
        recon = tok.decode(codes)[0].permute(1, 2, 0).numpy()  # (H, W, 3) uint8
        hist += torch.bincount(codes.flatten(), minlength=tok.codebook_size)
        per_image.append(
            {"name": image_name, "psnr": psnr_uint8(im, recon), "ssim": ssim_uint8(im, recon)}
        )
    entropy = code_entropy_bits(hist)
    f2 = tok.f**2
    return TokenizerResult(
        name=name,
        path=display_path(path),
        codebook_size=tok.codebook_size,
        f=tok.f,
        psnr=float(np.mean([r["psnr"] for r in per_image])),
        ssim=float(np.mean([r["ssim"] for r in per_image])),
        bpp_nominal=math.log2(tok.codebook_size) / f2,
        bpp_entropy=entropy / f2,
        entropy_bits_per_token=entropy,
        usage=float((hist > 0).sum()) / tok.codebook_size,
        perplexity=histogram_perplexity(hist),
        dead_codes=int((hist == 0).sum()),
        tokens=int(hist.sum()),
        seconds=time.perf_counter() - start,
        per_image=per_image,
    )


def plot_rd(
    tokenizers: Sequence[TokenizerResult], codecs: Sequence[CodecPoint], path: Path, title: str
) -> None:
    """PSNR vs bpp: codec curves, and per tokenizer its nominal (o) and entropy (x) rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for codec, color in (("jpeg", "black"), ("webp", "grey")):
        pts = sorted((p for p in codecs if p.codec == codec), key=lambda p: p.bpp)
        if pts:
            ax.plot(
                [p.bpp for p in pts],
                [p.psnr for p in pts],
                marker=".",
                color=color,
                label=f"{codec.upper()} (Pillow, quality {pts[0].quality}..{pts[-1].quality})",
            )
    for i, r in enumerate(tokenizers):
        color = f"C{i}"
        label = r.name if "K=" in r.name else f"{r.name} (K={r.codebook_size:,}, f={r.f})"
        ax.plot([r.bpp_nominal], [r.psnr], "o", color=color, label=f"{label}: log2(K)/f²")
        ax.plot([r.bpp_entropy], [r.psnr], "x", color=color, ms=8, label=f"{label}: code entropy")
        ax.plot([r.bpp_entropy, r.bpp_nominal], [r.psnr, r.psnr], ":", color=color, lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (log scale)")
    ax.set_ylabel("PSNR (dB, RGB, mean over images)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    # Outside the axes: with a dozen tokenizers the legend would hide the points.
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run(
    tokenizers: Sequence[tuple[str, str]],
    kodak: Path,
    out: Path,
    *,
    limit: int | None = None,
    qualities: Sequence[int] | None = None,
    device: str = "cpu",
    codecs: Sequence[CodecPoint] | None = None,
) -> dict[str, Any]:
    """Evaluate each (name, artifact path) and the codecs on ``kodak``; write JSON + plot.
    ``codecs``: already measured codec points (the quality benchmark measures them once)."""
    images = load_images(kodak, limit)
    if codecs is None:
        codecs = codec_sweep(images, "jpeg", qualities or JPEG_QUALITIES) + codec_sweep(
            images, "webp", qualities or WEBP_QUALITIES
        )
    results = [
        evaluate_tokenizer(
            load_tokenizer(path, device=device, precision="fp32"), images, name, path
        )
        for name, path in tokenizers
    ]
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "images": {"folder": display_path(kodak), "names": images.names},
        "psnr_averaging": "mean over images of per-image PSNR (RGB, whole image)",
        "tokenizers": [asdict(r) for r in results],
        "codecs": [asdict(p) for p in codecs],
    }
    (out / "kodak.json").write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")
    plot_rd(results, codecs, out / "kodak_rd.png", f"Kodak ({len(images.names)} images)")
    return payload


def display_path(path: str | Path) -> str:
    """Paths inside or beside the repository are shown relative to it (reports are committed)."""
    p = Path(path).resolve()
    for base, prefix in ((ROOT, ""), (ROOT.parent, "../")):
        if p.is_relative_to(base):
            return prefix + str(p.relative_to(base))
    return str(path)


def summary_lines(payload: dict[str, Any]) -> list[str]:
    lines = [
        "| tokenizer | K | PSNR dB | SSIM | bpp log2(K)/f² | bpp entropy | usage | perplexity "
        "| dead codes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["tokenizers"]:
        lines.append(
            f"| {r['name']} | {r['codebook_size']:,} | {r['psnr']:.2f} | {r['ssim']:.3f} "
            f"| {r['bpp_nominal']:.4f} | {r['bpp_entropy']:.4f} | {r['usage']:.1%} "
            f"| {r['perplexity']:,.0f} | {r['dead_codes']:,} |"
        )
    lines += ["", "| codec | quality | bpp | PSNR dB | SSIM |", "|---|---|---|---|---|"]
    for p in payload["codecs"]:
        lines.append(
            f"| {p['codec']} | {p['quality']} | {p['bpp']:.3f} | {p['psnr']:.2f} | {p['ssim']:.3f} |"
        )
    return lines


def parse_tokenizer(arg: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after the folder)."""
    name, sep, path = arg.partition("=")
    return (name, path) if sep else (Path(arg).name, arg)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        type=parse_tokenizer,
        help="artifact folder, or NAME=FOLDER; repeat for several (none: codecs only)",
    )
    p.add_argument("--kodak", type=Path, default=DEFAULT_KODAK, help="folder of test images")
    p.add_argument("--out", type=Path, required=True, help="folder for kodak.json and kodak_rd.png")
    p.add_argument("--quick", action="store_true", help="2 images, 3 quality settings")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if not args.kodak.is_dir():
        print(f"skipped: no test images at {args.kodak} (the Kodak set is not in the project)")
        return 0
    try:
        payload = run(
            args.tokenizer,
            args.kodak,
            args.out,
            limit=2 if args.quick else None,
            qualities=QUICK_QUALITIES if args.quick else None,
            device=args.device,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(payload)))
    print(f"wrote {args.out / 'kodak.json'} and {args.out / 'kodak_rd.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
