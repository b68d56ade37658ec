"""CPU throughput of the fast path (issue 9): GEMM peaks, encode/decode, code agreement,
training steps and the nearest-code search against faiss, in one run.

    python bench/throughput.py            # the full run (~10 min on 2 cores)
    python bench/throughput.py --quick    # seconds: tiny sizes, for the test suite

Configurations (encode/decode): "fp32 NCHW eager" is the network as it ran before (float32,
contiguous NCHW); "fp32 channels_last" and "bf16 channels_last" are what ``vq.Tokenizer``
runs at precision "fp32" and "bf16". FLOPs are counted with ``torch.utils.flop_counter`` on
one image and multiplied by the images per second. Results go to
runs/bench/throughput.md and a JSON file beside it (``--out docs/benchmarks/throughput.md``
updates the committed report).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import vq  # noqa: E402
from vq.precision import autocast, bf16_native  # noqa: E402
from vq.search import nearest_code  # noqa: E402

DEFAULT_OUT = REPO / "runs" / "bench" / "throughput.md"  # docs/benchmarks/ only when asked
KODAK = REPO.parent / "shared" / "data" / "kodak"
CONFIGS = ("fp32 NCHW eager", "fp32 channels_last", "bf16 channels_last")
# What users get: Tokenizer.encode/decode at precision bf16 (channels_last, CPU batches in
# chunks of vq.tokenizer.CPU_CHUNK_PIXELS), from uint8 pixels to int64 codes and back.
SHIPPED = "bf16 Tokenizer (chunked)"


def best_time(step: Callable[[], object], repeats: int, budget_s: float) -> float:
    """Best of up to ``repeats`` timed calls (after one warm-up) within ``budget_s``."""
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    repeats = max(1, min(repeats, int(budget_s // max(first, 1e-9))))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak(n: int, dtype: torch.dtype, budget_s: float) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / best_time(lambda: a @ b, 5, budget_s) / 1e9


@contextlib.contextmanager
def configured(model: torch.nn.Module, config: str) -> Iterator[Callable[[torch.Tensor], Any]]:
    """The model laid out for ``config``; yields a function converting inputs alike."""
    fmt = torch.contiguous_format if "NCHW" in config else torch.channels_last
    model.to(memory_format=fmt)  # type: ignore[call-overload]  # torch's stubs lack it
    precision = "bf16" if config.startswith("bf16") else "fp32"
    with autocast("cpu", precision):  # type: ignore[arg-type]
        yield lambda x: x.contiguous(memory_format=fmt)
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def encode_decode(
    tok: vq.Tokenizer, shipped: vq.Tokenizer, size: int, batches: list[int], budget_s: float
) -> list[dict[str, Any]]:
    """Each of CONFIGS on ``tok``'s network, then SHIPPED through ``shipped`` (a bf16
    Tokenizer of the same artifact)."""
    model = tok.model
    rows = []
    g = torch.Generator().manual_seed(0)
    for batch in batches:
        x = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
        pixels = ((x + 1) * 127.5).round().to(torch.uint8)
        with torch.inference_mode():
            codes = model.encode(x)
            enc_flops = flops(functools.partial(model.encode, x[:1]))
            dec_flops = flops(functools.partial(model.decode, codes[:1]))
            for config in (*CONFIGS, SHIPPED):
                if config == SHIPPED:
                    t_enc = best_time(functools.partial(shipped.encode, pixels), 5, budget_s)
                    t_dec = best_time(functools.partial(shipped.decode, codes), 5, budget_s)
                else:
                    with configured(model, config) as prep:
                        xc = prep(x)
                        t_enc = best_time(functools.partial(model.encode, xc), 5, budget_s)
                        t_dec = best_time(functools.partial(model.decode, codes), 5, budget_s)
                rows.append(
                    {
                        "batch": batch,
                        "config": config,
                        "encode_img_s": batch / t_enc,
                        "encode_gflops": enc_flops * batch / t_enc / 1e9,
                        "decode_img_s": batch / t_dec,
                        "decode_gflops": dec_flops * batch / t_dec / 1e9,
                    }
                )
                print(f"  {size}px batch {batch} {config}: {rows[-1]}", flush=True)
    return rows


def onnxruntime_rows(
    tok: vq.Tokenizer, size: int, batch: int, budget_s: float
) -> dict[str, Any] | None:
    """encode/decode images/s of the ``vq-export --onnx`` graphs under onnxruntime (CPU),
    with as many intra-op threads as torch uses; None if onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import tempfile

    from vq.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        enc_path, dec_path = export_onnx(tok.model, tmp)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        enc = ort.InferenceSession(str(enc_path), options, providers=["CPUExecutionProvider"])
        dec = ort.InferenceSession(str(dec_path), options, providers=["CPUExecutionProvider"])
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
        feed = {enc.get_inputs()[0].name: images.numpy()}
        codes = enc.run(None, feed)[0]
        t_enc = best_time(functools.partial(enc.run, None, feed), 5, budget_s)
        dfeed = {dec.get_inputs()[0].name: codes}
        t_dec = best_time(functools.partial(dec.run, None, dfeed), 5, budget_s)
    return {"batch": batch, "encode_img_s": batch / t_enc, "decode_img_s": batch / t_dec}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


