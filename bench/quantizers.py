"""Quantizer speed and memory: ours against vector_quantize_pytorch (issue 2, "Benchmark").

For each codebook size K it times one forward+backward pass of N encoder vectors (D = 64,
given as a (B, D, 32, 32) feature map) through each of our quantizers and through the matching
reference configuration, and it times the nearest-code search alone (effective GFLOP/s =
2·N·K·D / time). Every configuration runs in its own child process so that its peak RSS
(``ru_maxrss``) is its own; a child that runs out of memory, is killed or times out is recorded
as such instead of stopping the run. Results go to runs/bench/quantizers.md
(``--output docs/benchmarks/quantizers.md`` updates the committed report).

    python bench/quantizers.py            # the full run (~10 min on 2 cores)
    python bench/quantizers.py --quick    # seconds: small N and K, shared child processes

The reference is skipped at K > --reference-max-k (16,384 by default): at K = 65,536 its
N x K distance, one-hot and gradient matrices need more than this machine's 24 GiB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from vq.model import FSQ_RECOMMENDED_LEVELS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "runs" / "bench" / "quantizers.md"  # docs/benchmarks/ only when asked
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


@dataclass
class Result:
    task: Task
    status: str = "ok"  # ok | OOM | killed | timeout | error: ...
    times_s: list[float] = field(default_factory=list)
    peak_rss_mib: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # search: context timings
    load: tuple[float, float] | None = None  # 1-min load average at child start, end

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.status == "ok" and self.times_s else None


# --------------------------------------------------------------------------- child side


def _time(step: Callable[[], object], warmup: int, repeats: int, budget_s: float) -> list[float]:
    """Run ``step`` warmup times, then up to ``repeats`` timed times within ``budget_s``."""
    first = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
    if first is not None and first > 0:
        repeats = max(1, min(repeats, int(budget_s // first)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


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
    if kind == "plain":
        # A codebook learned by gradient (not EMA), as ours is by default.
        module = ref.VectorQuantize(
            dim=DIM,
            codebook_size=task.k,
            rotation_trick=rotation,
            learnable_codebook=True,
            ema_update=False,
            accept_image_fmap=True,
        )
    elif kind == "linear":
        module = ref.SimVQ(
            dim=DIM, codebook_size=task.k, rotation_trick=rotation, channel_first=True
        )
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

    return Result(task, times_s=_time(step, warmup, repeats, budget_s))


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

    times = _time(lambda: nearest_code(x, codebook), warmup, repeats, budget_s)
    extra = {
        "row_chunked_argmin_s": statistics.median(
            _time(lambda: row_chunked(True), warmup, repeats, budget_s)
        ),
        "row_chunked_matmul_s": statistics.median(
            _time(lambda: row_chunked(False), warmup, repeats, budget_s)
        ),
    }
    return Result(task, times_s=times, extra=extra)


def _is_memory_error(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "alloc" in str(exc).lower()


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
            if not _is_memory_error(exc):
                raise
            result = Result(task, status="OOM")
        result.load = (load_start, os.getloadavg()[0])
        out.append(result)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    for result in out:
        result.peak_rss_mib = peak
    print(RESULT_MARK + json.dumps([asdict(r) for r in out]), flush=True)


# --------------------------------------------------------------------------- parent side


def run_children(tasks: Sequence[Task], args: argparse.Namespace) -> list[Result]:
    """Run ``tasks`` in one child process; failures become results with a status."""
    spec = {
        "tasks": [asdict(t) for t in tasks],
        "n": args.n,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "budget_s": args.budget_s,
        "threads": args.threads,
        "memory_limit_gib": args.memory_limit_gib,
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = dict(os.environ)
    if args.omp_wait_policy != "unset":
        # Read by the OpenMP runtime when torch loads, so it must be set before the child starts.
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return [Result(t, status="timeout") for t in tasks]
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            results = []
            for raw in json.loads(line[len(RESULT_MARK) :]):
                raw["task"] = Task(**raw["task"])
                raw["load"] = tuple(raw["load"]) if raw["load"] else None
                results.append(Result(**raw))
            return results
    if proc.returncode < 0:  # a signal: SIGKILL is what the kernel's OOM killer sends
        status = "killed (OOM killer)" if proc.returncode == -9 else f"killed ({-proc.returncode})"
    elif "MemoryError" in proc.stderr or "alloc" in proc.stderr.lower():
        status = "OOM"
    else:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        status = f"error: {tail[0][:120]}"
    return [Result(t, status=status) for t in tasks]


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
                (Task("ours", "fsq", k_fsq, levels), Task("reference", "fsq", k_fsq, levels))
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


def _fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:,.0f}"


def _fmt_mib(mib: float | None) -> str:
    return "n/a" if mib is None else f"{mib:,.0f}"


def _gflops(n: int, k: int, seconds: float | None) -> float | None:
    return None if not seconds else 2 * n * k * DIM / seconds / 1e9


def _cell(result: Result | None) -> str:
    if result is None:
        return "skipped"
    return _fmt_ms(result.median_s) if result.status == "ok" else result.status


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@dataclass
class Target:
    name: str
    verdict: str  # holds | does not hold | not measured
    evidence: str


def evaluate(results: list[Result], n: int) -> list[Target]:
    """The issue's targets, each with the measured numbers behind the verdict."""
    by = {(r.task.impl, r.task.method, r.task.k): r for r in results}
    targets = []
    for k, bound in ((1024, 0.5), (16384, 0.25)):
        ratios = []
        for method in VQ_METHODS:
            ours, ref = by.get(("ours", method, k)), by.get(("reference", method, k))
            if ours and ref and ours.median_s and ref.median_s:
                ratios.append((method, ours.median_s / ref.median_s))
        verdict = (
            "not measured"
            if len(ratios) < len(VQ_METHODS)
            else "holds"
            if all(r <= bound for _, r in ratios)
            else "does not hold"
        )
        evidence = ", ".join(f"{m} {r:.3f}x" for m, r in ratios) or "no paired measurement"
        targets.append(
            Target(f"VQ and SimVQ fwd+bwd <= {bound}x reference at K = {k:,}", verdict, evidence)
        )

    big = [r for r in results if r.task.impl == "ours" and r.task.k >= 65536]
    if not big:
        targets.append(Target("K >= 65,536 under 1 GiB peak RSS", "not measured", "not run"))
    else:
        ok = all(r.status == "ok" and (r.peak_rss_mib or 1e9) < 1024 for r in big)
        worst = max(big, key=lambda r: r.peak_rss_mib or 0.0)
        targets.append(
            Target(
                "K = 65,536 and 262,144 under 1 GiB peak RSS (ours)",
                "holds" if ok else "does not hold",
                f"largest: {worst.task.method} at K = {worst.task.k:,}: "
                f"{_fmt_mib(worst.peak_rss_mib)} MiB ({worst.status})",
            )
        )

    for name, keep, bound in (
        ("search >= 60 GFLOP/s at K >= 16,384", lambda k: k >= 16384, 60.0),
        ("search >= 50 GFLOP/s at K = 1,024", lambda k: k == 1024, 50.0),
    ):
        rows = [r for r in results if r.task.method == "search" and keep(r.task.k)]
        rates = [(r.task.k, _gflops(n, r.task.k, r.median_s)) for r in rows]
        if not rates:
            targets.append(Target(name, "not measured", "not run"))
            continue
        ok = all(g is not None and g >= bound for _, g in rates)
        evidence = ", ".join(
            f"K={k:,}: {g:.1f}" if g is not None else f"K={k:,}: failed" for k, g in rates
        )
        targets.append(Target(name, "holds" if ok else "does not hold", evidence))

    fsq = [
        (r, by.get(("reference", "fsq", r.task.k)))
        for r in results
        if r.task.impl == "ours" and r.task.method == "fsq"
    ]
    pairs = [
        (o.task.levels, o.median_s / f.median_s) for o, f in fsq if f and o.median_s and f.median_s
    ]
    targets.append(
        Target(
            "FSQ no slower than the reference",
            "not measured"
            if not pairs
            else "holds"
            if all(r <= 1.0 for _, r in pairs)
            else "does not hold",
            ", ".join(f"{lv}: {r:.2f}x" for lv, r in pairs) or "no paired measurement",
        )
    )
    return targets


