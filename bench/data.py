"""Training and tokenizing at data-set scale (issue 22): memory, start-up, data wait, predict.

    python bench/data.py --photos PHOTOS --quick          # sizes 200 and 1,000, minutes
    python bench/data.py --photos PHOTOS                  # sizes 1,000, 5,000 and 20,000
    python bench/data.py --photos PHOTOS --out docs/benchmarks

Synthetic data sets of N JPEGs (random 256x256 crops of the photos in PHOTOS, saved at
quality 90 under --work, never in the checkout) are read as a folder and as tar shards
(``vq-data pack``). For each, ``vq-train fit --config configs/default.yaml`` runs
``--steps`` steps in a subprocess, streamed (``--data.cache_mb=0``) with the default workers:
peak memory of the process tree (the sum of its processes' PSS, sampled every 0.2 s), time
from launch to the first training step, and the data wait (the gap between one step's end
and the next one's start, which is where Lightning fetches a batch) against the step time.
``vq-train predict`` then tokenizes the tar shards into Parquet, against ``vq.Tokenizer``
encoding the same images already decoded in memory, both fp32 with the same architecture.

Results go to ``--out`` (default runs/bench/data): data.json and the report rendered from it.
Targets: bench/targets.toml.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common  # first: it puts the repository on sys.path
import numpy as np

# Fit runs on one torch thread (its figures are memory, start-up and data wait); predict and
# the Tokenizer it is compared with both get every usable core, as a user's run would.
PREDICT_THREADS = len(os.sched_getaffinity(0))


def _tree_pss_mb(root: int) -> float:
    """Sum of the proportional set sizes of ``root`` and its descendants (MiB)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total / 1024