def kodak_agreement(model_dir: Path, kodak: Path, limit: int | None) -> dict[str, Any] | None:
    """Codes and PSNR of precision bf16 against fp32 on the Kodak photos (None if absent)."""
    if not kodak.is_dir():
        return None
    from PIL import Image

    fp32 = vq.load_tokenizer(model_dir, precision="fp32")
    bf16 = vq.load_tokenizer(model_dir, precision="bf16")
    same = total = 0
    deltas = []
    files = sorted(kodak.glob("*.png"))[:limit]
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = (s - s % fp32.f for s in image.shape[:2])
        image = image[:h, :w]
        c32, c16 = fp32.encode(image), bf16.encode(image)
        same += int((c32 == c16).sum())
        total += c32.numel()
        ref = torch.from_numpy(image).permute(2, 0, 1)[None]
        deltas.append(psnr(fp32.decode(c32), ref) - psnr(bf16.decode(c16), ref))
    return {
        "images": len(files),
        "tokens": total,
        "identical": same / total,
        "psnr_delta_mean": float(np.mean(deltas)),
        "psnr_delta_max": float(np.max(np.abs(deltas))),
    }


def training(steps: int, quick: bool) -> list[dict[str, Any]]:
    """vq-train's default configuration: float32 NCHW eager against the fast path, through
    the real Lightning loop; data wait = time between one batch's end and the next's start."""
    import lightning as L
    import yaml

    from train.cli import silence_third_party_noise
    from train.data import ImageDataModule
    from train.module import VQVAEModule

    silence_third_party_noise()  # the same filters as vq-train, so the log shows only ours
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    data_cfg = dict(cfg["data"])
    if quick or not (REPO / data_cfg["root"]).is_dir():
        data_cfg.update(root=None, val_root=None)
    if quick:
        cfg["model"]["vqvae"].update(widths=[8, 8, 16, 16], num_res_blocks=1)
        data_cfg.update(crop_size=32, batch_size=2)
    else:
        data_cfg.update(root=str(REPO / data_cfg["root"]), val_root=None)
    data_cfg["samples_per_epoch"] = data_cfg["batch_size"] * (steps + 2)

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.wait = 0.0
            self.last_end: float | None = None
            self.start: float | None = None

        def on_train_batch_start(self, *args: Any) -> None:
            now = time.perf_counter()
            if self.last_end is not None:
                self.wait += now - self.last_end
            elif self.start is None:
                self.start = now
            self._t = now

        def on_train_batch_end(self, *args: Any) -> None:
            self.last_end = time.perf_counter()

    rows = []
    for name, precision, channels_last in (
        ("fp32 NCHW eager", "32-true", False),
        ("fast path (bf16-mixed, channels_last)", "bf16-mixed", True),
    ):
        if precision == "bf16-mixed" and not bf16_native("cpu"):
            continue
        module = VQVAEModule(**{k: v for k, v in cfg["model"].items()}, channels_last=channels_last)
        data = ImageDataModule(**data_cfg)
        clock = Clock()
        trainer = L.Trainer(
            max_steps=steps + 2,
            precision=precision,  # type: ignore[arg-type]
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            callbacks=[clock],
            accelerator="cpu",
            devices=1,
        )
        trainer.fit(module, datamodule=data)
        assert clock.start is not None and clock.last_end is not None
        elapsed = clock.last_end - clock.start
        rows.append(
            {
                "config": name,
                "steps_s": (steps + 1) / elapsed,
                "images_s": (steps + 1) * data_cfg["batch_size"] / elapsed,
                "data_wait": clock.wait / elapsed,
                "crop": data_cfg["crop_size"],
                "batch": data_cfg["batch_size"],
            }
        )
        print(f"  training {rows[-1]}", flush=True)
    return rows


