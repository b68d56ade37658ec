"""Quantizer speed and memory: ours against vector_quantize_pytorch (issue 2, "Benchmark").

For each codebook size K it times one forward+backward pass of N encoder vectors (D = 64,
given as a (B, D, 32, 32) feature map) through each of our quantizers and through the matching
reference configuration, and it times the nearest-code search alone (effective GFLOP/s =
2·N·K·D / time). Every configuration runs in its own child process so that its peak RSS
(``ru_maxrss``) is its own; a child that runs out of memory, is killed or times out is recorded
as such instead of stopping the run. Results go to runs/bench/quantizers/quantizers.{json,md}
(``--out docs/benchmarks`` updates the committed report). Targets: bench/targets.toml.

    python bench/quantizers.py            # the full run (~10 min on 2 cores)
    python bench/quantizers.py --quick    # seconds: small N and K, shared child processes

The reference is skipped at K > --reference-max-k (16,384 by default): at K = 65,536 its
N x K distance, one-hot and gradient matrices need more than this machine's 24 GiB.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import common  # first: it puts the repository on sys.path

from vq.model import FSQ_RECOMMENDED_LEVELS

DIM = 64
SPATIAL = 32 * 32  # vectors per feature map: inputs are (N / 1024, D, 32, 32)
RESULT_MARK = "BENCH-RESULT "

Impl = Literal["ours", "reference"]
# Method names as in bench/quality.py and configs/<method>.yaml.
Method = Literal["ste", "rotation", "simvq", "simvq_rotation", "fsq", "search"]
VQ_METHODS: tuple[Method, ...] = ("ste", "rotation", "simvq", "simvq_rotation")
# (codebook, grad_estimator) of each VQ method.
VQ_SPEC: dict[str, tuple[str, str]] = {
    "ste": ("plain", "ste"),
    "rotation": ("plain", "rotation"),
    "simvq": ("linear", "ste"),
    "simvq_rotation": ("linear", "rotation"),
}
# FSQ has no free K: the recommended levels (vq.model's table) for each K.
FSQ_LEVELS: dict[int, list[int]] = {
    k: list(FSQ_RECOMMENDED_LEVELS[k]) for k in (2**10, 2**14, 2**16)
}
QUICK_FSQ_LEVELS = [4, 4, 4, 4]


@dataclass(frozen=True)
class Task:
    impl: Impl
    method: Method
    k: int
    levels: list[int] | None = None
    table: int | None = None  # the K whose table shows it (FSQ: its levels' nominal K)


@dataclass
class Result:
    task: Task
    status: str = "ok"  # ok | OOM | killed | timeout | error: ...
    times_s: list[float] = field(default_factory=list)
    peak_rss_mib: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # search: context timings
    load: tuple[float, float] | None = None  # 1-min load average at child start, end


# --------------------------------------------------------------------------- child side


def _build(task: Task) -> Any:
    """The quantizer module of ``task`` and a function z -> (quantized, aux loss)."""
    import torch

    if task.impl == "ours":
        from vq import FSQ, VectorQuantizer

        if task.method == "fsq":
            assert task.levels is not None
            ours: torch.nn.Module = FSQ(task.levels, dim=DIM)
        else:
            kind, estimator = VQ_SPEC[task.method]
            ours = VectorQuantizer(DIM, task.k, codebook=kind, grad_estimator=estimator)
        return ours, lambda z: tuple(ours(z))[::2]  # QuantizerOutput -> (quantized, loss)

    import vector_quantize_pytorch as ref

    kind, estimator = VQ_SPEC.get(task.method, ("", ""))
    rotation = estimator == "rotation"
    vq_args = {"dim": DIM, "codebook_size": task.k, "rotation_trick": rotation}
    if kind == "plain":  # a codebook learned by gradient (not EMA), as ours is by default
        module = ref.VectorQuantize(
            **vq_args, learnable_codebook=True, ema_update=False, accept_image_fmap=True
        )
    elif kind == "linear":
        module = ref.SimVQ(**vq_args, channel_first=True)
    else:
        module = ref.FSQ(levels=task.levels, dim=DIM, channel_first=True)

    def forward(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        out = module(z)
        return out[0], (out[2] if len(out) > 2 else 0.0)  # FSQ returns no loss

    return module, forward


def _fwd_bwd(task: Task, n: int, warmup: int, repeats: int, budget_s: float) -> Result:
    import torch

    module, forward = _build(task)
    module.train()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n // SPATIAL, DIM, 32, 32, generator=gen).requires_grad_()  # (B, D, H, W)

    def step() -> None:
        z.grad = None
        module.zero_grad(set_to_none=True)
        quantized, aux = forward(z)
        (quantized.square().mean() + aux).backward()

    return Result(task, times_s=common.timed(step, repeats, budget_s, warmup))


def _search(task: Task, n: int, warmup: int, repeats: int, budget_s: float) -> Result:
    """nearest_code alone, plus two untiled baselines for context (same 32 MiB row chunks)."""
    import torch

    from vq.search import DEFAULT_MAX_BYTES, nearest_code

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, DIM, generator=gen)  # (N, D)
    codebook = torch.randn(task.k, DIM, generator=gen)  # (K, D)
    rows = max(1, DEFAULT_MAX_BYTES // (4 * task.k))

    def row_chunked(argmin: bool) -> None:
        c_sq = codebook.square().sum(dim=1)
        for r0 in range(0, n, rows):
            dist = torch.addmm(c_sq, x[r0 : r0 + rows], codebook.t(), alpha=-2.0)  # (rows, K)
            if argmin:
                dist.argmin(dim=1)

    def timed(step: Callable[[], object]) -> list[float]:
        return common.timed(step, repeats, budget_s, warmup)

    extra = {
        "row_chunked_argmin_s": statistics.median(timed(lambda: row_chunked(True))),
        "row_chunked_matmul_s": statistics.median(timed(lambda: row_chunked(False))),
    }
    return Result(task, times_s=timed(lambda: nearest_code(x, codebook)), extra=extra)


def _die_with_parent() -> None:
    """Linux: end this child if the parent run is stopped, so no heavy orphan keeps running."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_main(spec: dict[str, Any]) -> None:
    """Run the tasks of one child process and print their results as one JSON line."""
    _die_with_parent()
    limit = int(spec["memory_limit_gib"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(spec["threads"])
    out = []
    for raw in spec["tasks"]:
        task = Task(**raw)
        load_start = os.getloadavg()[0]
        run = _search if task.method == "search" else _fwd_bwd
        try:
            result = run(task, spec["n"], spec["warmup"], spec["repeats"], spec["budget_s"])
        except (MemoryError, RuntimeError) as exc:
            if not (isinstance(exc, MemoryError) or "alloc" in str(exc).lower()):
                raise
            result = Result(task, status="OOM")
        result.load = (load_start, os.getloadavg()[0])
        out.append(result)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    for result in out:
        result.peak_rss_mib = peak
    print(RESULT_MARK + json.dumps([asdict(r) for r in out]), flush=True)


# --------------------------------------------------------------------------- parent side


def run_children(tasks: Sequence[Task], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run ``tasks`` in one child process: their results (``Result`` as a dict); failures
    become results with a status."""
    spec = {k: getattr(args, k) for k in ("n", "warmup", "repeats", "budget_s", "threads")}
    spec |= {"tasks": [asdict(t) for t in tasks], "memory_limit_gib": args.memory_limit_gib}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = dict(os.environ)
    if args.omp_wait_policy != "unset":
        # Read by the OpenMP runtime when torch loads, so it must be set before the child starts.
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return [asdict(Result(t, status="timeout")) for t in tasks]
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return list(json.loads(line.removeprefix(RESULT_MARK)))
    if proc.returncode < 0:  # a signal: SIGKILL is what the kernel's OOM killer sends
        status = "killed (OOM killer)" if proc.returncode == -9 else f"killed ({-proc.returncode})"
    elif "MemoryError" in proc.stderr or "alloc" in proc.stderr.lower():
        status = "OOM"
    else:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        status = f"error: {tail[0][:120]}"
    return [asdict(Result(t, status=status)) for t in tasks]


def plan(args: argparse.Namespace) -> list[list[Task]]:
    """Tasks grouped by child process, in run order.

    One task per child, each of ours right before its reference counterpart, so that the two
    sides of a ratio see about the same machine load. With --quick: one child per
    implementation (ours, reference, search), to keep the smoke test to seconds.
    """
    pairs: list[tuple[Task, Task | None]] = []
    search: list[Task] = []
    for k in args.ks:
        for method in VQ_METHODS:
            ref = Task("reference", method, k) if k <= args.reference_max_k else None
            pairs.append((Task("ours", method, k), ref))
        levels = QUICK_FSQ_LEVELS if args.quick else FSQ_LEVELS.get(k)
        if levels is not None:
            k_fsq = math.prod(levels)
            pairs.append(
                (Task("ours", "fsq", k_fsq, levels, k), Task("reference", "fsq", k_fsq, levels, k))
            )
        search.append(Task("ours", "search", k))
    if args.quick:
        groups = [[o for o, _ in pairs], [r for _, r in pairs if r is not None], search]
        return [g for g in groups if g]
    order: list[list[Task]] = []
    for ours, ref in pairs:
        order.append([ours])
        if ref is not None:
            order.append([ref])
    return order + [[t] for t in search]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = common.parser(__doc__, "quantizers")
    add = p.add_argument
    add("--n", type=int, default=None, help="vectors per batch (multiple of 1024)")
    add("--ks", type=int, nargs="+", default=None, help="codebook sizes")
    add("--reference-max-k", type=int, default=16384, help="run the reference only up to this K")
    add("--warmup", type=int, default=1)
    add("--repeats", type=int, default=None, help="timed repeats (median reported)")
    add("--budget-s", type=float, default=40.0, help="time budget per measurement")
    add("--threads", type=int, help="torch threads in each child (default 2; --quick: 1)")
    add("--timeout-s", type=float, default=900.0, help="per child process")
    add("--memory-limit-gib", type=float, default=16.0, help="RLIMIT_AS per child")
    add(
        "--omp-wait-policy",
        choices=["passive", "active", "unset"],
        default="passive",
        help="OMP_WAIT_POLICY of the children (both sides): 'passive' threads sleep at OpenMP "
        "barriers instead of spinning, which suits cores shared with other jobs; 'unset' "
        "leaves the environment alone",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is None:
        args.n = args.n or (1024 if args.quick else 16384)
        args.ks = args.ks or ([256] if args.quick else [1024, 16384, 65536, 262144])
        args.repeats = args.repeats or (1 if args.quick else 3)
        args.threads = args.threads or (1 if args.quick else 2)
        if args.n <= 0 or args.n % SPATIAL:
            p.error(f"--n must be a positive multiple of {SPATIAL}, got {args.n}")
        if any(k <= 0 for k in args.ks):
            p.error(f"--ks must be positive, got {args.ks}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child is not None:
        child_main(json.loads(args.child))
        return
    payload = common.meta("quantizers", argv, args.quick)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    for group in plan(args):
        names = ", ".join(f"{t.impl}/{t.method}/K={t.k}" for t in group)
        print(f"running {names} ...", file=sys.stderr, flush=True)
        for r in run_children(group, args):
            results.append(r)
            print(
                f"  {r['status']}: {r['times_s']} s, peak {r['peak_rss_mib']} MiB", file=sys.stderr
            )
    try:
        reference = importlib.metadata.version("vector-quantize-pytorch")
    except importlib.metadata.PackageNotFoundError:
        reference = "not installed"
    config = {k: v for k, v in vars(args).items() if k not in ("out", "child")}
    payload.update(
        wall_s=time.perf_counter() - t0,
        reference=reference,
        config=config,
        results=results,
    )
    common.save(payload, args.out)


if __name__ == "__main__":
    main()
