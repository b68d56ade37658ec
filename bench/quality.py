"""Quality benchmark: STE vs rotation trick vs SimVQ (+ rotation) vs FSQ across codebook sizes.

    python bench/quality.py --steps 600 --jobs 2 --threads 1    # the corpus run (~2 h, 2 cores)
    python bench/quality.py --resume ...same arguments...      # continue an interrupted run
    python bench/quality.py --quick --out /tmp/q/quality.md     # a smoke run (seconds)

The recipe is not defined here. Each method trains the model, loss, optimizer groups and
schedule of ``configs/<method>.yaml`` through ``train.module.VQVAEModule`` (its
``compute_losses`` and ``configure_optimizers``), with only the codebook size changed (FSQ:
the recommended levels nearest K); a change to the recipe reaches the benchmark. By default
(``--plain papers``) the plain codebooks (ste, rotation) run the papers' setting, uniform
init and no dead-code restart, because the comparison is between the estimators;
``--plain recipe`` keeps the configs' data init + restart. ``--set model.lr=1e-3`` overrides
any ``model`` option of every config. The warmup is the config's share of its budget.

Data: with the photo corpus beside the checkout (``../shared/data``: ``train/``, ``val/``,
``kodak/``) it trains on ``train/`` (``ImageDataModule(root, val_root)``, each file decoded
once), reports held-out crops of ``val/`` and evaluates on the full Kodak images
(``bench/kodak.py``: PSNR, SSIM, code usage, rate; JPEG and WebP measured in the same run).
Without it (or with ``--corpus none``, and in ``--quick``) it uses the bundled scikit-image
photographs and skips Kodak. Every run sees the same crops in the same order (one seeded
stream) and trains with the fast path: channels_last, bf16 autocast where native
(``vq.precision``).

Each configuration works in ``--work-dir/<method>_K<K>/``: its training state (model,
optimizer, scheduler, crop stream, usage window, history) is saved every ``--save-every``
seconds and at the end; then it is exported as an artifact and evaluated from it with
``vq.load_tokenizer(path, precision="fp32")``; ``result.json`` marks it finished.
``--resume`` skips finished configurations and continues unfinished ones from their state;
without it, a work dir holding an earlier run is an error (no work is overwritten).

Measured per (method, K), in eval mode: Kodak PSNR/SSIM/usage/perplexity/dead codes/bpp
(log2(K)/f² and the code entropy); held-out crop PSNR/SSIM, ``epoch_usage`` and the
quantization error ||e - q||²; window usage, perplexity and dead codes over a window of
max(4K, min_window) tokens of training crops; usage vs step during training; wall time.
Outputs next to ``--out``: the report, ``quality.json``, and the PNG plots (usage vs step,
usage vs K, PSNR vs K, and ``quality_rd.png``: Kodak PSNR vs bpp against JPEG/WebP). Text
after the ``ANALYSIS_MARKER`` line of an existing report is kept when it is rewritten.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import yaml
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):  # run as a script: vq/, train/ and kodak.py importable
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import kodak  # noqa: E402 - bench/ is a folder of scripts

from train.crops import RandomCropDataset  # noqa: E402
from train.data import ImageDataModule  # noqa: E402
from train.module import VQVAEModule  # noqa: E402
from vq import CodebookUsage, load_tokenizer, save_tokenizer  # noqa: E402
from vq.config import FSQConfig  # noqa: E402
from vq.model import FSQ_RECOMMENDED_LEVELS  # noqa: E402
from vq.pixels import float_to_unit  # noqa: E402
from vq.precision import autocast, check_precision, default_precision  # noqa: E402

DEFAULT_OUT = ROOT / "docs" / "benchmarks" / "quality.md"
DEFAULT_CORPUS = ROOT.parent / "shared" / "data"
DEFAULT_WORK_DIR = ROOT / "runs" / "quality"
CONFIGS = ROOT / "configs"
ANALYSIS_MARKER = "<!-- analysis: written by hand, kept when the script rewrites this file -->"

# One name per method everywhere (bench/quantizers.py too): configs/<method>.yaml.
Method = Literal["ste", "rotation", "simvq", "simvq_rotation", "fsq"]
METHODS: tuple[Method, ...] = get_args(Method)
PLAIN_METHODS = ("ste", "rotation")
SIZES = (1024, 8192, 65536)

# Issue 5's targets.
TARGET_SIMVQ_USAGE = 0.95
TARGET_FSQ_USAGE = 0.95
TARGET_ROTATION_FACTOR = 5.0
TARGET_ROTATION_MIN_K = 8192
TARGET_BEST_PSNR = 24.0


@dataclass(frozen=True)
class BenchConfig:
    """Budget, data and measurement shared by every (method, K) run (not the recipe)."""

    steps: int = 400
    batch_size: int = 16
    crop: int = 64
    seed: int = 0
    plain: Literal["papers", "recipe"] = "papers"
    overrides: tuple[str, ...] = ()  # "model.KEY.KEY=VALUE" applied to every config
    tiny: bool = False  # a tiny architecture (the --quick smoke run)
    corpus: str | None = None  # folder with train/, val/, kodak/; None = bundled photographs
    kodak_limit: int | None = None  # evaluate on the first N Kodak images only
    codec_qualities: tuple[int, ...] | None = None  # None: bench/kodak.py's sweeps
    history_points: int = 40  # usage-vs-step samples per run
    val_crop: int = 128
    val_crops_per_image: int = 64
    # The eval-mode window over training crops holds max(window_factor * K, min_window) tokens.
    window_factor: int = 4
    min_window: int = 65536
    eval_batch: int = 64
    device: str = "cpu"
    precision: str | None = None  # None: bf16 where the device runs it natively, else fp32
    # torch intra-op threads; None keeps torch's default. On a shared 2-core machine one
    # thread is several times faster for small models than two threads fighting other jobs.
    threads: int | None = None
    save_every: float = 300.0  # seconds between training-state saves

    @property
    def log_every(self) -> int:
        return max(1, self.steps // self.history_points)

    @property
    def resolved_precision(self) -> str:
        return self.precision or default_precision(self.device)


QUICK = BenchConfig(
    steps=6,
    batch_size=4,
    crop=32,
    history_points=3,
    tiny=True,
    val_crop=32,
    val_crops_per_image=4,
    min_window=0,
    kodak_limit=1,
    codec_qualities=kodak.QUICK_QUALITIES,
    threads=1,
)
QUICK_SIZES = (256, 1024)
TINY_VQVAE = {"widths": [8, 8, 16, 16], "code_dim": 8}


def fsq_levels_for(size: int) -> tuple[int, ...]:
    """The FSQ paper's recommended levels whose size is nearest K in log2 (ties go up, so
    2^13 -> [8, 8, 8, 6, 5], as issue 5 lists)."""
    best = min(FSQ_RECOMMENDED_LEVELS, key=lambda s: (abs(math.log2(s) - math.log2(size)), -s))
    return FSQ_RECOMMENDED_LEVELS[best]


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise ValueError(f"--set {dotted}: {key!r} is not a section of the config")
        node = node[key]
    if leaf not in node:
        raise ValueError(f"--set {dotted}: no option {leaf!r} (allowed: {sorted(node)})")
    node[leaf] = value


def _parse_value(text: str) -> Any:
    """A YAML scalar, with "1e-3" read as a number (YAML 1.1 wants "1.0e-3")."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass(frozen=True)