WHY = """\
Why the numbers look like this:

- **Search.** `vq.search.nearest_code` never materializes the N x K distance matrix: it computes
  one (rows x codes) tile of `||c||² - 2 e·c` at a time (512 x 512 floats = 1 MiB on CPU, sized
  to stay in the per-core L2), reduces it at once, and keeps each row's best code across tiles.
  The reduction is two-level, because `torch.min(dim)` with indices costs about as much as the
  matmul itself while the value-only `amin` is ~5x cheaper: `amin` over groups of 32 codes, then
  `min` with indices over the group minima, then `argmin` inside the winning group. With D = 64 a
  matmul does only 128 flops per distance, so the untiled baselines (32 MiB row chunks, the
  previous version) are bound by writing and re-reading the distances: they lose speed as K grows.
- **VQ / SimVQ forward+backward.** Ours is the search plus O(N·D) work: a gather of the chosen
  codes, the loss and the estimator; the codebook gradient comes from an embedding backward.
  The reference computes a differentiable N x K `cdist` (learnable codebook), an N x K one-hot and
  `one_hot @ codebook`, then backpropagates through all of them: several N x K float32 matrices
  (1 GiB each at N = K = 16,384), which is why it needs ~6.5 GiB at K = 16,384 and is killed at
  K = 65,536. Its SimVQ takes the nearest code from a no-grad `torch.cdist`, so it is cheaper.
- **Memory.** Our peak RSS at large K is the interpreter + torch (~300 MiB), the (K, D) codebook,
  its gradient and a few MiB of search state; nothing grows with N x K.
- **FSQ.** Both do O(N·d) element-wise work plus two small projections; the times are a few ms
  and close, so the ratio is sensitive to load.
"""


