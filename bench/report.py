"""The one renderer: benchmark JSON -> markdown report (and the quality benchmark's plots).

    python bench/report.py runs/bench/quality/quality.json --out docs/benchmarks/quality.md
    python bench/report.py runs/bench/kodak/kodak.json --out docs/benchmarks/kodak_default/kodak.md

A report is a generated part followed by ``HAND_WRITTEN`` and text written by hand; rewriting
a report replaces the generated part and keeps the rest. Targets come from
``bench/targets.toml``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HAND_WRITTEN = "<!-- analysis: written by hand, kept when the script rewrites this file -->"
TARGETS = Path(__file__).resolve().parent / "targets.toml"
HF_NOTE = (
    "*HF ratio*: power of the luma's 2-D spectrum above 0.25 cycles/pixel (the upper half of "
    "the band), reconstruction over original, mean over images. It says how much fine-detail "
    "energy survives: a blur scores near 0, noise, ringing or invented texture can score 1 or "
    "more. It does not say whether the detail is the original's (PSNR, SSIM and VIF do)."
)


def write(path: Path, generated: str) -> None:
    """Write ``generated`` to ``path``, keeping the hand-written part of an existing file."""
    kept = ""
    if path.exists() and HAND_WRITTEN in (text := path.read_text()):
        kept = text.split(HAND_WRITTEN, 1)[1].strip("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{generated.rstrip()}\n\n{HAND_WRITTEN}\n{kept}".rstrip() + "\n")


def fmt(x: Any, spec: str) -> str:
    ok = isinstance(x, int | float) and math.isfinite(x)
    return format(x, spec) if ok else "n/a"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


Column = tuple[str, str | Callable[[dict[str, Any]], Any], str]


def columns(cols: Sequence[Column], rows: Sequence[dict[str, Any]]) -> list[str]:
    """A table of ``rows``: each column is (header, key or function of the row, format spec);
    a string value is shown as it is."""

    def cell(r: dict[str, Any], key: str | Callable[[dict[str, Any]], Any], spec: str) -> str:
        value = key(r) if callable(key) else r.get(key)
        return value if isinstance(value, str) else fmt(value, spec)

    return table([c[0] for c in cols], [[cell(r, k, s) for _, k, s in cols] for r in rows])


def verdict(ok: bool) -> str:
    return "holds" if ok else "**missed**"


def run_lines(p: dict[str, Any]) -> list[str]:
    """The run's description (bench/common.py's meta) as a bullet list."""
    quick = " (quick mode: small counts, numbers are rough)" if p.get("quick") else ""
    load = p.get("load") or []
    soft = [
        f"torch {p['torch']}" if p.get("torch") else "",
        f"Python {p['python']}" if p.get("python") else "",
        f"{p['threads']} torch threads" if p.get("threads") else "",
        f"1-min load average {load[0]:.2f} at the start" if load else "",
        f"{load[1]:.2f} at the end" if len(load) > 1 else "",
    ]
    return [
        f"- Command: `{p['command']}`{quick}",
        f"- Date: {p['date']}",
        "; ".join([f"- Machine: {p['machine']}", ", ".join(x for x in soft if x)]).rstrip("; "),
    ]


QUALITY_FIGURES = ("PSNR dB", "SSIM", "MS-SSIM", "VIF", "HF ratio")


def _figures(r: dict[str, Any]) -> list[str]:
    return [
        fmt(r["psnr"], ".2f"),
        fmt(r["ssim"], ".3f"),
        fmt(r.get("ms_ssim"), ".3f"),
        fmt(r.get("vif"), ".3f"),
        fmt(r.get("hf_ratio"), ".3f"),
    ]


# --- Kodak ---------------------------------------------------------------------------------


def kodak_tables(payload: dict[str, Any]) -> list[str]:
    toks = payload["tokenizers"]
    lines = (
        table(
            [
                "tokenizer",
                "K",
                *QUALITY_FIGURES,
                "LPIPS",
                "bpp log2(K)/f²",
                "bpp entropy",
                "usage",
                "perplexity",
                "dead codes",
            ],
            [
                [
                    r["name"],
                    f"{r['codebook_size']:,}",
                    *_figures(r),
                    fmt(r.get("lpips"), ".3f"),
                    f"{r['bpp_nominal']:.4f}",
                    f"{r['bpp_entropy']:.4f}",
                    f"{r['usage']:.1%}",
                    f"{r['perplexity']:,.0f}",
                    f"{r['dead_codes']:,}",
                ]
                for r in toks
            ],
        )
        if toks
        else []
    )
    lines += [""] + table(
        ["codec", "quality", "bpp", *QUALITY_FIGURES],
        [
            [p["codec"], str(p["quality"]), f"{p['bpp']:.3f}", *_figures(p)]
            for p in payload["codecs"]
        ],
    )
    return lines


def kodak_markdown(payload: dict[str, Any], folder: Path | None = None) -> str:
    images = payload["images"]
    lines = [
        f"# Kodak: {len(images['names'])} images",
        "",
        "Generated by `bench/kodak.py` (rendered by `bench/report.py`). Every figure is the "
        "mean over images of the per-image figure, on RGB uint8 images, whole.",
        "",
        *kodak_tables(payload),
        "",
        HF_NOTE,
        "",
        *(f"- {note}" for note in payload.get("notes", [])),
    ]
    for name, caption in (
        ("kodak_rd.png", "PSNR vs bits per pixel"),
        ("kodak_crops.png", "Zoomed crops"),
    ):
        if folder is None or (folder / name).exists():
            lines += ["", f"![{caption}]({name})"]
    crops = payload.get("crops")
    if crops:
        regions = "; ".join(
            f"{c['image']} rows {c['top']}-{c['top'] + c['side']}, columns "
            f"{c['left']}-{c['left'] + c['side']}"
            for c in crops["regions"]
        )
        lines += [
            "",
            f"Zoomed crops, 1:1 pixels: original | {' | '.join(crops['codecs'])} | each "
            f"tokenizer (bpp in the titles); {regions or 'the centre of the first image'}.",
        ]
    return "\n".join(lines)


# --- quality -------------------------------------------------------------------------------


def load_targets(path: Path = TARGETS) -> list[dict[str, Any]]:
    return list(tomllib.loads(path.read_text())["quality"])


def targets(benchmark: str) -> dict[str, Any]:
    """The thresholds of one benchmark in targets.toml."""
    return dict(tomllib.loads(TARGETS.read_text())[benchmark])


def _ok(results: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    runs = [r for r in results if r["method"] in methods and r["error"] is None]
    return sorted(runs, key=lambda r: r["nominal_size"])


def check_target(t: dict[str, Any], results: Sequence[dict[str, Any]]) -> tuple[bool | None, str]:
    """One target of targets.toml against the results -> (holds, or None when not measured;
    the measured figures)."""
    metric = t.get("metric", "window_usage")
    runs = _ok(results, t.get("methods", ()))
    if t["kind"] == "floor":
        detail = ", ".join(f"{r['method']}@{r['codebook_size']}: {r[metric]:.1%}" for r in runs)
        return (all(r[metric] >= t["min"] for r in runs) if runs else None), detail or "not run"
    if t["kind"] == "falling":
        values = [r[metric] for r in runs]
        detail = " -> ".join(f"{r[metric]:.1%} (K={r['codebook_size']})" for r in runs)
        if len(runs) < 2:
            return None, "needs >= 2 sizes"
        return all(b < a for a, b in zip(values, values[1:], strict=False)), detail
    if t["kind"] == "ratio":
        base = {r["nominal_size"]: r for r in _ok(results, [t["baseline"]])}
        pairs = [(base[r["nominal_size"]], r) for r in runs if r["nominal_size"] in base]
        pairs = [(b, r) for b, r in pairs if r["nominal_size"] >= t.get("min_k", 0)]
        if not pairs:
            return None, "not run"
        holds = all(
            r[metric] >= t["factor"] * b[metric] and r["psnr"] >= b["psnr"] for b, r in pairs
        )
        detail = "; ".join(
            f"K={r['nominal_size']}: {r[metric]:.1%} vs {b[metric]:.1%}, PSNR {r['psnr']:.2f} vs "
            f"{b['psnr']:.2f} dB"
            for b, r in pairs
        )
        return holds, detail
    if t["kind"] == "best":
        runs = [r for r in results if r["error"] is None]
        if not runs:
            return None, "no run finished"
        best = max(runs, key=lambda r: r[metric])
        return best[metric] >= t[
            "min"
        ], f"best: {best['method']} K={best['codebook_size']}, {best[metric]:.2f}"
    raise ValueError(f"targets.toml: kind {t['kind']!r} is not one of floor, falling, ratio, best")


def _size(r: dict[str, Any]) -> str:
    return f"{r['codebook_size']:,}" + (f" ({r['levels']})" if r.get("levels") else "")


def quality_tables(results: Sequence[dict[str, Any]], order: Sequence[str]) -> list[str]:
    lines: list[str] = []
    for size in sorted({r["nominal_size"] for r in results}):
        runs = sorted(
            (r for r in results if r["nominal_size"] == size),
            key=lambda r: order.index(r["method"]) if r["method"] in order else 99,
        )
        rows = []
        for r in runs:
            if r["error"] is not None:
                rows.append([r["method"], _size(r), f"failed: {r['error']}"] + [""] * 10)
                continue
            rows.append(
                [
                    r["method"],
                    _size(r),
                    fmt(r["psnr"], ".2f"),
                    fmt(r["ssim"], ".3f"),
                    f"{r['window_usage']:.1%} ({r['window_tokens']:,})",
                    f"{fmt(r.get('fixed_usage'), '.1%')} ({r.get('fixed_tokens', 0):,})",
                    fmt(r["window_perplexity"], ",.0f"),
                    f"{r['dead_codes']:,}",
                    fmt(r["quant_error"], ".3g"),
                    fmt(r["quant_error_rel"], ".3f"),
                    fmt(r["train_seconds"], ".0f"),
                    fmt(r["eval_seconds"], ".0f"),
                    r.get("setting", ""),
                ]
            )
        lines += ["", f"## K = {size:,}", ""] + table(
            [
                "method",
                "K (levels)",
                "PSNR dB",
                "SSIM",
                "window usage (tokens)",
                "fixed-set usage (tokens)",
                "perplexity",
                "dead codes",
                "‖e−q‖²",
                "‖e−q‖²/‖e‖²",
                "train s",
                "eval s",
                "setting",
            ],
            rows,
        )
        kodak = [r for r in runs if r["error"] is None and r.get("kodak")]
        if kodak:
            lines += ["", f"Kodak (K = {size:,}):", ""] + table(
                ["method", "K", *QUALITY_FIGURES, "usage", "bpp log2(K)/f²", "bpp entropy"],
                [
                    [
                        r["method"],
                        f"{r['codebook_size']:,}",
                        *_figures(r["kodak"]),
                        f"{r['kodak']['usage']:.1%}",
                        f"{r['kodak']['bpp_nominal']:.4f}",
                        f"{r['kodak']['bpp_entropy']:.4f}",
                    ]
                    for r in kodak
                ],
            )
    return lines


def quality_markdown(payload: dict[str, Any], plots: Sequence[str] = ()) -> str:
    meta, cfg, results = payload["meta"], payload["config"], payload["results"]
    plain = cfg["plain"]
    primary = plain if isinstance(plain, str) else plain[0]  # older JSON: one string
    judged = [r for r in results if r.get("setting", "") in ("", primary)]
    checks = [(t["name"], *check_target(t, judged)) for t in load_targets()]
    verdict = {True: "yes", False: "**no**", None: "n/a"}
    lines = [
        "# Quality benchmark: STE vs rotation trick vs SimVQ vs FSQ",
        "",
        "Generated by `bench/quality.py` (rendered by `bench/report.py`; targets from "
        "`bench/targets.toml`). Every configuration trains with `vq-train fit --config "
        "configs/<method>.yaml` (Lightning's Trainer, `train.module.VQVAEModule`) with the "
        "codebook size, budget and the overrides below.",
        "",
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}; wall time of this invocation {meta['total_seconds'] / 60:.1f} min",
        f"- Machine: {meta['machine']}; torch {meta['torch']}, Python {meta['python']}",
        f"- Budget: {cfg['steps']} steps x batch {cfg['batch_size']} of {cfg['crop']}² crops; "
        f"seed {cfg['seed']}; overrides {cfg['overrides'] or 'none'}",
        f"- Data: {meta['data']}",
        f"- *Window usage*: share of the K codes hit in max(4K, {cfg['min_window']:,}) tokens of "
        "training crops encoded in eval mode after training. *Fixed-set usage*: share hit over "
        f"a fixed token set of at least {cfg.get('tokens_per_code', 16)} tokens per code (every "
        "held-out token, then training-crop tokens), comparable to the SimVQ paper's usage "
        "figure. PSNR/SSIM: held-out crops; Kodak: whole images from the exported artifact "
        "(float32).",
        "- *Setting* of the plain codebooks (ste, rotation): `papers` = uniform init, no "
        "dead-code restart; `recipe` = the config's data init + restart; `rotation-paper` = "
        "the rotation-trick paper's VQ-VAE runs as far as `vq` expresses them (EMA codebook, "
        "decay 0.8, commitment 1.0; not its l2-normalised codebook or kaiming-scale init). "
        f"The targets judge the `{primary}` rows.",
        "",
        "## Targets",
        "",
        *table(["target", "holds", "measured"], [[n, verdict[h], d] for n, h, d in checks]),
        *quality_tables(results, meta.get("methods", [])),
    ]
    codecs = meta.get("codecs") or []
    if codecs:
        lines += ["", "## JPEG and WebP on the same Kodak images (Pillow)", ""]
        lines += table(
            ["codec", "quality", "bpp", *QUALITY_FIGURES],
            [[p["codec"], str(p["quality"]), f"{p['bpp']:.3f}", *_figures(p)] for p in codecs],
        )
        lines += ["", HF_NOTE]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines)


def quality_plots(payload: dict[str, Any], out_dir: Path, stem: str = "quality") -> list[str]:
    """Usage vs step, usage and PSNR vs K; PNGs in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in payload["results"] if r["error"] is None]
    if not ok:
        return []
    labels = sorted({f"{r['method']}{r.get('setting') and ' ' + r['setting']}" for r in ok})
    color = {m: f"C{i}" for i, m in enumerate(labels)}

    def label(r: dict[str, Any]) -> str:
        return f"{r['method']}{r.get('setting') and ' ' + r['setting']}"

    paths = []
    sizes = sorted({r["nominal_size"] for r in ok})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.6), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for r in (r for r in ok if r["nominal_size"] == size and r["history"]):
            steps = [h["step"] for h in r["history"]]
            ax.plot(
                steps,
                [100 * h["window_usage"] for h in r["history"]],
                label=label(r),
                color=color[label(r)],
            )
        ax.set(title=f"K ≈ {size:,}", xlabel="step", ylim=(0, 105))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training window usage (%)")
    fig.tight_layout()
    paths.append(out_dir / f"{stem}_usage_vs_step.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    for key, ylabel in (("window_usage", "window usage (%)"), ("psnr", "held-out PSNR (dB)")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for name in labels:
            runs = sorted((r for r in ok if label(r) == name), key=lambda r: r["codebook_size"])
            scale = 100 if key == "window_usage" else 1
            ax.plot(
                [r["codebook_size"] for r in runs],
                [scale * r[key] for r in runs],
                marker="o",
                label=name,
                color=color[name],
            )
        ax.set_xscale("log", base=2)
        ax.set(xlabel="codebook size K (FSQ: prod(levels))", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / f"{stem}_{key.split('_')[-1]}_vs_k.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return [str(p) for p in paths]


# --- Recipe step cost ----------------------------------------------------------------------


def recipe_step_markdown(payload: dict[str, Any]) -> str:
    ms = payload["seconds_per_step"]
    ratio = payload["ratio_to_mse"]
    limit = payload["target_max_ratio"]
    rows = [[name, fmt(1000 * ms[name], ".0f"), fmt(ratio[name], ".2f")] for name in ms]
    worst = max(v for k, v in ratio.items() if k != "mse")
    verdict = "holds" if worst <= limit else "missed"
    return "\n".join(
        [
            "# Recipe training step vs MSE step",
            "",
            f"`{payload['command']}` on {payload['machine']}, torch {payload['torch']}, "
            f"{payload['precision']}, {payload['date']}; batch {payload['batch']} (configs/"
            f"default.yaml's network and crops), median of {payload['rounds']} alternating "
            f"rounds of {payload['steps']} steps.",
            "",
            *table(["variant", "ms / step", "× MSE step"], rows),
            "",
            f"Target: a recipe step (discriminator included) at most {limit:g}× an MSE step: "
            f"**{verdict}** (worst {worst:.2f}×). `recipe`: MS-SSIM + adaptive hinge PatchGAN "
            "(its step and the generator's pass through it) + EMA + L1, all parameters; "
            "`recipe_decoder_only`: the same with the encoder and quantizer frozen "
            "(configs/recipes/default_decoder_ft.yaml), whose frozen half runs without a graph.",
        ]
    )


# --- Service ---------------------------------------------------------------------------


def service_markdown(p: dict[str, Any]) -> str:
    t = targets("service")
    rows, batch = p["results"], p["batch"]
    best = max(p["ceilings"], key=lambda c: c["batch_img_s"])
    ceiling = best["batch_img_s"]
    single = max(c["single_img_s"] for c in p["ceilings"])
    cpu_ms = min(c["cpu_ms"] for c in p["ceilings"] if c.get("cpu_ms") is not None)
    top = max(r["concurrency"] for r in rows)
    by = {(r["mode"], r["concurrency"]): r for r in rows}
    lines = [
        "# Service benchmark: tokenize throughput and latency",
        "",
        "Generated by `bench/service.py` (rendered by `bench/report.py`; targets from "
        "`bench/targets.toml`).",
        "",
        *run_lines(p),
        f"- Model: {p['model']}; precision {p['precision']} (the default on this CPU, in "
        "process and in the servers)",
        f"- Workload: one {p['size']}x{p['size']} PNG per `POST /v1/tokenize` (multipart), "
        "synthetic images; clients are asyncio + httpx in the benchmark process, on the same "
        "machine as the server, over loopback.",
        f"- Server: `vq-serve` on CPU; batched = `--max-batch-size {batch}` (default 2 ms batch "
        "wait); unbatched = `--no-batching` (one image per forward pass). Both run at once; "
        "the modes alternate per concurrency level.",
        "",
        "## Results",
        "",
        *columns(
            [
                ("mode", "mode", ""),
                ("concurrency", "concurrency", ""),
                ("requests", "requests", ""),
                ("images/s", "img_s", ".2f"),
                ("p50 ms", "p50_ms", ".0f"),
                ("p99 ms", "p99_ms", ".0f"),
                ("mean batch", "mean_batch", ".1f"),
                ("server CPU ms/img", "server_cpu_ms", ".0f"),
                ("client CPU ms/img", "client_cpu_ms", ".0f"),
            ],
            rows,
        ),
        "",
        f"In-process `Tokenizer.encode` (no HTTP, no PNG decoding): **{ceiling:.2f} images/s "
        f"at batch {batch}** (the ceiling), {single:.2f} images/s at batch 1: each the better "
        "of a measurement before and one after the service runs ("
        + "; ".join(
            f"batch {batch} {c['batch_img_s']:.2f}, batch 1 {c['single_img_s']:.2f}"
            for c in p["ceilings"]
        )
        + f"). In process one image costs {cpu_ms:.0f} ms of CPU time (all threads) at batch "
        f"{batch}; the table's CPU columns are the server's and the load generator's CPU time "
        "per request over the timed requests (from /proc), on the same cores. p99 over a few "
        "dozen requests is close to the maximum; read it as a rough tail.",
    ]
    batched, unbatched = by.get(("batched", top)), by.get(("unbatched", top))
    if batched and unbatched:
        vs_ceiling = batched["img_s"] / ceiling
        vs_unbatched = batched["img_s"] / unbatched["img_s"]
        cpu = batched["server_cpu_ms"] + batched["client_cpu_ms"]
        lines += [
            "",
            f"## Against the targets (concurrency {top})",
            "",
            *table(
                ["ratio", "measured", "target", "verdict"],
                [
                    [what, f"{x:.2f}x", f">= {t[key]}x", verdict(x >= t[key])]
                    for what, x, key in (
                        ("batched service / in-process ceiling", vs_ceiling, "vs_ceiling"),
                        ("batched service / unbatched service", vs_unbatched, "vs_unbatched"),
                    )
                ],
            ),
            "",
            f"One forward pass of {batch} images runs at {ceiling / single:.2f}x the per-image "
            "throughput of single-image passes in process: that bounds what micro-batching can "
            f"buy (mean batch {batched['mean_batch']:.1f} at concurrency {top}). Where the CPU "
            f"went at concurrency {top}: the server spent {batched['server_cpu_ms']:.0f} ms of "
            f"CPU per image against {cpu_ms:.0f} ms in process, the load generator "
            f"{batched['client_cpu_ms']:.0f} ms; were the cores the only limit, {cpu:.0f} ms "
            f"against {cpu_ms:.0f} would give {cpu_ms / cpu:.2f}x. Server and client together "
            f"kept {batched['busy_cores']:.2f} cores busy.",
        ]
    return "\n".join(lines)


# --- Load ------------------------------------------------------------------------------


def load_markdown(p: dict[str, Any]) -> str:
    t = targets("load")
    phases, drain = p["phases"], p["phases"][-1]

    def count(r: dict[str, Any], keep: Callable[[str], bool]) -> int:
        return sum(n for status, n in r["statuses"].items() if keep(status))

    def listed(d: dict[str, float]) -> str:
        return ", ".join(f"{k}: {v:g}" for k, v in sorted(d.items()) if v) or "0"

    lost = count(drain, lambda s: s.startswith("lost"))
    five = sum(count(r, lambda s: s.startswith("5") and s != "503") for r in phases)
    peak = max(r["peak_rss_mib"] for r in phases)
    p99 = max(r["p99_ms"] for r in phases[:-1])
    health99 = max(r["healthz_p99_ms"] for r in phases[:-1])
    health = max(r["healthz_max_ms"] for r in phases[:-1])
    return "\n".join(
        [
            "# Load benchmark: vq-serve under sustained load, overload and SIGTERM",
            "",
            "Generated by `bench/load.py` (rendered by `bench/report.py`).",
            "",
            *run_lines(p),
            f"- Model: {p['model']}. Requests: one {p['size']}x{p['size']} PNG each, multipart "
            f"tokenize, to `vq-serve {' '.join(p['server_args'])}` on 127.0.0.1 (memory budget "
            f"{p['budget']}, deadline {p['deadline_s']:g} s). Loopback only; every phase is "
            "bounded in count and time.",
            "",
            *columns(
                [
                    ("phase", "name", ""),
                    ("concurrency", "concurrency", ""),
                    ("requests", "sent", ""),
                    ("seconds", "seconds", ".1f"),
                    ("req/s", "ok_per_s", ".1f"),
                    ("p50 ms", "p50_ms", ".0f"),
                    ("p99 ms", "p99_ms", ".0f"),
                    ("answers by status", lambda r: listed(r["statuses"]), ""),
                    ("shed (server counters)", lambda r: listed(r["shed"]), ""),
                    ("peak RSS MiB", "peak_rss_mib", ".0f"),
                    (
                        "/healthz p50 / p99 / max ms",
                        lambda r: " / ".join(
                            fmt(r[f"healthz_{q}_ms"], ".1f") for q in ("p50", "p99", "max")
                        ),
                        "",
                    ),
                ],
                phases,
            ),
            "",
            f"SIGTERM under load: delivered during the drain phase; the process exited with "
            f"code {p['exit_code']} {p['drain_s']:.1f} s later. Lost requests (connected, never "
            f"answered): {lost}.",
            "",
            *table(
                ["target", "measured", "verdict"],
                [
                    ["0 x 5xx (other than 503 shedding)", str(five), verdict(five == 0)],
                    [
                        f"RSS under the budget ({p['budget']})",
                        f"peak {peak:.0f} MiB",
                        verdict(peak * 2**20 <= p["budget_bytes"]),
                    ],
                    [
                        f"p99 of accepted requests within the deadline ({p['deadline_s']:g} s)",
                        f"{p99:.0f} ms",
                        verdict(p99 <= 1000 * p["deadline_s"]),
                    ],
                    [
                        f"/healthz under {t['healthz_p99_ms']:.0f} ms during load",
                        f"p99 {health99:.1f} ms, max {health:.1f} ms",
                        verdict(health99 < t["healthz_p99_ms"]) + " (p99)",
                    ],
                    [
                        f"{t['lost_on_sigterm']} requests lost on SIGTERM",
                        str(lost),
                        verdict(lost <= t["lost_on_sigterm"]),
                    ],
                ],
            ),
            "",
            "Statuses: 200 answered; 503 refused by load shedding (`overloaded`: the queue of "
            "`max_queue` items was full, `timeout`: the deadline passed; both with Retry-After) "
            "or by the drain (`shutting_down`); 'refused (connect)': the listener was already "
            "closed after SIGTERM, so the client knows the request never reached the service.",
        ]
    )


def load_scenarios_markdown(p: dict[str, Any]) -> str:
    t = targets("load_scenarios")
    memory, hol, slow = p["memory"], p["head_of_line"], p["slow_uploads"]
    peak = max(m["peak_rss_mib"] for m in memory)
    ratio = hol["mixed_p99_ms"] / hol["alone_p99_ms"]
    probes = [m["healthz_p99_ms"] for m in memory] + [hol["healthz_p99_ms"], slow["healthz_p99_ms"]]
    health = max(x for x in probes if x is not None)  # None: not recorded
    ok = slow["ok_share"]

    def listed(d: dict[str, Any]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(d.items()))

    return "\n".join(
        [
            "# Memory, fairness and slow clients: vq-serve at its limits",
            "",
            "Generated by `bench/load_scenarios.py` (rendered by `bench/report.py`).",
            "",
            *run_lines(p),
            f"- Model: {p['model']}. `--memory-budget {p['budget']}` admits `--max-image-side "
            f"{p['image_side']}` (the server refused larger sides at start-up and named these; "
            f"charge {p['charge']}) and max_grid_side {p['grid_side']}. {p['restarts']} "
            f"restart(s) of the server for the memory scenario, {p['seconds']:g} s per scenario.",
            "",
            *columns(
                [
                    ("restart", "restart", ""),
                    ("answers", lambda m: listed(m["statuses"]), ""),
                    (
                        "peak RSS MiB (server's VmHWM / sampled VmRSS)",
                        lambda m: f"{m['peak_rss_mib']:.0f} / {m['sampled_rss_mib']:.0f}",
                        "",
                    ),
                    ("charge", "charge", ""),
                    ("/healthz p99 ms", "healthz_p99_ms", ".1f"),
                ],
                memory,
            ),
            "",
            f"Head-of-line: small (256 x 256) requests from 2 clients, p99 "
            f"{hol['alone_p99_ms']:.0f} ms alone ({hol['alone_n']} requests) and "
            f"{hol['mixed_p99_ms']:.0f} ms ({hol['mixed_n']} requests) next to one client "
            f"sending 4 x {p['image_side']}^2 per request (its answers: {listed(hol['heavy'])}).",
            "",
            f"Slow uploads: 64 bodies trickling at 20 KiB/s; other clients' answers "
            f"{listed(slow['statuses'])} ({ok:.1%} 200); the slow uploads ended: "
            f"{listed(slow['slow'])}.",
            "",
            *table(
                ["target", "measured", "verdict"],
                [
                    [
                        f"peak RSS <= budget ({p['budget']}) in every restart",
                        f"max {peak:.0f} MiB",
                        verdict(peak * 2**20 <= p["budget_bytes"]),
                    ],
                    [
                        f"small p99 next to the heavy client <= {t['head_of_line_ratio']:g}x alone",
                        f"{ratio:.2f}x",
                        verdict(ratio <= t["head_of_line_ratio"]),
                    ],
                    [
                        f"others >= {t['slow_uploads_ok_share']:.0%} 200 during 64 slow uploads",
                        f"{ok:.1%}",
                        verdict(ok >= t["slow_uploads_ok_share"]),
                    ],
                    [
                        f"/healthz p99 <= {t['healthz_p99_ms']:g} ms in every scenario",
                        f"max {health:.1f} ms",
                        verdict(health <= t["healthz_p99_ms"]),
                    ],
                ],
            ),
        ]
    )


# --- CPU throughput ----------------------------------------------------------------------

SHIPPED = "bf16 Tokenizer (chunked)"


def throughput_verdicts(r: dict[str, Any]) -> list[list[str]]:
    t = targets("throughput")
    rows = {(x["batch"], x["config"]): x for x in r["encode_decode"]}
    out = []
    for what, batch, factor in t["speedups"]:
        base, fast = rows.get((batch, "fp32 NCHW eager")), rows.get((batch, SHIPPED))
        if base is None or fast is None:
            continue
        ratio = fast[f"{what}_img_s"] / base[f"{what}_img_s"]
        extra = ""
        if what == "encode" and batch == 8:
            share = fast["encode_gflops"] / r["gemm_bf16"]
            extra = f"; {fast['encode_gflops']:.0f} GFLOP/s = {share:.0%} of the bf16 GEMM peak"
        name = f"{what} batch {batch}: bf16 Tokenizer >= {factor:g}x fp32 NCHW"
        out.append([name, verdict(ratio >= factor), f"{ratio:.2f}x{extra}"])
    k = r.get("kodak")
    if k:
        ok = (
            k["identical"] >= t["kodak_identical"]
            and k["psnr_delta_max"] <= t["kodak_psnr_delta_db"]
        )
        out.append(
            [
                f"Kodak: >= {t['kodak_identical']:.1%} identical codes, PSNR within "
                f"{t['kodak_psnr_delta_db']:g} dB",
                verdict(ok),
                f"{k['identical']:.2%} identical, max |ΔPSNR| {k['psnr_delta_max']:.3f} dB",
            ]
        )
    train = r.get("training", [])
    if len(train) == 2:
        ratio = train[1]["images_s"] / train[0]["images_s"]
        wait = train[1]["data_wait"]
        out.append(
            [
                f"training images/s >= {t['training_speedup']:g}x fp32 eager, data wait < "
                f"{t['training_data_wait']:.0%}",
                verdict(ratio >= t["training_speedup"] and wait < t["training_data_wait"]),
                f"{ratio:.2f}x, data wait {wait:.1%}",
            ]
        )
    for x in r.get("search", []):
        if "faiss" in x:
            ratio = x["ours"] / x["faiss"]
            out.append(
                [
                    f"nearest_code >= {t['search_vs_faiss']:g}x faiss at K = {x['k']:,}, exact",
                    verdict(ratio >= t["search_vs_faiss"] and x["identical_to_fp32"] == 1.0),
                    f"{ratio:.2f}x ({x['ours']:.0f} vs {x['faiss']:.0f} GFLOP/s), both routes "
                    f"give the same ids ({x['identical_to_fp32']:.2%})",
                ]
            )
    return out


def throughput_markdown(r: dict[str, Any]) -> str:
    size, k, ort = r["size"], r.get("kodak"), r.get("onnxruntime")
    lines = [
        "# CPU throughput: the fast path (bf16 + channels_last) and the search",
        "",
        "Generated by `bench/throughput.py` (rendered by `bench/report.py`; targets from "
        "`bench/targets.toml`). Ratios are from this one run (the machine is noisy; each "
        "number is the best of a few repeats).",
        "",
        *run_lines(r),
        f"- Model: `{r['model']}`",
        "",
        "## GEMM peak (4096², or smaller with --quick)",
        "",
        f"float32 {r['gemm_fp32']:.0f} GFLOP/s, bfloat16 {r['gemm_bf16']:.0f} GFLOP/s "
        f"({r['gemm_bf16'] / r['gemm_fp32']:.2f}x).",
        "",
        f"## Encode and decode, {size}×{size}",
        "",
        *columns(
            [
                ("batch", "batch", ""),
                ("configuration", "config", ""),
                ("encode img/s", "encode_img_s", ".2f"),
                ("encode GFLOP/s", "encode_gflops", ".0f"),
                ("decode img/s", "decode_img_s", ".2f"),
                ("decode GFLOP/s", "decode_gflops", ".0f"),
            ],
            r["encode_decode"],
        ),
    ]
    if ort:
        lines += [
            "",
            f"onnxruntime (CPU provider, `vq-export --onnx` graphs, float32), batch "
            f"{ort['batch']}: encode {ort['encode_img_s']:.2f} img/s, decode "
            f"{ort['decode_img_s']:.2f} img/s.",
        ]
    lines += ["", "## bf16 against fp32 on Kodak", ""]
    lines.append(
        f"{k['images']} images, {k['tokens']:,} tokens: {k['identical']:.2%} of codes "
        f"identical; PSNR (fp32 - bf16, each decoding its own codes) mean "
        f"{k['psnr_delta_mean']:+.3f} dB, max |Δ| {k['psnr_delta_max']:.3f} dB."
        if k
        else "Skipped: no `--kodak` folder."
    )
    lines += [
        "",
        "## Training (configs/default.yaml through Lightning)",
        "",
        *columns(
            [
                ("configuration", "config", ""),
                ("crop", "crop", ""),
                ("batch", "batch", ""),
                ("steps/s", "steps_s", ".2f"),
                ("images/s", "images_s", ".1f"),
                ("data wait", "data_wait", ".1%"),
            ],
            r["training"],
        ),
        "",
        f"## nearest_code against faiss-cpu IndexFlatL2 (N = {r['search_n']:,}, D = 64)",
        "",
        *columns(
            [
                ("K", "k", ","),
                ("ours (default: float32 tiles) GFLOP/s", "ours", ".0f"),
                ("ours, bf16 candidates", "ours_bf16", ".0f"),
                ("faiss GFLOP/s", lambda x: fmt(x.get("faiss"), ".0f"), ""),
                (
                    "ours / faiss",
                    lambda x: f"{x['ours'] / x['faiss']:.2f}x" if "faiss" in x else "n/a",
                    "",
                ),
                ("same ids as faiss", lambda x: fmt(x.get("identical_to_faiss"), ".2%"), ""),
            ],
            r["search"],
        ),
        "",
        "## Targets",
        "",
        *table(["target", "verdict", "measured"], throughput_verdicts(r)),
    ]
    return "\n".join(lines)


# --- Quantizers ----------------------------------------------------------------------------

VQ_METHODS = ("ste", "rotation", "simvq", "simvq_rotation")


def _median(r: dict[str, Any] | None) -> float | None:
    ok = r is not None and r["status"] == "ok" and r["times_s"]
    return statistics.median(r["times_s"]) if ok else None  # type: ignore[index]


def quantizer_verdicts(results: Sequence[dict[str, Any]], n: int) -> list[list[str]]:
    """Each target of targets.toml's [quantizers]: [name, verdict, measured]."""
    t = targets("quantizers")
    by = {(r["task"]["impl"], r["task"]["method"], r["task"]["k"]): r for r in results}
    out = []

    def judged(name: str, oks: Sequence[bool] | None, evidence: str) -> None:
        holds = "not measured" if not oks else "holds" if all(oks) else "does not hold"
        out.append([name, f"**{holds}**", evidence])

    for k, bound in t["fwd_bwd_vs_reference"]:
        ratios = []
        for m in VQ_METHODS:
            ours, ref = _median(by.get(("ours", m, k))), _median(by.get(("reference", m, k)))
            if ours and ref:
                ratios.append((m, ours / ref))
        judged(
            f"VQ and SimVQ fwd+bwd <= {bound}x reference at K = {k:,}",
            [r <= bound for _, r in ratios] if len(ratios) == len(VQ_METHODS) else None,
            ", ".join(f"{m} {r:.3f}x" for m, r in ratios) or "no paired measurement",
        )
    big = [r for r in results if r["task"]["impl"] == "ours" and r["task"]["k"] >= t["large_k"]]
    limit = t["large_k_peak_rss_mib"]
    if big:
        worst = max(big, key=lambda r: r["peak_rss_mib"] or 0.0)
        sizes = " and ".join(f"{k:,}" for k in sorted({r["task"]["k"] for r in big}))
        judged(
            f"K = {sizes} under {limit / 1024:g} GiB peak RSS (ours)",
            [r["status"] == "ok" and (r["peak_rss_mib"] or math.inf) < limit for r in big],
            f"largest: {worst['task']['method']} at K = {worst['task']['k']:,}: "
            f"{fmt(worst['peak_rss_mib'], ',.0f')} MiB ({worst['status']})",
        )
    else:
        judged(f"K >= {t['large_k']:,} under {limit / 1024:g} GiB peak RSS", None, "not run")
    for lo, hi, bound in t["search_gflops"]:
        where = f"K >= {lo:,}" if math.isinf(hi) else f"K = {lo:,}" if lo == hi else f"K {lo}-{hi}"
        rows = [
            r for r in results if r["task"]["method"] == "search" and lo <= r["task"]["k"] <= hi
        ]
        rates = [(r["task"]["k"], _gflops(n, r["task"]["k"], _median(r))) for r in rows]
        judged(
            f"search >= {bound:g} GFLOP/s at {where}",
            [g is not None and g >= bound for _, g in rates],
            ", ".join(f"K={k:,}: {fmt(g, '.1f') if g else 'failed'}" for k, g in rates)
            or "not run",
        )
    pairs = []
    for r in results:
        if r["task"]["impl"] == "ours" and r["task"]["method"] == "fsq":
            ours, ref = _median(r), _median(by.get(("reference", "fsq", r["task"]["k"])))
            if ours and ref:
                pairs.append((r["task"]["levels"], ours / ref))
    judged(
        "FSQ no slower than the reference",
        [x <= t["fsq_vs_reference"] for _, x in pairs],
        ", ".join(f"{lv}: {x:.2f}x" for lv, x in pairs) or "no paired measurement",
    )
    return out


def _gflops(n: int, k: int, seconds: float | None) -> float | None:
    return 2 * n * k * 64 / seconds / 1e9 if seconds else None


def quantizers_markdown(p: dict[str, Any]) -> str:
    c, results = p["config"], p["results"]
    n = c["n"]
    by = {(r["task"]["impl"], r["task"]["method"], r["task"]["k"]): r for r in results}

    def ms(r: dict[str, Any] | None) -> str:
        if r is None:
            return "skipped"
        return fmt(1000 * _median(r), ",.0f") if r["status"] == "ok" else r["status"]  # type: ignore[operator]

    def load(r: dict[str, Any] | None) -> str:
        return f"{r['load'][0]:.1f}/{r['load'][1]:.1f}" if r and r["load"] else "n/a"

    def mib(r: dict[str, Any] | None) -> str:
        return fmt(r["peak_rss_mib"], ",.0f") if r else "n/a"

    lines = [
        "# Quantizer benchmark: ours vs vector-quantize-pytorch",
        "",
        "Generated by `bench/quantizers.py` (rendered by `bench/report.py`; targets from "
        "`bench/targets.toml`). Times are the median of the timed repeats after warmup, for one "
        f"forward+backward pass of N vectors (a ({n // 1024}, 64, 32, 32) feature map, D = 64); "
        "ratio = ours / reference (lower is better). Peak RSS is `ru_maxrss` of the child "
        "process that ran that configuration alone, so it includes the interpreter and torch "
        "(~300 MiB).",
        "",
        "## Run",
        "",
        *run_lines(p),
        f"- vector-quantize-pytorch {p['reference']}; wall time {p['wall_s'] / 60:.1f} min",
        f"- torch threads per child: {c['threads']}; warmup {c['warmup']}, up to {c['repeats']} "
        f"timed repeats within {c['budget_s']:.0f} s per measurement; child address space "
        f"capped at {c['memory_limit_gib']:g} GiB; per-child timeout {c['timeout_s']:.0f} s; "
        f"OMP_WAIT_POLICY {c['omp_wait_policy']} in every child (both sides)",
        f"- N = {n:,}, K = {', '.join(f'{k:,}' for k in c['ks'])}; reference run for "
        f"K <= {c['reference_max_k']:,}. The `load` column is the 1-minute load average when "
        "each of our children started/ended: each ratio pairs two runs made minutes apart on a "
        "machine other jobs shared, so absolute times are noisy.",
    ]
    if p.get("quick"):
        lines.append(
            "- **--quick run**: small N and K, one shared child process per implementation, so "
            "peak RSS is the maximum over that process, not per configuration."
        )
    for k in c["ks"]:
        shown = [(m, k, m) for m in VQ_METHODS]
        for r in results:
            task = r["task"]
            if task["method"] == "fsq" and task["impl"] == "ours" and task.get("table") == k:
                shown.append(("fsq", task["k"], f"fsq {task['levels']} (K = {task['k']:,})"))
        rows = []
        for method, key, label in shown:
            ours, ref = by.get(("ours", method, key)), by.get(("reference", method, key))
            a, b = _median(ours), _median(ref)
            rows.append(
                [
                    label,
                    ms(ours),
                    ms(ref),
                    fmt(a / b if a and b else None, ".3f"),
                    mib(ours),
                    mib(ref),
                    str(len(ours["times_s"]) if ours else 0),
                    load(ours),
                ]  # fmt: skip
            )
        lines += ["", f"## K = {k:,}", ""]
        lines += table(
            [
                "quantizer",
                "ours (ms)",
                "reference (ms)",
                "ours / ref",
                "ours peak RSS (MiB)",
                "ref peak RSS (MiB)",
                "ours repeats",
                "load",
            ],  # fmt: skip
            rows,
        )
    search = [by[("ours", "search", k)] for k in c["ks"] if ("ours", "search", k) in by]

    def rate(key: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            k = r["task"]["k"]
            seconds = _median(r) if key == "" else r["extra"].get(key)
            return fmt(_gflops(n, k, seconds), ".1f") if r["status"] == "ok" else ""

        return cell

    lines += [
        "",
        "## Nearest-code search alone",
        "",
        f"N = {n:,}, D = 64, random Gaussian inputs; effective GFLOP/s = 2·N·K·D / time. "
        "Context columns: the same `||c||² - 2 e·c` in row chunks of at most 32 MiB (`addmm`), "
        "with `argmin` (the previous, untiled `nearest_code`) and without it (a bare `z @ C.T`).",
        "",
        *columns(
            [
                ("K", lambda r: f"{r['task']['k']:,}", ""),
                ("nearest_code (ms)", ms, ""),
                ("GFLOP/s", rate(""), ""),
                ("row chunks + argmin GFLOP/s", rate("row_chunked_argmin_s"), ""),
                ("bare z @ C.T GFLOP/s", rate("row_chunked_matmul_s"), ""),
                ("peak RSS (MiB)", lambda r: mib(r) if r["status"] == "ok" else "", ""),
                ("load", lambda r: load(r) if r["status"] == "ok" else "", ""),
            ],
            search,
        ),
        "",
        "## Where we stand",
        "",
        *table(["target", "verdict", "measured"], quantizer_verdicts(results, n)),
    ]
    return "\n".join(lines)


# --- Data at scale -------------------------------------------------------------------------


def data_checks(r: dict[str, Any]) -> list[str]:
    """The targets of targets.toml's [data], each with its measured value and verdict."""
    t = targets("data")
    streamed = [x for x in r["fit"] if "memory" not in x["source"]]
    out = []
    for source in sorted({x["source"] for x in streamed}):
        rows = sorted((x for x in streamed if x["source"] == source), key=lambda x: x["n"])
        if len(rows) > 1:
            ratio = rows[-1]["peak_mb"] / rows[0]["peak_mb"]
            out.append(
                f"- peak memory at {rows[-1]['n']:,} / at {rows[0]['n']:,} images ({source}): "
                f"{ratio:.2f} (target <= {t['memory_growth']:g}: "
                f"{verdict(ratio <= t['memory_growth'])})"
            )
    if r["fit"]:
        first = max(x["first_step_s"] for x in r["fit"])
        out.append(
            f"- slowest launch -> first step: {first:.1f} s (target <= {t['first_step_s']:g} s: "
            f"{verdict(first <= t['first_step_s'])})"
        )
    if streamed:
        share = max(x["wait_share"] for x in streamed)
        out.append(
            f"- largest data wait share of a step (median wait / (wait + step)): {share:.1%} "
            f"(target < {t['wait_share']:.0%}: {verdict(share < t['wait_share'])})"
        )
    if r.get("predict") and r.get("tokenizer"):
        ratio = r["predict"]["images_per_s"] / r["tokenizer"]["images_per_s"]
        out.append(
            f"- predict / Tokenizer.encode throughput: {ratio:.2f} (target >= "
            f"{t['predict_vs_tokenizer']:g}: {verdict(ratio >= t['predict_vs_tokenizer'])})"
        )
    return out


def data_markdown(r: dict[str, Any]) -> str:
    cfg = r["config"]
    in_memory = any("memory" in x["source"] for x in r["fit"])
    lines = [
        "# Data at scale: memory, start-up, data wait, predict",
        "",
        "Generated by `bench/data.py` (rendered by `bench/report.py`; targets from "
        "`bench/targets.toml`).",
        "",
        *run_lines({**r, "command": re.sub(r"--photos \S+", "--photos PHOTOS", r["command"])}),
        f"- Images: {cfg['side']}x{cfg['side']} JPEG crops of the photographs in PHOTOS; "
        f"`vq-train fit --config configs/default.yaml` for {cfg['steps']} steps, fp32, "
        f"streamed (`--data.cache_mb=0`) with the default workers ({r['default_workers']})"
        + (", and the smallest set once through the in-memory path" if in_memory else "")
        + ". Peak memory is the sum of the proportional set sizes (PSS) of the process and its "
        "DataLoader workers, so pages the workers share are counted once.",
        "",
        *columns(
            [
                ("images", "n", ","),
                ("source", lambda x: x["source"] + (f" ({x['run']})" if "run" in x else ""), ""),
                ("steps", "steps", ""),
                ("peak PSS (MiB)", "peak_mb", ".0f"),
                ("launch -> first step (s)", "first_step_s", ".1f"),
                ("step (s)", "step_s", ".3f"),
                ("data wait (s)", "data_wait_s", ".4f"),
                ("wait share", "wait_share", ".1%"),
            ],
            r["fit"],
        ),
    ]
    if r.get("setup"):
        lines += [
            "",
            "Data setup alone (index, held-out split, probe decode), in process: "
            + "; ".join(f"{x['n']:,} images as {x['source']}: {x['s']:.2f} s" for x in r["setup"])
            + ". It is the only part of the time to the first step that grows with the data set.",
        ]
    pred, tok = r.get("predict"), r.get("tokenizer")
    if pred and tok:
        lines += [
            "",
            f"Predict ({pred['images']:,} images in tar shards of {cfg['predict_shard']} to "
            f"Parquet, batch {cfg['predict_batch']}, fp32): {pred['images_per_s']:.2f} images/s "
            f"from predict start to end ({pred['end_to_end_images_per_s']:.2f} images/s "
            f"including start-up, {pred['wall_s']:.0f} s); `vq.Tokenizer.encode` of the same "
            f"{tok['images']} images decoded in memory: {tok['images_per_s']:.2f} images/s.",
        ]
    return "\n".join([*lines, "", "Targets:", "", *data_checks(r)])


RENDERERS = {
    "data": data_markdown,
    "load": load_markdown,
    "load_scenarios": load_scenarios_markdown,
    "quantizers": quantizers_markdown,
    "recipe_step": recipe_step_markdown,
    "service": service_markdown,
    "throughput": throughput_markdown,
}


def render(json_path: Path, out: Path) -> None:
    """Re-render a report from its JSON (its ``benchmark`` key names the kind; Kodak's and
    the quality benchmark's JSON are told by their keys)."""
    payload = json.loads(json_path.read_text())
    if payload.get("benchmark") in RENDERERS:
        write(out, RENDERERS[payload["benchmark"]](payload))
    elif "tokenizers" in payload:
        write(out, kodak_markdown(payload, json_path.parent))
    else:
        write(out, quality_markdown(payload, quality_plots(payload, out.parent, out.stem)))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, help="a benchmark's JSON (quality.json, kodak.json)")
    p.add_argument("--out", type=Path, default=None, help="markdown file (default: beside it)")
    args = p.parse_args(argv)
    render(args.json, args.out or args.json.with_suffix(".md"))
    print(f"wrote {args.out or args.json.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
