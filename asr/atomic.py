"""Files that appear complete or not at all: checkpoints, feature store shards, LMs, exports.

Each is written to a temporary file in the same folder, fsynced, then renamed over its final name (a rename within
one file system is atomic on POSIX), so a crash, a kill or a full disk never leaves a half-written file where a
reader expects a whole one, nor destroys the previous good one. The folder is fsynced after the rename: until then
the rename itself may live only in memory, and a power loss could bring back the old file (or none).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, *, shared: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside `path` for the caller to write; when the block ends without an exception the
    file is fsynced and renamed to `path`, else it is removed and the exception propagates.

    shared=True (several processes may write `path` at once, e.g. two runs featurizing one split into a store): every
    writer gets its own temporary name, and the last rename wins with a complete file. shared=False (one writer,
    e.g. a run's checkpoints): the name is fixed (`.NAME.tmp`, hidden), so what a killed writer left behind is
    overwritten by the next write instead of piling up. The file gets mode 0644 either way.
    Raises OSError (e.g. ENOSPC) from creating, syncing or renaming."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if shared:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    else:
        tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600, which would make the file private to its writer
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    """Makes the folder's entries (a rename into it) durable. POSIX only: where a folder cannot be opened
    (Windows) or fsynced (some network file systems answer EINVAL), there is nothing more to do."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
