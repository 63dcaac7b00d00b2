"""Writing results so that nothing is ever half-written: every file goes to a hidden temporary
file in its folder, is flushed to disk, then renamed over the target (a reader sees the old
complete file or the new complete one). JSON, checkpoints and every PNG
(:mod:`tscd.engine.visualize`) go through :func:`atomic_write`.

A temporary file is named ``.<target name>.<machine>-<pid>.<random>.tmp``: a writer killed
mid-write (SIGKILL, power loss) leaves it behind, and the first write of a later process into
that folder removes it when its writer is no longer running (``<machine>`` names the host, boot
and pid namespace in which ``<pid>`` means something) or when it has been untouched for
:data:`STALE_AFTER_S` (a writer on another machine, or a pid that another process has now). The
temporary files of live writers, in this process or another, are left alone while they write.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: seconds after which an untouched temporary file is stale whoever wrote it
STALE_AFTER_S = 3600.0
_TEMP_NAME = re.compile(r"\..+\.(?P<machine>[0-9a-f]{8})-(?P<pid>[0-9]+)\.[a-z0-9_]{8}\.tmp")
_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}

_lock = threading.Lock()  # guards the two sets below (writers in other threads of this process)
_in_flight: set[str] = set()  # names of this process's temporary files being written now
_swept: set[Path] = set()  # folders already cleared of stale temporary files by this process


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


@functools.cache
def machine_id() -> str:
    """8 hex digits naming where this process's pids are meaningful: host, boot, pid namespace
    (a pid recorded with another machine's id says nothing here)."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:
            pass
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:8]


def process_running(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_stale(name: str, mtime: float) -> bool:
    """Whether the temporary file ``name`` (of :data:`_TEMP_NAME`) was left by a dead writer."""
    found = _TEMP_NAME.fullmatch(name)
    if found is None or name in _in_flight:
        return False
    if found["machine"] == machine_id():
        pid = int(found["pid"])  # this pid, not in flight: an earlier process that had it
        if pid == os.getpid() or not process_running(pid):
            return True
    return time.time() - mtime > STALE_AFTER_S  # another machine's writer, or a pid reused since


def _remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files that dead writers left in ``folder`` (once per folder and process)."""
    with _lock:
        if folder in _swept:
            return
        _swept.add(folder)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            try:
                if _is_stale(entry.name, entry.stat().st_mtime):
                    os.unlink(entry.path)
            except OSError:  # removed meanwhile, or not ours to remove
                pass


def _disk_full(err: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT error behind ``err``, if any (``torch.save`` turns its file's failed
    write into a RuntimeError "[enforce fail at inline_container.cc:...]" raised during it)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync, then replace ``path``.

    The folder is created if needed (and cleared of dead writers' temporary files); the file
    gets the permissions a plain ``open`` would give it (0o666 less the umask; ``mkstemp``
    alone would make it private); on any failure the temporary file is removed and ``path`` is
    left as it was. A full disk or quota raises an ``OSError`` (its ``errno``) that says so, names
    ``path`` and says whether a previous file there is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path.parent.absolute())
    existed = path.exists()
    with _lock:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{machine_id()}-{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
        _in_flight.add(os.path.basename(tmp))
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = _disk_full(err)
        if full is None:
            raise
        kept = f"the previous {path.name} is kept" if existed else f"no {path.name} was written"
        error = OSError(f"cannot write {path}: {_DISK_FULL[full.errno]} ({kept})")
        error.errno = full.errno
        raise error from err
    finally:
        _in_flight.discard(os.path.basename(tmp))
    return path


def write_json(obj, path) -> Path:
    """``obj`` as indented JSON at ``path``, atomically."""
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))
