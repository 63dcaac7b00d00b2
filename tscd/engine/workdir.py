"""A training run's work dir: one run at a time, and an existing run continued or replaced only
when asked.

:class:`WorkDirLock` is an exclusive ``flock`` on ``WORK/.tscd.lock``, held while a run writes
into ``WORK``. :func:`claim_work_dir` takes it and looks at what is there: a run (its
``checkpoints/last.pth`` or ``metrics.json``) is continued with ``resume`` or replaced with
``overwrite``, which deletes the files of :data:`RUN_FILES` and nothing else (:func:`remove_run`,
once the new run's checks have passed, :func:`check_run_inputs` among them: no file the run
reads is one it writes or deletes).
"""
from __future__ import annotations

import fcntl
import logging
import os
import weakref
from pathlib import Path

from .io import machine_id, process_running
from .outputs import check_output_folder, check_outputs, file_identity

logger = logging.getLogger(__name__)

LOCK_NAME = ".tscd.lock"
#: Files that show a run is there.
RUN_MARKERS = ("checkpoints/last.pth", "metrics.json")
#: Glob patterns of the files a run writes (trainer and ``tscd demo``), the markers last (a
#: replacement cut short still shows the old run).
RUN_FILES = ("tb/events.out.tfevents.*", "vis/iter_*.png", "curve.png", "config.yaml", "checkpoints/iter_*.pth",
             *RUN_MARKERS)
#: Folders of the run, removed once empty.
RUN_FOLDERS = ("tb", "vis", "checkpoints")


class WorkDirError(ValueError):
    """A work dir that cannot take this run: in use by another, or holding a run not to be touched."""


class WorkDirLock:
    """``WorkDirLock(work_dir).acquire()`` holds ``work_dir`` until :meth:`release` (or the end of
    the process, however it ends: the kernel drops the lock, so the file a killed run leaves
    behind blocks nobody). The holder's pid and :func:`~tscd.engine.io.machine_id` are in the
    file, for the message of a refused run.

    The lock is the process's alone: a forked child (a DataLoader worker) closes its copy at
    once, so that an orphaned worker of a killed run does not keep it. A lock still held while
    its owner's pid no longer runs on this machine (kept by a process forked outside Python,
    say) is stale, and taken over.
    """

    def __init__(self, work_dir):
        self.path = Path(work_dir) / LOCK_NAME
        self._file = None

    def acquire(self) -> WorkDirLock:
        """Take the lock at once or raise :class:`WorkDirError` naming the folder and the holder's pid
        (:class:`~tscd.engine.outputs.OutputConflictError` where the folder is a file)."""
        check_output_folder(self.path.parent, "work dir")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            file = open(self.path, "a+")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                owner = file.read().split()
                stale = _owner_is_dead(owner)
                if stale:
                    self._remove_stale(file, owner[0])
                file.close()
                if stale:
                    continue
                holder = f"pid {owner[0]}" if owner else "another process"
                raise WorkDirError(f"{self.path.parent} is in use by another tscd run ({holder}): wait for it to "
                                   "finish or choose another --work-dir") from None
            if self._is_current(file):  # a releasing holder removes the file: our lock may be on a file gone
                break
            file.close()
        file.truncate(0)
        file.write(f"{os.getpid()} {machine_id()}\n")
        file.flush()
        self._file = file
        _held.add(self)
        return self

    def _is_current(self, file) -> bool:
        """Whether ``file`` is the one at :attr:`path` now."""
        try:
            now, ours = os.stat(self.path), os.fstat(file.fileno())
        except FileNotFoundError:
            return False
        return (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)

    def _remove_stale(self, file, pid: str) -> None:
        """Remove the lock file ``file``, whose owner ``pid`` is dead, unless another process did
        so first (takeovers are serialised by a lock on the folder)."""
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            if self._is_current(file):
                self.path.unlink()
                logger.warning("%s: taking over the lock of pid %s, which no longer runs", self.path.parent, pid)
        finally:
            os.close(folder)

    def release(self) -> None:
        if self._file is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked, see acquire
        self._file.close()
        self._file = None
        _held.discard(self)


