"""Shared measurement code of the benchmark scripts (one script per op in bench/).

Each script builds rows ``Row(op, backend, mode, size, ...)`` with :func:`measure` and
hands them to :func:`write_results`, which writes ``bench/results/<op>.csv``, a PNG plot of
time and peak memory against size, and prints a Markdown table for the README.
Time: ``triton.testing.do_bench`` on CUDA, a wall-clock loop on CPU; median and p20/p80.
Peak memory: extra bytes allocated by the call above what existed before it —
``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's peak resident set,
reset through ``/proc/self/clear_refs`` just before the call, with glibc told to serve every
block above 64 KiB by mmap so that memory freed by earlier calls is returned to the system
instead of being reused unseen (which would read as 0 MiB).
"""
from __future__ import annotations

import csv
import ctypes
import dataclasses
import functools
import gc
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = ("op", "backend", "mode", "size", "median_ms", "p20_ms", "p80_ms", "peak_mib", "device")


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


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
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
    if device == "cuda":
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
    if device == "cuda":
        import triton.testing

        return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
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
    if device != "cuda":
        _return_freed_memory_to_system()  # before the timing loop, whose blocks would be reused unseen
    try:
        median, p20, p80 = time_ms(fn, device, **kw)
        peak = peak_memory_mib(fn, device)
    except torch.OutOfMemoryError:
        median = p20 = p80 = peak = float("inf")
        if device == "cuda":
            torch.cuda.empty_cache()
    row = Row(op, backend, mode, size, median, p20, p80, peak, device_name(device))
    print(f"{op:>14} {backend:>7} {mode:>4} {size:>18}  {median:10.2f} ms  {peak:9.1f} MiB", flush=True)
    return row


def write_results(name: str, rows: list[Row], title: str) -> None:
    """CSV + PNG (time and peak memory against size, one line per backend and mode) + table."""
    RESULTS.mkdir(exist_ok=True)
    tag = "cuda" if any("cpu" not in r.device for r in rows) else "cpu"
    csv_path = RESULTS / f"{name}_{tag}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for r in rows:
            writer.writerow(dataclasses.astuple(r))
    _plot(RESULTS / f"{name}_{tag}.png", rows, title)
    print(f"\nwrote {csv_path} and its .png\n")
    print(markdown_table(rows))


def markdown_table(rows: list[Row]) -> str:
    """Time and peak memory side by side with the torch reference of the same (mode, size)."""
    ref = {(r.mode, r.size): r for r in rows if r.backend == "torch"}
    lines = [
        "| size | mode | backend | median ms (p20–p80) | peak MiB | speed-up vs torch | memory vs torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = ref.get((r.mode, r.size))
        speed = f"{base.median_ms / r.median_ms:.1f}×" if base and base.median_ms != float("inf") else "–"
        mem = f"{r.peak_mib / base.peak_mib:.3f}×" if base and base.peak_mib not in (0.0, float("inf")) else "–"
        timing = "OOM" if r.median_ms == float("inf") else f"{r.median_ms:.1f} ({r.p20_ms:.1f}–{r.p80_ms:.1f})"
        lines.append(f"| {r.size} | {r.mode} | {r.backend} | {timing} | {r.peak_mib:.1f} | {speed} | {mem} |")
    return "\n".join(lines)


def _plot(path: Path, rows: list[Row], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    series: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        series.setdefault((r.backend, r.mode), []).append(r)
    for (backend, mode), rs in series.items():
        sizes = [r.size for r in rs]
        ax_t.plot(sizes, [r.median_ms for r in rs], marker="o", label=f"{backend} {mode}")
        ax_m.plot(sizes, [r.peak_mib for r in rs], marker="o", label=f"{backend} {mode}")
    for ax, label in ((ax_t, "median time (ms)"), (ax_m, "peak extra memory (MiB)")):
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.set_xlabel("size")
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle(f"{title} — {rows[0].device if rows else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_device() -> str:
    return os.environ.get("TSCD_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")


def timed_backends(device: str, op: str) -> list[str]:
    """The backends of ``op`` worth timing on ``device``: all available ones, except Triton on the
    CPU, where it runs only in its interpreter, which is not a timing."""
    from tscd.ops import available_backends

    return [b for b in available_backends(device, op) if device == "cuda" or b != "triton"]
