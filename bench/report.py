"""The one renderer: a benchmark's JSON -> its markdown report (and the quality plots).

    python bench/report.py docs/benchmarks/service.json    # -> docs/benchmarks/service.md
    python bench/report.py runs/bench/quality/quality.json --out docs/benchmarks/quality.md

A report is its template (``bench/templates/<benchmark>.md.j2``, Jinja: the JSON's keys, the
filters ``f`` = `fmt` and `listed`, what `DERIVED` adds) filled from the JSON, then
``HAND_WRITTEN`` and text written by hand: rewriting a report replaces the generated part and
keeps the rest as it is. Every target is a row of ``bench/targets.toml``, judged by `judge` from
a figure of `FIGURES`.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import re
import statistics
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jinja2

HAND_WRITTEN = "<!-- analysis: written by hand, kept when the script rewrites this file -->"
HERE = Path(__file__).resolve().parent
TARGETS = HERE / "targets.toml"
Payload = dict[str, Any]


def write(path: Path, generated: str) -> None:
    """Write ``generated``, the marker and whatever an existing ``path`` holds after it."""
    old = path.read_text() if path.exists() else ""
    kept = old.split(HAND_WRITTEN, 1)[1] if HAND_WRITTEN in old else "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{generated.rstrip()}\n\n{HAND_WRITTEN}{kept}")


def fmt(x: Any, spec: str = "") -> str:
    """``format(x, spec)``; a string as it is (a failed run's message); else n/a (missing,
    None, not finite)."""
    if isinstance(x, str):
        return x
    return format(x, spec) if isinstance(x, int | float) and math.isfinite(x) else "n/a"


def listed(d: dict[str, Any]) -> str:
    """``{"200": 3, "503": 1}`` -> ``200: 3, 503: 1`` (zeros left out; none: 0)."""
    return ", ".join(f"{k}: {v:g}" for k, v in sorted(d.items()) if v) or "0"


# --- Targets -------------------------------------------------------------------------------

Check = tuple[str, str, bool | None]  # (target, measured, holds; None: not measured)
Figure = Callable[[Payload, Payload], list[tuple[str, float]]]  # -> [(shown, value)]
FIGURES: dict[str, Figure] = {}
TESTS = {"at_least": operator.ge, "at_most": operator.le, "below": operator.lt}


def figure(fn: Figure) -> Figure:
    FIGURES[fn.__name__] = fn
    return fn


def load_targets(path: Path = TARGETS) -> list[Payload]:
    """targets.toml's targets, each with its benchmark (the table it is listed under)."""
    data = tomllib.loads(path.read_text())
    targets = [{"benchmark": b, **t} for b, ts in data.items() for t in ts]
    for t in targets:
        if t["figure"] not in FIGURES:
            raise ValueError(f"{path.name}: figure {t['figure']!r} is not one of {list(FIGURES)}")
        if sum(k in t for k in (*TESTS, "falls")) != 1:
            raise ValueError(f"{path.name}: {t['text']!r} needs one of {[*TESTS, 'falls']}")
    return targets


def judge(t: Payload, p: Payload) -> Check:
    """One target against a benchmark's JSON: every value of its figure passes its test
    (``falls``: each value is below the one before); no value: not measured."""
    got = FIGURES[t["figure"]](p, t)
    values = [v for _, v in got]
    measured = (" -> " if "falls" in t else ", ").join(s for s, _ in got) or "n/a"
    if "falls" in t:
        ok = all(b < a for a, b in zip(values, values[1:], strict=False)) if got[1:] else None
    else:
        ok = all(f(v, t[k]) for k, f in TESTS.items() if k in t for v in values) if got else None
    return t["text"].format(**{**p, **t}), measured, ok


def targets(p: Payload, benchmark: str) -> str:
    verdict = {True: "holds", False: "**missed**", None: "not measured"}
    rows = [judge(t, p) for t in load_targets() if t["benchmark"] == benchmark]
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {text} | {measured} | {verdict[ok]} |" for text, measured, ok in rows]
    return "\n".join(["## Targets", "", *lines]) if rows else ""


def _get(p: Any, path: str) -> Any:
    """``a.b.0.c`` in nested dicts and lists; None where it is missing."""
    for key in path.split("."):
        try:
            p = p[int(key)] if isinstance(p, list) else p[key]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return p


@figure
def field(p: Payload, t: Payload) -> list[tuple[str, float]]:
    x = _get(p, t["path"])
    return [] if x is None else [(t["shown"].format(x=x), x)]


@figure
def ratio(p: Payload, t: Payload) -> list[tuple[str, float]]:
    a, b = _get(p, t["num"]), _get(p, t["den"])
    return [(f"{a / b:.2f}x", a / b)] if a is not None and b else []


