"""Crash-safe file writes: a file is either its old content or its complete new content, never a torn mix.

Every writer of the run directory goes through these helpers. Each writes to a temporary name in the same
directory (so the rename never crosses a filesystem), flushes and fsyncs the data, renames it onto the final
name with `os.replace` (atomic on POSIX and Windows), then fsyncs the directory so the rename itself survives a
power loss. A crash leaves at most a `.NAME.tmp` file next to the target, which the next write of that name
replaces and no reader looks at.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq


def fsync_dir(path: str | Path) -> None:
    """Make the directory entries of `path` (files created, renamed or deleted in it) durable.

    Without it a rename can be lost in a power cut even though the renamed file's data was synced. Platforms
    that cannot open a directory (Windows) make renames durable on their own, so there it does nothing.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except (PermissionError, IsADirectoryError):  # Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: str | Path) -> Path:
    """The temporary name a write of `path` goes through: `.NAME.tmp` in the same directory (hidden, and
    matched by no reader's glob)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Open a binary file whose content replaces `path` only when the block exits without an exception.

    For writers that want a file object (np.savez, pq.write_table); on an exception the temporary file is
    removed and `path` keeps its old content.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably (see the module docstring)."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Replace `path` with `text` atomically and durably (see the module docstring)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_table(table: pa.Table, path: str | Path) -> None:
    """Write `table` as a Parquet file at `path` atomically and durably.

    A Parquet file is readable only once its footer is written, so writing it in place would leave an
    unreadable file after a crash; through a temporary name the target is always a complete file.
    """
    with atomic_file(path) as f:
        pq.write_table(table, f)
