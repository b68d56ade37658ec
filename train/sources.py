"""Where training and prediction images come from: a folder tree, webdataset tar shards, or
Parquet / Arrow tables with an image-bytes column, indexed without decoding anything.

``open_source(option, root)`` finds the kind from ``root`` and indexes it into ``Unit``s,
the pieces work is split by (over ranks, DataLoader workers and output shards):

- a folder (recursive, ImageFolder layouts included): units are chunks of files;
- tar shards (a ``.tar`` file, a folder of them, a glob or a brace pattern such as
  ``train-{0000..0252}.tar``; every file a brace pattern names must exist, a glob takes what
  matches): one unit per shard; a sample is the members sharing a
  webdataset key (the path up to the first dot of the file name), its image the member with
  an image extension;
- Parquet (``.parquet`` files): one unit per row group;
- Arrow IPC (``.arrow`` files, e.g. a Hugging Face ``datasets`` folder written by
  ``save_to_disk``): memory-mapped, units of ``ARROW_UNIT_ROWS`` rows.

Tables need an image column: binary, or a struct with a ``bytes`` field (the Hugging Face
``Image`` feature); the key is the ``__key__`` / ``key`` / ``path`` / ``filename`` column
or, failing those, ``<file stem>/<row>``.

Every sample is read by position (a tar member by its offset), so a unit can be read in any
order and a position can be skipped to without reading what comes before it. ``UnitReader``
reads sample bytes in a process (it keeps its own file handles, so each DataLoader worker
opens its own); ``decode_image`` of ``vqio`` decodes them.
"""

from __future__ import annotations

import glob
import itertools
import re
import tarfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vqio import IMAGE_EXTENSIONS

SourceKind = Literal["folder", "tar", "parquet", "arrow"]
SHARD_SUFFIXES: dict[str, SourceKind] = {".tar": "tar", ".parquet": "parquet", ".arrow": "arrow"}
ARROW_UNIT_ROWS = 1024
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
KEY_COLUMNS = ("__key__", "key", "path", "filename", "file_name")
_IMAGE_EXTS = {e.lstrip(".") for e in IMAGE_EXTENSIONS}
_BRACE = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class Unit:
    """A piece of a source: ``keys[i]`` names sample ``i``; ``refs[i]`` locates it (tar:
    (data offset, size) of the image member; tables: the row in the group/file; folder:
    unused). ``name`` is unique within the source and names its output shard."""

    kind: SourceKind
    shard: str  # the file (tar/parquet/arrow); the root folder for a folder source
    group: int  # Parquet row group; -1 otherwise
    keys: np.ndarray  # str, one per sample
    refs: np.ndarray  # int64 (n, 2) or (n,)
    name: str

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, keep: np.ndarray) -> Unit:
        """The unit restricted to the samples where ``keep`` (bool) is true."""
        return Unit(self.kind, self.shard, self.group, self.keys[keep], self.refs[keep], self.name)