def write_report(
    path: Path,
    results: list[Result],
    args: argparse.Namespace,
    argv: Sequence[str],
    started: dt.datetime,
    wall_s: float,
    loads: tuple[float, float],
) -> None:
    import torch

    by = {(r.task.impl, r.task.method, r.task.k): r for r in results}
    n = args.n
    lines = [
        "# Quantizer benchmark: ours vs vector-quantize-pytorch",
        "",
        'Generated by `bench/quantizers.py` (issue 2, "Benchmark"). Times are the median of the '
        "timed repeats after warmup, for one forward+backward pass of N vectors (a "
        f"({n // SPATIAL}, {DIM}, 32, 32) feature map, D = {DIM}); ratio = ours / reference "
        "(lower is better). Peak RSS is `ru_maxrss` of the child process that ran that "
        "configuration alone, so it includes the interpreter and torch (~300 MiB).",
        "",
        "## Run",
        "",
        "- command: `" + " ".join(["python bench/quantizers.py", *argv]) + "`",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}, wall time {wall_s / 60:.1f} min",
        f"- machine: {os.cpu_count()} CPUs (`nproc`), {_cpu_model()}, Linux {platform.release()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"vector-quantize-pytorch {_version('vector-quantize-pytorch')}",
        f"- torch threads: {args.threads}; warmup {args.warmup}, up to {args.repeats} timed "
        f"repeats within {args.budget_s:.0f} s per measurement; child address space capped at "
        f"{args.memory_limit_gib:g} GiB; per-child timeout {args.timeout_s:.0f} s; "
        f"OMP_WAIT_POLICY {args.omp_wait_policy} in every child (both sides)",
        f"- N = {n:,}, K = {', '.join(f'{k:,}' for k in args.ks)}; reference run for "
        f"K <= {args.reference_max_k:,}",
        f"- load average (1 min) at start / end: {loads[0]:.2f} / {loads[1]:.2f}. Other jobs shared "
        "this machine, so absolute times are noisy; each ratio pairs two runs made minutes apart. "
        "The `load` column is the 1-minute load average when each of our children started/ended "
        f"(the machine has {os.cpu_count()} CPUs; above that, our threads were time-sliced).",
    ]
    if args.quick:
        lines += [
            "- **--quick run**: small N and K, one shared child process per implementation, so "
            "peak RSS is the maximum over that process, not per configuration.",
        ]

    for k in args.ks:
        lines += [
            "",
            f"## K = {k:,}",
            "",
            "| quantizer | ours (ms) | reference (ms) | ours / ref | ours peak RSS (MiB) "
            "| ref peak RSS (MiB) | ours repeats | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        methods: list[tuple[Method, int, str]] = [(m, k, m) for m in VQ_METHODS]
        fsq = next(
            (
                r
                for r in results
                if r.task.method == "fsq" and r.task.impl == "ours" and _fsq_home(r.task, args) == k
            ),
            None,
        )
        if fsq is not None:
            methods.append(("fsq", fsq.task.k, f"fsq {fsq.task.levels} (K = {fsq.task.k:,})"))
        for method, key_k, label in methods:
            ours, ref = by.get(("ours", method, key_k)), by.get(("reference", method, key_k))
            ratio = (
                f"{ours.median_s / ref.median_s:.3f}"
                if ours and ref and ours.median_s and ref.median_s
                else "n/a"
            )
            load = f"{ours.load[0]:.1f}/{ours.load[1]:.1f}" if ours and ours.load else "n/a"
            lines.append(
                f"| {label} | {_cell(ours)} | {_cell(ref)} | {ratio} "
                f"| {_fmt_mib(ours.peak_rss_mib) if ours else 'n/a'} "
                f"| {_fmt_mib(ref.peak_rss_mib) if ref else 'n/a'} "
                f"| {len(ours.times_s) if ours else 0} | {load} |"
            )

    lines += [
        "",
        "## Nearest-code search alone",
        "",
        f"N = {n:,}, D = {DIM}, random Gaussian inputs; effective GFLOP/s = 2·N·K·D / time. "
        "Context columns: the same `||c||² - 2 e·c` in row chunks of at most 32 MiB (`addmm`), "
        "with `argmin` (the previous, untiled `nearest_code`) and without it (a bare `z @ C.T`).",
        "",
        "| K | nearest_code (ms) | GFLOP/s | row chunks + argmin GFLOP/s "
        "| bare z @ C.T GFLOP/s | peak RSS (MiB) | load |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in args.ks:
        r = by.get(("ours", "search", k))
        if r is None:
            continue
        if r.status != "ok":
            lines.append(f"| {k:,} | {r.status} | | | | | |")
            continue
        g = _gflops(n, k, r.median_s)
        g_arg = _gflops(n, k, r.extra.get("row_chunked_argmin_s"))
        g_mm = _gflops(n, k, r.extra.get("row_chunked_matmul_s"))
        load = f"{r.load[0]:.1f}/{r.load[1]:.1f}" if r.load else "n/a"
        lines.append(
            f"| {k:,} | {_fmt_ms(r.median_s)} | {g:.1f} | {g_arg:.1f} | {g_mm:.1f} "
            f"| {_fmt_mib(r.peak_rss_mib)} | {load} |"
        )

    lines += [
        "",
        "## Where we stand",
        "",
        "| target (issue 2) | verdict | measured |",
        "|---|---|---|",
    ]
    for target in evaluate(results, n):
        lines.append(f"| {target.name} | **{target.verdict}** | {target.evidence} |")
    lines += ["", WHY]
    if args.notes:
        lines += ["## Notes on this run", "", Path(args.notes).read_text().strip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")


def _fsq_home(task: Task, args: argparse.Namespace) -> int | None:
    """The K table an FSQ task belongs to (the K whose recommended levels it uses)."""
    if args.quick:
        return args.ks[0]
    return next((k for k, lv in FSQ_LEVELS.items() if lv == task.levels and k in args.ks), None)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small N and K, one repeat: seconds")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file to write")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--n", type=int, default=None, help="vectors per batch (multiple of 1024)")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="codebook sizes")
    p.add_argument(
        "--reference-max-k",
        type=int,
        default=16384,
        help="run the reference only up to this K (it is killed for memory at 65,536 on 24 GiB)",
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported)")
    p.add_argument("--budget-s", type=float, default=40.0, help="time budget per measurement")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads in each child (default 2; 1 with --quick, whose numbers are "
        "a smoke test and which then stays fast on a loaded machine)",
    )
    p.add_argument("--timeout-s", type=float, default=900.0, help="per child process")
    p.add_argument("--memory-limit-gib", type=float, default=16.0, help="RLIMIT_AS per child")
    p.add_argument(
        "--omp-wait-policy",
        choices=["passive", "active", "unset"],
        default="passive",
        help="OMP_WAIT_POLICY of the children (both sides). On a machine shared with other jobs, "
        "the default spinning at OpenMP barriers makes 2-thread runs of many short ops several "
        "times slower; 'passive' threads sleep instead. 'unset' leaves the environment alone.",
    )
    p.add_argument("--notes", type=Path, default=None, help="markdown appended to the report")
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
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    results: list[Result] = []
    for group in plan(args):
        names = ", ".join(f"{t.impl}/{t.method}/K={t.k}" for t in group)
        print(f"running {names} ...", file=sys.stderr, flush=True)
        for r in run_children(group, args):
            results.append(r)
            ms = _fmt_ms(r.median_s) if r.status == "ok" else r.status
            print(
                f"  {r.task.impl:9s} {r.task.method:14s} K={r.task.k:<7,} {ms} ms, "
                f"peak {_fmt_mib(r.peak_rss_mib)} MiB",
                file=sys.stderr,
                flush=True,
            )
    write_report(
        args.output,
        results,
        args,
        argv,
        started,
        time.perf_counter() - t0,
        (load_start, os.getloadavg()[0]),
    )
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