def _owner_is_dead(owner: list[str]) -> bool:
    """Whether the lock file's ``[pid, machine]`` names a process of this machine that no longer runs."""
    return (len(owner) == 2 and owner[0].isdigit() and owner[1] == machine_id()
            and not process_running(int(owner[0])))


_held: weakref.WeakSet[WorkDirLock] = weakref.WeakSet()  # the locks this process holds


def _let_go_in_child() -> None:
    """In a forked child: close the copies of the parent's locks (without unlocking them)."""
    for lock in list(_held):
        lock._file.close()
        lock._file = None
    _held.clear()


os.register_at_fork(after_in_child=_let_go_in_child)


def periodic_checkpoints(work_dir) -> dict[int, Path]:
    """iteration -> ``checkpoints/iter_<iteration>.pth`` of the run in ``work_dir``."""
    found = {}
    for path in (Path(work_dir) / "checkpoints").glob("iter_*.pth"):
        step = path.name[len("iter_"):-len(".pth")]
        if step.isdigit() and path.is_file():
            found[int(step)] = path
    return found


def existing_run(work_dir) -> list[str]:
    """The :data:`RUN_MARKERS` present in ``work_dir``."""
    return [name for name in RUN_MARKERS if (Path(work_dir) / name).is_file()]


def remove_run(work_dir) -> int:
    """Delete the files of :data:`RUN_FILES` from ``work_dir`` (and the run's folders left empty);
    the number of files deleted. Anything else in the folder stays."""
    work = Path(work_dir)
    removed = 0
    for pattern in RUN_FILES:
        for path in sorted(work.glob(pattern)):
            if path.is_symlink() or path.is_file():  # a link goes, not what it points to
                path.unlink()
                removed += 1
    for name in RUN_FOLDERS:
        folder = work / name
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed


def check_run_inputs(work_dir, reads, datasets, resume: bool = False) -> None:
    """Raise :class:`~tscd.engine.outputs.OutputConflictError` (:func:`~tscd.engine.outputs.check_outputs`)
    when a file a run in ``work_dir`` reads is one the run writes (``config.yaml``,
    ``metrics.json``, ``curve.png``, ``checkpoints/last.pth``) or replaces (the files of
    :data:`RUN_FILES` there now, which ``--overwrite`` deletes), or when the work dir is a
    folder of a dataset's images or masks. ``reads``: the files the run reads besides the
    ``datasets``' (config file, ``model.pretrained``). Resuming, the run's own files (its
    config.yaml and checkpoints) are its to read and rewrite."""
    work = Path(work_dir)
    own = {work / "config.yaml", work / "metrics.json", work / "curve.png", work / "checkpoints" / "last.pth",
           *(path for pattern in RUN_FILES for path in work.glob(pattern))}
    if resume:
        mine = {file_identity(path) for path in own} - {None}
        reads = [path for path in reads if file_identity(path) not in mine]
    check_outputs([(path, f"a file the run in {work} writes or --overwrite deletes") for path in sorted(own)],
                  inputs=reads, datasets=[d for d in datasets if d is not None])


def claim_work_dir(work_dir, resume: bool = False, overwrite: bool = False) -> WorkDirLock:
    """Lock ``work_dir`` for a training run and check what is there; the held lock.

    ``resume``: ``checkpoints/last.pth`` or an ``iter_<n>.pth`` must exist (``FileNotFoundError``,
    nothing created).
    Otherwise a run already there (:func:`existing_run`) is a :class:`WorkDirError` naming both
    ways on (``--resume``, ``--overwrite``), unless ``overwrite``: the caller deletes its files
    (:func:`remove_run`) once its own checks have passed.
    A folder in use by another run is a :class:`WorkDirError` first, whatever the flags.
    """
    work = Path(work_dir)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
    last = work / "checkpoints" / "last.pth"
    if resume and not last.is_file() and not periodic_checkpoints(work):
        raise FileNotFoundError(f"--resume: no checkpoint at {last} (nor an iter_<n>.pth beside it)")
    lock = WorkDirLock(work).acquire()
    try:
        found = [] if resume else existing_run(work)
        if found and not overwrite:
            raise WorkDirError(f"{work} already holds a run ({', '.join(found)}): continue it with --resume or "
                               "replace it with --overwrite")
    except BaseException:
        lock.release()
        raise
    return lock