class Recipe:
    """What one (method, K) run trains: ``VQVAEModule`` arguments from configs/<method>.yaml."""

    module_args: dict[str, Any]
    grad_clip: float | None
    source: str  # the config file


def recipe(method: Method, size: int, cfg: BenchConfig) -> Recipe:
    """configs/<method>.yaml's model at codebook size ``size`` (FSQ: nearest levels), the
    plain-codebook setting of ``cfg.plain``, ``cfg.overrides``, and a schedule of
    ``cfg.steps`` steps with the config's warmup share."""
    path = CONFIGS / f"{method}.yaml"
    config = yaml.safe_load(path.read_text())
    model: dict[str, Any] = config["model"]
    vqvae, quantizer = model["vqvae"], model["vqvae"]["quantizer"]
    if method == "fsq":
        levels = fsq_levels_for(size)
        quantizer.update(codebook_size=math.prod(levels), levels=list(levels))
        vqvae["code_dim"] = len(levels)  # the encoder's 1x1 projection is FSQ's projection
    else:
        quantizer["codebook_size"] = size
    if method in PLAIN_METHODS and cfg.plain == "papers":
        # The papers' plain codebook: uniform(-1/K, 1/K) init, no restart.
        quantizer.update(codebook_init="uniform", dead_code_threshold=0.0)
        quantizer.pop("ema_decay", None)
    if cfg.tiny:
        vqvae["widths"] = TINY_VQVAE["widths"]
        if method != "fsq":
            vqvae["code_dim"] = TINY_VQVAE["code_dim"]
    budget = config["trainer"]["max_steps"]
    model["warmup_steps"] = max(1, round(model.get("warmup_steps", 0) * cfg.steps / budget))
    model["total_steps"] = cfg.steps
    for item in cfg.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("model."):
            raise ValueError(f"--set {item!r}: expected model.KEY=VALUE, e.g. model.lr=1e-3")
        _set_dotted(config, key, _parse_value(value))
    return Recipe(model, config["trainer"].get("gradient_clip_val"), str(path.relative_to(ROOT)))


