"""Stopping a training run by signal: SIGINT and SIGTERM end it at the step boundary.

:class:`StopSignals` holds the main process's handlers while it trains (the second signal stops
at once); :func:`leave_interrupts_to_the_main_process` is the loader workers' side; and
:func:`worker_died` / :func:`shut_down_workers` deal with the workers that a signal sent to the
whole run (Ctrl-C in a terminal, ``kill -- -PGID``, a scheduler cancelling the job) kills.
"""
from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by the signal ``signum`` (SIGINT, SIGTERM); the CLI exits with 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = int(signum)


def _ignore_child_exit(signum, frame) -> None:
    """SIGCHLD handler of a run that is stopping (see :class:`StopSignals`)."""


class StopSignals:
    """SIGINT and SIGTERM while training (main thread only, unless the process ignores them, as a
    background job ignores SIGINT): the first sets :attr:`signum` for the loop to stop after the
    iteration under way; the second puts the previous handlers back and raises
    :class:`TrainingInterrupted` at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # an ignored signal stays ignored
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS
                              if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum:
            self._restore()
            raise TrainingInterrupted(signum)
        self.signum = signum
        if hasattr(signal, "SIGCHLD"):
            # A signal sent to every process of the run also kills the loader's workers, and torch
            # raises a worker's death into the main process from its SIGCHLD handler, wherever that
            # is: the iteration under way would fail instead of finishing. The run stops anyway. (A
            # no-op handler, not SIG_DFL: Python reports a signal it caught but can no longer handle.)
            self._previous.setdefault(signal.SIGCHLD, signal.signal(signal.SIGCHLD, _ignore_child_exit))
        logger.warning("%s: stopping after this iteration (once more to stop at once)", signal.Signals(signum).name)

    def interruption(self, err: BaseException) -> TrainingInterrupted | None:
        """The interruption that ``err`` stands for: a loader worker found dead after a stop signal
        (which killed it too, while a batch was awaited); else None."""
        return TrainingInterrupted(self.signum) if self.signum and worker_died(err) else None

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


def leave_interrupts_to_the_main_process(worker_id: int) -> None:
    """A loader worker's ``worker_init_fn``: Ctrl-C in a terminal reaches every process of the
    run; the main process stops at the step boundary and shuts the workers down (a worker would
    otherwise run the inherited :class:`StopSignals` handler and announce the stop a second time)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_died(err: BaseException) -> bool:
    """Whether ``err`` is torch's report of a loader worker that died or exited (raised when a
    batch is awaited, or from its SIGCHLD handler wherever the main process is)."""
    return isinstance(err, RuntimeError) and str(err).startswith("DataLoader worker")


def shut_down_workers(batches) -> None:
    """Shut the loader's workers down now, so that one that dies afterwards (of a SIGTERM sent to
    the whole run) can no longer raise into the main process while it saves a checkpoint."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator
    if shutdown is None:
        return
    try:
        shutdown()
    except RuntimeError as err:
        if not worker_died(err):
            raise
