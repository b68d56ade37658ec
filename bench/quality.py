"""Quality benchmark: STE vs rotation trick vs SimVQ (+ rotation) vs FSQ across codebook sizes.

    python bench/quality.py --corpus DIR --steps 600 --jobs 2 --threads 1   # the corpus run
    python bench/quality.py --corpus DIR --resume ...same arguments...     # continue it
    python bench/quality.py --quick                                        # a smoke run

Every configuration trains through ``vq-train fit --config configs/<method>.yaml``
(Lightning's Trainer, ``train.module.VQVAEModule``, ``train.data.ImageDataModule``) with the
codebook size changed (FSQ: the recommended levels nearest K), the budget of this benchmark,
and ``--set KEY=VALUE`` overrides of every config (any ``vq-train`` option, e.g.
``--set model.optimizer.lr=1e-3``). Plain codebooks (ste, rotation) run in each setting of ``--plain``
(``SETTINGS``): ``papers`` (the default: uniform init, no dead-code restart), ``recipe`` (the
configs' data init + restart), ``rotation-paper`` (the rotation-trick paper's VQ-VAE runs, its
``src/models/vq_vae.py``: an l2-normalised (cosine) EMA codebook with decay 0.8, commitment
1.0, kaiming-scale init).

Data: ``--corpus DIR`` with ``train/`` (``val/`` held out when present, Kodak from
``DIR/kodak`` or ``--kodak``); without it the bundled scikit-image photographs and no Kodak.
Each configuration works in ``WORK/<method>_K<K>/`` (a ``vq-train`` run folder); ``--resume``
skips finished configurations and continues unfinished ones from their ``last.ckpt``.

Measured per configuration, from the exported artifact in float32: held-out crop PSNR/SSIM and
quantization error ||e - q||²; *window usage* over max(4K, 65,536) training-crop tokens;
*fixed-set usage* over at least 16 tokens per code (every held-out token, then training
tokens: the SimVQ paper's protocol); usage vs step (the run's TensorBoard log); Kodak
figures (``bench/kodak.py``) against JPEG/WebP. Writes ``quality.json``, ``quality.md``
(``bench/report.py``) and plots into ``--out`` (default ``runs/bench/quality``; ``--quick``:
``runs/bench-quick/quality``, replaced on each quick run).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import common  # first: it puts the repository on sys.path
import kodak
import numpy as np
import report
import torch
import yaml
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from train import cli
from train.data import ImageDataModule
from vq import CodebookUsage, load_tokenizer
from vq.model import FSQ_RECOMMENDED_LEVELS
from vq.pixels import float_to_unit

CONFIGS = common.ROOT / "configs"
METHODS = ("ste", "rotation", "simvq", "simvq_rotation", "fsq")  # configs/<method>.yaml
PLAIN_METHODS = ("ste", "rotation")
SIZES = (1024, 8192, 65536)
QUICK_SIZES = (256, 1024)
# Plain-codebook settings: quantizer options over the config's.
SETTINGS: dict[str, dict[str, Any]] = {
    "papers": {"codebook_init": "uniform", "dead_code_threshold": 0.0},
    "recipe": {},
    "rotation-paper": {
        "codebook_norm": "l2",
        "codebook_update": "ema",
        "ema_decay": 0.8,
        "beta": 1.0,
        "codebook_init": "kaiming",
        "dead_code_threshold": 0.0,
    },
}


@dataclass(frozen=True)
class BenchConfig:
    """Budget, data and measurement shared by every (method, K) run (not the recipe)."""

    steps: int = 400
    batch_size: int = 16
    crop: int = 64
    seed: int = 0
    plain: tuple[str, ...] = ("papers",)  # the plain codebooks' settings (SETTINGS)
    overrides: tuple[str, ...] = ()  # "KEY=VALUE" vq-train options for every config
    tiny: bool = False  # a tiny architecture (the --quick smoke run)
    corpus: str | None = None  # folder with train/ (val/); None = bundled photographs
    kodak: str | None = None
    kodak_limit: int | None = None
    codec_qualities: tuple[int, ...] | None = None  # None: bench/kodak.py's sweeps
    history_points: int = 40  # usage-vs-step samples per run
    val_crop: int = 128
    val_crops_per_image: int = 64
    min_window: int = 65536  # the window holds max(4 K, min_window) tokens
    tokens_per_code: int = 16  # fixed-set usage: at least this many tokens per code
    eval_batch: int = 64
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads per run


QUICK = BenchConfig(
    steps=6,
    batch_size=4,
    crop=32,
    history_points=3,
    tiny=True,
    val_crop=32,
    val_crops_per_image=4,
    min_window=0,
    tokens_per_code=2,
    kodak_limit=1,
    codec_qualities=kodak.QUICK_QUALITIES,
    threads=1,
)


def fsq_levels_for(size: int) -> tuple[int, ...]:
    """The FSQ paper's recommended levels whose size is nearest K in log2 (ties go up)."""
    best = min(FSQ_RECOMMENDED_LEVELS, key=lambda s: (abs(math.log2(s) - math.log2(size)), -s))
    return FSQ_RECOMMENDED_LEVELS[best]


