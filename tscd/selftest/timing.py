"""Time and peak memory of one call: the measuring core of the self-test's benchmarks, and the peak
memory of ``bench/``'s (whose timing is pytest-benchmark's).

Time (:func:`time_ms`): on CUDA ``triton.testing.do_bench`` (CUDA events after a warm-up; median
and p20/p80 of repeated calls); on the CPU a wall-clock loop after one warm-up call.

Peak memory (:func:`peak_memory_mib`): the extra memory at the peak of one call above what existed
before it, measured in a call of its own, never in a timed one. CUDA:
``torch.cuda.max_memory_allocated``. CPU: the peak resident set of the call run once in a forked
child process. In the child, glibc is told to serve every block above 64 KiB by mmap and to give
freed memory back, so that memory freed by earlier calls is not reused unseen (which would read as
0 MiB), and ``/proc/self/clear_refs`` resets the peak just before the call; the file-backed pages
the call maps there (library code, which a fork shares without mapping it) are not counted. The
allocator setting dies with the child: the timing process keeps glibc's default allocator
(serving every block by mmap would make each large temporary pay its page faults on every timed
call). The child runs the call on one thread, since OpenMP's thread pool does not survive a fork:
with more threads, the scratch memory of the others is not counted.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import platform
import select
import signal
import statistics
import time
from collections.abc import Callable

import torch

#: How long the child measuring a CPU call's peak memory may take before it is killed (seconds).
PEAK_MEMORY_TIMEOUT_S = 1800.0


@dataclasses.dataclass
class Row:
    """One benchmark result: times in milliseconds, the peak extra memory in MiB (inf: out of memory)."""

    op: str
    backend: str
    mode: str
    size: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    peak_mib: float
    device: str


def device_name(device: str | torch.device) -> str:
    """The GPU's name, or the CPU's model (from /proc/cpuinfo where there is one)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronized(fn: Callable, device: str | torch.device) -> Callable:
    """``fn`` ending with ``torch.cuda.synchronize()`` on CUDA (so that a wall clock sees its kernels
    finish), ``fn`` itself elsewhere."""
    if torch.device(device).type != "cuda":
        return fn

    def call(*args):
        result = fn(*args)
        torch.cuda.synchronize()
        return result

    return call


def time_ms(fn: Callable, device: str | torch.device, setup: Callable[[], tuple] | None = None,
            min_reps: int = 3, budget_s: float = 2.0) -> tuple[float, float, float]:
    """(median, p20, p80) in milliseconds of ``fn(*setup())`` (``fn()`` without ``setup``); ``setup``
    runs outside the timing, once on CUDA (``fn`` must then be repeatable on its outputs), before
    every call on the CPU. CPU: one warm-up call, then at least ``min_reps`` calls and more while
    ``budget_s`` lasts (at most 50)."""
    if torch.device(device).type == "cuda":
        import triton.testing

        args = setup() if setup is not None else ()
        torch.cuda.synchronize()
        return tuple(triton.testing.do_bench(lambda: fn(*args), quantiles=[0.5, 0.2, 0.8]))
    fn(*(setup() if setup is not None else ()))  # warm-up (JIT builds, caches)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 50):
        args = setup() if setup is not None else ()
        t0 = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return statistics.median(times), q[1], q[7]


def peak_memory_mib(fn: Callable, device: str | torch.device, setup: Callable[[], tuple] | None = None,
                    timeout_s: float = PEAK_MEMORY_TIMEOUT_S) -> float:
    """Extra memory at the peak of one call ``fn(*setup())`` (MiB), ``setup`` outside the measure;
    on the CPU in a forked child (see the module's docstring), killed after ``timeout_s``."""
    if torch.device(device).type == "cuda":
        gc.collect()
        args = setup() if setup is not None else ()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(*args)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return _peak_rss_mib_in_child(fn, setup, timeout_s)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _return_freed_memory_to_system() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (a fixed value also stops its growth)
    libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
    libc.malloc_trim(0)  # what was freed before the setting


def _measure_in_child(fn: Callable, setup: Callable[[], tuple] | None) -> str:
    """The child's side: the peak extra resident memory of one call in MiB, as text."""
    torch.set_num_threads(1)
    _return_freed_memory_to_system()
    args = setup() if setup is not None else ()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set, to the current one
    base, file_base = _rss_kib("VmRSS"), _rss_kib("RssFile")
    fn(*args)
    # Less the library code the call faulted in: a fork shares it without mapping it in the child.
    return repr(max(0, _rss_kib("VmHWM") - base - (_rss_kib("RssFile") - file_base)) / 1024)


def _peak_rss_mib_in_child(fn: Callable, setup: Callable[[], tuple] | None, timeout_s: float) -> float:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report through the pipe, exit without the parent's exit handlers
        os.close(read_end)
        try:
            message = _measure_in_child(fn, setup)
        except BaseException as exc:
            message = f"error {type(exc).__name__}: {exc}"
        finally:
            os.write(write_end, message.encode()[:4096])
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout_s)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            raise TimeoutError(f"measuring the peak memory took more than {timeout_s:.0f} s")
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
        message = b"".join(chunks).decode()
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    if not message:
        raise RuntimeError(f"the child measuring the peak memory died (wait status {status}; out of memory?)")
    if message.startswith("error "):
        raise RuntimeError(f"measuring the peak memory failed: {message.removeprefix('error ')}")
    return float(message)


@dataclasses.dataclass(frozen=True)
class Peaks:
    """What the machine reaches on one device at the session's thread count: ``gflops`` (float32
    multiply-adds in a large matrix product, torch's BLAS) and ``gbs`` (a streamed ``c = a + α·b``
    over arrays far larger than the caches, 12 bytes moved per element)."""

    gflops: float
    gbs: float


def _best_rate(fn: Callable[[], object], work: float, device: torch.device, seconds: float = 0.25,
               samples: int = 5) -> float:
    """``work`` per second, in billions, of the fastest of ``samples`` runs of ``fn`` repeated for
    about ``seconds`` each."""
    call = synchronized(fn, device)
    call()
    start = time.perf_counter()
    call()
    repeats = max(1, int(seconds / max(time.perf_counter() - start, 1e-6)))
    best = float("inf")
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - start) / repeats)
    return work / best / 1e9


def measure_peaks(device: str | torch.device) -> Peaks:
    """The machine's peaks on ``device`` at torch's thread count (CUDA: float32 without TF32)."""
    device = torch.device(device)
    n = 4096 if device.type == "cuda" else 512
    x, y, product = (torch.randn(n, n, device=device) for _ in range(3))
    elements = (256 if device.type == "cuda" else 32) * 2**20
    a, b, c = (torch.ones(elements, device=device) for _ in range(3))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        gflops = _best_rate(lambda: torch.mm(x, y, out=product), 2 * n**3, device)
        gbs = _best_rate(lambda: torch.add(a, b, alpha=1.5, out=c), 12 * elements, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return Peaks(gflops=gflops, gbs=gbs)
