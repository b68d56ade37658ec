"""``vq-data pack``: a folder of images -> webdataset tar shards or Parquet files, the formats
``vq-train fit`` / ``predict`` stream fastest (few large files instead of many small ones).

    vq-data pack photos/ shards/ --shard-size 1000            # shards/train-00000.tar, ...
    vq-data pack photos/ tables/ --format parquet

The image bytes are copied as they are (nothing is re-encoded); files whose header cannot be
read are left out with a warning naming them. The files are shuffled (``--seed``) so every
shard mixes the folder's classes. A tar member is ``<key>.<ext>``, the key being the path
relative to the folder without its extension (dots in the file name become ``_``); a
Parquet row is (``__key__`` string, ``image`` binary). Shards are written to a temporary
name and renamed when complete, and existing complete shards are kept, so re-running a
killed command finishes the job.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from train.images import find_images
from vq.atomic import atomic_path
from vqio import ImageDecodeError, image_size


def sample_key(root: Path, path: Path) -> str:
    """The webdataset key of ``path``: relative, no extension, no dots in the file name."""
    rel = path.relative_to(root).with_suffix("")
    return rel.with_name(rel.name.replace(".", "_")).as_posix()


def _write_tar(target: Path, items: Sequence[tuple[str, str, bytes]]) -> None:
    with atomic_path(target) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, ext, data in items:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))


def _write_parquet(target: Path, items: Sequence[tuple[str, str, bytes]], group: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "__key__": pa.array([k for k, _, _ in items], pa.string()),
            "image": pa.array([d for _, _, d in items], pa.binary()),
        }
    )
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, row_group_size=group, compression="none")


def pack(
    src: str | Path,
    out: str | Path,
    *,
    fmt: str = "tar",
    shard_size: int = 1000,
    prefix: str = "train",
    seed: int = 0,
    row_group: int = 256,
) -> list[Path]:
    """Pack every image under ``src`` into shards in ``out``; returns the shard paths."""
    if fmt not in ("tar", "parquet"):
        raise ValueError(f"format={fmt!r} is not allowed; expected 'tar' or 'parquet'")
    if shard_size < 1 or row_group < 1:
        raise ValueError(f"shard_size={shard_size!r} and row_group={row_group!r} must be >= 1")
    root = Path(src)
    paths = find_images(root)
    if not paths:
        raise ValueError(f"{str(root)!r} holds no image files to pack")
    order = np.random.default_rng(seed).permutation(len(paths))
    paths = [paths[i] for i in order]
    target_dir = Path(out)
    target_dir.mkdir(parents=True, exist_ok=True)
    num = (len(paths) + shard_size - 1) // shard_size
    width = max(5, len(str(num - 1)))
    written: list[Path] = []
    bad: list[str] = []
    for s in range(num):
        target = target_dir / f"{prefix}-{s:0{width}d}.{fmt}"
        written.append(target)
        if target.is_file():
            continue  # complete from an earlier run
        items = []
        for path in paths[s * shard_size : (s + 1) * shard_size]:
            try:
                image_size(path)
            except ImageDecodeError as exc:
                bad.append(f"{path} ({exc})")
                continue
            ext = path.suffix.lower().lstrip(".")
            items.append((sample_key(root, path), ext, path.read_bytes()))
        if fmt == "tar":
            _write_tar(target, items)
        else:
            _write_parquet(target, items, row_group)
        print(f"{target} ({len(items)} images) [{s + 1}/{num}]", file=sys.stderr)
    if bad:
        warnings.warn(
            f"left out {len(bad)} unreadable image file(s): " + "; ".join(bad[:5]), stacklevel=2
        )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vq-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="a folder of images -> tar shards or Parquet files")
    p.add_argument("src", help="folder of images (searched recursively)")
    p.add_argument("out", help="folder for the shards")
    p.add_argument("--format", choices=("tar", "parquet"), default="tar")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    p.add_argument("--prefix", default="train", help="shard names: PREFIX-00000.tar, ...")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    p.add_argument("--row-group", type=int, default=256, help="Parquet rows per row group")
    args = parser.parse_args(argv)
    try:
        shards = pack(
            args.src,
            args.out,
            fmt=args.format,
            shard_size=args.shard_size,
            prefix=args.prefix,
            seed=args.seed,
            row_group=args.row_group,
        )
    except ValueError as exc:
        parser.error(str(exc))
    last = len(shards) - 1
    width = len(shards[0].stem.rsplit("-", 1)[1])
    pattern = (
        f"{args.out.rstrip('/')}/{args.prefix}-{{{0:0{width}d}..{last:0{width}d}}}.{args.format}"
    )
    print(f"wrote {len(shards)} shard(s); train with: vq-train fit ... --data.root '{pattern}'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
