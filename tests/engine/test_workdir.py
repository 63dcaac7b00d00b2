"""The work-dir lock: a run that died (SIGKILL) does not block the next one, also when it left
loader worker processes behind, and a lock whose owner is dead is taken over."""
import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tscd.engine.io import machine_id
from tscd.engine.workdir import LOCK_NAME, WorkDirError, WorkDirLock

REPO = Path(__file__).resolve().parents[2]

#: holds the lock of sys.argv[1], then forks a worker (as a DataLoader does) that outlives it
HOLDER_WITH_WORKER = """
import multiprocessing, sys, time
from tscd.engine.workdir import WorkDirLock
lock = WorkDirLock(sys.argv[1]).acquire()
worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,), daemon=False)
worker.start()
print(worker.pid, flush=True)
time.sleep(120)
"""


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_killed_run_does_not_leave_its_lock_to_its_workers(tmp_path):
    """The forked worker inherited the flock: after SIGKILL of the run, --resume was refused,
    naming the dead pid, until the worker noticed (about 5 s for torch's)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_WITH_WORKER, str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    worker = int(holder.stdout.readline())
    try:
        with pytest.raises(WorkDirError, match=f"pid {holder.pid}"):
            WorkDirLock(tmp_path).acquire()
        holder.kill()
        holder.wait()
        os.kill(worker, 0)  # the orphaned worker still runs
        with open(tmp_path / LOCK_NAME) as f:  # and the kernel freed the lock all the same
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.kill(worker, signal.SIGKILL)


def test_a_lock_whose_owner_is_dead_is_taken_over(tmp_path):
    path = tmp_path / LOCK_NAME
    with open(path, "w") as orphan:  # a process that kept the lock of a dead run
        fcntl.flock(orphan, fcntl.LOCK_EX | fcntl.LOCK_NB)
        orphan.write(f"{_dead_pid()} {machine_id()}\n")
        orphan.flush()
        lock = WorkDirLock(tmp_path).acquire()
        assert path.read_text().split() == [str(os.getpid()), machine_id()]
        with pytest.raises(WorkDirError, match=f"pid {os.getpid()}"):  # held now, and by a live process
            WorkDirLock(tmp_path).acquire()
        lock.release()


@pytest.mark.parametrize("owner", ["{alive}", "{dead} 00000000", ""])
def test_a_lock_of_a_live_or_unknown_owner_is_respected(tmp_path, owner):
    """A live pid, a pid of another machine (or pid namespace), or no pid at all: refused."""
    with open(tmp_path / LOCK_NAME, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(owner.format(alive=os.getppid(), dead=_dead_pid()))
        held.flush()
        with pytest.raises(WorkDirError, match="is in use by another tscd run"):
            WorkDirLock(tmp_path).acquire()
