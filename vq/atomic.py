"""Files written whole or not at all: the one way checkpoints, manifests, data shards and
artifacts are written.

A crash at any moment (``kill -9``, power loss) leaves either the previous file or the new
one, never a torn one: the data goes to a temporary file in the target's directory (so the
rename never crosses filesystems), is fsynced, renamed over the target (``os.replace`` is
atomic on POSIX and Windows), and the directory is fsynced so that the rename itself
survives a power loss.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory (a no-op where directories cannot be opened: Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path (``.NAME.XXXXXXXX.tmp`` next to ``path``) to write; when the
    block ends without an exception it becomes ``path`` in one rename, else it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
