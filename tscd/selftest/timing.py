"""Time and peak memory of a callable: the measuring core of ``bench/`` and of :mod:`tscd.selftest`.

A measurement is a :class:`Row` (op, backend, mode, size, median and p20/p80 in ms, peak MiB,
device); :func:`write_csv` writes rows to ``<results dir>/<name>_<cpu|cuda>.csv``.
Time: ``triton.testing.do_bench`` on CUDA, a wall-clock loop on CPU; median and p20/p80.
Peak memory: extra bytes allocated by the call above what existed before it —
``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's peak resident set,
reset through ``/proc/self/clear_refs`` just before the call, with glibc told to serve every
block above 64 KiB by mmap so that memory freed by earlier calls is returned to the system
instead of being reused unseen (which would read as 0 MiB).

:func:`session` lets the self-test run the bench scripts unchanged: it collects the rows they
write, can send their files to another folder and can shorten the CPU timing loops.
"""
from __future__ import annotations

import contextlib
import csv
import ctypes
import dataclasses
import functools
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

#: The results folder of the source checkout (``bench/results``).
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
FIELDS = ("op", "backend", "mode", "size", "median_ms", "p20_ms", "p80_ms", "peak_mib", "device")
QUICK_BUDGET_S = 0.2  # the timing loop of a quick CPU timing (see session)


@dataclasses.dataclass
class Row:
    op: str
    backend: str
    mode: str
    size: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    peak_mib: float
    device: str


@dataclasses.dataclass
class Session:
    """What :func:`session` changes: where results go, quick CPU timing, the rows written."""

    results_dir: Path = RESULTS
    quick_cpu_timing: bool = False
    written: list[tuple[Path, list[Row]]] = dataclasses.field(default_factory=list)


_session = Session()


@contextlib.contextmanager
def session(results_dir: Path | None = None, quick_cpu_timing: bool = False) -> Iterator[Session]:
    """Within the block, :func:`write_csv` writes to ``results_dir`` (default ``bench/results``) and
    records what it wrote in the yielded :class:`Session`; with ``quick_cpu_timing`` a CPU timing
    is the warm-up and one timed call (or a few within :data:`QUICK_BUDGET_S`), whatever the caller asked."""
    global _session
    previous = _session
    _session = Session(Path(results_dir) if results_dir is not None else RESULTS, quick_cpu_timing)
    try:
        yield _session
    finally:
        _session = previous


def results_dir() -> Path:
    """The folder results are written to (``bench/results`` unless a :func:`session` says otherwise)."""
    return _session.results_dir


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


@functools.cache
def _return_freed_memory_to_system() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (a fixed value also stops its growth)
    libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
    libc.malloc_trim(0)  # what was freed before the setting


def peak_memory_mib(fn: Callable[[], object], device: str) -> float:
    """Extra memory at the peak of one call of ``fn`` (MiB)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _return_freed_memory_to_system()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set, to the current one
    base = _rss_kib("VmRSS")
    fn()
    return max(0, _rss_kib("VmHWM") - base) / 1024


def time_ms(fn: Callable[[], object], device: str, min_reps: int = 3, budget_s: float = 2.0):
    """(median, p20, p80) in milliseconds."""
    if torch.device(device).type == "cuda":
        import triton.testing

        return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
    if _session.quick_cpu_timing:
        min_reps, budget_s = 1, min(budget_s, QUICK_BUDGET_S)
    fn()  # warm-up (JIT builds, caches)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return statistics.median(times), q[1], q[7]


def measure(op: str, backend: str, mode: str, size: str, fn: Callable[[], object], device: str, **kw) -> Row:
    """Time and peak memory of ``fn`` as one result row; an out-of-memory run gives inf."""
    cuda = torch.device(device).type == "cuda"
    if not cuda:
        _return_freed_memory_to_system()  # before the timing loop, whose blocks would be reused unseen
    try:
        median, p20, p80 = time_ms(fn, device, **kw)
        peak = peak_memory_mib(fn, device)
    except torch.OutOfMemoryError:
        median = p20 = p80 = peak = float("inf")
        if cuda:
            torch.cuda.empty_cache()
    row = Row(op, backend, mode, size, median, p20, p80, peak, device_name(device))
    print(f"{op:>14} {backend:>7} {mode:>4} {size:>18}  {median:10.2f} ms  {peak:9.1f} MiB", flush=True)
    return row


def write_csv(name: str, rows: list[Row]) -> Path:
    """Write ``rows`` to ``<results dir>/<name>_<cuda|cpu>.csv`` (columns :data:`FIELDS`); returns the path."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if any("cpu" not in r.device for r in rows) else "cpu"
    path = folder / f"{name}_{tag}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for r in rows:
            writer.writerow(dataclasses.astuple(r))
    _session.written.append((path, list(rows)))
    return path
