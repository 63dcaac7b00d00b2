"""Atomic writes: a full disk is named as such and keeps the previous file; the temporary files of
writers killed mid-write are removed, those of live writers are not."""
import errno
import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tscd.engine import checkpoint
from tscd.engine.io import atomic_write

REPO = Path(__file__).resolve().parents[2]

#: a writer of sys.argv[1] killed (SIGKILL) in the middle of its write
KILLED_WRITER = """
import os, signal, sys
from tscd.engine.io import atomic_write
def write(f):
    f.write(b"partial"); f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(sys.argv[1], write)
"""

#: a writer of sys.argv[1] that says "writing" and finishes when its stdin gets a line
SLOW_WRITER = """
import sys
from tscd.engine.io import atomic_write
def write(f):
    f.write(b"theirs"); f.flush()
    print("writing", flush=True)
    sys.stdin.readline()
atomic_write(sys.argv[1], write)
"""


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


class _FullDisk(io.RawIOBase):
    """A file whose writes fail with ``code`` once ``room`` bytes are written."""

    def __init__(self, f, room: int, code: int = errno.ENOSPC):
        self.f, self.room, self.code = f, room, code

    def writable(self):
        return True

    def write(self, data):
        if len(data) > self.room:
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self.f.write(data)


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EDQUOT, "disk quota exceeded")])
def test_a_full_disk_is_named_and_keeps_the_previous_file(tmp_path, code, words):
    path = tmp_path / "metrics.json"
    atomic_write(path, lambda f: f.write(b"old"))

    def fill_up(f):
        f.write(b"new")
        raise OSError(code, os.strerror(code))

    with pytest.raises(OSError) as info:
        atomic_write(path, fill_up)
    assert info.value.errno == code and str(info.value).startswith(f"cannot write {path}: {words}")
    assert path.read_bytes() == b"old" and _temps(tmp_path) == []


def test_a_full_disk_under_torch_save_is_named_not_an_enforce_failure(tmp_path):
    """torch.save turns its file's failed write into "[enforce fail at inline_container.cc:...]"."""
    path = tmp_path / "last.pth"
    checkpoint.atomic_save({"model": {"w": torch.ones(2)}}, path)
    with pytest.raises(OSError) as info:
        atomic_write(path, lambda f: torch.save({"model": {"w": torch.zeros(100_000)}}, _FullDisk(f, room=1000)))
    message = str(info.value)
    assert message.startswith(f"cannot write {path}: no space left on device") and "enforce" not in message
    assert info.value.errno == errno.ENOSPC
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(2)) and _temps(tmp_path) == []


def test_other_failures_pass_through_unchanged(tmp_path):
    def broken(f):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError, match=r"^\[Errno 5\] I/O error$"):
        atomic_write(tmp_path / "x", broken)


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    folder, target = tmp_path / "checkpoints", tmp_path / "checkpoints" / "last.pth"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=REPO)
    assert proc.wait(60) == -9
    [left] = _temps(folder)
    assert left.startswith(".last.pth.") and f"-{proc.pid}." in left
    left = folder / left
    # the same, written by an earlier process with this one's pid (pids repeat, e.g. in containers)
    same_pid = folder / left.name.replace(f"-{proc.pid}.", f"-{os.getpid()}.")
    same_pid.write_bytes(b"partial")
    # writers this machine cannot ask about (another host's): removed only when untouched for long
    foreign = re.sub(r"\.[0-9a-f]{8}-\d+\.", ".00000000-1.", left.name)
    foreign_old, foreign_new = folder / foreign, folder / foreign.replace(".last.pth.", ".metrics.json.")
    foreign_old.write_bytes(b"partial")
    foreign_new.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    os.utime(foreign_old, (hours_ago, hours_ago))
    unrelated = [".last.pth.tmp", "notes.tmp", ".last.pth.abcdefgh.tmp"]
    for name in unrelated:
        (folder / name).write_bytes(b"mine")

    atomic_write(folder / "other.json", lambda f: f.write(b"{}"))
    assert _temps(folder) == sorted([foreign_new.name, *unrelated])


def test_temporary_files_of_live_writers_are_kept(tmp_path):
    """Two processes and two threads writing one file: none removes another's temporary file."""
    target = tmp_path / "metrics.json"
    other = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "writing"
        release, started, errors = threading.Event(), threading.Event(), []

        def thread_write(f):
            f.write(b"thread")
            started.set()
            release.wait(60)

        def run():
            try:
                atomic_write(target, thread_write)
            except Exception as err:  # noqa: BLE001 - reported by the assertion below
                errors.append(err)

        thread = threading.Thread(target=run)
        thread.start()
        assert started.wait(60)
        assert len(_temps(tmp_path)) == 2
        atomic_write(target, lambda f: f.write(b"ours"))  # the first write here in this process
        assert len(_temps(tmp_path)) == 2 and target.read_bytes() == b"ours"
        release.set()
        thread.join(60)
        assert errors == [] and target.read_bytes() == b"thread"
        other.communicate("\n", timeout=60)
        assert other.returncode == 0 and target.read_bytes() == b"theirs"
    finally:
        other.kill()
    assert _temps(tmp_path) == []


def test_a_full_disk_says_whether_a_previous_file_is_kept(tmp_path):
    """It said "any previous last.pth is kept" when there was none."""
    path = tmp_path / "last.pth"

    def fill_up(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as info:
        atomic_write(path, fill_up)
    assert str(info.value) == f"cannot write {path}: no space left on device (no last.pth was written)"
    assert not path.exists()
    atomic_write(path, lambda f: f.write(b"old"))
    with pytest.raises(OSError) as info:
        atomic_write(path, fill_up)
    assert str(info.value) == f"cannot write {path}: no space left on device (the previous last.pth is kept)"