def primary(p: Payload) -> str:
    """The quality benchmark's setting of the plain codebooks that the targets judge."""
    plain = p["config"]["plain"]
    return plain if isinstance(plain, str) else plain[0]  # a string in older JSON


def _runs(p: Payload, t: Payload) -> list[Payload]:
    """The quality runs a target judges: finished, in the first plain setting, of its methods
    and K range, by K."""
    lo, hi = t.get("min_k", 0), t.get("max_k", math.inf)
    runs = [
        r for r in p["results"]
        if r["error"] is None and r.get("setting", "") in ("", primary(p))
        and r["method"] in t.get("methods", [r["method"]]) and lo <= r["nominal_size"] <= hi
    ]  # fmt: skip
    return sorted(runs, key=lambda r: r["nominal_size"])


@figure
def usage(p: Payload, t: Payload) -> list[tuple[str, float]]:
    m = t.get("metric", "window_usage")
    return [
        (f"{r['method']}@{r['codebook_size']}: {r[m]:.1%}", r[m]) for r in _runs(p, t) if m in r
    ]


@figure
def vs_baseline(p: Payload, t: Payload) -> list[tuple[str, float]]:
    m, spec = t.get("metric", "window_usage"), ".2f" if t.get("metric") == "psnr" else ".1%"
    base = {r["nominal_size"]: r for r in _runs(p, {**t, "methods": [t["baseline"]]})}
    pairs = [(r, base[r["nominal_size"]]) for r in _runs(p, t) if r["nominal_size"] in base]
    return [
        (
            f"K={r['nominal_size']}: {r[m]:{spec}} vs {b[m]:{spec}}",
            r[m] / b[m] if b[m] else math.inf,
        )
        for r, b in pairs
    ]


@figure
def best(p: Payload, t: Payload) -> list[tuple[str, float]]:
    m = t["metric"]
    r = max(_runs(p, {}), key=lambda r: r[m], default=None)
    return [(f"best: {r['method']} K={r['codebook_size']}, {r[m]:.2f}", r[m])] if r else []


def _median(r: Payload | None) -> float | None:
    ok = r is not None and r["status"] == "ok" and r["times_s"]
    return statistics.median(r["times_s"]) if ok else None  # type: ignore[index]


def _by(p: Payload) -> dict[tuple[str, str, int], Payload]:
    return {(r["task"]["impl"], r["task"]["method"], r["task"]["k"]): r for r in p["results"]}


@figure
def vs_reference(p: Payload, t: Payload) -> list[tuple[str, float]]:
    """ours / reference time of our runs of the methods (at K = k); one unpaired: not measured."""
    by, out = _by(p), []
    for (impl, m, k), r in by.items():
        if impl == "ours" and m in t["methods"] and t.get("k", k) == k:
            a, b = _median(r), _median(by.get(("reference", m, k)))
            if not (a and b):
                return []
            out.append(
                (f"{m}{' ' + str(r['task']['levels']) if m == 'fsq' else ''} {a / b:.3f}x", a / b)
            )
    return out


@figure
def large_k_rss(p: Payload, t: Payload) -> list[tuple[str, float]]:
    big = [r for r in p["results"] if r["task"]["impl"] == "ours" and r["task"]["k"] >= t["min_k"]]
    w = max(big, key=lambda r: r["peak_rss_mib"] or 0.0, default=None)
    worst = max((r["status"] == "ok" and r["peak_rss_mib"]) or math.inf for r in big) if w else 0
    return [(
        f"largest: {w['task']['method']} at K = {w['task']['k']:,}: "
        f"{fmt(w['peak_rss_mib'], ',.0f')} MiB ({w['status']})", worst,
    )] if w else []  # fmt: skip


def gflops(n: int, k: int, seconds: float | None) -> float | None:
    return 2 * n * k * 64 / seconds / 1e9 if seconds else None


@figure
def search_gflops(p: Payload, t: Payload) -> list[tuple[str, float]]:
    n, lo, hi = p["config"]["n"], t["min_k"], t.get("max_k", math.inf)
    rows = [r for r in p["results"] if r["task"]["method"] == "search"]
    rates = [(k, gflops(n, k, _median(r))) for r in rows if lo <= (k := r["task"]["k"]) <= hi]
    return [(f"K={k:,}: {fmt(g, '.1f') if g else 'failed'}", g or 0.0) for k, g in rates]


@figure
def speedup(p: Payload, t: Payload) -> list[tuple[str, float]]:
    """bf16 Tokenizer over fp32 NCHW eager images/s."""
    rows = {
        x["config"]: x[f"{t['what']}_img_s"] for x in p["encode_decode"] if x["batch"] == t["batch"]
    }
    a, b = rows.get("bf16 Tokenizer (chunked)"), rows.get("fp32 NCHW eager")
    return [(f"{a / b:.2f}x", a / b)] if a and b else []