def fit_args(method: str, size: int, cfg: BenchConfig, work: Path, setting: str = "") -> list[str]:
    """``vq-train`` arguments of one configuration: its config, K, this budget, the data."""
    config_path = CONFIGS / f"{method}.yaml"
    opts: dict[str, Any] = {
        "trainer.default_root_dir": work,
        "trainer.accelerator": "gpu" if cfg.device.startswith("cuda") else "cpu",
        "trainer.devices": 1,
        "trainer.max_steps": cfg.steps,
        "trainer.log_every_n_steps": max(1, cfg.steps // cfg.history_points),
        "trainer.limit_val_batches": 0,  # evaluated below, from the exported artifact
        "trainer.num_sanity_val_steps": 0,
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
        "seed_everything": cfg.seed,
        "model.optimizer.warmup_steps": warmup_steps(method, cfg.steps),
        "data.crop_size": cfg.crop,
        "data.batch_size": cfg.batch_size,
        "data.samples_per_epoch": cfg.steps * cfg.batch_size,
        "codebook_monitor.window": window_size(size, cfg),
        "codebook_monitor.num_images": 0,
        "last_checkpoint.every_n_steps": max(1, cfg.steps // 10),
    }
    # The quantizer goes as one mapping: jsonargparse would parse a lone nested field of this
    # tagged union as the union's first type (an FSQ config's levels would become a VQ's).
    quantizer = yaml.safe_load(config_path.read_text())["model"]["vqvae"]["quantizer"]
    if method == "fsq":
        levels = fsq_levels_for(size)
        quantizer |= {"levels": list(levels), "codebook_size": math.prod(levels)}
        opts["model.vqvae.code_dim"] = len(levels)  # the encoder's projection is FSQ's
    else:
        quantizer["codebook_size"] = size
    if method in PLAIN_METHODS:
        quantizer |= SETTINGS[setting or cfg.plain[0]]
    if cfg.tiny:
        opts["model.vqvae.widths"] = [8, 8, 16, 16]
        if method != "fsq":
            opts["model.vqvae.code_dim"] = 8
    if cfg.corpus:
        opts["data.root"] = Path(cfg.corpus) / "train"
        if (Path(cfg.corpus) / "val").is_dir():
            opts["data.val_root"] = Path(cfg.corpus) / "val"
    for item in cfg.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. model.optimizer.lr=1e-3")
        if key.startswith(prefix := "model.vqvae.quantizer."):
            quantizer[key.removeprefix(prefix)] = parse_value(value)
        else:
            opts[key] = parse_value(value)
    opts["model.vqvae.quantizer"] = quantizer
    args = ["fit", "--config", str(config_path)]
    for key, value in opts.items():
        text = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
        args += [f"--{key}", text]
    # Continue the run's last.ckpt when there is one (Lightning warns when there is none).
    resume = ["--ckpt_path", "last"] if cli.latest_resumable_version(work) else []
    return args + resume


def parse_value(text: str) -> Any:
    """A YAML scalar, with "1e-3" read as a number (YAML 1.1 wants "1.0e-3")."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def warmup_steps(method: str, steps: int) -> int:
    """The config's warmup share of its budget, applied to ``steps``."""
    config = yaml.safe_load((CONFIGS / f"{method}.yaml").read_text())
    return max(
        1,
        round(
            config["model"]["optimizer"]["warmup_steps"] * steps / config["trainer"]["max_steps"]
        ),
    )


def window_size(size: int, cfg: BenchConfig) -> int:
    return max(4 * size, cfg.min_window)


@dataclass
class RunResult:
    method: str
    nominal_size: int
    setting: str = ""
    codebook_size: int = 0
    levels: list[int] | None = None
    error: str | None = None
    train_seconds: float = math.nan  # of this invocation (a resumed run: the rest only)
    eval_seconds: float = math.nan
    psnr: float = math.nan  # held-out crops
    ssim: float = math.nan
    quant_error: float = math.nan  # mean over held-out tokens of ||e - q||^2
    quant_error_rel: float = math.nan  # sum ||e - q||^2 / sum ||e||^2
    window_usage: float = math.nan
    window_perplexity: float = math.nan
    dead_codes: int = 0
    window_tokens: int = 0
    fixed_usage: float = math.nan
    fixed_tokens: int = 0
    kodak: dict[str, Any] | None = None  # bench/kodak.py's figures, without per-image
    history: list[dict[str, float]] = field(default_factory=list)  # step, window_usage, mse


def history(run: Path) -> list[dict[str, float]]:
    """(step, window usage, train MSE) from the run's TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    if "usage/window_usage" not in tags:
        return []
    mse = {e.step: e.value for e in acc.Scalars("train/mse")} if "train/mse" in tags else {}
    return [
        {"step": e.step + 1, "window_usage": e.value, "train_mse": mse.get(e.step, math.nan)}
        for e in acc.Scalars("usage/window_usage")
    ]


def datamodule(cfg: BenchConfig, crops: int = 1) -> ImageDataModule:
    corpus = Path(cfg.corpus) if cfg.corpus else None
    val = corpus / "val" if corpus and (corpus / "val").is_dir() else None
    dm = ImageDataModule(
        root=str(corpus / "train") if corpus else None,
        val_root=str(val) if val else None,
        crop_size=cfg.crop,
        val_crop_size=cfg.val_crop,
        val_crops_per_image=cfg.val_crops_per_image,
        batch_size=cfg.eval_batch,
        samples_per_epoch=crops,
    )
    dm.setup("fit")
    return dm


def training_crops(cfg: BenchConfig, crops: int, seed: int) -> Any:
    """``crops`` random training crops in batches, the same for every run (its own seed)."""
    torch.manual_seed(seed)  # the crop stream's seed (ImageDataModule draws from it)
    return datamodule(cfg, crops).train_dataloader()


@torch.no_grad()
def evaluate(artifact: Path, cfg: BenchConfig, result: RunResult, images: Any) -> None:
    """The exported artifact in float32: held-out crops, window and fixed-set usage, Kodak."""
    start = time.perf_counter()
    tok = load_tokenizer(artifact, device=cfg.device, precision="fp32")
    model, k = tok.model, tok.codebook_size
    device = torch.device(cfg.device)
    fixed = torch.zeros(k, dtype=torch.long, device=device)
    psnrs, ssims, err, norm = [], [], 0.0, 0.0
    val = torch.from_numpy(np.stack(datamodule(cfg).val_crops()))
    for chunk in val.permute(0, 3, 1, 2).split(cfg.eval_batch):  # (B, 3, h, w) uint8
        images_in = chunk.to(device).float() / 127.5 - 1
        out = model(images_in)
        pred, target = float_to_unit(out.recon.float()), float_to_unit(images_in)
        psnrs.append(
            peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
        )
        ssim = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
        assert isinstance(ssim, torch.Tensor)  # a tuple only with return_full_image=True
        ssims.append(ssim)
        e, q = out.z.float(), out.quantizer.quantized.float()  # (B, D, h, w)
        err, norm = err + float(((e - q) ** 2).sum()), norm + float((e**2).sum())
        fixed += torch.bincount(out.quantizer.indices.flatten(), minlength=k)
    val_tokens = int(fixed.sum())
    result.psnr = float(torch.cat(psnrs).mean())
    result.ssim = float(torch.cat(ssims).mean())
    result.quant_error = err / max(val_tokens, 1)
    result.quant_error_rel = err / max(norm, 1e-12)

    per_crop = (cfg.crop // tok.f) ** 2
    window = CodebookUsage(k, window=window_size(k, cfg), device=device)
    for batch in training_crops(cfg, math.ceil(window_size(k, cfg) / per_crop), cfg.seed + 2):
        window.update(model.encode(batch.to(device)))
    result.window_usage, result.window_perplexity = window.window_usage, window.perplexity
    result.dead_codes, result.window_tokens = window.dead_codes, window.window_tokens
    missing = cfg.tokens_per_code * k - val_tokens
    if missing > 0:  # the held-out tokens do not reach tokens_per_code * K: training crops
        for batch in training_crops(cfg, math.ceil(missing / per_crop), cfg.seed + 3):
            fixed += torch.bincount(model.encode(batch.to(device)).flatten(), minlength=k)
    result.fixed_usage = float((fixed > 0).sum()) / k
    result.fixed_tokens = int(fixed.sum())
    if images is not None:
        name = f"{result.method} K={result.codebook_size}"
        scorer, _ = kodak.lpips_scorer()  # None (a note in kodak.md) without the weights
        found = kodak.evaluate_tokenizer(tok, images, name, str(artifact), scorer)
        found.pop("per_image")
        result.kodak = found
    result.eval_seconds = time.perf_counter() - start


def run_one(
    method: str, size: int, cfg: BenchConfig, work: Path, images: Any = None, setting: str = ""
) -> RunResult:
    """Train (or continue) and evaluate one configuration in ``work``; an exception is
    recorded in the result, not raised (one failure must not end the benchmark)."""
    result = RunResult(method, size, setting=setting)
    try:
        args = fit_args(method, size, cfg, work, setting)
        start = time.perf_counter()
        try:
            cli.main(args)
        except SystemExit as exc:  # vq-train's clean exit on bad input
            raise RuntimeError(f"vq-train {' '.join(args)} exited with {exc.code}") from None
        result.train_seconds = time.perf_counter() - start
        version = cli.latest_resumable_version(work)
        if version is None:
            raise RuntimeError(f"no finished run under {work}")
        run = work / version
        config = json.loads((run / "artifact" / "config.json").read_text())
        q = config["quantizer"]
        result.codebook_size, result.levels = q["codebook_size"], q.get("levels")
        result.history = history(run)
        evaluate(run / "artifact", cfg, result, images)
        (work / "result.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    except Exception as exc:  # noqa: BLE001 - recorded, reported, the others go on
        result.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    return result


def configurations(
    methods: Sequence[str], sizes: Sequence[int], cfg: BenchConfig
) -> list[tuple[str, int, str]]:
    """(method, K, setting) of every run: each plain method once per setting."""
    return [
        (m, k, s)
        for k in sizes
        for m in methods
        for s in (cfg.plain if m in PLAIN_METHODS else ("",))
    ]


def run_name(method: str, size: int, setting: str) -> str:
    """The run's folder: ``<method>_K<K>``, with ``-<setting>`` after a non-default setting."""
    return f"{method}{'' if setting in ('', 'papers') else '-' + setting}_K{size}"


def _worker(method: str, size: int, cfg: BenchConfig, work: Path, setting: str) -> RunResult:
    """One configuration in a --jobs process."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    images = kodak.load_images(cfg.kodak, cfg.kodak_limit) if cfg.kodak else None
    return run_one(method, size, cfg, work, images, setting)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, "quality")
    add = p.add_argument
    add("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    add("--sizes", nargs="+", type=int, default=None, help="codebook sizes K")
    add("--steps", type=int, default=None, help="training steps per configuration")
    add("--batch-size", type=int, default=None)
    add("--crop", type=int, default=None, help="training crop side (multiple of f)")
    add("--seed", type=int, default=None)
    add("--plain", nargs="+", choices=list(SETTINGS), help="plain codebooks' settings (papers)")
    sets = "a vq-train option for every config, e.g. --set model.optimizer.lr=1e-3 (repeatable)"
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=sets)
    add("--corpus", default=None, help="folder with train/ (val/, kodak/)")
    add("--kodak", default=None, help="Kodak folder (default: CORPUS/kodak)")
    add("--kodak-limit", type=int, default=None, help="first N Kodak images only")
    add("--device", default=None, help="cpu or cuda")
    add("--threads", type=int, default=None, help="torch intra-op threads per run")
    add("--jobs", type=int, default=1, help="configurations trained at once")
    add("--work-dir", type=Path, default=None, help="run folders (default OUT/work)")
    add("--resume", action="store_true", help="continue the runs in --work-dir")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> tuple[BenchConfig, tuple[int, ...]]:
    given = {k: getattr(args, k) for k in ("steps", "batch_size", "crop", "seed", "device")}
    given |= {"threads": args.threads, "kodak_limit": args.kodak_limit}
    given |= {"plain": args.plain and tuple(args.plain), "overrides": tuple(args.overrides)}
    cfg = QUICK if args.quick else BenchConfig()
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    corpus = Path(args.corpus) if args.corpus is not None else None
    if corpus is not None and not (corpus / "train").is_dir():
        raise ValueError(f"--corpus {args.corpus!r} has no train/ folder")
    kodak_dir = args.kodak
    if kodak_dir is None and corpus and (corpus / "kodak").is_dir():
        kodak_dir = str(corpus / "kodak")
    if kodak_dir is not None and not Path(kodak_dir).is_dir():
        raise ValueError(f"--kodak {kodak_dir!r} is not a folder")
    cfg = replace(cfg, corpus=args.corpus, kodak=kodak_dir)
    checked = {"steps": cfg.steps, "batch-size": cfg.batch_size, "crop": cfg.crop}
    for name, value in {**checked, "jobs": args.jobs}.items():
        if value < 1:
            raise ValueError(f"--{name}={value} must be >= 1")
    if cfg.crop % 8:
        raise ValueError(f"--crop={cfg.crop} must be a multiple of f=8")
    sizes = tuple(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    if any(s < 2 for s in sizes):
        raise ValueError(f"--sizes {list(sizes)}: codebook sizes must be >= 2")
    return cfg, sizes


def train_all(
    runs: Sequence[tuple[str, int, str]], cfg: BenchConfig, work_dir: Path, jobs: int, resume: bool
) -> dict[tuple[str, int, str], RunResult]:
    """Every configuration, ``jobs`` at once in spawned processes; with ``resume`` a finished
    one is read from its result.json instead."""
    results: dict[tuple[str, int, str], RunResult] = {}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {}
        for run in runs:
            work = work_dir / run_name(*run)
            if resume and (work / "result.json").exists():
                results[run] = RunResult(**json.loads((work / "result.json").read_text()))
            else:
                futures[pool.submit(_worker, run[0], run[1], cfg, work, run[2])] = run
        for future in concurrent.futures.as_completed(futures):
            r = results[futures[future]] = future.result()
            said = f"PSNR {r.psnr:.2f} usage {r.window_usage:.1%} fixed-set {r.fixed_usage:.1%}"
            print(
                f"{run_name(*futures[future])}: {f'FAILED {r.error}' if r.error else said}",
                flush=True,
            )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg, sizes = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = common.out_dir(args.out, "quality", args.quick)
    work_dir = args.work_dir or out / "work"
    if args.quick and args.out is None and not args.resume:
        shutil.rmtree(out, ignore_errors=True)  # the default quick folder is scratch
    runs = configurations(args.methods, sizes, cfg)
    started = [w for r in runs if (w := work_dir / run_name(*r)).exists()]
    if started and not args.resume:
        print(
            f"error: {started[0]} holds an earlier run; pass --resume or remove it", file=sys.stderr
        )
        return 2
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.corpus is None and not args.quick:
        print("note: no --corpus; training on the bundled photographs")
    images = kodak.load_images(cfg.kodak, cfg.kodak_limit) if cfg.kodak else None
    scorer, _ = kodak.lpips_scorer()
    codecs = kodak.codec_sweep(images, cfg.codec_qualities, scorer) if images is not None else []
    dm = datamodule(cfg)
    shown = kodak.display_path(cfg.corpus) if cfg.corpus else "the bundled photographs"
    data = f"{shown}: {len(dm.train_names)} training, {len(dm.val_names)} held-out images; "
    data += f"Kodak: {len(images.names)} whole images" if images else "no Kodak"
    start = time.perf_counter()
    results = train_all(runs, cfg, work_dir, args.jobs, args.resume)
    command = [kodak.display_path(a) if Path(a).is_absolute() else a for a in argv or sys.argv[1:]]
    meta = common.meta("quality", command, args.quick)
    if cfg.device.startswith("cuda") and torch.cuda.is_available():
        meta["machine"] += f", GPU {torch.cuda.get_device_name(torch.device(cfg.device))}"
    meta.update(total_seconds=time.perf_counter() - start, data=data, methods=list(METHODS))
    payload = {
        "meta": {**meta, "codecs": codecs},
        "config": {
            **asdict(cfg),
            "corpus": cfg.corpus and kodak.display_path(cfg.corpus),
            "kodak": cfg.kodak and kodak.display_path(cfg.kodak),
        },
        "results": [asdict(results[r]) for r in runs],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(payload, indent=1) + "\n")
    report.render(out / "quality.json", out / "quality.md")
    print(f"wrote {out / 'quality.json'}, quality.md and plots")
    return 0 if any(r.error is None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
