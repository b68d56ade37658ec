"""Memory, fairness and slow-client scenarios against ``vq-serve`` (issue 23), 127.0.0.1 only.

    python -m bench.load_scenarios            # full counts, writes its section of load.md
    python -m bench.load_scenarios --quick    # small counts, for a busy machine or a test

Scenarios, each bounded in requests and seconds and stopping on its own:

- **memory**: ``--memory-budget`` (1G) with the largest image and grid sides that budget
  admits (the server refuses to start with larger ones and says which fit); 20 concurrent
  clients sending the largest admitted tokenize requests and 3 sending 20 MiB detokenize
  JSON bodies of one-element rows, over several restarts of the server. Peak RSS is the
  server's own ``vq_resident_memory_peak_bytes`` (VmHWM, folded across the resets its
  measurements make) and VmRSS sampled every 50 ms.
- **head-of-line**: clients sending 256 x 256 images, alone and then next to one client
  sending the heaviest admitted requests; the small requests' p99 in both.
- **slow uploads**: 64 uploads trickling at just above ``min_body_rate`` while other
  clients send small requests; the share of those answered 200.

/healthz is probed every 100 ms throughout each scenario.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.load import free_port, rss_of
from bench.serving import png_bytes, resolve_model, synthetic_images

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Memory, fairness and slow clients (issue 23 scenarios)"
# Sides admitted with this much room: the start-up charge moves a little between restarts,
# and a server that admitted a side once may refuse it at the next start.
MARGIN = 1.15


@dataclass
class Probe:
    """/healthz latencies and the server's VmRSS, sampled on a thread of their own."""

    url: str
    pid: int
    healthz_ms: list[float] = field(default_factory=list)
    peak_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            tick = 0
            while not self._stop.is_set():
                self.peak_rss = max(self.peak_rss, rss_of(self.pid))
                if tick % 2 == 0:
                    start = time.perf_counter()
                    try:
                        client.get(f"{self.url}/healthz")
                        self.healthz_ms.append(1000 * (time.perf_counter() - start))
                    except httpx.HTTPError:
                        pass
                tick += 1
                self._stop.wait(0.05)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Server:
    """``vq-serve`` in a child process on a free loopback port."""

    def __init__(self, model: Path, args: list[str], grid: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "service.cli", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--model", f"default={model}", *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "VQ_MAX_GRID_SIDE": str(grid)}
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 240) -> bool:
        """True once /readyz is 200; False if the process exited (its log says why)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"vq-serve not ready after {timeout} s:\n{self.log.read_text()}")

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name:
                    return float(s.value)
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def admitted_sides(model: Path, budget: str, workdir: Path) -> tuple[int, int, str]:
    """(max_image_side, max_grid_side) the budget admits: start with the defaults and, if the
    server refuses, take the sides its one-line error names. Also the charge it logged."""
    image, grid = 2048, 256
    for _ in range(3):
        server = Server(model, _serve_args(budget, image), grid, workdir / "sides.log")
        ready = server.wait_ready()
        server.stop()
        text = server.log.read_text()
        fits = re.search(r"the largest single image the pool takes is (\d+)x", text)
        if ready and fits and int(fits.group(1)) >= MARGIN * image:
            charge = re.search(r"memory per pixel: (encode \d+ B, decode \d+ B)", text)
            return image, grid, charge.group(1) if charge else "?"
        if ready and fits:  # admitted now, but a restart measuring a little more may refuse
            image = int(int(fits.group(1)) / MARGIN) // 8 * 8
            continue
        found_image = re.search(r"max_image_side \d+ \(at most (\d+)\)", text)
        found_grid = re.search(r"max_grid_side \d+ \(at most (\d+)\)", text)
        if not (found_image or found_grid):
            raise RuntimeError(f"vq-serve did not start:\n{text}")
        if found_image:
            image = int(int(found_image.group(1)) / MARGIN) // 8 * 8
        if found_grid:
            grid = int(int(found_grid.group(1)) / MARGIN)
    raise RuntimeError("could not find sides the budget admits")


def _serve_args(budget: str, image: int) -> list[str]:
    return ["--memory-budget", budget, "--max-image-side", str(image), "--log-level", "info"]


def clients(n: int, work: Callable[[int], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


@dataclass
class MemoryRun:
    restart: int
    statuses: dict[str, int]
    peak_rss: float  # the larger of the server's own peak and the sampled VmRSS
    sampled_rss: float
    healthz_p99: float
    charge: str


def _load_memory(url: str, big: bytes, body: bytes, seconds: float) -> Counter[str]:
    """20 clients sending ``big`` to tokenize and 3 sending ``body`` to detokenize/batch."""
    statuses: Counter[str] = Counter()
    stop = time.monotonic() + seconds

    def send(op: str, make: Callable[[httpx.Client], httpx.Response]) -> None:
        with httpx.Client(timeout=120) as c:
            while time.monotonic() < stop:
                try:
                    statuses[f"{op} {make(c).status_code}"] += 1
                except httpx.HTTPError as exc:
                    statuses[f"{op} {type(exc).__name__}"] += 1

    def tokenize(i: int) -> None:
        files = [("files", (f"{i}.png", big, "image/png"))]
        send("tokenize", lambda c: c.post(f"{url}/v1/tokenize", files=files))

    def detokenize(i: int) -> None:
        headers = {"content-type": "application/json"}
        send(
            "detokenize",
            lambda c: c.post(f"{url}/v1/detokenize/batch", content=body, headers=headers),
        )

    for t in clients(20, tokenize) + clients(3, detokenize):
        t.join()
    return statuses


def memory_scenario(
    model: Path, budget: str, image: int, grid: int, restarts: int, seconds: float, tmp: Path
) -> list[MemoryRun]:
    big = png_bytes(synthetic_images(1, image, seed=3)[0])
    rows = 5_000_000  # one-element rows: 19 MiB of JSON, some 1 GB of Python lists parsed
    body = b'{"batch": [[' + b",".join([b"[0]"] * rows) + b"]]}"
    results = []
    for r in range(restarts):
        server = Server(model, _serve_args(budget, image), grid, tmp / f"mem{r}.log")
        if not server.wait_ready():
            raise RuntimeError(server.log.read_text())
        with Probe(server.url, server.proc.pid) as probe:
            statuses = _load_memory(server.url, big, body, seconds)
        own_peak = server.metric("vq_resident_memory_peak_bytes")
        server.stop()
        log = server.log.read_text()
        charge = re.search(r"memory per pixel: (encode \d+ B, decode \d+ B)", log)
        results.append(
            MemoryRun(
                restart=r + 1,
                statuses=dict(statuses),
                peak_rss=max(float(probe.peak_rss), own_peak),
                sampled_rss=float(probe.peak_rss),
                healthz_p99=pct(probe.healthz_ms, 99),
                charge=charge.group(1) if charge else "?",
            )
        )
        print(f"memory restart {r + 1}: {results[-1]}", flush=True)
    return results


def small_requests(url: str, n_clients: int, seconds: float, small: bytes) -> list[float]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        with httpx.Client(timeout=120) as c:
            while time.monotonic() < stop:
                files = [("files", (f"{i}.png", small, "image/png"))]
                t0 = time.perf_counter()
                resp = c.post(f"{url}/v1/tokenize", files=files)
                if resp.status_code == 200:
                    latencies.append(1000 * (time.perf_counter() - t0))

    for t in clients(n_clients, work):
        t.join()
    return latencies


def head_of_line_scenario(
    model: Path, budget: str, image: int, grid: int, seconds: float, tmp: Path
) -> dict[str, object]:
    small = png_bytes(synthetic_images(1, 256, seed=1)[0])
    heavy = png_bytes(synthetic_images(1, image, seed=2)[0])
    server = Server(model, _serve_args(budget, image), grid, tmp / "hol.log")
    if not server.wait_ready():
        raise RuntimeError(server.log.read_text())
    try:
        with Probe(server.url, server.proc.pid) as alone_probe:
            alone = small_requests(server.url, 2, seconds, small)
        heavy_statuses: Counter[int] = Counter()
        stop_heavy = threading.Event()

        def heavy_client(i: int) -> None:
            with httpx.Client(timeout=300) as c:
                while not stop_heavy.is_set():
                    files = [("files", (f"h{k}.png", heavy, "image/png")) for k in range(4)]
                    heavy_statuses[
                        c.post(f"{server.url}/v1/tokenize", files=files).status_code
                    ] += 1

        with Probe(server.url, server.proc.pid) as mixed_probe:
            (thread,) = clients(1, heavy_client)
            time.sleep(1.0)
            mixed = small_requests(server.url, 2, seconds, small)
            stop_heavy.set()
            thread.join()
    finally:
        server.stop()
    return {
        "alone_p99": pct(alone, 99),
        "alone_n": len(alone),
        "mixed_p99": pct(mixed, 99),
        "mixed_n": len(mixed),
        "heavy": dict(heavy_statuses),
        "healthz_p99": max(pct(alone_probe.healthz_ms, 99), pct(mixed_probe.healthz_ms, 99)),
    }


def slow_upload_scenario(
    model: Path, budget: str, image: int, grid: int, seconds: float, tmp: Path
) -> dict[str, object]:
    small = png_bytes(synthetic_images(1, 64, seed=1)[0])
    server = Server(model, _serve_args(budget, image), grid, tmp / "slow.log")
    if not server.wait_ready():
        raise RuntimeError(server.log.read_text())
    rate = 20 * 1024  # bytes/s, just above the default min_body_rate of 16 KiB/s
    length = int(rate * (seconds + 10))
    stop = time.monotonic() + seconds
    cut: Counter[str] = Counter()

    def trickle(i: int) -> None:
        head = (
            b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {length}\r\n\r\n".encode()
        )
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(head + b'{"images": ["')
                while time.monotonic() < stop:
                    sock.sendall(b"A" * (rate // 10))
                    time.sleep(0.1)
            cut["closed by the client at the end"] += 1
        except OSError as exc:
            cut[type(exc).__name__] += 1

    statuses: Counter[int] = Counter()

    def other(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            time.sleep(1.0)  # after the slow uploads are in
            while time.monotonic() < stop:
                files = [("files", (f"{i}.png", small, "image/png"))]
                statuses[c.post(f"{server.url}/v1/tokenize", files=files).status_code] += 1

    try:
        with Probe(server.url, server.proc.pid) as probe:
            threads = clients(64, trickle) + clients(4, other)
            for t in threads:
                t.join()
    finally:
        server.stop()
    answered = sum(statuses.values())
    return {
        "statuses": dict(statuses),
        "ok_share": statuses[200] / answered if answered else float("nan"),
        "slow": dict(cut),
        "healthz_p99": pct(probe.healthz_ms, 99),
    }


def report(
    args: argparse.Namespace,
    note: str,
    sides: tuple[int, int, str],
    memory: list[MemoryRun],
    hol: dict[str, object],
    slow: dict[str, object],
) -> str:
    image, grid, charge = sides
    budget_bytes = _parse(args.memory_budget)
    peak = max(m.peak_rss for m in memory)
    ratio = float(hol["mixed_p99"]) / float(hol["alone_p99"])  # type: ignore[arg-type]
    health = max(
        [m.healthz_p99 for m in memory] + [float(hol["healthz_p99"]), float(slow["healthz_p99"])]  # type: ignore[arg-type]
    )

    def verdict(ok: bool) -> str:
        return "holds" if ok else "**missed**"

    command = "python -m bench.load_scenarios" + (" --quick" if args.quick else "")
    lines = [
        SECTION,
        "",
        f"Command: `{command}`. Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}. Model: {note}. "
        f"Machine: {os.cpu_count()} CPU cores shared with other jobs. `--memory-budget "
        f"{args.memory_budget}` admits `--max-image-side {image}` (the server refused larger "
        f"sides at start-up and named these; charge {charge}) and max_grid_side {grid}. "
        f"{args.restarts} restart(s) of the server for the memory scenario, "
        f"{args.seconds:g} s per scenario.",
        "",
        "| restart | answers | peak RSS MiB (server's VmHWM / sampled VmRSS) | charge | "
        "/healthz p99 ms |",
        "|---|---|---|---|---|",
    ]
    for m in memory:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(m.statuses.items()))
        lines.append(
            f"| {m.restart} | {answers} | {m.peak_rss / 2**20:.0f} / "
            f"{m.sampled_rss / 2**20:.0f} | {m.charge} | {m.healthz_p99:.1f} |"
        )
    lines += [
        "",
        f"Head-of-line: small (256 x 256) requests from 2 clients, p99 {hol['alone_p99']:.0f} "
        f"ms alone ({hol['alone_n']} requests) and {hol['mixed_p99']:.0f} ms "
        f"({hol['mixed_n']} requests) next to one client sending 4 x {image}^2 per request "
        f"(its answers: {hol['heavy']}).",
        "",
        f"Slow uploads: 64 bodies trickling at 20 KiB/s; other clients' answers "
        f"{slow['statuses']} ({100 * float(slow['ok_share']):.1f} % 200); the slow uploads "  # type: ignore[arg-type]
        f"ended: {slow['slow']}.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        f"| peak RSS <= budget ({args.memory_budget}) in every restart | max {peak / 2**20:.0f} "
        f"MiB | {verdict(peak <= budget_bytes)} |",
        f"| small p99 next to the heavy client <= 3x alone | {ratio:.2f}x | "
        f"{verdict(ratio <= 3.0)} |",
        f"| others >= 95 % 200 during 64 slow uploads | {100 * float(slow['ok_share']):.1f} % | "  # type: ignore[arg-type]
        f"{verdict(float(slow['ok_share']) >= 0.95)} |",  # type: ignore[arg-type]
        f"| /healthz p99 <= 100 ms in every scenario | max {health:.1f} ms | "
        f"{verdict(health <= 100.0)} |",
    ]
    return "\n".join(lines) + "\n"


def _parse(text: str) -> int:
    from service.settings import parse_bytes

    return int(parse_bytes(text) or 0)


def write_section(path: Path, section: str) -> None:
    """Replace this module's section of ``path`` (or append it), keeping the rest."""
    text = path.read_text() if path.exists() else ""
    if SECTION in text:
        before, _, after = text.partition(SECTION)
        rest = re.search(r"^## ", after, flags=re.M)
        text = before + section + ("\n" + after[rest.start() :] if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="fewer restarts, shorter scenarios")
    p.add_argument("--model", help="artifact directory (default models/default)")
    p.add_argument("--memory-budget", default="1G")
    p.add_argument("--restarts", type=int, default=20)
    p.add_argument("--seconds", type=float, default=60.0, help="length of each scenario")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "load.md")
    args = p.parse_args(argv)
    if args.quick:
        args.restarts = min(args.restarts, 3)
        args.seconds = min(args.seconds, 20.0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model, note = resolve_model(args.model, tmp)
        sides = admitted_sides(model, args.memory_budget, tmp)
        image, grid, _ = sides
        print(f"admitted: max_image_side {image}, max_grid_side {grid}", flush=True)
        memory = memory_scenario(
            model, args.memory_budget, image, grid, args.restarts, args.seconds, tmp
        )
        hol = head_of_line_scenario(model, args.memory_budget, image, grid, args.seconds, tmp)
        print(f"head-of-line: {hol}", flush=True)
        slow = slow_upload_scenario(model, args.memory_budget, image, grid, args.seconds, tmp)
        print(f"slow uploads: {slow}", flush=True)
    section = report(args, note, sides, memory, hol, slow)
    write_section(args.out, section)
    print(section)


if __name__ == "__main__":
    main()
