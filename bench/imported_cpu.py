"""CPU cost of serving LlamaGen's VQ-16 shape: a full-size, randomly initialised model of the
released configuration (ch 128, ch_mult [1, 1, 2, 2, 4], 2 residual blocks, z 256, 16,384
codes of dim 8, L2-normalised), written in LlamaGen's checkpoint layout and converted with
``vq-import`` as a user would convert ``vq_ds16_c2i.pt``.

    .venv/bin/python bench/imported_cpu.py            # 4 images, 256 x 256
    .venv/bin/python bench/imported_cpu.py --quick    # 1 image (a smoke run)

Measures the parameter count, the artifact size, peak resident memory after load and after
encode/decode, and the per-image encode and decode time at batch 1 (fp32, the precision
vq-import recommends) for the torch thread count given (default: all cores); writes
imported_cpu.json and its report into --out (default runs/bench/imported_cpu).
Random weights cost the same time as trained ones: the work is the same convolutions.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # first: it puts the repository on sys.path
import torch

import vq
from vq.importer import main as import_main


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it restarts at exec)."""
    kib = common.status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024  # both in KiB


def llamagen_layout(state: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """Our vqgan keys -> LlamaGen's (the inverse of ``vq.importer.llamagen_to_taming``)."""
    mid = {"block_1": "0", "attn_1": "1", "block_2": "2"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = {"quantizer.codebook": "quantize.embedding.weight"}.get(key, key)
        key = re.sub(r"^encoder\.quant_conv\.", "quant_conv.", key)
        key = re.sub(r"^decoder\.post_quant_conv\.", "post_quant_conv.", key)
        key = re.sub(r"\.mid\.(block_1|attn_1|block_2)\.", lambda m: f".mid.{mid[m[1]]}.", key)
        key = re.sub(r"^encoder\.down\.(\d+)\.", r"encoder.conv_blocks.\1.", key)
        key = re.sub(
            r"^decoder\.up\.(\d+)\.",
            lambda m: f"decoder.conv_blocks.{num_levels - 1 - int(m[1])}.",
            key,
        )
        out[re.sub(r"\.conv_blocks\.(\d+)\.block\.", r".conv_blocks.\1.res.", key)] = value
    out["quantize.codebook_used"] = torch.zeros(65536)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, "imported_cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # the measuring child process
    parser.add_argument("--images", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.images or (1 if args.quick else 4)
    if args.run:
        print(json.dumps(run(args.run, n)))
        return
    result = common.meta("imported_cpu", argv, args.quick)
    cfg = vq.VQVAEConfig(
        architecture="vqgan",
        f=16,
        widths=(128, 128, 256, 256, 512),
        num_res_blocks=2,
        z_channels=256,
        code_dim=8,
        quantizer=vq.VQConfig(codebook_size=16384, codebook_norm="l2"),
    )
    torch.manual_seed(0)
    model = vq.VQVAE(cfg)
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "vq_ds16_random.pt"
        torch.save({"model": llamagen_layout(model.state_dict(), cfg.num_levels)}, ckpt)
        del model
        assert import_main(["llamagen", str(ckpt), str(Path(tmp) / "vq16")]) == 0
        size = (Path(tmp) / "vq16" / "model.safetensors").stat().st_size
        # A fresh process, as vq-serve would be, so its memory is the served model's alone.
        cmd = [sys.executable, __file__, "--run", str(Path(tmp) / "vq16"), "--images", str(n)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        child = subprocess.run(cmd, check=True, capture_output=True, text=True)
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(
        parameters=params,
        artifact_bytes=size,
        **measured,
    )
    common.save(result, args.out)


def run(artifact: str, n: int) -> dict[str, object]:
    rss0 = peak_rss_mib()
    tok = vq.load_tokenizer(artifact)
    rss_load = peak_rss_mib()
    images = torch.randint(0, 256, (n, 3, 256, 256), dtype=torch.uint8)
    tok.encode(images[:1])  # warm-up (oneDNN primitive creation)
    t0 = time.perf_counter()
    codes = [tok.encode(images[i : i + 1]) for i in range(n)]
    t_enc = (time.perf_counter() - t0) / n
    tok.decode(codes[0])
    t0 = time.perf_counter()
    for c in codes:
        tok.decode(c)
    return {
        "threads": torch.get_num_threads(),
        "precision": tok.precision,
        "codes": list(codes[0].shape),
        "images": n,
        "rss_imports_mib": rss0,
        "rss_loaded_mib": rss_load,
        "rss_peak_mib": peak_rss_mib(),
        "encode_s": t_enc,
        "decode_s": (time.perf_counter() - t0) / n,
    }


if __name__ == "__main__":
    main()
