"""Service benchmark: tokenize throughput and latency through a running ``vq-serve``.

    .venv/bin/python bench/service.py            # full run, writes runs/bench/service.md (--out to choose)
    .venv/bin/python bench/service.py --quick    # a smoke run (small counts)

For each mode (micro-batching on, then off) it starts ``vq-serve`` on a free loopback port,
sends single-image multipart tokenize requests for 256 x 256 PNGs from 1, 8 and 32
concurrent clients (asyncio + httpx, in this process), and records images/s and p50/p99
latency. The ceiling is the in-process ``Tokenizer.encode`` throughput at the batch size
the batched service may use (and, for context, at batch size 1). Targets (issue 4): at
concurrency 32 the batched service reaches >= 0.8x the ceiling and >= 3x the unbatched
service. Loopback only; request counts are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import vq

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_MODEL = ROOT / "models" / "default"
TARGET_VS_CEILING = 0.8
TARGET_VS_UNBATCHED = 3.0


@dataclass
class LoadResult:
    mode: str
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    batches: float
    batched_images: float
    client_cpu_s: float  # CPU time of this process (the load generator) in the timed part
    server_cpu_s: float  # CPU time of the vq-serve process in the timed part

    def cpu_ms_per_request(self, which: str) -> float:
        seconds = self.client_cpu_s if which == "client" else self.server_cpu_s
        return 1000 * seconds / self.requests

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))

    @property
    def mean_batch(self) -> float:
        return self.batched_images / self.batches if self.batches else float("nan")


# ------------------------------------------------------------------------------- inputs


def synthetic_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth gradients, a few discs and mild noise: PNG sizes like photos', not like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for _ in range(n):
        base = np.stack(
            [rng.uniform(0, 255) * (a * xx + (1 - a) * yy) for a in rng.uniform(0, 1, 3)], -1
        )
        for _ in range(4):
            cy, cx, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.3)]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            base[mask] = rng.uniform(0, 255, 3)
        base += rng.normal(0, 6, base.shape)
        images.append(np.clip(base, 0, 255).astype(np.uint8))
    return images


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def resolve_model(path: str | None, workdir: Path) -> tuple[Path, str]:
    """The artifact to serve and a sentence saying which it is."""
    if path:
        return Path(path), f"`{path}`"
    if (DEFAULT_MODEL / "config.json").is_file():
        return DEFAULT_MODEL, "`models/default` (the shipped tokenizer)"
    torch.manual_seed(0)
    out = workdir / "untrained-default"
    vq.save_tokenizer(vq.VQVAE(vq.VQVAEConfig()), out)
    return out, (
        "an untrained artifact of the default `VQVAEConfig()` (models/default was absent); "
        "speed does not depend on the weights"
    )


# ------------------------------------------------------------------------------ ceiling


def encode_throughput(
    tokenizer: vq.Tokenizer, images: list[np.ndarray], batch: int, min_seconds: float
) -> tuple[float, float]:
    """Images/s of in-process ``Tokenizer.encode`` on uint8 batches of ``batch`` images, and
    the CPU milliseconds (all threads) it spent per image."""
    stack = np.stack([images[i % len(images)] for i in range(batch)])  # (N, H, W, 3)
    x = torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    tokenizer.encode(x)  # warm-up
    done, start, cpu0 = 0, time.perf_counter(), time.process_time()
    while done == 0 or time.perf_counter() - start < min_seconds:
        tokenizer.encode(x)
        done += batch
    return done / (time.perf_counter() - start), 1000 * (time.process_time() - cpu0) / done


# ------------------------------------------------------------------------------- server


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc; NaN where
    /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, extra: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    script = Path(sys.executable).with_name("vq-serve")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--model", f"default={model}"]
    cmd += ["--log-level", "warning", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"vq-serve exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise RuntimeError(f"vq-serve not ready:\n{log.read_text()}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def batch_counts(url: str) -> tuple[float, float]:
    """(forward passes, images) of the tokenize batcher so far."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "vq_batch_size":
            for s in family.samples:
                if s.labels.get("op") != "tokenize":
                    continue
                if s.name.endswith("_count"):
                    count += s.value
                elif s.name.endswith("_sum"):
                    total += s.value
    return count, total


