"""Memory, fairness and slow-client scenarios against ``vq-serve``, 127.0.0.1 only.

    python -m bench.load_scenarios            # full counts: runs/bench/load_scenarios/
    python -m bench.load_scenarios --quick    # small counts, for a busy machine or a test

Scenarios, each bounded in requests and seconds and stopping on its own:

- **memory**: ``--memory-budget`` (1G) with the largest image and grid sides that budget
  admits (the server refuses to start with larger ones and says which fit); 20 concurrent
  clients sending the largest admitted tokenize requests, 3 sending the largest detokenize
  JSON bodies the limits admit (about 19 MiB), and 2 cycling through the hostile corpus
  (bench/hostile.py: the wrong JSON types, shapes and sizes), over several restarts of the
  server. Peak RSS is the server's own ``vq_resident_memory_peak_bytes`` (VmHWM, folded
  across the resets its measurements make) and VmRSS sampled every 50 ms; the hostile
  bodies' answers and their slowest (from the last byte sent) are reported on their own.
- **head-of-line**: 2 clients sending 64 x 64 images, alone and then next to 2 clients
  sending the largest admitted image; the small requests' p99 in both. Run under
  ``--memory-budget`` and under the default budget.
- **slow uploads**: 64 uploads trickling at just above ``min_body_rate`` while other
  clients send small requests; the share of those answered 200.

/healthz is probed every 100 ms throughout each scenario. Targets: bench/targets.toml.
"""

from __future__ import annotations

import math
import re
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.append(str(Path(__file__).parent))  # run as -m bench.load_scenarios

import common  # noqa: E402 - bench/ is a folder of scripts
import hostile  # noqa: E402
import serving  # noqa: E402

from service.settings import parse_bytes  # noqa: E402

# Sides admitted with this much room: the start-up charge moves a little between restarts,
# and a server that admitted a side once may refuse it at the next start.
MARGIN = 1.15
CHARGE = re.compile(r"memory per pixel: (encode \d+ B, decode \d+ B)")


def server(model: Path, budget: str, image: int, grid: int, log: Path) -> serving.Server:
    """``vq-serve`` under ``budget`` (``default``: no --memory-budget flag)."""
    args = ["--max-image-side", str(image), "--log-level", "info"]
    if budget != "default":
        args += ["--memory-budget", budget]
    return serving.Server(model, args, log, env={"VQ_MAX_GRID_SIDE": str(grid)})