@dataclass(frozen=True)
class Source:
    """An indexed source: its kind, where it is (``option=root`` for messages) and its units."""

    kind: SourceKind
    option: str
    root: str
    units: list[Unit]
    image_column: str | None = None

    @property
    def num_samples(self) -> int:
        return sum(len(u) for u in self.units)


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept);
    ``{a,b}`` -> alternatives; several braces multiply."""
    parts: list[list[str]] = []
    pos = 0
    for m in _BRACE.finditer(pattern):
        parts.append([pattern[pos : m.start()]])
        body = m.group(1)
        rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if rng:
            lo, hi = rng.group(1), rng.group(2)
            width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
            parts.append([str(i).zfill(width) for i in range(int(lo), int(hi) + 1)])
        else:
            parts.append(body.split(","))
        pos = m.end()
    parts.append([pattern[pos:]])
    return ["".join(p) for p in itertools.product(*parts)]


def _find_shards(option: str, root: str) -> tuple[SourceKind, list[Path]]:
    """The kind of ``root`` and its files (shards, or image files for a folder)."""
    if "{" in root or any(c in root for c in "*?["):
        # A brace pattern names files, which must all exist (a typo in a range, or a half-copied
        # data set, would otherwise train on a subset); a glob matches whatever exists.
        named = [pat for pat in expand_braces(root) if not any(c in pat for c in "*?[")]
        missing = [pat for pat in named if not Path(pat).is_file()]
        if missing:
            listed = ", ".join(missing[:5]) + (
                f", ... ({len(missing)} in all)" if len(missing) > 5 else ""
            )
            raise ValueError(
                f"{option}={root!r} names {len(missing)} of its {len(named)} files that do not "
                f"exist: {listed}. A brace pattern ({{a..b}}, {{a,b}}) names every file it "
                "expands to; to take whatever matches, use a glob (* ? [...]) instead"
            )
        files = sorted(
            {Path(p) for pat in expand_braces(root) for p in glob.glob(pat, recursive=True)}
        )
        if not files:
            raise ValueError(f"{option}={root!r}: the pattern matches no file")
        kinds = {SHARD_SUFFIXES.get(f.suffix.lower()) for f in files}
        if len(kinds) != 1 or None in kinds:
            raise ValueError(
                f"{option}={root!r}: a pattern must match shards of one kind "
                f"({', '.join(SHARD_SUFFIXES)}); it matches {sorted(f.name for f in files)[:5]}"
            )
        return kinds.pop(), files  # type: ignore[return-value]
    path = Path(root)
    if not path.exists():
        raise ValueError(
            f"{option}={root!r} does not exist: pass a folder of images or shards with "
            f"--{option} DIR (docs/data.md says where to get a corpus)"
        )
    if path.is_file():
        kind = SHARD_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise ValueError(
                f"{option}={root!r} is a file but not a shard ({', '.join(SHARD_SUFFIXES)}); "
                "pass a folder of images or shards"
            )
        return kind, [path]
    files = sorted(p for p in path.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if images:
        return "folder", images
    for suffix, kind in SHARD_SUFFIXES.items():
        shards = [p for p in files if p.suffix.lower() == suffix]
        if shards:
            return kind, shards
    raise ValueError(
        f"{option}={root!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)}) and no "
        f"shards ({', '.join(SHARD_SUFFIXES)}), searched recursively"
    )


def _folder_units(root: Path, files: list[Path], files_per_unit: int) -> list[Unit]:
    keys = np.array([p.relative_to(root).as_posix() for p in files])
    refs = np.zeros(len(keys), dtype=np.int64)
    return [
        Unit(
            "folder",
            str(root),
            -1,
            keys[i : i + files_per_unit],
            refs[i : i + files_per_unit],
            f"part-{i // files_per_unit:05d}",
        )
        for i in range(0, len(keys), files_per_unit)
    ]


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's key/extension split: ``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``)."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _tar_unit(path: Path, name: str) -> Unit:
    """The samples of a tar shard (a truncated shard keeps the members before the damage)."""
    keys: list[str] = []
    refs: list[tuple[int, int]] = []
    with tarfile.open(path, "r:") as tf:
        while True:
            try:
                member = tf.next()
            except (tarfile.TarError, OSError) as exc:
                warnings.warn(
                    f"tar shard {str(path)!r} is damaged after {len(keys)} sample(s): "
                    f"{exc}; the rest of it is skipped",
                    stacklevel=3,
                )
                break
            if member is None:
                break
            if not member.isfile():
                continue
            key, ext = _split_member(member.name)
            if ext.rsplit(".", 1)[-1] in _IMAGE_EXTS and (not keys or keys[-1] != key):
                keys.append(key)
                refs.append((member.offset_data, member.size))
    return Unit(
        "tar",
        str(path),
        -1,
        np.array(keys, dtype=str),
        np.array(refs, dtype=np.int64).reshape(-1, 2),
        name,
    )


def _image_column(option: str, path: Path, schema: Any, wanted: str | None) -> str:
    import pyarrow as pa

    def usable(field: Any) -> bool:
        t = field.type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return True
        return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0

    names = {f.name: f for f in schema}
    if wanted is not None:
        if wanted not in names or not usable(names[wanted]):
            raise ValueError(
                f"data.image_column={wanted!r}: {str(path)!r} ({option}) has no binary column "
                f"of that name; its columns: {sorted(names)}"
            )
        return wanted
    for name in IMAGE_COLUMNS:
        if name in names and usable(names[name]):
            return name
    raise ValueError(
        f"{option}: {str(path)!r} has no image column (binary, or a struct with 'bytes', named "
        f"one of {IMAGE_COLUMNS}); its columns: {sorted(names)}; pass --data.image_column"
    )


def _table_keys(table: Any, path: Path, image_column: str, offset: int) -> np.ndarray:
    names = table.column_names
    for name in KEY_COLUMNS:
        if name in names:
            return np.array([str(v) for v in table.column(name).to_pylist()], dtype=str)
    column = table.column(image_column)
    import pyarrow as pa

    if pa.types.is_struct(column.type) and column.type.get_field_index("path") >= 0:
        paths = column.combine_chunks().field("path").to_pylist()
        if all(paths) and len(set(paths)) == len(paths):
            return np.array(paths, dtype=str)
    return np.array([f"{path.stem}/{offset + i:08d}" for i in range(table.num_rows)], dtype=str)


def _parquet_units(option: str, path: Path, wanted: str | None) -> tuple[list[Unit], str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    column = _image_column(option, path, pf.schema_arrow, wanted)
    key_cols = [c for c in KEY_COLUMNS if c in pf.schema_arrow.names][:1]
    units, offset = [], 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if key_cols:
            table = pf.read_row_group(g, columns=key_cols)
            keys = _table_keys(table, path, column, offset)
        else:
            keys = np.array([f"{path.stem}/{offset + i:08d}" for i in range(n)], dtype=str)
        units.append(
            Unit(
                "parquet", str(path), g, keys, np.arange(n, dtype=np.int64), f"{path.stem}-g{g:04d}"
            )
        )
        offset += n
    return units, column


def _read_arrow(path: Path) -> Any:
    """An Arrow IPC file (file or stream format), memory-mapped: nothing is copied."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_stream(source).read_all()