def search(n: int, ks: list[int], d: int, budget_s: float) -> list[dict[str, Any]]:
    try:
        import faiss
    except ImportError:
        faiss = None  # type: ignore[assignment]  # the faiss columns stay empty
    rows = []
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    for k in ks:
        codebook = torch.randn(k, d, generator=g)
        work = 2 * n * k * d / 1e9
        row: dict[str, Any] = {"k": k}
        ours = nearest_code(x, codebook)
        row["ours"] = work / best_time(functools.partial(nearest_code, x, codebook), 3, budget_s)
        row["ours_bf16"] = work / best_time(
            functools.partial(nearest_code, x, codebook, bf16_candidates=True), 3, budget_s
        )
        if faiss is not None:
            faiss.omp_set_num_threads(torch.get_num_threads())
            index = faiss.IndexFlatL2(d)
            index.add(codebook.numpy())
            xn = x.numpy()
            row["faiss"] = work / best_time(functools.partial(index.search, xn, 1), 3, budget_s)
            _, ids = index.search(xn, 1)
            row["identical_to_faiss"] = float((torch.from_numpy(ids[:, 0]) == ours).float().mean())
        row["identical_to_fp32"] = float(
            (nearest_code(x, codebook, bf16_candidates=True) == ours).float().mean()
        )
        rows.append(row)
        print(f"  search {row}", flush=True)
    return rows


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def verdicts(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []

    def row(batch: int, config: str) -> dict[str, Any] | None:
        return next(
            (x for x in r["encode_decode"] if x["batch"] == batch and x["config"] == config), None
        )

    for batch, target, what in ((8, 6.0, "encode"), (1, 4.0, "encode"), (8, 5.0, "decode")):
        base, fast = row(batch, CONFIGS[0]), row(batch, SHIPPED)
        if base is None or fast is None:
            continue
        ratio = fast[f"{what}_img_s"] / base[f"{what}_img_s"]
        extra = ""
        if what == "encode" and batch == 8:
            share = fast["encode_gflops"] / r["gemm_bf16"]
            extra = f"; {fast['encode_gflops']:.0f} GFLOP/s = {share:.0%} of the bf16 GEMM peak"
        out.append(
            (
                f"{what} batch {batch}: bf16 Tokenizer >= {target:g}x fp32 NCHW",
                "holds" if ratio >= target else "does not hold",
                f"{ratio:.2f}x{extra}",
            )
        )
    agree = r.get("kodak")
    if agree:
        ok = agree["identical"] >= 0.985 and agree["psnr_delta_max"] <= 0.05
        out.append(
            (
                "Kodak: >= 98.5 % identical codes, PSNR within 0.05 dB",
                "holds" if ok else "does not hold",
                f"{agree['identical']:.2%} identical, max |ΔPSNR| {agree['psnr_delta_max']:.3f} dB",
            )
        )
    train = r.get("training", [])
    if len(train) == 2:
        ratio = train[1]["images_s"] / train[0]["images_s"]
        ok = ratio >= 2.0 and train[1]["data_wait"] < 0.05
        out.append(
            (
                "training images/s >= 2x fp32 eager, data wait < 5 %",
                "holds" if ok else "does not hold",
                f"{ratio:.2f}x, data wait {train[1]['data_wait']:.1%}",
            )
        )
    for s in r.get("search", []):
        if "faiss" in s:
            ratio = s["ours"] / s["faiss"]
            out.append(
                (
                    f"nearest_code >= 1.0x faiss at K = {s['k']:,}, exact",
                    "holds" if ratio >= 1.0 and s["identical_to_fp32"] == 1.0 else "does not hold",
                    f"{ratio:.2f}x ({s['ours']:.0f} vs {s['faiss']:.0f} GFLOP/s), "
                    f"both routes give the same ids ({s['identical_to_fp32']:.2%})",
                )
            )
    return out


def write_report(r: dict[str, Any], out: Path, command: str) -> None:
    lines = [
        "# CPU throughput: the fast path (bf16 + channels_last) and the search",
        "",
        f"Command: `{command}`  ",
        f"Machine: {r['machine']}  ",
        f"Date: {r['date']}; torch {torch.__version__}; {r['threads']} threads; "
        f"model `{r['model']}`; load average at start {r['load'][0]:.1f}, at end {r['load'][1]:.1f}.",
        "",
        "Ratios are from this one run (the machine is noisy; each number is the best of a few "
        "repeats).",
        "",
        "## GEMM peak (4096², or smaller with --quick)",
        "",
        f"float32 {r['gemm_fp32']:.0f} GFLOP/s, bfloat16 {r['gemm_bf16']:.0f} GFLOP/s "
        f"({r['gemm_bf16'] / r['gemm_fp32']:.2f}x).",
        "",
        f"## Encode and decode, {r['size']}×{r['size']}",
        "",
        "| batch | configuration | encode img/s | encode GFLOP/s | decode img/s | decode GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["encode_decode"]:
        lines.append(
            f"| {x['batch']} | {x['config']} | {x['encode_img_s']:.2f} | {x['encode_gflops']:.0f} "
            f"| {x['decode_img_s']:.2f} | {x['decode_gflops']:.0f} |"
        )
    ort_row = r.get("onnxruntime")
    if ort_row:
        lines += [
            "",
            f"onnxruntime (CPU provider, `vq-export --onnx` graphs, float32), batch "
            f"{ort_row['batch']}: encode {ort_row['encode_img_s']:.2f} img/s, decode "
            f"{ort_row['decode_img_s']:.2f} img/s.",
        ]
    lines += ["", "## bf16 against fp32 on Kodak", ""]
    k = r.get("kodak")
    if k:
        lines.append(
            f"{k['images']} images, {k['tokens']:,} tokens: {k['identical']:.2%} of codes identical; "
            f"PSNR (fp32 - bf16, each decoding its own codes) mean {k['psnr_delta_mean']:+.3f} dB, "
            f"max |Δ| {k['psnr_delta_max']:.3f} dB."
        )
    else:
        lines.append("Skipped: ../shared/data/kodak is absent.")
    lines += [
        "",
        "## Training (configs/default.yaml through Lightning)",
        "",
        "| configuration | crop | batch | steps/s | images/s | data wait |",
        "|---|---|---|---|---|---|",
    ]
    for t in r["training"]:
        lines.append(
            f"| {t['config']} | {t['crop']} | {t['batch']} | {t['steps_s']:.2f} "
            f"| {t['images_s']:.1f} | {t['data_wait']:.1%} |"
        )
    lines += [
        "",
        f"## nearest_code against faiss-cpu IndexFlatL2 (N = {r['search_n']:,}, D = 64)",
        "",
        "| K | ours (default: float32 tiles) GFLOP/s | ours, bf16 candidates | faiss GFLOP/s "
        "| ours / faiss | same ids as faiss |",
        "|---|---|---|---|---|---|",
    ]
    for s in r["search"]:
        f = s.get("faiss")
        theirs = ("-", "-", "-")
        if f is not None:
            theirs = (f"{f:.0f}", f"{s['ours'] / f:.2f}x", f"{s['identical_to_faiss']:.2%}")
        lines.append(
            f"| {s['k']:,} | {s['ours']:.0f} | {s['ours_bf16']:.0f} | " + " | ".join(theirs) + " |"
        )
    lines += ["", "## Targets", "", "| target | verdict | measured |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in verdicts(r)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(r, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--model", default=str(REPO / "models" / "default"))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--kodak", default=str(KODAK))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--train-steps", type=int, default=20)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    budget = 0.5 if quick else 4.0
    r: dict[str, Any] = {
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, native bf16: {bf16_native('cpu')}",
        "date": dt.date.today().isoformat(),
        "threads": torch.get_num_threads(),
        "model": Path(args.model).name,
        "load": [os.getloadavg()[0], 0.0],
    }
    print("GEMM peaks", flush=True)
    n = 512 if quick else 4096
    r["gemm_fp32"] = gemm_peak(n, torch.float32, budget)
    r["gemm_bf16"] = gemm_peak(n, torch.bfloat16, budget)
    tok = vq.load_tokenizer(args.model, precision="fp32")
    r["size"] = 32 if quick else 256
    print("encode/decode", flush=True)
    shipped = vq.load_tokenizer(args.model, precision="bf16")
    sizes = [1, 2] if quick else args.batches
    r["encode_decode"] = encode_decode(tok, shipped, r["size"], sizes, budget)
    print("onnxruntime", flush=True)
    r["onnxruntime"] = onnxruntime_rows(tok, r["size"], 2 if quick else 8, budget)
    print("Kodak agreement", flush=True)
    r["kodak"] = kodak_agreement(Path(args.model), Path(args.kodak), 2 if quick else None)
    print("training", flush=True)
    r["training"] = training(3 if quick else args.train_steps, quick)
    print("search", flush=True)
    r["search_n"] = 1024 if quick else 16384
    ks = [512, 2048] if quick else [1024, 16384, 65536, 262144]
    r["search"] = search(r["search_n"], ks, 64, budget)
    r["load"][1] = os.getloadavg()[0]
    command = "python bench/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(r, Path(args.out), command)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