def build_module(method: Method, size: int, cfg: BenchConfig) -> tuple[VQVAEModule, Recipe]:
    """The seeded ``VQVAEModule`` of ``recipe`` on ``cfg.device``, in channels_last."""
    rec = recipe(method, size, cfg)
    torch.manual_seed(cfg.seed)
    module = VQVAEModule(**rec.module_args).to(cfg.device)
    module.setup("fit")
    return module, rec


# --- data ----------------------------------------------------------------------------------


@dataclass
class BenchData:
    train_crops: RandomCropDataset  # random training crops over the decoded images
    val_crops: torch.Tensor  # float (N, 3, val_crop, val_crop) in [-1, 1]
    description: str
    # bench/kodak.py's Images and CodecPoints (Any: mypy cannot resolve a sibling script)
    kodak: Any = None
    codecs: list[Any] = field(default_factory=list)


def corpus_dir(arg: str | None) -> str | None:
    """``--corpus``: a folder, "none" (bundled photographs), or None = ../shared/data if there."""
    if arg == "none":
        return None
    if arg is None:
        return str(DEFAULT_CORPUS) if (DEFAULT_CORPUS / "train").is_dir() else None
    if not (Path(arg) / "train").is_dir():
        raise ValueError(f"--corpus {arg!r} has no train/ folder")
    return arg


def load_data(cfg: BenchConfig, *, with_codecs: bool = True) -> BenchData:
    """Training crops and held-out crops through ``ImageDataModule`` (each file decoded once),
    plus the Kodak images and their JPEG/WebP sweep when the corpus has them."""
    corpus = Path(cfg.corpus) if cfg.corpus else None
    val = corpus / "val" if corpus else None
    dm = ImageDataModule(
        root=str(corpus / "train") if corpus else None,
        val_root=str(val) if val and val.is_dir() else None,
        crop_size=cfg.crop,
        val_crop_size=cfg.val_crop,
        val_crops_per_image=cfg.val_crops_per_image,
        batch_size=cfg.batch_size,
    )
    dm.setup("fit")
    # The DataModule's decoded training images, cropped by a stream this bench controls.
    assert dm._train_images is not None
    crops = RandomCropDataset(dm._train_images, cfg.crop, length=1)
    val_crops = torch.stack([t for t in dm.val_dataloader().dataset])  # type: ignore[attr-defined]
    where = kodak.display_path(corpus) if corpus else "the bundled scikit-image photographs"
    desc = (
        f"{where}: {len(dm.train_names)} training images, {len(dm.val_names)} held-out images "
        f"({len(val_crops)} {cfg.val_crop}x{cfg.val_crop} grid crops)"
    )
    data = BenchData(crops, val_crops, desc)
    kodak_dir = corpus / "kodak" if corpus else None
    if kodak_dir is not None and kodak_dir.is_dir():
        data.kodak = kodak.load_images(kodak_dir, cfg.kodak_limit)
        if with_codecs:
            data.codecs = kodak.codec_sweep(
                data.kodak, "jpeg", cfg.codec_qualities or kodak.JPEG_QUALITIES
            ) + kodak.codec_sweep(data.kodak, "webp", cfg.codec_qualities or kodak.WEBP_QUALITIES)
    return data


class CropStream:
    """Batches of random training crops from a private generator, so the stream is the same
    for every run whatever the model does with torch's global generator, and its state can
    be saved and restored (``state``)."""

    def __init__(self, dataset: RandomCropDataset, seed: int) -> None:
        self.dataset = dataset
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    @state.setter
    def state(self, value: torch.Tensor) -> None:
        self.generator.set_state(value)

    def next(self, batch_size: int) -> torch.Tensor:
        """(batch_size, 3, crop, crop) float in [-1, 1]."""
        # RandomCropDataset draws from its per-process generator: lend it this stream's.
        self.dataset._gen, self.dataset._gen_pid = self.generator, os.getpid()
        return torch.stack([self.dataset[0] for _ in range(batch_size)])


