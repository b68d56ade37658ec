"""Service benchmark: tokenize throughput and latency through a running ``vq-serve``.

    .venv/bin/python bench/service.py            # full run: runs/bench/service/service.{json,md}
    .venv/bin/python bench/service.py --quick    # a smoke run (small counts)
    .venv/bin/python bench/service.py --out docs/benchmarks   # the committed report

For each mode (micro-batching on, then off) it starts ``vq-serve`` on a free loopback port,
sends single-image multipart tokenize requests for synthetic PNGs from each ``--concurrency``
level of clients (asyncio + httpx, in this process), and records images/s, p50/p99 latency,
the mean batch and the CPU time of server and client. The ceiling is the in-process
``Tokenizer.encode`` throughput at the batch size the batched service may use (and at batch
size 1), measured before and after. Targets: bench/targets.toml. Loopback only; request
counts are bounded.
"""

from __future__ import annotations

import contextlib
import functools
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common  # first: it puts the repository on sys.path
import numpy as np
import serving
import torch

import vq


def ceiling(
    tokenizer: vq.Tokenizer, images: list[np.ndarray], batch: int, budget_s: float
) -> dict[str, float]:
    """In-process ``Tokenizer.encode`` images/s at ``batch`` and at 1, and the CPU ms (all
    threads) per image at ``batch``."""
    out: dict[str, float] = {}
    for key, n in (("batch_img_s", batch), ("single_img_s", 1)):
        stack = np.stack([images[i % len(images)] for i in range(n)])  # (N, H, W, 3)
        x = torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
        tokenizer.encode(x)  # warm-up
        cpu0 = time.process_time()
        times = common.timed(functools.partial(tokenizer.encode, x), 10_000, budget_s, warmup=0)
        out[key] = n * len(times) / sum(times)
        if n == batch:
            out["cpu_ms"] = 1000 * (time.process_time() - cpu0) / (n * len(times))
    return out


def run_load(
    server: serving.Server, mode: str, bodies: list[bytes], concurrency: int, requests: int
) -> dict[str, Any]:
    """One concurrency level against one server: the row of the results table."""
    latencies: list[float] = []
    cpu0: dict[str, float] = {}
    call = serving.record(serving.tokenize(bodies), ms=latencies)

    def on_start() -> None:
        latencies.clear()
        cpu0.update(client=time.process_time(), server=serving.cpu_seconds(server.proc.pid))

    def batches() -> tuple[float, float]:
        count = server.metric("vq_batch_size_count", op="tokenize")
        return count, server.metric("vq_batch_size_sum", op="tokenize")

    before = batches()
    load = serving.clients(server.url, concurrency, call, requests, warmup=True, on_start=on_start)
    seconds = serving.run(load)[0]
    client_cpu = time.process_time() - cpu0["client"]
    server_cpu = serving.cpu_seconds(server.proc.pid) - cpu0["server"]
    after = batches()
    passes = after[0] - before[0]  # the warm-up requests count too, in both
    return {
        "mode": mode,
        "concurrency": concurrency,
        "requests": requests,
        "img_s": requests / seconds,
        "p50_ms": serving.pct(latencies, 50),
        "p99_ms": serving.pct(latencies, 99),
        "mean_batch": (after[1] - before[1]) / passes if passes else math.nan,
        "server_cpu_ms": 1000 * server_cpu / requests,
        "client_cpu_ms": 1000 * client_cpu / requests,
        "busy_cores": (server_cpu + client_cpu) / seconds,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = common.parser(__doc__, "service")
    add = p.add_argument
    add("--model", help="artifact directory (default: models/default, else an untrained default)")
    add("--size", type=int, default=256, help="image side in pixels (default 256)")
    add("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    add("--requests-per-client", type=int, help="default 4 (full), 1 (quick); >= 32 per level")
    add("--torch-threads", type=int, help="torch threads of the servers and the ceiling")
    args = p.parse_args(argv)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    result = common.meta("service", argv, args.quick)
    batch = max(args.concurrency)
    per_client = args.requests_per_client or (1 if args.quick else 4)
    min_requests, budget_s = (4, 0.5) if args.quick else (32, 6.0)
    threads = ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
    quiet = [*threads, "--log-level", "warning"]
    # Both servers run side by side (the idle one costs memory, not CPU) and the modes
    # alternate per concurrency level, so slow drifts in outside load hit both alike.
    modes = {"batched": ["--max-batch-size", str(batch)], "unbatched": ["--no-batching"]}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        model, note = serving.resolve_model(args.model, logs)
        images = serving.synthetic_images(8 if args.quick else 64, args.size)
        bodies = [serving.png_bytes(im) for im in images]
        tokenizer = vq.load_tokenizer(model)
        # Before and after the load runs; the better of the two is the ceiling, so a burst
        # of outside load during one phase does not flatter the service.
        ceilings = [ceiling(tokenizer, images, batch, budget_s)]
        print(f"ceiling: {ceilings[0]}", flush=True)
        rows = []
        with contextlib.ExitStack() as stack:
            servers = {
                mode: stack.enter_context(serving.Server(model, [*extra, *quiet], logs / mode))
                for mode, extra in modes.items()
            }
            for c in args.concurrency:
                for mode, server in servers.items():
                    rows.append(
                        run_load(server, mode, bodies, c, max(min_requests, c * per_client))
                    )
                    print(rows[-1], flush=True)
        ceilings.append(ceiling(tokenizer, images, batch, budget_s))
        print(f"ceiling: {ceilings[1]}", flush=True)
    rows.sort(key=lambda r: (r["mode"] != "batched", r["concurrency"]))
    result.update(
        model=note,
        precision=tokenizer.precision,
        size=args.size,
        batch=batch,
        ceilings=ceilings,
        results=rows,
    )
    common.save(result, args.out)
    if not all(math.isfinite(v) for c in ceilings for v in c.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