async def _load(
    url: str, server_pid: int, blobs: list[bytes], concurrency: int, requests: int
) -> tuple[float, list[float], float, float]:
    """Wall seconds and latencies of the timed requests, and the CPU seconds this process
    and the server spent meanwhile."""
    latencies: list[float] = []
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                i = next_index
                next_index += 1
                files = {"files": (f"{i}.png", blobs[i % len(blobs)], "image/png")}
                t0 = time.perf_counter()
                response = await client.post("/v1/tokenize", files=files)
                latencies.append((time.perf_counter() - t0) * 1000)
                response.raise_for_status()

        # One request per client first: connections open, the server warms its code paths.
        await asyncio.gather(
            *(
                client.post("/v1/tokenize", files={"files": ("w.png", blobs[0], "image/png")})
                for _ in range(concurrency)
            )
        )
        start = time.perf_counter()
        cpu0, server0 = time.process_time(), process_cpu_s(server_pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
        client_cpu = time.process_time() - cpu0
        server_cpu = process_cpu_s(server_pid) - server0
    return seconds, latencies, client_cpu, server_cpu


def run_load(
    url: str, server_pid: int, mode: str, blobs: list[bytes], concurrency: int, requests: int
) -> LoadResult:
    before = batch_counts(url)
    seconds, latencies, client_cpu, server_cpu = asyncio.run(
        _load(url, server_pid, blobs, concurrency, requests)
    )
    after = batch_counts(url)
    # The warm-up requests are in the batch counters too; the mean batch size covers both.
    return LoadResult(
        mode,
        concurrency,
        requests,
        seconds,
        latencies,
        after[0] - before[0],
        after[1] - before[1],
        client_cpu,
        server_cpu,
    )


# ------------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def write_report(
    out: Path,
    *,
    command: str,
    model_note: str,
    precision: str,
    size: int,
    batch: int,
    ceilings: list[tuple[float, float, float]],
    results: list[LoadResult],
    load_before: float,
    load_after: float,
    quick: bool,
) -> str:
    ceiling = max(c[0] for c in ceilings)
    ceiling_b1 = max(c[1] for c in ceilings)
    inproc_cpu_ms = min(c[2] for c in ceilings)
    by_key = {(r.mode, r.concurrency): r for r in results}
    top = max(r.concurrency for r in results)
    batched, unbatched = by_key.get(("batched", top)), by_key.get(("unbatched", top))
    lines = [
        "# Service benchmark: tokenize throughput and latency",
        "",
        f"- Command: `{command}`"
        + (" (quick mode: small counts, numbers are rough)" if quick else ""),
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} torch threads; "
        f"1-min load average {load_before:.2f} before the run, {load_after:.2f} after "
        "(the load before the run is other processes sharing these CPUs)",
        f"- Model: {model_note}; precision {precision} (the default on this CPU, in process "
        "and in the servers)",
        f"- Workload: one {size}x{size} PNG per `POST /v1/tokenize` (multipart), synthetic images; "
        "clients are asyncio + httpx in the benchmark process, on the same machine as the server, "
        "over loopback.",
        f"- Server: `vq-serve` on CPU; batched = `--max-batch-size {batch}` "
        "(default 2 ms batch wait); unbatched = `--no-batching` (one image per forward pass). "
        "Both run at once; the modes alternate per concurrency level.",
        "",
        "## Results",
        "",
        "| mode | concurrency | requests | images/s | p50 ms | p99 ms | mean batch "
        "| server CPU ms/img | client CPU ms/img |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.concurrency} | {r.requests} | {r.throughput:.2f} | "
            f"{r.percentile(50):.0f} | {r.percentile(99):.0f} | {r.mean_batch:.1f} | "
            f"{r.cpu_ms_per_request('server'):.0f} | {r.cpu_ms_per_request('client'):.0f} |"
        )
    lines += [
        "",
        f"In-process `Tokenizer.encode` (no HTTP, no PNG decoding): **{ceiling:.2f} images/s at "
        f"batch {batch}** (the ceiling), {ceiling_b1:.2f} images/s at batch 1: each the better of "
        "a measurement before and one after the service runs ("
        + "; ".join(f"batch {batch} {c[0]:.2f}, batch 1 {c[1]:.2f}" for c in ceilings)
        + "). How far the two disagree shows how much outside load moved the numbers. "
        f"In process one image costs {inproc_cpu_ms:.0f} ms of CPU time (all threads) at batch "
        f"{batch}; the table's CPU columns are the server's and the load generator's CPU time "
        "per request over the timed requests (from /proc), on the same cores.",
        "",
        "p99 over a few dozen requests is close to the maximum; read it as a rough tail.",
        "",
        f"## Against the targets (concurrency {top})",
        "",
    ]
    if batched and unbatched:
        vs_ceiling = batched.throughput / ceiling
        vs_unbatched = batched.throughput / unbatched.throughput
        ok1 = "met" if vs_ceiling >= TARGET_VS_CEILING else "missed"
        ok2 = "met" if vs_unbatched >= TARGET_VS_UNBATCHED else "missed"
        lines += [
            "| ratio | measured | target | |",
            "| --- | ---: | ---: | --- |",
            f"| batched service / in-process ceiling | {vs_ceiling:.2f}x | >= {TARGET_VS_CEILING}x | {ok1} |",
            f"| batched service / unbatched service | {vs_unbatched:.2f}x | >= {TARGET_VS_UNBATCHED}x | {ok2} |",
            "",
            "## Where we stand and why",
            "",
        ]
        batch_gain = ceiling / ceiling_b1
        lines.append(
            f"On this CPU one forward pass of {batch} images runs at {batch_gain:.2f}x the per-image "
            "throughput of single-image passes in process. That ratio bounds what micro-batching "
            "can buy: the batcher removes per-request overhead and shares passes between clients "
            f"(mean batch {batched.mean_batch:.1f} at concurrency {top}), but it cannot make a "
            "batched convolution cheaper per image than the hardware does."
        )
        lines.append("")
        if batch_gain < 1.5:
            lines.append(
                "Here a single 256x256 image already keeps torch's CPU threads busy (its first "
                "convolutions are 65,536-row GEMMs), so there is no idle hardware for a batch to "
                "fill, and one pass over many images costs extra: their full-resolution "
                "activations leave the last-level cache (and, at 32 images, ~270 MB of them are "
                "page-faulted in afresh on every pass). So on CPU the Tokenizer runs any batch in "
                "chunks of about one 256x256 image (`vq.tokenizer.CPU_CHUNK_PIXELS`): a batch "
                "costs what its images cost one by one, and micro-batching can save only the "
                "per-request overhead. The 3x target is out of reach by construction: it is a "
                "GPU-shaped target, where one 256x256 image leaves most of the device idle and "
                "batches of 32 run several times faster per image. "
                "On CPU the batching setting therefore matters little (compare the batched "
                "and unbatched rows); on a GPU keep 32."
            )
        else:
            lines.append(
                "Batching pays on this machine; the gap to the targets, if any, is HTTP, PNG "
                "decoding and the load generator sharing the same cores as the model."
            )
        lines.append("")
        server_ms = batched.cpu_ms_per_request("server")
        client_ms = batched.cpu_ms_per_request("client")
        cores = os.cpu_count() or 1
        busy = (batched.server_cpu_s + batched.client_cpu_s) / batched.seconds
        lines.append(
            f"Against the in-process ceiling the batched service reaches {vs_ceiling:.2f}x. "
            f"Where the CPU went at concurrency {top}: the server spent {server_ms:.0f} ms of CPU "
            f"per image against {inproc_cpu_ms:.0f} ms in process (HTTP, multipart parsing, PNG "
            f"decoding, the JSON response, the request threads), and the load generator, on "
            f"the same {cores} cores, {client_ms:.0f} ms per request. If the cores were the only "
            f"limit, {server_ms + client_ms:.0f} ms of CPU per image against {inproc_cpu_ms:.0f} "
            f"would give {inproc_cpu_ms / (server_ms + client_ms):.2f}x; the rest is idle time: "
            f"server and client together kept {busy:.2f} of the {cores} cores busy, while in "
            "process the forward pass keeps them all busy. A likely cause (not measured): the "
            "inference thread's OpenMP threads share the cores with the event loop and the "
            "decoding threads, and each parallel region waits for its slowest thread."
        )
        lines.append("")
        lines.append(
            "Both sides of every ratio share this machine with the load generator (and, in a "
            "busy environment, with other processes: see the load average above), so the "
            "service figures are conservative."
        )
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="small counts: a smoke test, not a measurement"
    )
    p.add_argument(
        "--model", help="artifact directory (default: models/default, else an untrained default)"
    )
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument(
        "--requests-per-client",
        type=int,
        default=None,
        help="default 4 (full), 1 (quick); at least 32 per level",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads for the servers and the in-process ceiling (default: torch's); "
        "1 gives steadier numbers on a machine shared with other work",
    )
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "service.md")
    args = p.parse_args(argv)

    load_before = os.getloadavg()[0]
    batch = max(args.concurrency)
    per_client = args.requests_per_client or (1 if args.quick else 4)
    min_requests = 4 if args.quick else 32
    with tempfile.TemporaryDirectory() as tmp:
        model_path, model_note = resolve_model(args.model, Path(tmp))
        images = synthetic_images(64 if not args.quick else 8, args.size)
        blobs = [png_bytes(im) for im in images]

        if args.torch_threads is not None:
            torch.set_num_threads(args.torch_threads)
        threads = ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
        tokenizer = vq.load_tokenizer(model_path)
        seconds = 0.5 if args.quick else 6.0

        def measure_ceiling() -> tuple[float, float, float]:
            """(images/s at ``batch``, images/s at 1, CPU ms per image at ``batch``)."""
            at_batch, cpu_ms = encode_throughput(tokenizer, images, batch, seconds)
            return at_batch, encode_throughput(tokenizer, images, 1, seconds)[0], cpu_ms

        # Measured before and after the load runs; the better of the two is the ceiling, so
        # a burst of outside load during one phase does not flatter the service.
        first = measure_ceiling()
        print(
            f"ceiling: {first[0]:.2f} img/s at batch {batch}, {first[1]:.2f} at batch 1", flush=True
        )

        # Both servers run side by side (the idle one costs memory, not CPU) and the modes
        # alternate per concurrency level, so slow drifts in outside load hit both alike.
        modes = {
            "batched": ["--max-batch-size", str(batch), *threads],
            "unbatched": ["--no-batching", *threads],
        }
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        results: list[LoadResult] = []
        try:
            for mode, extra in modes.items():
                servers[mode] = start_server(model_path, extra, Path(tmp) / f"{mode}.log")
            for c in args.concurrency:
                n = max(min_requests, c * per_client)
                for mode in modes:
                    proc, url = servers[mode]
                    r = run_load(url, proc.pid, mode, blobs, c, n)
                    results.append(r)
                    print(
                        f"{mode:9s} c={c:3d} n={n:4d}: {r.throughput:7.2f} img/s  "
                        f"p50 {r.percentile(50):7.0f} ms  p99 {r.percentile(99):7.0f} ms  "
                        f"mean batch {r.mean_batch:.1f}  CPU ms/img client "
                        f"{r.cpu_ms_per_request('client'):.0f} server "
                        f"{r.cpu_ms_per_request('server'):.0f}",
                        flush=True,
                    )
        finally:
            for proc, _ in servers.values():
                stop_server(proc)

        second = measure_ceiling()
        print(
            f"ceiling: {second[0]:.2f} img/s at batch {batch}, {second[1]:.2f} at batch 1",
            flush=True,
        )
        results.sort(key=lambda r: (r.mode != "batched", r.concurrency))

    command = (
        "python bench/service.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    write_report(
        args.out,
        command=command.strip(),
        model_note=model_note,
        precision=tokenizer.precision,
        size=args.size,
        batch=batch,
        ceilings=[first, second],
        results=results,
        load_before=load_before,
        load_after=os.getloadavg()[0],
        quick=args.quick,
    )
    print(f"wrote {args.out}")
    if not all(math.isfinite(v) for pair in (first, second) for v in pair):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