# --- one run -------------------------------------------------------------------------------


@dataclass
class RunResult:
    method: str
    nominal_size: int
    codebook_size: int = 0
    levels: list[int] | None = None
    code_dim: int = 0
    params: int = 0
    recipe: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    final_train_mse: float = math.nan
    psnr: float = math.nan  # held-out crops
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
    kodak: dict[str, Any] | None = None  # bench/kodak.py's TokenizerResult, without per-image
    # usage vs step: step, window usage of training tokens, batch usage, train mse
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def window_size(size: int, cfg: BenchConfig) -> int:
    return max(cfg.window_factor * size, cfg.min_window)


def run_dir(work_dir: Path, method: str, size: int) -> Path:
    return work_dir / f"{method}_K{size}"


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically: a cut-off save leaves the previous state intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(
    module: VQVAEModule,
    rec: Recipe,
    data: BenchData,
    cfg: BenchConfig,
    result: RunResult,
    state_path: Path | None = None,
    log: Any = print,
) -> None:
    """``cfg.steps`` optimizer steps of the module's own loss, optimizer and schedule,
    continuing from ``state_path`` when it exists and saving it every ``cfg.save_every`` s."""
    device = torch.device(cfg.device)
    precision = check_precision(cfg.resolved_precision)
    setup = module.configure_optimizers()
    optimizer = setup["optimizer"]
    scheduler = setup["lr_scheduler"]["scheduler"]
    stream = CropStream(data.train_crops, cfg.seed + 1)
    k = module.codebook_size
    usage = CodebookUsage(k, window=window_size(k, cfg), device=device)
    first, elapsed = 1, 0.0
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        module.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.state = state["stream"]
        torch.set_rng_state(state["torch_rng"])
        usage = CodebookUsage.from_state_tensor(state["usage"].to(device))
        result.history = state["history"]
        first, elapsed = state["step"] + 1, state["train_seconds"]
        log(f"  resumed at step {state['step']} of {cfg.steps}")

    def save(step: int) -> None:
        if state_path is not None:
            _save_state(
                state_path,
                {
                    "step": step,
                    "train_seconds": elapsed + time.perf_counter() - start,
                    "model": module.model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "stream": stream.state,
                    "torch_rng": torch.get_rng_state(),
                    "usage": usage.state_tensor().cpu(),
                    "history": result.history,
                },
            )

    module.train()
    start = last_save = time.perf_counter()
    mse = torch.tensor(math.nan)
    for step in range(first, cfg.steps + 1):
        images = stream.next(cfg.batch_size).to(device)
        with autocast(device, precision):
            losses, out = module.compute_losses(images)
        loss, mse = losses["loss"], losses["mse"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if rec.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), rec.grad_clip)
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
        if time.perf_counter() - last_save >= cfg.save_every:
            save(step)
            last_save = time.perf_counter()
    if first <= cfg.steps:
        save(cfg.steps)
    result.final_train_mse = float(mse.detach())
    result.train_seconds = elapsed + time.perf_counter() - start