@figure
def search_vs_faiss(p: Payload, t: Payload) -> list[tuple[str, float]]:
    rows = [x for x in p["search"] if "faiss" in x]
    shown = "K={k:,}: {r:.2f}x ({ours:.0f} vs {faiss:.0f})"
    return [(shown.format(**x, r=x["ours"] / x["faiss"]), x["ours"] / x["faiss"]) for x in rows]


@figure
def search_exact(p: Payload, t: Payload) -> list[tuple[str, float]]:
    return [
        (f"K={x['k']:,}: {x['identical_to_fp32']:.2%}", x["identical_to_fp32"]) for x in p["search"]
    ]


def top(p: Payload) -> tuple[int, Payload | None, Payload | None]:
    """The service's highest concurrency and its batched and unbatched rows."""
    c = max(r["concurrency"] for r in p["results"])
    at = {r["mode"]: r for r in p["results"] if r["concurrency"] == c}
    return c, at.get("batched"), at.get("unbatched")


@figure
def batched_vs(p: Payload, t: Payload) -> list[tuple[str, float]]:
    """The batched service's images/s at the highest concurrency over the in-process ceiling
    (``over = "ceiling"``) or over the unbatched service's."""
    c, b, u = top(p)
    ceiling = max(x["batch_img_s"] for x in p["ceilings"])
    base = ceiling if t["over"] == "ceiling" else u and u["img_s"]
    return (
        [(f"{b['img_s'] / base:.2f}x at concurrency {c}", b["img_s"] / base)] if b and base else []
    )


@figure
def server_errors(p: Payload, t: Payload) -> list[tuple[str, float]]:
    five = sum(
        n for r in p["phases"] for s, n in r["statuses"].items() if s[0] == "5" and s != "503"
    )
    return [(str(five), five)]


@figure
def lost_on_sigterm(p: Payload, t: Payload) -> list[tuple[str, float]]:
    lost = sum(n for s, n in p["phases"][-1]["statuses"].items() if s.startswith("lost"))
    return [(str(lost), lost)]


@figure
def rss_vs_budget(p: Payload, t: Payload) -> list[tuple[str, float]]:
    peak = max(r["peak_rss_mib"] for r in p.get("phases", []) + p.get("memory", []))
    return [(f"peak {peak:.0f} MiB", peak * 2**20 / p["budget_bytes"])]


@figure
def p99_vs_deadline(p: Payload, t: Payload) -> list[tuple[str, float]]:
    p99 = max(r["p99_ms"] for r in p["phases"][:-1])  # the drain's own is not judged
    return [(f"{p99:.0f} ms", p99 / 1000 / p["deadline_s"])]


@figure
def healthz_p99(p: Payload, t: Payload) -> list[tuple[str, float]]:
    """/healthz p99 under load: in the phases but the drain, or in every scenario."""
    rows = p.get("phases", [])[:-1] + p.get("memory", [])
    rows += [p[k] for k in ("head_of_line", "head_of_line_default", "slow_uploads") if k in p]
    worst = max(x for r in rows if (x := r["healthz_p99_ms"]) is not None)
    return [(f"largest {worst:.1f} ms", worst)]


def _streamed(p: Payload) -> list[Payload]:
    return [x for x in p["fit"] if "memory" not in x["source"]]


@figure
def memory_growth(p: Payload, t: Payload) -> list[tuple[str, float]]:
    """Peak memory at the largest over the smallest data set, per streamed source."""
    out = []
    for source in sorted({x["source"] for x in _streamed(p)}):
        rows = sorted((x for x in _streamed(p) if x["source"] == source), key=lambda x: x["n"])
        if len(rows) > 1:
            x = rows[-1]["peak_mb"] / rows[0]["peak_mb"]
            out.append((f"{source} {x:.2f}x ({rows[-1]['n']:,} / {rows[0]['n']:,} images)", x))
    return out


@figure
def largest(p: Payload, t: Payload) -> list[tuple[str, float]]:
    """The largest ``key`` of the data benchmark's fits (``streamed``: not the in-memory one)."""
    rows = _streamed(p) if t.get("streamed") else p["fit"]
    x = max((r[t["key"]] for r in rows), default=None)
    return [] if x is None else [(t["shown"].format(x=x), x)]


@figure
def vs_mse_step(p: Payload, t: Payload) -> list[tuple[str, float]]:
    """The target's ``variants`` (measured ones) as multiples of the MSE step."""
    ratios = p["ratio_to_mse"]
    return [(f"{k} {ratios[k]:.2f}x", ratios[k]) for k in t["variants"] if k in ratios]


