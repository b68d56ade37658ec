"""Load benchmark: sustained and overload tokenize traffic against a ``vq-serve`` process,
then SIGTERM under load.

    python -m bench.load            # full run (5,000 @ 64, 2,000 @ 256), writes runs/bench/load.md
    python -m bench.load --quick    # a smoke run (small counts), for the test suite

It starts ``vq-serve`` on a free loopback port (loopback only), sends single-image
multipart tokenize requests from C concurrent clients (asyncio + httpx, in this process)
and records throughput, p50/p99 latency of the accepted requests, answers by status, the
service's shed counters, the server's peak RSS (sampled from /proc every 50 ms) and the
latency of /healthz probes sent every 100 ms during the load. The last phase sends load,
delivers SIGTERM mid-way and counts every request: answered, refused (503, or connection
refused once the listener is closed) or lost (connected but never answered). Each client
behaves as the drain's 503 ``shutting_down`` asks and sends nothing more to this server
after it (a balancer would retry on another replica) rather than reconnecting to a
listener about to close. Every phase is bounded in requests and seconds.

Targets (issue 11): 0 x 5xx other than 503 shedding; RSS under the memory budget
throughout; p99 of accepted requests within the request deadline; /healthz under 100 ms
during load; 0 requests lost on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.serving import png_bytes, resolve_model, synthetic_images
from service.client import service_error

ROOT = Path(__file__).resolve().parent.parent
HEALTHZ_TARGET_MS = 100.0


@dataclass
class Phase:
    name: str
    concurrency: int
    requests: int
    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    accepted_ms: list[float] = field(default_factory=list)
    healthz_ms: list[float] = field(default_factory=list)
    peak_rss: int = 0
    shed: dict[str, float] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def pct(self, values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.startswith("5") and s != "503")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def shed_counts(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vq_requests_shed_total":
                out[s.labels["reason"]] = out.get(s.labels["reason"], 0.0) + s.value
    return out


def start_server(model: Path, port: int, extra: list[str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "service.cli", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--model", f"default={model}", "--log-level", "warning", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vq-serve exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"vq-serve not ready:\n{log.read_text()}")


def _sample(url: str, pid: int, phase: Phase, stop: threading.Event) -> None:
    """/healthz every 100 ms and the server's RSS every 50 ms until ``stop``, on a thread of
    its own (the load generator's event loop would otherwise delay the probe's timing)."""
    with httpx.Client(timeout=5) as client:
        tick = 0
        while not stop.is_set():
            phase.peak_rss = max(phase.peak_rss, rss_of(pid))
            if tick % 2 == 0:
                start = time.perf_counter()
                try:
                    client.get(f"{url}/healthz")
                    phase.healthz_ms.append(1000 * (time.perf_counter() - start))
                except httpx.HTTPError:
                    pass
            tick += 1
            stop.wait(0.05)


async def run_phase(
    url: str,
    pid: int,
    phase: Phase,
    bodies: list[bytes],
    max_seconds: float,
    sigterm_after: float | None = None,
) -> float | None:
    """Send ``phase.requests`` tokenize requests from ``phase.concurrency`` clients.
    Returns the SIGTERM time (perf_counter) when ``sigterm_after`` is given."""
    limits = httpx.Limits(
        max_connections=phase.concurrency, max_keepalive_connections=phase.concurrency
    )
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(url, pid, phase, stop), daemon=True)
    sampler.start()
    next_index = 0
    start = time.perf_counter()
    signalled: float | None = None

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < phase.requests and time.perf_counter() - start < max_seconds:
            i = next_index
            next_index += 1
            files = [("files", (f"{i}.png", bodies[i % len(bodies)], "image/png"))]
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/tokenize", files=files)
            except httpx.ConnectError:
                phase.statuses["refused (connect)"] += 1
                if signalled is not None:
                    return  # the listener is closed: this client is done
                continue
            except httpx.HTTPError as exc:
                phase.statuses[f"lost ({type(exc).__name__})"] += 1
                continue
            phase.statuses[str(r.status_code)] += 1
            if r.status_code == 200:
                phase.accepted_ms.append(1000 * (time.perf_counter() - t0))
            elif r.status_code == 503 and service_error(r).code == "shutting_down":
                return  # as the answer says: go to another replica, not back to this one

    async def terminator() -> None:
        nonlocal signalled
        assert sigterm_after is not None
        await asyncio.sleep(sigterm_after)
        signalled = time.perf_counter()
        os.kill(pid, signal.SIGTERM)

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        tasks = [asyncio.create_task(client_loop(client)) for _ in range(phase.concurrency)]
        if sigterm_after is not None:
            tasks.append(asyncio.create_task(terminator()))
        await asyncio.gather(*tasks)
    phase.seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    return signalled


def report(
    phases: list[Phase],
    drain: Phase,
    drain_s: float,
    exit_code: int | None,
    *,
    model_note: str,
    server_args: list[str],
    budget: str,
    deadline_s: float,
    image_side: int,
    command: str,
) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Load benchmark: vq-serve under sustained load, overload and SIGTERM",
        "",
        f"Command: `{command}`. Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}. Machine: "
        f"{os.cpu_count()} CPU cores ({cpu}), Linux, Python {platform.python_version()}; "
        "**shared with a background training run** (which takes most of one core, so the "
        "absolute throughput is that of a busy machine).",
        "",
        f"Model: {model_note}. Requests: one {image_side}x{image_side} PNG each, multipart "
        f"tokenize, to `vq-serve {' '.join(server_args)}` on 127.0.0.1 (memory budget "
        f"{budget}, deadline {deadline_s:g} s). Loopback only; every phase is bounded in "
        "count and time.",
        "",
        "| phase | concurrency | requests | seconds | req/s | p50 ms | p99 ms | answers by status "
        "| shed (server counters) | peak RSS MiB | /healthz p50 / p99 / max ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in [*phases, drain]:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(p.statuses.items()))
        shed = ", ".join(f"{k}: {v:g}" for k, v in sorted(p.shed.items()) if v) or "0"
        ok = p.statuses.get("200", 0)
        lines.append(
            f"| {p.name} | {p.concurrency} | {p.sent} | {p.seconds:.1f} | {ok / p.seconds:.1f} | "
            f"{p.pct(p.accepted_ms, 50):.0f} | {p.pct(p.accepted_ms, 99):.0f} | {statuses} | "
            f"{shed} | {p.peak_rss / 2**20:.0f} | {p.pct(p.healthz_ms, 50):.1f} / "
            f"{p.pct(p.healthz_ms, 99):.1f} / {max(p.healthz_ms, default=float('nan')):.1f} |"
        )
    lost = sum(n for s, n in drain.statuses.items() if s.startswith("lost"))
    five = sum(p.server_errors for p in [*phases, drain])
    peak = max(p.peak_rss for p in [*phases, drain])
    p99 = max(p.pct(p.accepted_ms, 99) for p in phases)
    health = max(max(p.healthz_ms, default=0.0) for p in phases)
    health99 = max(p.pct(p.healthz_ms, 99) for p in phases)

    def verdict(ok: bool) -> str:
        return "holds" if ok else "**missed**"

    budget_bytes = _parse_budget(budget)
    lines += [
        "",
        f"SIGTERM under load: delivered during the drain phase; the process exited with code "
        f"{exit_code} {drain_s:.1f} s later. Lost requests (connected, never answered): {lost}.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        f"| 0 x 5xx (other than 503 shedding) | {five} | {verdict(five == 0)} |",
        f"| RSS under the budget ({budget}) | peak {peak / 2**20:.0f} MiB | "
        f"{verdict(peak <= budget_bytes)} |",
        f"| p99 of accepted requests within the deadline ({deadline_s:g} s) | "
        f"{p99:.0f} ms | {verdict(p99 <= 1000 * deadline_s)} |",
        f"| /healthz under {HEALTHZ_TARGET_MS:.0f} ms during load | p99 {health99:.1f} ms, "
        f"max {health:.1f} ms | {verdict(health99 < HEALTHZ_TARGET_MS)} (p99) |",
        f"| 0 requests lost on SIGTERM | {lost} | {verdict(lost == 0)} |",
        "",
        "Statuses: 200 answered; 503 refused by load shedding (`overloaded`: the queue of "
        "`max_queue` items was full, `timeout`: the deadline passed; both with Retry-After) "
        "or by the drain (`shutting_down`); 'refused (connect)': the listener was already "
        "closed after SIGTERM, so the client knows the request never reached the service.",
    ]
    return "\n".join(lines) + "\n"


def _parse_budget(text: str) -> int:
    from service.settings import parse_bytes

    return int(parse_bytes(text) or 0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    p.add_argument("--model", help="artifact directory (default models/default)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--memory-budget", default="2G", help="vq-serve --memory-budget (default 2G)")
    p.add_argument("--request-timeout-s", type=float, default=10.0, help="vq-serve deadline")
    p.add_argument("--max-seconds", type=float, default=150.0, help="cap per phase")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "load.md")
    args = p.parse_args(argv)
    plan = [("sustained", 64, 5000), ("overload", 256, 2000)]
    drain_plan = ("SIGTERM drain", 64, 2000, 5.0)
    if args.quick:
        plan = [("sustained", 8, 80), ("overload", 32, 80)]
        drain_plan = ("SIGTERM drain", 8, 400, 1.0)
        args.max_seconds = min(args.max_seconds, 30.0)

    with tempfile.TemporaryDirectory() as tmp:
        model, note = resolve_model(args.model, Path(tmp))
        bodies = [png_bytes(im) for im in synthetic_images(32, args.size)]
        server_args = [
            "--memory-budget",
            args.memory_budget,
            "--request-timeout-s",
            f"{args.request_timeout_s:g}",
        ]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(model, port, server_args, Path(tmp) / "serve.log")
        phases = []
        try:
            for name, concurrency, n in plan:
                phase = Phase(name, concurrency, n)
                before = shed_counts(url)
                asyncio.run(run_phase(url, proc.pid, phase, bodies, args.max_seconds))
                after = shed_counts(url)
                phase.shed = {k: after[k] - before.get(k, 0.0) for k in after}
                phases.append(phase)
                print(f"{name}: {dict(phase.statuses)} in {phase.seconds:.1f} s", flush=True)
            name, concurrency, n, after_s = drain_plan
            drain = Phase(name, concurrency, n)
            signalled = asyncio.run(
                run_phase(url, proc.pid, drain, bodies, args.max_seconds, sigterm_after=after_s)
            )
            exit_code = proc.wait(timeout=120)
            drain_s = time.perf_counter() - (signalled or time.perf_counter())
            print(f"{name}: {dict(drain.statuses)}; exit {exit_code}", flush=True)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    command = "python -m bench.load" + (" --quick" if args.quick else "")
    text = report(
        phases,
        drain,
        drain_s,
        exit_code,
        model_note=note,
        server_args=server_args,
        budget=args.memory_budget,
        deadline_s=args.request_timeout_s,
        image_side=args.size,
        command=command,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