@torch.no_grad()
def evaluate(
    module: VQVAEModule, data: BenchData, cfg: BenchConfig, result: RunResult, artifact: Path
) -> None:
    """Held-out crops and the training-token window from the module in eval mode; Kodak from
    the exported artifact, loaded as users load it (float32)."""
    device = torch.device(cfg.device)
    model = module.model.eval()
    k = model.codebook_size
    start = time.perf_counter()

    # Held-out crops: reconstruction quality, epoch usage, quantization error.
    val_usage = CodebookUsage(k, window=1, device=device)
    psnrs, ssims, mses = [], [], []
    err_sum = norm_sum = 0.0
    tokens = 0
    for chunk in data.val_crops.split(cfg.eval_batch):
        images = chunk.to(device)
        out = model(images)
        pred, target = float_to_unit(out.recon.float()), float_to_unit(images)
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
    stream = CropStream(data.train_crops, cfg.seed + 2)
    per_crop = (cfg.crop // model.f) ** 2
    remaining = math.ceil(window / per_crop)
    while remaining > 0:
        n = min(cfg.eval_batch, remaining)
        usage.update(model.encode(stream.next(n).to(device)))
        remaining -= n
    result.window_usage = usage.window_usage
    result.window_perplexity = usage.perplexity
    result.dead_codes = usage.dead_codes
    result.window_tokens = usage.window_tokens

    if data.kodak is not None:
        tok = load_tokenizer(artifact, device=cfg.device, precision="fp32")
        name = f"{result.method} K={result.codebook_size}"
        found = asdict(kodak.evaluate_tokenizer(tok, data.kodak, name, str(artifact)))
        found.pop("per_image")
        result.kodak = found
    result.eval_seconds = time.perf_counter() - start


def run_one(
    method: Method,
    size: int,
    data: BenchData,
    cfg: BenchConfig,
    work: Path | None = None,
    log: Any = print,
) -> RunResult:
    """Train (or continue) and evaluate one configuration in ``work`` (None: a temporary
    folder, no state kept); any exception is recorded, not raised."""
    result = RunResult(method=method, nominal_size=size)
    tmp: Path | None = None
    try:
        module, rec = build_module(method, size, cfg)
        config = module.config
        q = config.resolved_quantizer
        result.codebook_size = q.codebook_size
        result.levels = list(q.resolved_levels) if isinstance(q, FSQConfig) else None
        result.code_dim = config.resolved_code_dim
        result.params = sum(p.numel() for p in module.model.parameters())
        result.recipe = {"config": rec.source, **rec.module_args}
        if work is None:
            import tempfile

            tmp = work = Path(tempfile.mkdtemp(prefix="quality-"))
        work.mkdir(parents=True, exist_ok=True)
        train(module, rec, data, cfg, result, work / "state.pt", log)
        artifact = save_tokenizer(module.model, work / "artifact")
        evaluate(module, data, cfg, result, artifact)
        (work / "result.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    except Exception as exc:  # noqa: BLE001 - one failed configuration must not end the benchmark
        result.error = f"{type(exc).__name__}: {exc}"
        log(traceback.format_exc())
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
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


@dataclass(frozen=True)
class UsageTrend:
    """Training-mode window usage against log2(step) over the second half of a run."""

    per_doubling: float  # usage gained per doubling of the steps (the fitted slope)
    steps_to_target: float | None  # where the fitted line reaches the target; None: never


def usage_trend(
    history: Sequence[dict[str, float]], target: float, first_step: int
) -> UsageTrend | None:
    """Least-squares line usage = a + b * log2(step) through the history points at or after
    ``first_step`` (the window must be full and the warm-up over); the step at which it
    reaches ``target``. An extrapolation, not a prediction: usage curves bend."""
    points = [(math.log2(h["step"]), h["window_usage"]) for h in history if h["step"] >= first_step]
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    a = my - b * mx
    steps = 2 ** ((target - a) / b) if b > 0 else None
    return UsageTrend(b, steps)


def trend_table(results: Sequence[RunResult], cfg: BenchConfig) -> list[str]:
    """Rows for the runs whose usage misses their method's target: the usage trend."""
    targets = {
        "simvq": TARGET_SIMVQ_USAGE,
        "simvq_rotation": TARGET_SIMVQ_USAGE,
        "fsq": TARGET_FSQ_USAGE,
    }
    rows = []
    for r in results:
        target = targets.get(r.method)
        if target is None or not r.ok or r.window_usage >= target:
            continue
        f = r.recipe["vqvae"]["f"] if r.recipe else 8
        tokens_per_step = cfg.batch_size * (cfg.crop // f) ** 2
        full = math.ceil(window_size(r.codebook_size, cfg) / tokens_per_step)
        trend = usage_trend(r.history, target, max(full, cfg.steps // 2))
        if trend is None:
            continue
        last = r.history[-1]["window_usage"] if r.history else math.nan
        reach = (
            "never (usage not rising)"
            if trend.steps_to_target is None
            else f"{trend.steps_to_target:,.0f} ({trend.steps_to_target / cfg.steps:,.0f}x the budget)"
        )
        rows.append(
            f"| {r.method} | {r.codebook_size:,} | {last:.1%} | {trend.per_doubling:+.1%} | "
            f"{target:.0%} | {reach} |"
        )
    if not rows:
        return []
    return [
        "| method | K | training window usage, last step | gain per doubling of steps | "
        "target | steps to target (log-linear extrapolation) |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


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


def recipe_summary(results: Sequence[RunResult]) -> str:
    """The recipe as trained (from the first finished run: the configs share it)."""
    ok = sorted((r for r in results if r.ok and r.recipe), key=lambda r: r.method == "fsq")
    if not ok:
        return "n/a"
    a = ok[0].recipe
    v = a["vqvae"]
    return (
        f"VQ-VAE f={v['f']}, widths {v['widths']}, {v['num_res_blocks']} res block(s) per "
        f"level, code dim {v.get('code_dim')} for VQ (plain/SimVQ), len(levels) for FSQ; AdamW "
        f"lr {a['lr']:g}, weight decay {a['weight_decay']:g}, {a['warmup_steps']} warmup steps "
        f"then cosine to {a['min_lr_ratio']:g}x; loss MSE + quantizer loss "
        f"(+ {a['l1_weight']:g} L1) — `train.module.VQVAEModule` with `configs/<method>.yaml`"
    )


def kodak_table(runs: Sequence[RunResult]) -> list[str]:
    rows = [r for r in runs if r.ok and r.kodak]
    if not rows:
        return []
    lines = [
        "| method | K | Kodak PSNR dB | Kodak SSIM | usage over Kodak tokens | perplexity "
        "| dead codes | bpp log2(K)/f² | bpp code entropy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        k = r.kodak or {}
        lines.append(
            f"| {r.method} | {r.codebook_size:,} | {k['psnr']:.2f} | {k['ssim']:.3f} "
            f"| {k['usage']:.1%} ({k['tokens']:,} tokens) | {k['perplexity']:,.0f} "
            f"| {k['dead_codes']:,} | {k['bpp_nominal']:.4f} | {k['bpp_entropy']:.4f} |"
        )
    return lines


def codec_table(codecs: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| codec | quality | bpp | PSNR dB | SSIM |", "|---|---|---|---|---|"]
    for p in codecs:
        lines.append(
            f"| {p['codec']} | {p['quality']} | {p['bpp']:.3f} | {p['psnr']:.2f} | {p['ssim']:.3f} |"
        )
    return lines


def render_report(
    results: Sequence[RunResult],
    cfg: BenchConfig,
    meta: dict[str, Any],
    *,
    plots: Sequence[str],
    analysis: str,
) -> str:
    sizes = sorted({r.nominal_size for r in results})
    f = next((r.recipe["vqvae"]["f"] for r in results if r.recipe), 8)
    lines = [
        "# Quality benchmark: STE vs rotation trick vs SimVQ vs FSQ",
        "",
        "Generated by `bench/quality.py` (the tables, targets and plots; the analysis at the end "
        "is written by hand).",
        "",
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}; total wall time {meta['total_seconds'] / 60:.1f} min "
        "(of this invocation; a resumed run adds to the per-run train seconds)",
        f"- Machine: {meta['machine']}; device `{cfg.device}`, precision "
        f"{meta.get('precision', 'fp32')}; torch {meta['torch']}, torch threads "
        f"{meta['threads']}, Python {meta['python']}",
        f"- Recipe (every run): {recipe_summary(results)}; plain codebooks (ste, rotation): "
        + (
            "the papers' setting (uniform init, no dead-code restart)"
            if cfg.plain == "papers"
            else "the configs' setting (data init + dead-code restart)"
        )
        + (f"; overrides {list(cfg.overrides)}" if cfg.overrides else ""),
        f"- Budget (every run): {cfg.steps} steps x batch {cfg.batch_size} of {cfg.crop}x{cfg.crop} "
        f"random crops ({cfg.steps * cfg.batch_size:,} crops, "
        f"{cfg.steps * cfg.batch_size * (cfg.crop // f) ** 2:,} training tokens); seed "
        f"{cfg.seed}, one crop stream shared by all runs",
        f"- Data: {meta.get('data', 'n/a')}",
        "- Usage figures: *window usage* = fraction of the K codes hit in a window of "
        f"max({cfg.window_factor}·K, {cfg.min_window:,}) tokens of training crops encoded in "
        "eval mode after training (perplexity and dead codes over the same window); *epoch "
        "usage* = fraction hit over the held-out crops' tokens; *usage over Kodak tokens*: "
        "over every token of the full Kodak images. ‖e−q‖²: mean over held-out tokens of the "
        "squared distance between the encoder output and its code (FSQ: before the tanh "
        "bound). Held-out PSNR: mean over crops; Kodak PSNR: mean over images of the per-image "
        "PSNR (RGB, whole image, uint8), from the exported artifact loaded in float32; "
        "train-crop PSNR: from the training MSE over the last quarter of the steps.",
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
        table = kodak_table(runs)
        if table:
            lines += ["", f"Kodak (K = {size:,}):", ""] + table
    trend = trend_table(results, cfg)
    if trend:
        lines += [
            "",
            "## Usage trend of the runs below their target",
            "",
            "Training-mode window usage (the usage-vs-step plot) fitted against log2(step) from "
            "the step where the window is full or half the budget, whichever is later, and "
            "extended to the target. Curves bend, so read the last column as an order of "
            "magnitude.",
            "",
            *trend,
        ]
    codecs = meta.get("codecs") or []
    if codecs:
        lines += ["", "## JPEG and WebP on the same Kodak images (Pillow)", ""]
        lines += codec_table(codecs)
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


def write_plots(
    results: Sequence[RunResult], out_dir: Path, stem: str, codecs: Sequence[dict[str, Any]]
) -> list[str]:
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
        ("psnr", "held-out crop PSNR (dB)", "psnr_vs_k"),
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

    with_kodak = [r for r in ok if r.kodak]
    if with_kodak:
        path = out_dir / f"{stem}_rd.png"
        tokenizers = [
            kodak.TokenizerResult(**{**(r.kodak or {}), "per_image": []}) for r in with_kodak
        ]
        points = [kodak.CodecPoint(**p) for p in codecs]
        kodak.plot_rd(tokenizers, points, path, "Kodak: PSNR vs bits per pixel")
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
    codecs = meta.get("codecs") or []
    plot_paths = write_plots(results, out.parent, out.stem, codecs) if plots else []
    payload = {
        "meta": meta,
        "config": {
            **asdict(cfg),
            "corpus": cfg.corpus and kodak.display_path(cfg.corpus),  # no machine paths
            "log_every": cfg.log_every,
        },
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
    for key in ("overrides", "codec_qualities"):
        if config.get(key) is not None:
            config[key] = tuple(config[key])
    results = [RunResult(**r) for r in payload["results"]]
    return results, BenchConfig(**config), payload["meta"]


# --- CLI -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model and budget (a smoke test)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--sizes", nargs="+", type=int, default=None, help="codebook sizes K")
    p.add_argument("--steps", type=int, default=None, help="training steps per configuration")
    p.add_argument("--batch-size", type=int, default=None, help="crops per step")
    p.add_argument("--crop", type=int, default=None, help="training crop side (multiple of f)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--plain",
        choices=["papers", "recipe"],
        default=None,
        help="plain codebooks (ste, rotation): the papers' uniform init without restart "
        "(default), or the configs' data init + dead-code restart",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="model.KEY=VALUE",
        help="override a model option of every config, e.g. --set model.lr=1e-3 "
        "--set model.vqvae.quantizer.beta=0.5 (repeatable)",
    )
    p.add_argument(
        "--corpus",
        default=None,
        help="folder with train/ (val/, kodak/); 'none' = the bundled photographs; "
        "default ../shared/data when it exists",
    )
    p.add_argument("--kodak-limit", type=int, default=None, help="first N Kodak images only")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--save-every", type=float, default=None, help="seconds between state saves")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="(method, K) runs trained at the same time, each in its own process (default 1); "
        "on a small CPU use --jobs N --threads 1",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown report path")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help=f"per-configuration state, artifacts and results (default {DEFAULT_WORK_DIR.relative_to(ROOT)}/, "
        "--quick: next to --out)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip finished configurations of --work-dir, continue unfinished ones",
    )
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
        "seed": args.seed,
        "plain": args.plain,
        "device": args.device,
        "precision": args.precision,
        "threads": args.threads,
        "save_every": args.save_every,
        "kodak_limit": args.kodak_limit,
        "overrides": tuple(args.overrides) or None,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    corpus = "none" if args.quick and args.corpus is None else args.corpus
    cfg = replace(cfg, corpus=corpus_dir(corpus))
    for name in ("steps", "batch_size", "crop"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(cfg, name)} must be >= 1")
    f = max(recipe(m, 1024, cfg).module_args["vqvae"]["f"] for m in METHODS)
    if cfg.crop % f:
        raise ValueError(f"--crop={cfg.crop} must be a multiple of f={f}")
    if args.jobs < 1:
        raise ValueError(f"--jobs={args.jobs} must be >= 1")
    bad = [s for s in sizes if s < 2]
    if bad:
        raise ValueError(f"--sizes {bad}: codebook sizes must be >= 2")
    return cfg, sizes


def _display_arg(arg: str) -> str:
    """Paths inside or beside the repository are shown relative to it (the report is
    committed)."""
    return kodak.display_path(arg) if Path(arg).is_absolute() else arg


def iter_runs(methods: Sequence[Method], sizes: Sequence[int]) -> Iterator[tuple[Method, int]]:
    for size in sizes:
        for method in methods:
            yield method, size


def finished_result(work: Path) -> RunResult | None:
    path = work / "result.json"
    return RunResult(**json.loads(path.read_text())) if path.exists() else None


# Per-process state of a --jobs worker (set by _init_worker).
_WORKER_DATA: BenchData | None = None
_WORKER_CFG: BenchConfig | None = None


def _init_worker(cfg: BenchConfig) -> None:
    global _WORKER_DATA, _WORKER_CFG
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _WORKER_DATA, _WORKER_CFG = load_data(cfg, with_codecs=False), cfg


def _worker_run(method: Method, size: int, work: Path) -> tuple[RunResult, float]:
    """One (method, K) run in a --jobs worker process; log lines carry the run's name."""
    assert _WORKER_DATA is not None and _WORKER_CFG is not None, "_init_worker did not run"
    t0 = time.perf_counter()
    print(f"[{method} K={size}] start", flush=True)
    r = run_one(
        method,
        size,
        _WORKER_DATA,
        _WORKER_CFG,
        work,
        log=lambda s: print(f"[{method} K={size}] {s}", flush=True),
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
    work_dir = args.work_dir or (
        args.out.parent / f"{args.out.stem}_runs" if args.quick else DEFAULT_WORK_DIR
    )
    runs = list(iter_runs(args.methods, sizes))
    if not args.resume:
        started = [w for m, k in runs if (w := run_dir(work_dir, m, k)).exists()]
        if started:
            print(
                f"error: {started[0]} holds an earlier run; pass --resume to continue it "
                "(finished configurations are skipped) or remove it",
                file=sys.stderr,
            )
            return 2
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    command = "python bench/quality.py " + " ".join(
        _display_arg(a) for a in (sys.argv[1:] if argv is None else list(argv))
    )
    print(f"config: {cfg}", flush=True)
    if cfg.corpus is None and not args.quick:
        print("note: no photo corpus found; training on the bundled photographs, no Kodak")
    data = load_data(cfg)
    print(f"data: {data.description}; Kodak: {len(data.kodak.names) if data.kodak else 0} images")
    results: list[RunResult] = []
    start = time.perf_counter()

    def meta() -> dict[str, Any]:
        return {
            **run_metadata(command, time.perf_counter() - start, cfg),
            "precision": cfg.resolved_precision,
            "data": data.description
            + (f"; Kodak: {len(data.kodak.names)} full images" if data.kodak else "; no Kodak"),
            "codecs": [asdict(p) for p in data.codecs],
        }

    def finished(r: RunResult, seconds: float) -> None:
        results.append(r)
        status = (
            f"PSNR {r.psnr:.2f} SSIM {r.ssim:.3f} usage {r.window_usage:.1%} "
            f"epoch {r.epoch_usage:.1%} dead {r.dead_codes}"
            + (f" Kodak {r.kodak['psnr']:.2f} dB" if r.kodak else "")
            if r.ok
            else f"FAILED {r.error}"
        )
        print(f"    -> {r.method} K={r.nominal_size}: {status} ({seconds:.0f}s)", flush=True)
        # Rewrite report + JSON after every run, so a cut-off benchmark still leaves numbers.
        results.sort(key=lambda x: runs.index((x.method, x.nominal_size)))  # type: ignore[arg-type]
        write_outputs(results, cfg, args.out, meta(), plots=False)

    todo = []
    for method, size in runs:
        done = finished_result(run_dir(work_dir, method, size)) if args.resume else None
        if done is not None:
            print(f"{method} K={size}: finished earlier, skipped", flush=True)
            finished(done, 0.0)
        else:
            todo.append((method, size))
    if args.jobs == 1:
        for method, size in todo:
            t0 = time.perf_counter()
            print(f"[{time.perf_counter() - start:7.0f}s] {method} K={size} ...", flush=True)
            work = run_dir(work_dir, method, size)
            r = run_one(method, size, data, cfg, work, log=lambda s: print(s, flush=True))
            finished(r, time.perf_counter() - t0)
    else:
        # spawn: fresh interpreters (no forked torch thread pools); each loads the data once.
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=args.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(cfg,),
        ) as pool:
            futures = {
                pool.submit(_worker_run, m, k, run_dir(work_dir, m, k)): (m, k) for m, k in todo
            }
            for future in concurrent.futures.as_completed(futures):
                r, seconds = future.result()
                finished(r, seconds)
    write_outputs(results, cfg, args.out, meta())
    print(f"wrote {args.out}")
    return 0 if any(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