def largest_grids_body(grid: int, limit: int = 19 * 2**20, most: int = 64) -> bytes:
    """A legal detokenize batch of grid x grid codes, as many grids (at most ``most``) as
    fit in ``limit`` bytes: what a client within the limits may send at most. One-digit
    codes: the most codes, and so the most int64 tensor bytes, per byte of JSON."""
    row = b"[" + b",".join([b"7"] * grid) + b"]"
    one = b"[" + b",".join([row] * grid) + b"]"
    n = max(1, min(most, limit // (len(one) + 1)))
    return b'{"batch": [' + b",".join([one] * n) + b"]}"


def hostile_call(statuses: Counter[str], slowest: list[float]) -> serving.Call:
    """Sends the corpus in turn; counts answers by name and status (or transport error) and
    keeps the slowest answer, upload over loopback included, in ``slowest[0]`` (seconds)."""
    bodies = list(hostile.corpus().items())
    headers = {"content-type": "application/json"}

    async def call(client: httpx.AsyncClient, i: int) -> bool:
        name, (path, body) = bodies[i % len(bodies)]
        start = time.perf_counter()
        try:
            response = await client.post(path, content=body, headers=headers)
            statuses[f"{name} {response.status_code}"] += 1
        except httpx.HTTPError as exc:
            statuses[f"{name} {type(exc).__name__}"] += 1
        slowest[0] = max(slowest[0], time.perf_counter() - start)
        return True

    return call


def charge(log: Path) -> str:
    found = CHARGE.search(log.read_text())
    return found.group(1) if found else "?"


def admitted_sides(model: Path, budget: str, workdir: Path) -> tuple[int, int, str]:
    """(max_image_side, max_grid_side) the budget admits: start with the defaults and, if the
    server refuses, take the sides its one-line error names. Also the charge it logged."""
    image, grid = 2048, 256
    for _ in range(3):
        probe = server(model, budget, image, grid, workdir / "sides.log")
        ready = probe.wait_ready()
        probe.stop()
        text = probe.log.read_text()
        fits = re.search(r"the largest single image the pool takes is (\d+)x", text)
        if ready and fits and int(fits.group(1)) >= MARGIN * image:
            return image, grid, charge(probe.log)
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


def memory_scenario(
    model: Path, budget: str, image: int, grid: int, restarts: int, seconds: float, tmp: Path
) -> list[dict[str, Any]]:
    big = serving.png_bytes(serving.synthetic_images(1, image, seed=3)[0])
    body = largest_grids_body(grid)
    headers = {"content-type": "application/json"}

    def detokenize(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return client.post("/v1/detokenize/batch", content=body, headers=headers)

    results = []
    for r in range(restarts):
        statuses: Counter[str] = Counter()
        hostile_statuses: Counter[str] = Counter()
        hostile_slowest = [0.0]
        big_call = serving.record(serving.tokenize([big]), statuses, label="tokenize ")
        json_call = serving.record(detokenize, statuses, label="detokenize ")
        with server(model, budget, image, grid, tmp / f"mem{r}.log") as s:
            with serving.Probe(s.url, s.proc.pid) as probe:
                serving.run(
                    serving.clients(s.url, 20, big_call, max_seconds=seconds),
                    serving.clients(s.url, 3, json_call, max_seconds=seconds),
                    serving.clients(
                        s.url,
                        2,
                        hostile_call(hostile_statuses, hostile_slowest),
                        max_seconds=seconds,
                    ),
                )
            own_peak = s.metric("vq_resident_memory_peak_bytes")
        results.append(
            {
                "restart": r + 1,
                "statuses": dict(sorted(statuses.items())),
                "hostile": dict(sorted(hostile_statuses.items())),
                "hostile_slowest_ms": 1000 * hostile_slowest[0],
                # the larger of the server's own peak and the sampled VmRSS
                "peak_rss_mib": max(float(probe.peak_rss), own_peak) / 2**20,
                "sampled_rss_mib": probe.peak_rss / 2**20,
                "healthz_p99_ms": serving.pct(probe.healthz_ms, 99),
                "healthz_worst_ms": max(probe.healthz_ms, default=math.nan),
                "charge": charge(s.log),
            }
        )
        print(f"memory restart {r + 1}: {results[-1]}", flush=True)
    return results


def head_of_line_scenario(
    model: Path, budget: str, image: int, grid: int, seconds: float, tmp: Path
) -> dict[str, Any]:
    small = serving.tokenize([serving.png_bytes(serving.synthetic_images(1, 64, seed=1)[0])])
    big = serving.png_bytes(serving.synthetic_images(1, image, seed=2)[0])
    alone: list[float] = []
    mixed: list[float] = []
    heavy: Counter[str] = Counter()
    small_statuses: Counter[str] = Counter()  # the small clients' answers, 200s included
    with server(model, budget, image, grid, tmp / f"hol-{budget}.log") as s:
        with serving.Probe(s.url, s.proc.pid) as alone_probe:
            small_call = serving.record(small, small_statuses, alone, label="alone ")
            serving.run(serving.clients(s.url, 2, small_call, max_seconds=seconds))
        with serving.Probe(s.url, s.proc.pid) as mixed_probe:
            heavy_call = serving.record(serving.tokenize([big]), heavy)
            small_call = serving.record(small, small_statuses, mixed, label="mixed ")
            serving.run(
                serving.clients(s.url, 2, heavy_call, max_seconds=seconds + 1),
                serving.clients(s.url, 2, small_call, max_seconds=seconds, delay=1.0),
            )
    return {
        "budget": budget,
        "alone_p99_ms": serving.pct(alone, 99),
        "alone_n": len(alone),
        "mixed_p99_ms": serving.pct(mixed, 99),
        "mixed_n": len(mixed),
        "heavy": dict(heavy),
        "small": dict(small_statuses),
        "healthz_p99_ms": max(
            serving.pct(alone_probe.healthz_ms, 99), serving.pct(mixed_probe.healthz_ms, 99)
        ),
    }


def slow_upload_scenario(
    model: Path, budget: str, image: int, grid: int, seconds: float, tmp: Path
) -> dict[str, Any]:
    small = serving.tokenize([serving.png_bytes(serving.synthetic_images(1, 64, seed=1)[0])])
    rate = 20 * 1024  # bytes/s, just above the default min_body_rate of 16 KiB/s
    length = int(rate * (seconds + 10))
    cut: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    with server(model, budget, image, grid, tmp / "slow.log") as s:
        stop = time.monotonic() + seconds

        def trickle() -> None:
            head = (
                b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                + f"content-length: {length}\r\n\r\n".encode()
            )
            try:
                with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
                    sock.sendall(head + b'{"images": ["')
                    while time.monotonic() < stop:
                        sock.sendall(b"A" * (rate // 10))
                        time.sleep(0.1)
                cut["closed by the client at the end"] += 1
            except OSError as exc:
                cut[type(exc).__name__] += 1

        with serving.Probe(s.url, s.proc.pid) as probe:
            threads = [threading.Thread(target=trickle, daemon=True) for _ in range(64)]
            for t in threads:
                t.start()
            # The other clients start after the slow uploads are in.
            others = serving.record(small, statuses)
            serving.run(serving.clients(s.url, 4, others, max_seconds=seconds - 1, delay=1.0))
            for t in threads:
                t.join()
    answered = sum(statuses.values())
    return {
        "statuses": dict(statuses),
        "ok_share": statuses["200"] / answered if answered else math.nan,
        "slow": dict(cut),
        "healthz_p99_ms": serving.pct(probe.healthz_ms, 99),
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = common.parser(__doc__, "load_scenarios")
    p.add_argument("--model", help="artifact directory (default models/default)")
    p.add_argument("--memory-budget", default="1G")
    p.add_argument("--restarts", type=int, default=20)
    p.add_argument("--seconds", type=float, default=60.0, help="length of each scenario")
    args = p.parse_args(argv)
    if args.quick:
        args.restarts = min(args.restarts, 3)
        args.seconds = min(args.seconds, 20.0)
    result = common.meta("load_scenarios", argv, args.quick, "-m bench.load_scenarios")
    budget = args.memory_budget
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model, note = serving.resolve_model(args.model, tmp)
        image, grid, sides_charge = admitted_sides(model, budget, tmp)
        print(f"admitted: max_image_side {image}, max_grid_side {grid}", flush=True)
        memory = memory_scenario(model, budget, image, grid, args.restarts, args.seconds, tmp)
        hol = head_of_line_scenario(model, budget, image, grid, args.seconds, tmp)
        print(f"head-of-line: {hol}", flush=True)
        hol_default = head_of_line_scenario(model, "default", image, grid, args.seconds, tmp)
        print(f"head-of-line, default budget: {hol_default}", flush=True)
        slow = slow_upload_scenario(model, budget, image, grid, args.seconds, tmp)
        print(f"slow uploads: {slow}", flush=True)
    result.update(
        model=note,
        budget=budget,
        budget_bytes=int(parse_bytes(budget) or 0),
        image_side=image,
        grid_side=grid,
        charge=sides_charge,
        restarts=args.restarts,
        seconds=args.seconds,
        memory=memory,
        head_of_line=hol,
        head_of_line_default=hol_default,
        slow_uploads=slow,
    )
    common.save(result, args.out)


if __name__ == "__main__":
    main()