def run_measured(cmd: list[str], log: Path, threads: int) -> dict[str, float]:
    """Run ``cmd`` with ``threads`` torch threads, sampling its process tree's memory; its
    launch time and peak PSS."""
    env = {**os.environ, "PYTHONPATH": str(common.ROOT), "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=common.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _tree_pss_mb(proc.pid))
            time.sleep(0.2)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return {"launch": t0, "peak_mb": peak, "wall_s": time.time() - t0}


def make_dataset(
    photos: Path, work: Path, n: int, side: int, seed: int, shard_size: int = 1000
) -> tuple[Path, Path]:
    """N random side x side JPEG crops of the photos (folder) and their tar shards."""
    from PIL import Image

    from train.images import find_images
    from train.pack import pack

    folder, shards = work / f"n{n}-s{seed}" / "photos", work / f"n{n}-s{seed}" / "tar"
    if not (folder / ".complete").is_file():
        sources = find_images(photos)
        if not sources:
            raise SystemExit(f"--photos {photos}: no images")
        rng = np.random.default_rng(seed)
        images = [Image.open(p).convert("RGB") for p in sources]
        for i in range(n):
            im = images[int(rng.integers(len(images)))]
            w, h = im.size
            s = min(side, w, h)
            left, top = int(rng.integers(w - s + 1)), int(rng.integers(h - s + 1))
            crop = im.crop((left, top, left + s, top + s)).resize((side, side))
            target = folder / f"d{i % 10}" / f"{i:06d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            crop.save(target, quality=90)
        (folder / ".complete").write_text("")
    if not (shards / ".complete").is_file():
        pack(folder, shards, shard_size=shard_size)
        (shards / ".complete").write_text("")
    return folder, shards


def _pattern(shards: Path) -> str:
    names = sorted(p.name for p in shards.glob("*.tar"))
    return str(shards / f"train-{{{names[0][6:11]}..{names[-1][6:11]}}}.tar")


def vq_train(
    command: str, work: Path, tag: str, args: list[str], threads: int = 1
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``vq-train COMMAND`` with configs/default.yaml, fp32 and ``args``, measured
    (``run_measured``), and the step times its ``bench.steps.StepTimes`` callback wrote."""
    times = work / f"times-{tag}.json"
    cb = json.dumps({"class_path": "bench.steps.StepTimes", "init_args": {"out": str(times)}})
    cmd = [sys.executable, "-m", "train.cli", command, "--config", "configs/default.yaml"]
    cmd += ["--trainer.precision=32-true", "--trainer.enable_progress_bar=false"]
    log = work / f"log-{tag}.txt"
    run = run_measured([*cmd, f"--trainer.callbacks+={cb}", *args], log, threads)
    return run, json.loads(times.read_text())


def fit(root: str, val: Path, work: Path, tag: str, steps: int, extra: list[str]) -> dict[str, Any]:
    run, t = vq_train("fit", work, tag, [
        f"--data.root={root}", f"--data.val_root={val}", f"--trainer.max_steps={steps}",
        "--trainer.num_sanity_val_steps=0", f"--trainer.default_root_dir={work / 'runs' / tag}",
        *extra,
    ])  # fmt: skip
    starts, ends = np.array(t["starts"]), np.array(t["ends"])
    steady = slice(2, None)  # the first steps include warm-up (workers starting, allocations)
    step = float(np.median((ends - starts)[steady]))
    waits = starts[1:] - ends[:-1]
    wait = float(np.median(waits[1:]))
    return {
        "peak_mb": round(run["peak_mb"], 1),
        "first_step_s": round(float(starts[0] - run["launch"]), 2),
        "step_s": round(step, 4),
        "data_wait_s": round(wait, 4),
        "data_wait_mean_s": round(float(np.mean(waits[1:])), 4),
        "wait_share": round(wait / (wait + step), 4),
        "steps": len(starts),
    }


def predict(shards: Path, work: Path, tag: str, batch: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    out = work / f"codes-{tag}"
    run, times = vq_train("predict", work, tag, [
        f"--data.predict_root={_pattern(shards)}", f"--data.predict_batch_size={batch}",
        "--predict_writer.format=parquet", f"--predict_writer.out_dir={out}",
        "--predict_writer.resume=false",
    ], threads=PREDICT_THREADS)  # fmt: skip
    t = times["predict"]
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("*.parquet"))
    return {
        "images": n,
        "images_per_s": round(n / (t[1] - t[0]), 2),
        "end_to_end_images_per_s": round(n / run["wall_s"], 2),
        "wall_s": round(run["wall_s"], 1),
    }


def tokenizer_encode(folder: Path, n: int, batch: int) -> dict[str, Any]:
    """vq.Tokenizer encode of ``n`` images of the folder, decoded beforehand, fp32."""
    import torch

    from train.images import find_images
    from vq import load_tokenizer
    from vqio import read_image

    torch.set_num_threads(PREDICT_THREADS)
    tok = load_tokenizer(common.ROOT / "models" / "default", precision="fp32")
    paths = find_images(folder)[:n]
    images = torch.from_numpy(np.stack([read_image(p) for p in paths])).permute(0, 3, 1, 2)
    tok.encode(images[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        tok.encode(images[i : i + batch])
    return {
        "images": len(images),
        "images_per_s": round(len(images) / (time.perf_counter() - t0), 2),
    }


def setup_seconds(root: str, val: Path) -> float:
    """Wall time of the data module's setup for a streamed source (index, split, probe):
    the part of the time to the first step that depends on the data set's size."""
    from train.data import ImageDataModule

    t0 = time.perf_counter()
    ImageDataModule(root=root, val_root=str(val), cache_mb=0).setup("fit")
    return round(time.perf_counter() - t0, 3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser(__doc__, "data")
    add = parser.add_argument
    add("--photos", required=True, help="folder of photographs to crop from")
    add("--work", default="/tmp/vq-bench-data", help="data sets, logs")
    add("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    add("--steps", type=int, default=20)
    add("--side", type=int, default=256)
    add("--predict-batch", type=int, default=16)
    add("--predict-images", type=int, default=256, help="in shards of 64")
    add("--skip-fit", action="store_true", help="measure predict only")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.predict_images = [200, 1000], 10, 64
    result = common.meta("data", argv, args.quick)
    work, photos = Path(args.work), Path(args.photos)
    work.mkdir(parents=True, exist_ok=True)
    from train.stream import default_workers

    val, _ = make_dataset(photos, work, 16, args.side, seed=1)
    sets = (
        [] if args.skip_fit else [make_dataset(photos, work, n, args.side, 0) for n in args.sizes]
    )
    sources = [
        (n, source, root)
        for n, (folder, shards) in zip(args.sizes, sets, strict=False)
        for source, root in (("folder", str(folder)), ("tar", _pattern(shards)))
    ]
    setup = [{"n": n, "source": src, "s": setup_seconds(root, val)} for n, src, root in sources]
    rows = []
    for n, source, root in sources:
        row = fit(root, val, work, f"{source}-{n}", args.steps, ["--data.cache_mb=0"])
        rows.append({"n": n, "source": source, **row})
        print(json.dumps(rows[-1]), flush=True)
    if sets:  # today's path for reference: the smallest set decoded into memory (cache_mb default)
        n = min(args.sizes)
        row = fit(str(sets[args.sizes.index(n)][0]), val, work, f"memory-{n}", args.steps, [])
        rows.append({"n": n, "source": "folder, in memory", **row})
        print(json.dumps(rows[-1]), flush=True)
    k = args.predict_images
    folder, shards = make_dataset(photos, work, k, args.side, seed=2, shard_size=64)
    config = {"side": args.side, "steps": args.steps, "predict_batch": args.predict_batch}
    result.update(
        default_workers=default_workers(),
        config={**config, "predict_shard": 64, "predict_threads": PREDICT_THREADS},
        fit=rows,
        setup=setup,
        # The Tokenizer runs before and after predict, its figure their mean: a 2-core
        # machine's load moves over a minute, and the ratio should not rest on one side of it.
        tokenizer=tokenizer_encode(folder, k, args.predict_batch),
        predict=predict(shards, work, f"predict-{k}", args.predict_batch),
    )
    after = tokenizer_encode(folder, k, args.predict_batch)
    rates = [result["tokenizer"]["images_per_s"], after["images_per_s"]]
    result["tokenizer"].update(images_per_s=round(sum(rates) / 2, 2), runs=rates)
    common.save(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
