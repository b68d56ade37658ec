"""Kodak evaluation: a tokenizer's reconstruction quality, sharpness, code usage and rate,
against JPEG and WebP on the same images.

    python bench/kodak.py --kodak DIR --tokenizer models/default --out runs/bench/kodak
    python bench/kodak.py --kodak DIR --tokenizer a=runs/a/artifact --tokenizer b=runs/b/artifact
    python bench/kodak.py --kodak DIR --quick      # 2 images, 3 codec settings (seconds)

``--kodak`` is a folder of the 24 Kodak PNGs (768x512 or 512x768; docs/benchmarks/ says where
to get them), evaluated whole, no crops. Writes into ``--out`` (default ``runs/bench/kodak``;
``--quick``: ``runs/bench-quick/kodak``): ``kodak.json`` (every number, per image too),
``kodak.md`` (rendered by ``bench/report.py``), ``kodak_rd.png`` (PSNR vs bits per pixel) and
``kodak_crops.png`` (zoomed crops: original | JPEG | WebP | each tokenizer).

Figures, all on RGB uint8 images as stored (``bench/metrics.py``), each the mean over images
of the per-image figure: PSNR (the learned-compression literature's convention, not the PSNR
of the mean MSE), SSIM, MS-SSIM, VIF, and the high-frequency power ratio (luma power above
0.25 cycles/pixel, reconstruction / original). A tokenizer's rate two ways: nominal
``log2(K) / f²`` bits per pixel, and the entropy of its code histogram over all Kodak tokens
/ f². Codebook usage over all Kodak tokens: codes hit, perplexity, dead codes. JPEG and WebP
from Pillow at each quality setting, bpp = file bytes * 8 / pixels. LPIPS with
``--lpips-backbone`` and ``--lpips-heads``, rFID with ``--fid-inception`` (weights the user
supplies; skipped otherwise).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common  # first: it puts the repository on sys.path
import metrics
import numpy as np
import report
import torch
from PIL import Image

from train.images import find_images
from vq import Tokenizer, load_tokenizer
from vq.usage import histogram_perplexity
from vqio import format_size, read_image

# Quality sweeps down to each codec's lowest setting (JPEG and WebP quality 1 is legal).
JPEG_QUALITIES = (1, 5, 10, 15, 20, 30, 40, 50, 60, 75, 90)
WEBP_QUALITIES = (0, 1, 5, 10, 20, 30, 40, 50, 60, 75, 90)
QUICK_QUALITIES = (1, 50, 90)
# The codec settings shown beside the tokenizer in the crops picture: near its bit rate.
CROP_CODECS = (("jpeg", 5), ("webp", 0))
# (image, top, left, side): a face, lettering, stone texture (the first image for other sets).
CROPS = (
    ("kodim15.png", 80, 432, 224),
    ("kodim08.png", 250, 540, 224),
    ("kodim01.png", 280, 10, 224),
)


def code_entropy_bits(hist: torch.Tensor) -> float:
    """Entropy in bits per token of a code histogram (0 log 0 = 0): log2 of its perplexity."""
    return math.log2(max(histogram_perplexity(hist), 1.0))


@dataclass
class Images:
    names: list[str]
    pixels: list[np.ndarray]  # uint8 (H, W, 3)


def load_images(folder: str | Path, limit: int | None = None) -> Images:
    """Every image under ``folder`` (sorted by path), decoded once by the training decoder."""
    paths = find_images(folder)
    if not paths:
        raise ValueError(f"no images under {str(folder)!r}")
    paths = paths[:limit] if limit else paths
    # np.array: writable copies (PIL's arrays are read-only, which torch.from_numpy warns about).
    return Images([p.name for p in paths], [np.array(read_image(p)) for p in paths])


def codec_roundtrip(image: np.ndarray, codec: str, quality: int) -> tuple[np.ndarray, float]:
    """Encode with Pillow at ``quality``, decode: (decoded uint8 image, bits per pixel)."""
    buf = io.BytesIO()
    options: dict[str, Any] = {"quality": quality}
    if codec == "webp":
        options["method"] = 6  # the slowest, best-compressing WebP encoder effort
    Image.fromarray(image).save(buf, format={"jpeg": "JPEG", "webp": "WEBP"}[codec], **options)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return decoded, len(buf.getvalue()) * 8 / (image.shape[0] * image.shape[1])


def mean_figures(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-image figures -> their means (NaN where an image has none)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in metrics.FIGURES}


def codec_sweep(images: Images, qualities: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Every image through JPEG and WebP at each of ``qualities`` (default: the codec's sweep):
    per codec and quality the mean bpp and figures over the images."""
    points = []
    for codec, default in (("jpeg", JPEG_QUALITIES), ("webp", WEBP_QUALITIES)):
        for quality in qualities or default:
            bpps, rows = [], []
            for im in images.pixels:
                decoded, bpp = codec_roundtrip(im, codec, quality)
                bpps.append(bpp)
                rows.append(metrics.image_figures(im, decoded))
            point = {"codec": codec, "quality": quality, "bpp": float(np.mean(bpps))}
            points.append({**point, **mean_figures(rows)})
    return points


