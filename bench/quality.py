"""Quality benchmark: STE vs rotation trick vs SimVQ (+ rotation) vs FSQ across codebook sizes.

    .venv/bin/python bench/quality.py                 # full run, writes docs/benchmarks/quality.md
    .venv/bin/python bench/quality.py --quick --out /tmp/q/quality.md    # a smoke run (seconds)
    .venv/bin/python bench/quality.py --jobs 2 --threads 1   # two runs at a time, 1 thread each

For every (method, K) the same VQ-VAE (f=8, same widths), the same data (random crops of the
bundled scikit-image training photographs, drawn from one seeded stream so every run sees the
same crops in the same order), the same budget (steps, batch, crop, AdamW with warmup + cosine,
gradient clipping) and the same seed are used; the loss is the training loss of
``train.module``: MSE(recon, x) + the quantizer's own loss. Then, on the held-out photographs
(``train.data.BUNDLED_VAL``) and in eval mode, it measures:

- PSNR and SSIM (torchmetrics, images in [0, 1]) of the reconstructions;
- ``epoch_usage`` over the validation tokens, with their count;
- window usage, perplexity and dead codes over a window of at least 4*K tokens of training
  crops, so that a 65,536-code codebook is not judged on a few thousand tokens;
- the quantization error ||e - q||^2 per token (absolute and relative to ||e||^2);
- wall time.

During training the window usage of the training tokens is recorded every ``log_every``
steps (usage vs step). Each (method, K) runs in its own function; an exception (e.g. out of
memory) is recorded in the report instead of ending the benchmark.

Outputs next to ``--out``: the Markdown report, ``quality.json`` (all numbers, for re-plotting)
and PNG plots ``quality_usage_vs_step.png``, ``quality_usage_vs_k.png``,
``quality_psnr_vs_k.png``. Text after the ``ANALYSIS_MARKER`` line of an existing report is
kept when the report is rewritten (the hand-written analysis of the results).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import platform
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from train.data import (
    BUNDLED_TRAIN,
    BUNDLED_VAL,
    RandomCropDataset,
    grid_crops,
    load_bundled_image,
    to_tensor,
)
from train.module import warmup_cosine
from vq import CodebookUsage
from vq.model import FSQ_RECOMMENDED_LEVELS, VQVAE, FSQConfig, QuantizerConfig, VQVAEConfig

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks" / "quality.md"
ANALYSIS_MARKER = "<!-- analysis: written by hand, kept when the script rewrites this file -->"

Method = Literal["ste", "rotation", "simvq", "simvq_rotation", "fsq"]
METHODS: tuple[Method, ...] = get_args(Method)
SIZES = (1024, 8192, 65536)

# Issue 5's targets.
TARGET_SIMVQ_USAGE = 0.95
TARGET_FSQ_USAGE = 0.95
TARGET_ROTATION_FACTOR = 5.0
TARGET_ROTATION_MIN_K = 8192
TARGET_BEST_PSNR = 24.0


@dataclass
class BenchConfig:
    """Architecture, data and budget shared by every (method, K) run."""

    steps: int = 600
    batch_size: int = 16
    crop: int = 64
    lr: float = 3e-4  # 2e-3 collapsed the latent to ~1 dimension in < 100 steps (see quality.md)
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05  # linear warmup over this share of the steps, then cosine
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    history_points: int = 40  # usage-vs-step samples per run
    f: int = 8
    widths: tuple[int, ...] = (32, 64, 128, 128)
    num_res_blocks: int = 1
    vq_code_dim: int = 32
    beta: float = 0.25
    # Plain-codebook (ste, rotation) options, for investigating a method that misses a target;
    # SimVQ learns W by gradient and has no per-code state to restart.
    codebook_update: Literal["gradient", "ema"] = "gradient"
    dead_code_threshold: float = 0.0
    codebook_init: Literal["uniform", "data"] = "uniform"
    val_crop: int = 128
    val_crops_per_image: int = 64
    # The eval-mode window over training crops holds max(window_factor * K, min_window) tokens.
    window_factor: int = 4
    min_window: int = 65536
    eval_batch: int = 64
    device: str = "cpu"
    # torch intra-op threads; None keeps torch's default. On a shared 2-core machine one
    # thread is several times faster for small models than two threads fighting other jobs.
    threads: int | None = None

    @property
    def warmup_steps(self) -> int:
        return max(1, round(self.warmup_fraction * self.steps))

    @property
    def log_every(self) -> int:
        return max(1, self.steps // self.history_points)


QUICK = BenchConfig(
    steps=6,
    batch_size=4,
    crop=32,
    history_points=3,
    widths=(8, 8, 16, 16),
    vq_code_dim=8,
    val_crop=32,
    val_crops_per_image=4,
    min_window=0,
    eval_batch=64,
    threads=1,
)
QUICK_SIZES = (256, 1024)


def fsq_levels_for(size: int) -> tuple[int, ...]:
    """The FSQ paper's recommended levels whose size is nearest K in log2 (ties go up, so
    2^13 -> [8, 8, 8, 6, 5], as issue 5 lists)."""
    best = min(FSQ_RECOMMENDED_LEVELS, key=lambda s: (abs(math.log2(s) - math.log2(size)), -s))
    return FSQ_RECOMMENDED_LEVELS[best]


def model_config(method: Method, size: int, cfg: BenchConfig) -> VQVAEConfig:
    """The VQ-VAE for one method at nominal codebook size ``size`` (FSQ: nearest levels)."""
    if method == "fsq":
        levels = fsq_levels_for(size)
        quantizer = QuantizerConfig(kind="fsq", codebook_size=math.prod(levels), levels=levels)
        code_dim = None  # = len(levels): the encoder's 1x1 projection is FSQ's projection
    else:
        plain = not method.startswith("simvq")
        quantizer = QuantizerConfig(
            kind="vq",
            codebook_size=size,
            codebook="plain" if plain else "linear",
            grad_estimator="rotation" if method in ("rotation", "simvq_rotation") else "ste",
            beta=cfg.beta,
            codebook_update=cfg.codebook_update if plain else "gradient",
            dead_code_threshold=cfg.dead_code_threshold if plain else 0.0,
            codebook_init=cfg.codebook_init if plain else "uniform",
        )
        code_dim = cfg.vq_code_dim
    return VQVAEConfig(
        f=cfg.f,
        widths=cfg.widths,
        num_res_blocks=cfg.num_res_blocks,
        code_dim=code_dim,
        quantizer=quantizer,
    )


# --- data ----------------------------------------------------------------------------------


@dataclass
class BenchData:
    train_images: list[np.ndarray]  # uint8 (H, W, 3)
    val_crops: torch.Tensor  # float (N, 3, val_crop, val_crop) in [-1, 1]


def load_data(cfg: BenchConfig) -> BenchData:
    """The bundled photographs (train.data's split) and the fixed held-out crops."""
    train = [load_bundled_image(n) for n in BUNDLED_TRAIN]
    val = [
        to_tensor(crop)
        for name in BUNDLED_VAL
        for crop in grid_crops(load_bundled_image(name), cfg.val_crop, cfg.val_crops_per_image)
    ]
    return BenchData(train, torch.stack(val))


class CropStream:
    """Batches of random training crops from a private RNG state, so the stream is the same
    for every run whatever the model does with torch's global generator."""

    def __init__(self, images: Sequence[np.ndarray], crop: int, seed: int) -> None:
        self.dataset = RandomCropDataset(images, crop, length=1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._state = torch.get_rng_state()

    def next(self, batch_size: int) -> torch.Tensor:
        """(batch_size, 3, crop, crop) float in [-1, 1]."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._state)
            batch = torch.stack([self.dataset[0] for _ in range(batch_size)])
            self._state = torch.get_rng_state()
        return batch


# --- one run -------------------------------------------------------------------------------


@dataclass
class RunResult:
    method: str
    nominal_size: int
    codebook_size: int = 0
    levels: list[int] | None = None
    code_dim: int = 0
    params: int = 0
    error: str | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    final_train_mse: float = math.nan
    psnr: float = math.nan
    ssim: float = math.nan
    val_mse: float = math.nan
    epoch_usage: float = math.nan
    epoch_perplexity: float = math.nan
    val_tokens: int = 0
    window_usage: float = math.nan
    window_perplexity: float = math.nan
    dead_codes: int = 0
    window_tokens: int = 0
    quant_error: float = math.nan  # mean over tokens of ||e - q||^2
    quant_error_rel: float = math.nan  # sum ||e - q||^2 / sum ||e||^2
    # usage vs step: step, window usage of training tokens, batch usage, train mse
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def window_size(size: int, cfg: BenchConfig) -> int:
    return max(cfg.window_factor * size, cfg.min_window)


def optimizer_for(model: VQVAE, cfg: BenchConfig) -> torch.optim.Optimizer:
    """AdamW grouped as train.module does: conv/linear weights decay, biases, norms and the
    quantizer's tables do not."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            is_quantizer = name.startswith("quantizer.")
            (decay if param.ndim >= 2 and not is_quantizer else no_decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )


def train(
    model: VQVAE, data: BenchData, cfg: BenchConfig, result: RunResult, log: Any = print
) -> None:
    device = torch.device(cfg.device)
    optimizer = optimizer_for(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio),
    )
    stream = CropStream(data.train_images, cfg.crop, cfg.seed + 1)
    k = model.codebook_size
    usage = CodebookUsage(k, window=window_size(k, cfg), device=device)
    model.train()
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        images = stream.next(cfg.batch_size).to(device)
        out = model(images)
        mse = F.mse_loss(out.recon, images)
        loss = mse + out.quantizer.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        usage.update(out.quantizer.indices)
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"loss became {float(loss.detach())} at step {step}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            result.history.append(
                {
                    "step": step,
                    "window_usage": usage.window_usage,
                    "batch_usage": usage.batch_usage,
                    "train_mse": float(mse.detach()),
                }
            )
            if step % (cfg.log_every * 10) == 0:
                log(
                    f"  step {step}/{cfg.steps} mse {float(mse.detach()):.4f} "
                    f"usage {usage.window_usage:.3f} ({time.perf_counter() - start:.0f}s)"
                )
    result.final_train_mse = float(mse.detach())
    result.train_seconds = time.perf_counter() - start