# --- Reports -------------------------------------------------------------------------------


def _quality(p: Payload, folder: Path | None) -> Payload:
    meta, order = p["meta"], p["meta"].get("methods", [])
    wall = f"; wall time of this invocation {meta['total_seconds'] / 60:.1f} min"
    sizes = sorted({r["nominal_size"] for r in p["results"]})
    at = {s: [r for r in p["results"] if r["nominal_size"] == s] for s in sizes}
    rank = {m: i for i, m in enumerate(order)}
    return {
        **meta,
        "date": meta["date"] + wall,
        "primary": primary(p),
        "sizes": {s: sorted(at[s], key=lambda r: rank.get(r["method"], len(order))) for s in sizes},
    }


DERIVED: dict[str, Callable[[Payload, Path | None], Payload]] = {
    "quality": _quality,
    "quantizers": lambda p, folder: {"by": _by(p)},
    "service": lambda p, folder: dict(zip(("top", "b", "u"), top(p), strict=True)),
    "data": lambda p, folder: {
        "streamed": _streamed(p),
        "command": re.sub(r"--photos \S+", "--photos PHOTOS", p["command"]),
    },
}
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    undefined=jinja2.ChainableUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
TEMPLATES.filters.update(f=fmt, listed=listed)
TEMPLATES.globals.update(median=_median, gflops=gflops)


def markdown(p: Payload, benchmark: str, folder: Path | None = None, plots: Sequence = ()) -> str:
    """A benchmark's report from its JSON (``folder``: where its pictures are)."""
    has = any(t["benchmark"] == benchmark for t in load_targets())
    also = "; targets from `bench/targets.toml`" if has else ""
    fields = {
        **p,
        "generated": f"Generated by `bench/{benchmark}.py` (rendered by `bench/report.py`{also}).",
        "targets": targets(p, benchmark),
        "plots": [Path(x).name for x in plots],
        "folder": folder,
    }
    fields.update(DERIVED.get(benchmark, lambda p, folder: {})(p, folder))
    return TEMPLATES.get_template(f"{benchmark}.md.j2").render(fields)


def pyplot() -> Any:
    """matplotlib.pyplot, drawing into files only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def quality_plots(p: Payload, out_dir: Path, stem: str = "quality") -> list[str]:
    """Usage vs step, usage and PSNR vs K; PNGs in ``out_dir``."""
    plt = pyplot()
    ok = [r for r in p["results"] if r["error"] is None]

    def label(r: Payload) -> str:
        return f"{r['method']}{r.get('setting') and ' ' + r['setting'] or ''}"

    def save(fig: Any, name: str) -> str:
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}_{name}.png", dpi=110)
        plt.close(fig)
        return str(out_dir / f"{stem}_{name}.png")

    labels, sizes = sorted({label(r) for r in ok}), sorted({r["nominal_size"] for r in ok})
    color = {m: f"C{i}" for i, m in enumerate(labels)}
    if not ok:
        return []
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.6), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for r in (r for r in ok if r["nominal_size"] == size and r["history"]):
            usage = [100 * h["window_usage"] for h in r["history"]]
            ax.plot([h["step"] for h in r["history"]], usage, label=label(r), color=color[label(r)])
        ax.set(title=f"K ≈ {size:,}", xlabel="step", ylim=(0, 105))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training window usage (%)")
    paths = [save(fig, "usage_vs_step")]
    for key, ylabel in (("window_usage", "window usage (%)"), ("psnr", "held-out PSNR (dB)")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for name in labels:
            runs = sorted((r for r in ok if label(r) == name), key=lambda r: r["codebook_size"])
            ys = [(100 if key == "window_usage" else 1) * r[key] for r in runs]
            ax.plot(
                [r["codebook_size"] for r in runs], ys, marker="o", label=name, color=color[name]
            )
        ax.set_xscale("log", base=2)
        ax.set(xlabel="codebook size K (FSQ: prod(levels))", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(save(fig, f"{key.split('_')[-1]}_vs_k"))
    return paths


def render(json_path: Path, out: Path) -> None:
    """Re-render a report from its JSON: its ``benchmark`` key names the kind (Kodak's and the
    quality benchmark's JSON are told by their keys); the quality plots go beside ``out``."""
    p = json.loads(json_path.read_text())
    benchmark = p.get("benchmark") or ("kodak" if "tokenizers" in p else "quality")
    if not (HERE / "templates" / f"{benchmark}.md.j2").exists():
        raise ValueError(f"{json_path}: no template for benchmark {benchmark!r} in bench/templates")
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = quality_plots(p, out.parent, out.stem) if benchmark == "quality" else ()
    write(out, markdown(p, benchmark, json_path.parent, plots))


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
