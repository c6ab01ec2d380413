"""Durable files: a file the project writes is replaced whole or not at all.

The search plan, a trial's metrics, the exports and the feature cache are all written through
`atomic_file`: into a unique temporary file beside the target, flushed and fsynced, then
renamed over it, and the directory fsynced so the rename itself survives a crash. A crash or a
full disk leaves the old file (or none), never half of a new one. The ledger is the one
append-only file; it fsyncs each line itself (`accounting.ledger`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file object whose contents replace `path` when the block ends without an error.

    `mode` is "w" (text, UTF-8) or "wb". The temporary file's name is unique, so processes
    that write the same target at once (two trials filling one cache) never mix their bytes.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def write_atomically(path: str | os.PathLike, content: str | bytes) -> Path:
    """Replace `path` with `content` (text or bytes) whole or not at all; returns the path."""
    with atomic_file(path, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    return Path(path)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename still happened
    finally:
        os.close(fd)