def _arrow_units(option: str, path: Path, wanted: str | None) -> tuple[list[Unit], str]:
    table = _read_arrow(path)
    column = _image_column(option, path, table.schema, wanted)
    keys = _table_keys(table, path, column, 0)
    rows = np.arange(table.num_rows, dtype=np.int64)
    return [
        Unit(
            "arrow",
            str(path),
            -1,
            keys[i : i + ARROW_UNIT_ROWS],
            rows[i : i + ARROW_UNIT_ROWS],
            f"{path.stem}-r{i:09d}",
        )
        for i in range(0, table.num_rows, ARROW_UNIT_ROWS)
    ], column


def open_source(
    option: str,
    root: str,
    *,
    files_per_unit: int = 256,
    image_column: str | None = None,
    shuffle_seed: int | None = None,
) -> Source:
    """Index ``root`` (see the module docstring). An empty or unreadable source is a
    ValueError naming ``option`` and ``root``; a damaged shard among readable ones is skipped
    with a warning naming it. ``files_per_unit`` (folders; 0: about 64 units of at most 256
    files) and ``shuffle_seed`` (folders: shuffle the files before chunking them, so a unit
    of an ImageFolder tree mixes classes) only change how a folder is cut into units."""
    kind, files = _find_shards(option, root)
    if kind == "folder":
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(files))
            files = [files[i] for i in order]
        if files_per_unit < 1:
            files_per_unit = max(1, min(256, len(files) // 64))
        base = Path(root)
        return Source(kind, option, root, _folder_units(base, files, files_per_unit))
    units: list[Unit] = []
    column: str | None = None
    bad: list[str] = []
    stems = [f.stem for f in files]
    unique = len(set(stems)) == len(stems)
    for i, path in enumerate(files):
        name = path.stem if unique else f"{i:05d}-{path.stem}"
        try:
            if kind == "tar":
                units.append(_tar_unit(path, name))
            elif kind == "parquet":
                more, column = _parquet_units(option, path, image_column)
                units += more
            else:
                more, column = _arrow_units(option, path, image_column)
                units += more
        except ValueError:
            raise
        except Exception as exc:  # any reader error: name the shard, keep the others
            bad.append(f"{path} ({type(exc).__name__}: {exc})")
    units = [u for u in units if len(u)]
    if bad:
        warnings.warn(
            f"{option}={root!r}: skipped {len(bad)} unreadable shard(s): " + "; ".join(bad[:5]),
            stacklevel=2,
        )
    if not units:
        why = f" (first error: {bad[0]})" if bad else ""
        raise ValueError(
            f"{option}={root!r}: its {len(files)} {kind} shard(s) hold no readable "
            f"image sample{why}"
        )
    return Source(kind, option, root, units, column)


class UnitReader:
    """Reads the image bytes of samples, keeping a few files / row groups open. One per
    process: build it inside the DataLoader worker (file handles do not cross a fork well)."""

    def __init__(self, image_column: str | None = None, cache: int = 4) -> None:
        self.image_column = image_column
        self.cache = cache
        self._open: OrderedDict[tuple[str, int], Any] = OrderedDict()

    def _get(self, unit: Unit) -> Any:
        key = (unit.shard, unit.group)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        if unit.kind == "tar":
            handle: Any = open(unit.shard, "rb")  # noqa: SIM115 - closed on eviction
        elif unit.kind == "parquet":
            import pyarrow.parquet as pq

            table = pq.ParquetFile(unit.shard).read_row_group(
                unit.group, columns=[self.image_column]
            )
            handle = table.column(0).combine_chunks()
        else:
            handle = _read_arrow(Path(unit.shard)).column(self.image_column)
        self._open[key] = handle
        while len(self._open) > self.cache:
            _, old = self._open.popitem(last=False)
            if hasattr(old, "close"):
                old.close()
        return handle

    def read(self, unit: Unit, index: int) -> bytes:
        """The image bytes of sample ``index`` of ``unit``."""
        if unit.kind == "folder":
            return (Path(unit.shard) / str(unit.keys[index])).read_bytes()
        handle = self._get(unit)
        if unit.kind == "tar":
            offset, size = (int(v) for v in unit.refs[index])
            handle.seek(offset)
            return bytes(handle.read(size))
        value = handle[int(unit.refs[index])]
        if hasattr(value, "type") and str(value.type).startswith("struct"):
            value = value["bytes"]
        data = value.as_py()
        if data is None:
            raise ValueError("empty image cell")
        return bytes(data)

    def label(self, unit: Unit, index: int) -> str:
        """How warnings name sample ``index`` of ``unit``."""
        if unit.kind == "folder":
            return str(Path(unit.shard) / str(unit.keys[index]))
        return f"{unit.shard}:{unit.keys[index]}"

    def close(self) -> None:
        for handle in self._open.values():
            if hasattr(handle, "close"):
                handle.close()
        self._open.clear()
