"""CPU throughput of the fast path (issue 9): GEMM peaks, encode/decode, code agreement,
training steps and the nearest-code search against faiss, in one run.

    python bench/throughput.py            # the full run (~10 min on 2 cores)
    python bench/throughput.py --quick    # seconds: tiny sizes, for the test suite

Configurations (encode/decode): "fp32 NCHW eager" is the network as it ran before (float32,
contiguous NCHW); "fp32 channels_last" and "bf16 channels_last" are what ``vq.Tokenizer``
runs at precision "fp32" and "bf16". FLOPs are counted with ``torch.utils.flop_counter`` on
one image and multiplied by the images per second. Results go to
runs/bench/throughput/throughput.{json,md} (``--out docs/benchmarks`` updates the committed
report). The bf16-vs-fp32 agreement runs over the Kodak images of ``--kodak`` (skipped
without it). Targets: bench/targets.toml.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import common  # first: it puts the repository on sys.path
import numpy as np
import torch
from metrics import psnr_uint8 as psnr
from torch.utils.flop_counter import FlopCounterMode

import vq
from vq.precision import autocast, bf16_native
from vq.search import nearest_code

CONFIGS = ("fp32 NCHW eager", "fp32 channels_last", "bf16 channels_last")
# What users get: Tokenizer.encode/decode at precision bf16 (channels_last, CPU batches in
# chunks of vq.tokenizer.CPU_CHUNK_PIXELS), from uint8 pixels to int64 codes and back.
SHIPPED = "bf16 Tokenizer (chunked)"


def best_time(step: Callable[[], object], repeats: int, budget_s: float) -> float:
    return min(common.timed(step, repeats, budget_s))


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


def kodak_agreement(
    model_dir: Path, kodak: Path | None, limit: int | None
) -> dict[str, Any] | None:
    """Codes and PSNR of precision bf16 against fp32 on the Kodak photos (None without)."""
    if kodak is None:
        return None
    from kodak import load_images

    fp32 = vq.load_tokenizer(model_dir, precision="fp32")
    bf16 = vq.load_tokenizer(model_dir, precision="bf16")
    same = total = 0
    deltas = []
    images = load_images(kodak, limit).pixels
    for image in images:
        image = image[: image.shape[0] // fp32.f * fp32.f, : image.shape[1] // fp32.f * fp32.f]
        c32, c16 = fp32.encode(image), bf16.encode(image)
        same += int((c32 == c16).sum())
        total += c32.numel()
        ref = image.transpose(2, 0, 1)[None]  # (1, 3, H, W) as the decoders return
        deltas.append(psnr(fp32.decode(c32).numpy(), ref) - psnr(bf16.decode(c16).numpy(), ref))
    return {
        "images": len(images),
        "tokens": total,
        "identical": same / total,
        "psnr_delta_mean": float(np.mean(deltas)),
        "psnr_delta_max": float(np.max(np.abs(deltas))),
    }


def training(steps: int, quick: bool) -> list[dict[str, Any]]:
    """vq-train's default configuration: float32 NCHW eager against the fast path, through
    the real Lightning loop; data wait = time between one batch's end and the next's start."""
    import yaml
    from steps import StepTimes, trainer

    from train.cli import silence_third_party_noise
    from train.data import ImageDataModule
    from train.module import VQVAEModule

    silence_third_party_noise()  # the same filters as vq-train, so the log shows only ours
    cfg = yaml.safe_load((common.ROOT / "configs" / "default.yaml").read_text())
    data_cfg = dict(cfg["data"])
    if quick or not (common.ROOT / data_cfg["root"]).is_dir():
        data_cfg.update(root=None, val_root=None)
    if quick:
        cfg["model"]["vqvae"].update(widths=[8, 8, 16, 16], num_res_blocks=1)
        data_cfg.update(crop_size=32, batch_size=2)
    else:
        data_cfg.update(root=str(common.ROOT / data_cfg["root"]), val_root=None)
    data_cfg["samples_per_epoch"] = data_cfg["batch_size"] * (steps + 2)

    rows = []
    for name, precision, channels_last in (
        ("fp32 NCHW eager", "32-true", False),
        ("fast path (bf16-mixed, channels_last)", "bf16-mixed", True),
    ):
        if precision == "bf16-mixed" and not bf16_native("cpu"):
            continue
        module = VQVAEModule(**cfg["model"], channels_last=channels_last)
        data = ImageDataModule(**data_cfg)
        clock = StepTimes()
        trainer(steps + 2, precision, clock, accelerator="cpu", devices=1).fit(module, data)
        elapsed = clock.ends[-1] - clock.starts[0]
        rows.append(
            {
                "config": name,
                "steps_s": (steps + 1) / elapsed,
                "images_s": (steps + 1) * data_cfg["batch_size"] / elapsed,
                "data_wait": sum(clock.waits()) / elapsed,
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser(__doc__, "throughput")
    parser.add_argument("--model", default=str(common.ROOT / "models" / "default"))
    parser.add_argument("--kodak", type=Path, default=None, help="folder of the Kodak images")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--train-steps", type=int, default=20)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    budget = 0.5 if quick else 4.0
    r = common.meta("throughput", argv, quick)
    r["model"] = Path(args.model).name
    r["machine"] += f", native bf16: {bf16_native('cpu')}"
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
    r["kodak"] = kodak_agreement(Path(args.model), args.kodak, 2 if quick else None)
    print("training", flush=True)
    r["training"] = training(3 if quick else args.train_steps, quick)
    print("search", flush=True)
    r["search_n"] = 1024 if quick else 16384
    ks = [512, 2048] if quick else [1024, 16384, 65536, 262144]
    r["search"] = search(r["search_n"], ks, 64, budget)
    common.save(r, args.out)


if __name__ == "__main__":
    main()
