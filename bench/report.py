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
        f"- Machine: {p['machine']}; " + ", ".join(x for x in soft if x),
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


RENDERERS = {"recipe_step": recipe_step_markdown, "service": service_markdown}


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