def reconstruct(tok: Tokenizer, name: str, image: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Whole image -> (uint8 reconstruction (H, W, 3), codes (1, H/f, W/f))."""
    h, w = image.shape[:2]
    if h % tok.f or w % tok.f:
        raise ValueError(
            f"{name}: {format_size(h, w)} is not divisible by f={tok.f}; "
            "the Kodak evaluation takes whole images"
        )
    codes = tok.encode(image)
    return tok.decode(codes)[0].permute(1, 2, 0).numpy(), codes


def evaluate_tokenizer(
    tok: Tokenizer,
    images: Images,
    name: str = "tokenizer",
    path: str = "",
    lpips: Callable[[np.ndarray, np.ndarray], float] | None = None,
    fid: tuple[Features, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Encode and decode every image whole; quality, usage and rate as the module says.
    ``fid``: (feature extractor, the originals' features) for rFID."""
    start = time.perf_counter()
    hist = torch.zeros(tok.codebook_size, dtype=torch.long)
    per_image, recons = [], []
    for image_name, im in zip(images.names, images.pixels, strict=True):
        recon, codes = reconstruct(tok, image_name, im)
        if fid is not None:
            recons.append(recon)
        hist += torch.bincount(codes.flatten(), minlength=tok.codebook_size)
        row: dict[str, Any] = {"name": image_name, **metrics.image_figures(im, recon)}
        if lpips is not None:
            row["lpips"] = lpips(im, recon)
        per_image.append(row)
    entropy = code_entropy_bits(hist)
    f2 = tok.f**2
    return {
        "name": name,
        "path": display_path(path),
        "codebook_size": tok.codebook_size,
        "f": tok.f,
        **mean_figures(per_image),
        "bpp_nominal": math.log2(tok.codebook_size) / f2,
        "bpp_entropy": entropy / f2,
        "entropy_bits_per_token": entropy,
        "usage": float((hist > 0).sum()) / tok.codebook_size,  # codes hit over the Kodak tokens
        "perplexity": histogram_perplexity(hist),
        "dead_codes": int((hist == 0).sum()),
        "tokens": int(hist.sum()),
        "seconds": time.perf_counter() - start,
        "lpips": float(np.mean([r["lpips"] for r in per_image])) if lpips else None,
        "rfid": metrics.frechet_distance(fid[1], fid[0](recons)) if fid else None,
        "per_image": per_image,
    }


def lpips_scorer(
    backbone: Path | None, heads: Path | None
) -> tuple[Callable[[np.ndarray, np.ndarray], float] | None, str]:
    """LPIPS from user-supplied weights through ``train.lpips`` -> (scorer or None, a note)."""
    if backbone is None or heads is None:
        return None, "LPIPS not measured: pass --lpips-backbone and --lpips-heads"
    from train.lpips import LPIPS  # imported here: only runs with user-supplied weights

    net = LPIPS(backbone=backbone, heads=heads)

    def score(a: np.ndarray, b: np.ndarray) -> float:
        def t(x: np.ndarray) -> torch.Tensor:  # (1, 3, H, W) in [-1, 1]
            return torch.from_numpy(np.array(x, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1

        with torch.no_grad():
            return float(net(t(b), t(a)).mean())

    return score, f"LPIPS from {display_path(backbone)} and {display_path(heads)}"


Features = Callable[[Sequence[np.ndarray]], np.ndarray]
FID_HOW_TO = (
    "rFID needs Inception-v3 as TorchScript: the inception-2015-12-05.pt of StyleGAN2-ADA's "
    "metrics, also used by clean-fid (README, Benchmarks)"
)


def fid_extractor(path: Path | None, device: str = "cpu") -> tuple[Features | None, str]:
    """Inception-v3 pool features of images' HiFiC patches -> (extractor or None, a note).

    ``path``: the TorchScript ``inception-2015-12-05.pt`` (called as ``net(x,
    return_features=True)`` on float (N, 3, H, W) in 0..255, resizing inside, as clean-fid
    calls it)."""
    if path is None:
        return None, "rFID not measured: pass --fid-inception. " + FID_HOW_TO
    if not path.is_file():
        raise ValueError(f"--fid-inception {path}: no such file. {FID_HOW_TO}")
    try:
        with warnings.catch_warnings():  # deprecated in torch 2.x, and the only reader of the file
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"--fid-inception {path} is not TorchScript ({first}). {FID_HOW_TO}"
        ) from None

    def features(images: Sequence[np.ndarray]) -> np.ndarray:
        patches = [p for im in images for p in metrics.fid_patches(im)]
        out = []
        with torch.no_grad():
            for i in range(0, len(patches), 16):
                x = torch.from_numpy(np.stack(patches[i : i + 16])).permute(0, 3, 1, 2)
                out.append(net(x.float().to(device), return_features=True).double().cpu().numpy())
        return np.concatenate(out)

    return features, (
        f"rFID: Inception-v3 features ({display_path(path)}) of {metrics.FID_PATCH}-pixel "
        "patches, the grid and the grid shifted by half a patch (HiFiC's protocol), "
        "reconstructions vs originals; few patches make it a noisy, biased figure: compare "
        "tokenizers within one run only"
    )


def plot_rd(
    tokenizers: Sequence[dict[str, Any]], codecs: Sequence[dict[str, Any]], path: Path, title: str
) -> None:
    """PSNR vs bpp: codec curves, and per tokenizer its nominal (o) and entropy (x) rates."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for codec, color in (("jpeg", "black"), ("webp", "grey")):
        pts = sorted((p for p in codecs if p["codec"] == codec), key=lambda p: p["bpp"])
        if pts:
            qualities = f"quality {pts[0]['quality']}..{pts[-1]['quality']}"
            label = f"{codec.upper()} (Pillow, {qualities})"
            x, y = [p["bpp"] for p in pts], [p["psnr"] for p in pts]
            ax.plot(x, y, marker=".", color=color, label=label)
    for i, r in enumerate(tokenizers):
        color, name, psnr = f"C{i}", r["name"], r["psnr"]
        label = name if "K=" in name else f"{name} (K={r['codebook_size']:,}, f={r['f']})"
        ax.plot([r["bpp_nominal"]], [psnr], "o", color=color, label=f"{label}: log2(K)/f²")
        ax.plot([r["bpp_entropy"]], [psnr], "x", color=color, ms=8, label=f"{label}: code entropy")
        ax.plot([r["bpp_entropy"], r["bpp_nominal"]], [psnr, psnr], ":", color=color, lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (log scale)")
    ax.set_ylabel("PSNR (dB, RGB, mean over images)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    # Outside the axes: with a dozen tokenizers the legend would hide the points.
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def crops_picture(images: Images, tokenizers: Sequence[tuple[str, Tokenizer]], path: Path) -> None:
    """Rows of zoomed crops (``CROPS``; the first image's centre when they are absent):
    original | JPEG | WebP (``CROP_CODECS``) | each tokenizer, saved as PNG."""
    plt = report.pyplot()
    index = {n: i for i, n in enumerate(images.names)}
    rows = [c for c in CROPS if c[0] in index]
    if not rows:
        h, w = images.pixels[0].shape[:2]
        side = min(h, w, 224)
        rows = [(images.names[0], (h - side) // 2, (w - side) // 2, side)]
    titles = ["original"] + [f"{c.upper()} q={q}" for c, q in CROP_CODECS]
    titles += [name for name, _ in tokenizers]
    fig, axes = plt.subplots(
        len(rows), len(titles), figsize=(2.6 * len(titles), 2.7 * len(rows)), squeeze=False
    )
    for r, (name, top, left, side) in enumerate(rows):
        im = images.pixels[index[name]]
        columns = [(im, "")]
        for codec, quality in CROP_CODECS:
            decoded, bpp = codec_roundtrip(im, codec, quality)
            columns.append((decoded, f"{bpp:.3f} bpp"))
        for _, tok in tokenizers:
            recon, _ = reconstruct(tok, name, im)
            columns.append((recon, f"{math.log2(tok.codebook_size) / tok.f**2:.3f} bpp"))
        for c, (pixels, note) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(pixels[top : top + side, left : left + side], interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            ax.set_title(f"{titles[c]}\n{name} {note}".strip(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def display_path(path: str | Path) -> str:
    """Paths inside or beside the repository are shown relative to it (reports are committed)."""
    p = Path(path).resolve()
    for base, prefix in ((common.ROOT, ""), (common.ROOT.parent, "../")):
        if p.is_relative_to(base):
            return prefix + str(p.relative_to(base))
    return str(path)


def run(args: argparse.Namespace, out: Path) -> None:
    """Evaluate each ``--tokenizer`` and the codecs on the ``--kodak`` images; write JSON,
    report and pictures into ``out``."""
    images = load_images(args.kodak, 2 if args.quick else None)
    codecs = codec_sweep(images, QUICK_QUALITIES if args.quick else None)
    device = args.device
    scorer, lpips_note = lpips_scorer(args.lpips_backbone, args.lpips_heads)
    extractor, fid_note = fid_extractor(args.fid_inception, device)
    fid = None if extractor is None else (extractor, extractor(images.pixels))
    loaded = [
        (name, load_tokenizer(path, device=device, precision="fp32"))
        for name, path in args.tokenizer
    ]
    results = [
        evaluate_tokenizer(tok, images, name, path, scorer, fid)
        for (name, tok), (_, path) in zip(loaded, args.tokenizer, strict=True)
    ]
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "images": {"folder": display_path(args.kodak), "names": images.names},
        "averaging": "mean over images of the per-image figure (RGB uint8, whole image)",
        "notes": [lpips_note, fid_note],
        "tokenizers": results,
        "codecs": codecs,
    }
    plot_rd(results, codecs, out / "kodak_rd.png", f"Kodak ({len(images.names)} images)")
    if loaded:
        crops_picture(images, loaded, out / "kodak_crops.png")
        regions = [c for c in CROPS if c[0] in images.names]
        payload["crops"] = {
            "regions": [
                dict(zip(("image", "top", "left", "side"), c, strict=True)) for c in regions
            ],
            "codecs": [f"{c.upper()} q={q}" for c, q in CROP_CODECS],
        }
    (out / "kodak.json").write_text(json.dumps(payload, indent=1) + "\n")
    report.render(out / "kodak.json", out / "kodak.md")


def parse_tokenizer(arg: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after the folder)."""
    name, sep, path = arg.partition("=")
    return (name, path) if sep else (Path(arg).name, arg)


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser(__doc__, "kodak")
    add = p.add_argument
    help_tok = "artifact folder, or NAME=FOLDER; repeat for several (none: codecs only)"
    add("--tokenizer", action="append", default=[], type=parse_tokenizer, help=help_tok)
    add("--kodak", type=Path, default=None, help="folder of the Kodak images (required)")
    add("--device", default="cpu")
    add("--lpips-backbone", type=Path, default=None, help="VGG16 weights (torchvision)")
    add("--lpips-heads", type=Path, default=None, help="LPIPS linear heads")
    add("--fid-inception", type=Path, help="Inception-v3 TorchScript (inception-2015-12-05.pt)")
    args = p.parse_args(argv)
    if args.kodak is None or not args.kodak.is_dir():
        where = "" if args.kodak is None else f" ({args.kodak} is not a folder)"
        print(
            f"error: pass --kodak DIR, a folder of the Kodak images{where}; "
            "the 24 Kodak PNGs are public (r0k.us/graphics/kodak)",
            file=sys.stderr,
        )
        return 2
    out = common.out_dir(args.out, "kodak", args.quick)
    try:
        run(args, out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'kodak.json'}, kodak.md and the pictures beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
