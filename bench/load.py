"""Load benchmark: sustained and overload tokenize traffic against a ``vq-serve`` process,
then SIGTERM under load.

    python -m bench.load            # full run (5,000 @ 64, 2,000 @ 256): runs/bench/load/
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
listener about to close. Every phase is bounded in requests and seconds. Targets:
bench/targets.toml.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.append(str(Path(__file__).parent))  # run as -m bench.load

import common  # noqa: E402 - bench/ is a folder of scripts
import serving  # noqa: E402

from service.client import service_error  # noqa: E402
from service.settings import parse_bytes  # noqa: E402


def run_phase(
    server: serving.Server,
    name: str,
    concurrency: int,
    requests: int,
    bodies: list[bytes],
    max_seconds: float,
    sigterm_after: float | None = None,
) -> dict[str, Any]:
    """One phase: its row of the report (and, with ``sigterm_after``, the SIGTERM time)."""
    statuses: Counter[str] = Counter()
    accepted: list[float] = []
    signalled: list[float] = []
    send = serving.tokenize(bodies)

    async def call(client: httpx.AsyncClient, i: int) -> bool:
        t0 = time.perf_counter()
        try:
            r = await send(client, i)
        except httpx.ConnectError:
            statuses["refused (connect)"] += 1
            return not signalled  # after SIGTERM the listener is closed: this client is done
        except httpx.HTTPError as exc:
            statuses[f"lost ({type(exc).__name__})"] += 1
            return True
        statuses[str(r.status_code)] += 1
        if r.status_code == 200:
            accepted.append(1000 * (time.perf_counter() - t0))
        # As the answer says: go to another replica, not back to this one.
        return not (r.status_code == 503 and service_error(r).code == "shutting_down")

    async def terminate(after: float) -> None:
        await asyncio.sleep(after)
        signalled.append(time.perf_counter())
        os.kill(server.proc.pid, signal.SIGTERM)

    drain = sigterm_after is not None  # the drain's shed counters are not read: the server exits

    def shed() -> dict[str, float]:
        return {} if drain else server.metric_by("vq_requests_shed_total", "reason")

    before = shed()
    also = [terminate(sigterm_after)] if sigterm_after is not None else []
    with serving.Probe(server.url, server.proc.pid) as probe:
        load = serving.clients(server.url, concurrency, call, requests, max_seconds=max_seconds)
        seconds = serving.run(load, *also)[0]
    row = {
        "name": name,
        "concurrency": concurrency,
        "sent": sum(statuses.values()),
        "seconds": seconds,
        "ok_per_s": statuses["200"] / seconds,
        "p50_ms": serving.pct(accepted, 50),
        "p99_ms": serving.pct(accepted, 99),
        "statuses": dict(sorted(statuses.items())),
        "shed": {k: v - before.get(k, 0.0) for k, v in shed().items()},
        **probe.summary(),
    }
    if signalled:
        row["signalled"] = signalled[0]
    print(f"{name}: {dict(statuses)} in {seconds:.1f} s", flush=True)
    return row


def main(argv: Sequence[str] | None = None) -> None:
    p = common.parser(__doc__, "load")
    add = p.add_argument
    add("--model", help="artifact directory (default models/default)")
    add("--size", type=int, default=32, help="image side in pixels (default 32)")
    add("--memory-budget", default="2G", help="vq-serve --memory-budget (default 2G)")
    add("--request-timeout-s", type=float, default=10.0, help="vq-serve deadline")
    add("--max-seconds", type=float, default=150.0, help="cap per phase")
    args = p.parse_args(argv)
    # (name, concurrency, requests): sustained, overload, then SIGTERM after some seconds
    plan = [("sustained", 64, 5000), ("overload", 256, 2000)]
    drain_plan = ("SIGTERM drain", 64, 2000, 5.0)
    if args.quick:
        plan = [("sustained", 8, 80), ("overload", 32, 80)]
        drain_plan = ("SIGTERM drain", 8, 400, 1.0)
        args.max_seconds = min(args.max_seconds, 30.0)
    result = common.meta("load", argv, args.quick, "-m bench.load")
    server_args = ["--memory-budget", args.memory_budget]
    server_args += ["--request-timeout-s", f"{args.request_timeout_s:g}"]
    # Small images only: the default 2048-px limit would not fit the budget (start-up refusal).
    side = max(256, args.size)
    server_args += ["--max-image-side", str(side), "--max-grid-side", str(side // 8)]
    with tempfile.TemporaryDirectory() as tmp:
        model, note = serving.resolve_model(args.model, Path(tmp))
        bodies = [serving.png_bytes(im) for im in serving.synthetic_images(32, args.size)]
        log = Path(tmp) / "serve.log"
        with serving.Server(model, [*server_args, "--log-level", "warning"], log) as server:
            phases = [run_phase(server, *step, bodies, args.max_seconds) for step in plan]
            name, concurrency, n, after_s = drain_plan
            drain = run_phase(server, name, concurrency, n, bodies, args.max_seconds, after_s)
            exit_code = server.proc.wait(timeout=120)
            drain_s = time.perf_counter() - drain.pop("signalled", time.perf_counter())
    result.update(
        model=note,
        size=args.size,
        server_args=server_args,
        budget=args.memory_budget,
        budget_bytes=int(parse_bytes(args.memory_budget) or 0),
        deadline_s=args.request_timeout_s,
        phases=[*phases, drain],
        exit_code=exit_code,
        drain_s=drain_s,
    )
    common.save(result, args.out)


if __name__ == "__main__":
    main()