@torch.no_grad()
def evaluate(model: VQVAE, data: BenchData, cfg: BenchConfig, result: RunResult) -> None:
    device = torch.device(cfg.device)
    model.eval()
    k = model.codebook_size
    start = time.perf_counter()

    # Held-out photographs: reconstruction quality, epoch usage, quantization error.
    val_usage = CodebookUsage(k, window=1, device=device)
    psnrs, ssims, mses = [], [], []
    err_sum = norm_sum = 0.0
    tokens = 0
    for chunk in data.val_crops.split(cfg.eval_batch):
        images = chunk.to(device)
        out = model(images)
        pred = ((out.recon.float() + 1) / 2).clamp(0, 1)
        target = (images + 1) / 2
        psnrs.append(
            peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
        )
        ssim = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
        assert isinstance(ssim, torch.Tensor)  # a tuple only with return_full_image=True
        ssims.append(ssim)
        mses.append(((pred - target) ** 2).mean(dim=(1, 2, 3)))
        e, q = out.z.float(), out.quantizer.quantized.float()  # (B, D, h, w)
        err_sum += float(((e - q) ** 2).sum())
        norm_sum += float((e**2).sum())
        tokens += out.quantizer.indices.numel()
        val_usage.update(out.quantizer.indices)
    result.psnr = float(torch.cat(psnrs).mean())  # mean over crops of per-crop PSNR
    result.ssim = float(torch.cat(ssims).mean())
    result.val_mse = float(torch.cat(mses).mean())
    result.epoch_usage = val_usage.epoch_usage
    result.epoch_perplexity = val_usage.epoch_perplexity
    result.val_tokens = tokens
    result.quant_error = err_sum / tokens
    result.quant_error_rel = err_sum / max(norm_sum, 1e-12)

    # A window of >= 4K tokens of training crops, in eval mode, from a fixed stream.
    window = window_size(k, cfg)
    usage = CodebookUsage(k, window=window, device=device)
    stream = CropStream(data.train_images, cfg.crop, cfg.seed + 2)
    per_crop = (cfg.crop // cfg.f) ** 2
    remaining = math.ceil(window / per_crop)
    while remaining > 0:
        n = min(cfg.eval_batch, remaining)
        usage.update(model.encode(stream.next(n).to(device)))
        remaining -= n
    result.window_usage = usage.window_usage
    result.window_perplexity = usage.perplexity
    result.dead_codes = usage.dead_codes
    result.window_tokens = usage.window_tokens
    result.eval_seconds = time.perf_counter() - start


def run_one(
    method: Method, size: int, data: BenchData, cfg: BenchConfig, log: Any = print
) -> RunResult:
    """Train and evaluate one configuration; any exception is recorded, not raised."""
    result = RunResult(method=method, nominal_size=size)
    try:
        config = model_config(method, size, cfg)
        result.codebook_size = config.quantizer.codebook_size
        q = config.resolved_quantizer
        result.levels = list(q.resolved_levels) if isinstance(q, FSQConfig) else None
        result.code_dim = config.resolved_code_dim
        torch.manual_seed(cfg.seed)
        model = VQVAE(config).to(cfg.device)
        result.params = sum(p.numel() for p in model.parameters())
        train(model, data, cfg, result, log)
        evaluate(model, data, cfg, result)
    except Exception as exc:  # noqa: BLE001 - one failed configuration must not end the benchmark
        result.error = f"{type(exc).__name__}: {exc}"
        log(traceback.format_exc())
    finally:
        if cfg.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return result


# --- targets -------------------------------------------------------------------------------


@dataclass
class TargetCheck:
    name: str
    holds: bool | None  # None: not measurable from these runs
    detail: str


def _ok(results: Sequence[RunResult], method: str) -> list[RunResult]:
    return sorted((r for r in results if r.method == method and r.ok), key=lambda r: r.nominal_size)


def check_targets(results: Sequence[RunResult]) -> list[TargetCheck]:
    checks: list[TargetCheck] = []

    def usage_floor(methods: Sequence[str], floor: float, name: str) -> None:
        runs = [r for m in methods for r in _ok(results, m)]
        if not runs:
            checks.append(TargetCheck(name, None, "not run"))
            return
        misses = [r for r in runs if not r.window_usage >= floor]
        detail = ", ".join(f"{r.method}@{r.codebook_size}: {r.window_usage:.1%}" for r in runs)
        checks.append(TargetCheck(name, not misses, detail))

    usage_floor(("simvq", "simvq_rotation"), TARGET_SIMVQ_USAGE, "SimVQ usage >= 95% at every K")

    ste = _ok(results, "ste")
    if len(ste) < 2:
        checks.append(TargetCheck("STE usage falls as K grows", None, "needs >= 2 sizes"))
    else:
        usages = [r.window_usage for r in ste]
        falling = all(b < a for a, b in zip(usages, usages[1:], strict=False))
        detail = " -> ".join(f"{r.window_usage:.1%} (K={r.codebook_size})" for r in ste)
        checks.append(TargetCheck("STE usage falls as K grows", falling, detail))

    rot = {r.nominal_size: r for r in _ok(results, "rotation")}
    pairs = [(s, rot[s.nominal_size]) for s in ste if s.nominal_size in rot]
    pairs = [(s, r) for s, r in pairs if s.nominal_size >= TARGET_ROTATION_MIN_K]
    if not pairs:
        checks.append(
            TargetCheck(
                "rotation vs STE at K >= 8192: usage >= 5x, PSNR not lower", None, "not run"
            )
        )
    else:
        holds = all(
            r.window_usage >= TARGET_ROTATION_FACTOR * s.window_usage and r.psnr >= s.psnr
            for s, r in pairs
        )
        detail = "; ".join(
            f"K={s.nominal_size}: usage {r.window_usage:.1%} vs {s.window_usage:.1%} "
            f"({r.window_usage / max(s.window_usage, 1e-12):.1f}x), "
            f"PSNR {r.psnr:.2f} vs {s.psnr:.2f} dB"
            for s, r in pairs
        )
        checks.append(
            TargetCheck("rotation vs STE at K >= 8192: usage >= 5x, PSNR not lower", holds, detail)
        )

    usage_floor(("fsq",), TARGET_FSQ_USAGE, "FSQ usage >= 95% at every size")

    ok = [r for r in results if r.ok]
    if not ok:
        checks.append(TargetCheck("best PSNR >= 24 dB at f=8", None, "no run finished"))
    else:
        best = max(ok, key=lambda r: r.psnr)
        checks.append(
            TargetCheck(
                "best PSNR >= 24 dB at f=8",
                best.psnr >= TARGET_BEST_PSNR,
                f"best: {best.method} K={best.codebook_size}, {best.psnr:.2f} dB",
            )
        )
    return checks


# --- report --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: str) -> str:
    desc = f"{os.cpu_count()} CPU cores ({cpu_model()}), {platform.system()} {platform.machine()}"
    if device.startswith("cuda") and torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return desc


def _fmt(x: float, spec: str) -> str:
    return (
        "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)
    )


def _size_label(r: RunResult) -> str:
    if r.levels:
        return f"{r.codebook_size:,} ({r.levels})"
    return f"{r.codebook_size:,}"


def train_psnr(r: RunResult) -> float:
    """PSNR of the training batches over the last quarter of the recorded steps (images in
    [-1, 1], so peak-to-peak 2): the fit on training crops, next to the held-out PSNR."""
    tail = r.history[-max(1, len(r.history) // 4) :]
    if not tail:
        return math.nan
    mse = sum(h["train_mse"] for h in tail) / len(tail)
    return 10 * math.log10(4.0 / mse) if mse > 0 else math.nan


def results_table(runs: Sequence[RunResult]) -> list[str]:
    lines = [
        "| method | K (levels) | PSNR dB | SSIM | train-crop PSNR dB | window usage (tokens) "
        "| perplexity | dead codes | epoch usage (val tokens) | ‖e−q‖² | ‖e−q‖²/‖e‖² | train s "
        "| eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if not r.ok:
            lines.append(
                f"| {r.method} | {_size_label(r) or r.nominal_size} | failed: {r.error} "
                "| | | | | | | | | | |"
            )
            continue
        lines.append(
            f"| {r.method} | {_size_label(r)} | {_fmt(r.psnr, '.2f')} | {_fmt(r.ssim, '.3f')} "
            f"| {_fmt(train_psnr(r), '.2f')} | {r.window_usage:.1%} ({r.window_tokens:,}) | {_fmt(r.window_perplexity, ',.0f')} "
            f"| {r.dead_codes:,} | {r.epoch_usage:.1%} ({r.val_tokens:,}) "
            f"| {_fmt(r.quant_error, '.3g')} | {_fmt(r.quant_error_rel, '.3f')} "
            f"| {r.train_seconds:.1f} | {r.eval_seconds:.1f} |"
        )
    return lines


def run_metadata(command: str, total_seconds: float, cfg: BenchConfig) -> dict[str, Any]:
    """Where and how the results were produced (kept in quality.json for re-rendering)."""
    return {
        "command": command,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "total_seconds": total_seconds,
        "machine": machine_description(cfg.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def render_report(
    results: Sequence[RunResult],
    cfg: BenchConfig,
    meta: dict[str, Any],
    *,
    plots: Sequence[str],
    analysis: str,
) -> str:
    sizes = sorted({r.nominal_size for r in results})
    data_desc = (
        f"train: {', '.join(BUNDLED_TRAIN)}; held out: {', '.join(BUNDLED_VAL)} "
        f"({cfg.val_crop}x{cfg.val_crop} grid crops, at most {cfg.val_crops_per_image} per image)"
    )
    lines = [
        "# Quality benchmark: STE vs rotation trick vs SimVQ vs FSQ",
        "",
        "Generated by `bench/quality.py` (the tables, targets and plots; the analysis at the end "
        "is written by hand).",
        "",
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}; total wall time {meta['total_seconds'] / 60:.1f} min",
        f"- Machine: {meta['machine']}; device `{cfg.device}`; torch {meta['torch']}, "
        f"torch threads {meta['threads']}, Python {meta['python']}",
        f"- Architecture (every run): VQ-VAE f={cfg.f}, widths {list(cfg.widths)}, "
        f"{cfg.num_res_blocks} res block(s) per level, code dim {cfg.vq_code_dim} for VQ "
        "(plain/SimVQ), len(levels) for FSQ; beta "
        f"{cfg.beta}; plain codebooks (ste, rotation): init {cfg.codebook_init}, update "
        f"{cfg.codebook_update}, dead-code threshold {cfg.dead_code_threshold:g}",
        f"- Budget (every run): {cfg.steps} steps x batch {cfg.batch_size} of {cfg.crop}x{cfg.crop} "
        f"random crops ({cfg.steps * cfg.batch_size:,} crops, "
        f"{cfg.steps * cfg.batch_size * (cfg.crop // cfg.f) ** 2:,} training tokens); AdamW lr "
        f"{cfg.lr:g}, weight decay {cfg.weight_decay:g}, {cfg.warmup_steps} warmup steps then "
        f"cosine to {cfg.min_lr_ratio:g}x, grad clip {cfg.grad_clip:g}; loss MSE + quantizer "
        f"loss; seed {cfg.seed}, one crop stream shared by all runs",
        f"- Data: the bundled scikit-image photographs, split by image ({data_desc})",
        "- Usage figures: *window usage* = fraction of the K codes hit in a window of "
        f"max({cfg.window_factor}·K, {cfg.min_window:,}) tokens of training crops encoded in "
        "eval mode after training (perplexity and dead codes over the same window); *epoch "
        "usage* = fraction hit over the held-out tokens (few tokens: at K=65,536 it cannot "
        "exceed val tokens / K). ‖e−q‖²: mean over held-out tokens of the squared distance "
        "between the encoder output and its code (FSQ: before the tanh bound). PSNR: mean over "
        "held-out crops; train-crop PSNR: from the training loss's MSE over the last quarter "
        "of the steps (random training crops, train mode).",
        "",
        "## Targets",
        "",
        "| target | holds | measured |",
        "|---|---|---|",
    ]
    for check in check_targets(results):
        verdict = {True: "yes", False: "**no**", None: "n/a"}[check.holds]
        lines.append(f"| {check.name} | {verdict} | {check.detail} |")
    for size in sizes:
        runs = [r for r in results if r.nominal_size == size]
        runs.sort(key=lambda r: METHODS.index(r.method) if r.method in METHODS else 99)
        lines += ["", f"## K = {size:,}", ""] + results_table(runs)
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines += ["", ANALYSIS_MARKER, analysis.strip("\n") if analysis.strip() else ""]
    return "\n".join(lines).rstrip() + "\n"


def kept_analysis(path: Path) -> str:
    """Hand-written text after the marker in an existing report, or a placeholder."""
    if path.exists():
        text = path.read_text()
        if ANALYSIS_MARKER in text:
            return text.split(ANALYSIS_MARKER, 1)[1]
    return "\n## Analysis\n\n(not written yet)\n"


def write_plots(results: Sequence[RunResult], out_dir: Path, stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.ok]
    sizes = sorted({r.nominal_size for r in ok})
    methods = [m for m in METHODS if any(r.method == m for r in ok)]
    colors: dict[str, str] = {m: f"C{i}" for i, m in enumerate(METHODS)}
    paths: list[str] = []
    if not ok:
        return paths

    fig, axes = plt.subplots(
        1, len(sizes), figsize=(4.5 * len(sizes), 3.6), squeeze=False, sharey=True
    )
    for ax, size in zip(axes[0], sizes, strict=True):
        for r in ok:
            if r.nominal_size == size and r.history:
                steps = [h["step"] for h in r.history]
                ax.plot(
                    steps,
                    [100 * h["window_usage"] for h in r.history],
                    label=f"{r.method} (K={r.codebook_size:,})",
                    color=colors.get(r.method),
                )
        ax.set_title(f"K ≈ {size:,}")
        ax.set_xlabel("step")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("window usage of training tokens (%)\nwindow = max(4K, min) tokens")
    fig.suptitle("Codebook usage during training")
    fig.tight_layout()
    path = out_dir / f"{stem}_usage_vs_step.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(str(path))

    for key, ylabel, name in (
        ("window_usage", "window usage (%), window >= 4K tokens", "usage_vs_k"),
        ("psnr", "held-out PSNR (dB)", "psnr_vs_k"),
    ):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for m in methods:
            runs = sorted((r for r in ok if r.method == m), key=lambda r: r.codebook_size)
            xs = [r.codebook_size for r in runs]
            ys = [getattr(r, key) * (100 if key == "window_usage" else 1) for r in runs]
            ax.plot(xs, ys, marker="o", label=m, color=colors[m])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("codebook size K (FSQ: prod(levels))")
        ax.set_ylabel(ylabel)
        if key == "window_usage":
            ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{stem}_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path))
    return paths


def write_outputs(
    results: Sequence[RunResult],
    cfg: BenchConfig,
    out: Path,
    meta: dict[str, Any],
    *,
    plots: bool = True,
) -> None:
    """The report, its JSON (same stem) and (``plots=True``) the PNGs next to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_paths = write_plots(results, out.parent, out.stem) if plots else []
    payload = {
        "meta": meta,
        "config": {**asdict(cfg), "warmup_steps": cfg.warmup_steps, "log_every": cfg.log_every},
        "results": [asdict(r) for r in results],
        "targets": [asdict(c) for c in check_targets(results)],
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")
    analysis = kept_analysis(out)
    out.write_text(render_report(results, cfg, meta, plots=plot_paths, analysis=analysis))


def load_outputs(path: Path) -> tuple[list[RunResult], BenchConfig, dict[str, Any]]:
    """Results, config and metadata from a JSON written by ``write_outputs``."""
    payload = json.loads(path.read_text())
    names = {f.name for f in fields(BenchConfig)}
    config = {k: v for k, v in payload["config"].items() if k in names}
    config["widths"] = tuple(config["widths"])
    results = [RunResult(**r) for r in payload["results"]]
    meta = payload.get("meta")
    if meta is None:  # the first version of this script kept these at the top level
        meta = {
            "command": payload["command"],
            "date": payload["date"].replace("T", " ").replace("+00:00", " UTC"),
            "total_seconds": payload["total_seconds"],
            "machine": payload["machine"],
            "torch": payload["torch"],
            "threads": config.get("threads") or "default",
            "python": platform.python_version(),
        }
    return results, BenchConfig(**config), meta


# --- CLI -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model and budget (a smoke test)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--sizes", nargs="+", type=int, default=None, help="codebook sizes K")
    p.add_argument("--steps", type=int, default=None, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--crop", type=int, default=None, help="training crop side (multiple of 8)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--beta", type=float, default=None, help="commitment weight (VQ methods)")
    p.add_argument("--code-dim", type=int, default=None, help="code dim of VQ methods")
    p.add_argument(
        "--codebook-update",
        choices=("gradient", "ema"),
        default=None,
        help="plain codebooks (ste, rotation) only",
    )
    p.add_argument(
        "--dead-code-threshold",
        type=float,
        default=None,
        help="plain codebooks only: restart codes whose EMA hit count falls below this",
    )
    p.add_argument(
        "--codebook-init",
        choices=["uniform", "data"],
        default=None,
        help="plain codebooks only: uniform(-1/K, 1/K) (default) or the first batch's encoder vectors",
    )
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="(method, K) runs trained at the same time, each in its own process (default 1); "
        "on a small CPU use --jobs N --threads 1",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown report path")
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render the report and plots from a saved quality.json (no training)",
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> tuple[BenchConfig, tuple[int, ...]]:
    cfg = QUICK if args.quick else BenchConfig()
    sizes = tuple(args.sizes) if args.sizes else (QUICK_SIZES if args.quick else SIZES)
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "crop": args.crop,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "threads": args.threads,
        "beta": args.beta,
        "vq_code_dim": args.code_dim,
        "codebook_update": args.codebook_update,
        "dead_code_threshold": args.dead_code_threshold,
        "codebook_init": args.codebook_init,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    for name in ("steps", "batch_size", "crop"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(cfg, name)} must be >= 1")
    if cfg.crop % cfg.f:
        raise ValueError(f"--crop={cfg.crop} must be a multiple of f={cfg.f}")
    if args.jobs < 1:
        raise ValueError(f"--jobs={args.jobs} must be >= 1")
    bad = [s for s in sizes if s < 2]
    if bad:
        raise ValueError(f"--sizes {bad}: codebook sizes must be >= 2")
    return cfg, sizes


def _display_arg(arg: str) -> str:
    """Paths inside the repository are shown relative to it (the report is committed)."""
    path = Path(arg)
    if path.is_absolute() and path.resolve().is_relative_to(ROOT):
        return str(path.resolve().relative_to(ROOT))
    return arg


def iter_runs(methods: Sequence[Method], sizes: Sequence[int]) -> Iterator[tuple[Method, int]]:
    for size in sizes:
        for method in methods:
            yield method, size


# Per-process state of a --jobs worker (set by _init_worker).
_WORKER_DATA: BenchData | None = None
_WORKER_CFG: BenchConfig | None = None


def _init_worker(cfg: BenchConfig) -> None:
    global _WORKER_DATA, _WORKER_CFG
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _WORKER_DATA, _WORKER_CFG = load_data(cfg), cfg


def _worker_run(method: Method, size: int) -> tuple[RunResult, float]:
    """One (method, K) run in a --jobs worker process; log lines carry the run's name."""
    assert _WORKER_DATA is not None and _WORKER_CFG is not None, "_init_worker did not run"
    cfg = _WORKER_CFG
    t0 = time.perf_counter()
    print(f"[{method} K={size}] start", flush=True)
    r = run_one(
        method, size, _WORKER_DATA, cfg, log=lambda s: print(f"[{method} K={size}] {s}", flush=True)
    )
    return r, time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        saved, saved_cfg, saved_meta = load_outputs(args.from_json)
        write_outputs(saved, saved_cfg, args.out, saved_meta)
        print(f"wrote {args.out}")
        return 0
    try:
        cfg, sizes = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    command = "python bench/quality.py " + " ".join(
        _display_arg(a) for a in (sys.argv[1:] if argv is None else list(argv))
    )
    print(f"config: {cfg}", flush=True)
    data = load_data(cfg)
    print(f"data: {len(data.train_images)} train images, {len(data.val_crops)} val crops")
    runs = list(iter_runs(args.methods, sizes))
    results: list[RunResult] = []
    start = time.perf_counter()

    def finished(r: RunResult, seconds: float) -> None:
        results.append(r)
        status = (
            f"PSNR {r.psnr:.2f} SSIM {r.ssim:.3f} usage {r.window_usage:.1%} "
            f"epoch {r.epoch_usage:.1%} dead {r.dead_codes}"
            if r.ok
            else f"FAILED {r.error}"
        )
        print(f"    -> {r.method} K={r.nominal_size}: {status} ({seconds:.0f}s)", flush=True)
        # Rewrite report + JSON after every run, so a cut-off benchmark still leaves numbers.
        results.sort(key=lambda x: runs.index((x.method, x.nominal_size)))  # type: ignore[arg-type]
        meta = run_metadata(command, time.perf_counter() - start, cfg)
        write_outputs(results, cfg, args.out, meta, plots=False)

    if args.jobs == 1:
        for method, size in runs:
            t0 = time.perf_counter()
            print(f"[{time.perf_counter() - start:7.0f}s] {method} K={size} ...", flush=True)
            r = run_one(method, size, data, cfg, log=lambda s: print(s, flush=True))
            finished(r, time.perf_counter() - t0)
    else:
        # spawn: fresh interpreters (no forked torch thread pools); each loads the data once.
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=args.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(cfg,),
        ) as pool:
            futures = {pool.submit(_worker_run, m, k): (m, k) for m, k in runs}
            for future in concurrent.futures.as_completed(futures):
                r, seconds = future.result()
                finished(r, seconds)
    write_outputs(results, cfg, args.out, run_metadata(command, time.perf_counter() - start, cfg))
    print(f"wrote {args.out}")
    return 0 if any(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
