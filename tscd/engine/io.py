"""Writing results so that nothing is ever half-written: every file goes to a hidden temporary
file in its folder, is flushed to disk, then renamed over the target (a reader sees the old
complete file or the new complete one). JSON, checkpoints and every PNG
(:mod:`tscd.engine.visualize`) go through :func:`atomic_write`."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    """The process's umask: read where Linux shows it (``/proc/self/status``), else set and
    restored (which leaves it 0 for a moment, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync, then replace ``path``.

    The folder is created if needed; the file gets the permissions a plain ``open`` would give it
    (0o666 less the umask; ``mkstemp`` alone would make it private); on any failure the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(obj, path) -> Path:
    """``obj`` as indented JSON at ``path``, atomically."""
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))
