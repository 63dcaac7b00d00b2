"""The benchmark half of the self-test: the cases of :mod:`.cases` of one tier, each checked against
its reference (:func:`.cases.check`) and then timed and measured by :mod:`.timing`.

On CUDA the self-test runs the ``full`` tier (the GPU sizes); on the CPU the ``quick`` tier, on one
thread as ``bench/`` does by default (on a loaded machine every parallel region waits for a
descheduled thread), with timing loops cut to a fraction of a second: its figures only show that
the benchmarks run (the CPU tables come from ``pytest bench/``). The rows go to one JSON file in
pytest-benchmark's layout (:func:`write_json`), which ``bench/tables.py`` reads as it reads
``bench/``'s results.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import time
import traceback
from pathlib import Path

import torch

from . import cases, timing
from .checks import describe

#: The CPU timing loop of the quick tier: the warm-up and one timed call, or a few within this budget.
QUICK_BUDGET_S = 0.2


@dataclasses.dataclass
class Outcome:
    """What one case did: its row (None when it was skipped or failed), the check's verdict, why it
    was skipped or failed, the traceback of a crash, the images one timed call processed and the
    threads it ran on."""

    case: cases.BenchCase
    row: timing.Row | None
    seconds: float
    verdict: str = ""
    skipped: str = ""
    error: str = ""
    log: str = ""
    items: int = 1
    threads: int = 1


def tier_for(device_type: str, quick: bool) -> str:
    """The tier the self-test runs: ``quick`` on the CPU or when asked, else ``full`` (the GPU sizes)."""
    return "quick" if quick or device_type != "cuda" else "full"


@contextlib.contextmanager
def _cpu_threads(device_type: str, threads: int):
    """torch's intra-op threads set to ``threads`` within the block when ``device_type`` is the CPU."""
    previous = torch.get_num_threads()
    if device_type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_case(case: cases.BenchCase, device_type: str, quick: bool, limit: int | None = None) -> Outcome:
    """Check, time and measure ``case`` on ``device_type`` (the CPU: on one thread); failures are
    returned, not raised. ``quick``: CPU timings of the warm-up and about one call; ``limit``: the
    reference's memory limit in bytes (default :func:`.cases.reference_limit_bytes`)."""
    limit = cases.reference_limit_bytes(device_type) if limit is None else limit
    reason = cases.skip_reason(case, device_type, limit)
    if reason is not None:
        return Outcome(case, None, 0.0, skipped=reason)
    start = time.perf_counter()
    loop = dict(min_reps=1, budget_s=QUICK_BUDGET_S) if quick else {}
    outcome = Outcome(case, None, 0.0)
    try:
        with _cpu_threads(device_type, 1), case.workload(device_type) as work:
            outcome.verdict, _ = cases.check(case, work, device_type, limit)
            outcome.items, outcome.threads = work.items, torch.get_num_threads()
            run = timing.synchronized(work.run, device_type)
            median, p20, p80 = timing.time_ms(run, device_type, work.setup, **loop)
            peak = timing.peak_memory_mib(work.run, device_type, work.setup)
        outcome.row = timing.Row(case.op, case.backend, case.mode, case.size.label, median, p20, p80, peak,
                                 timing.device_name(device_type))
    except torch.OutOfMemoryError:
        inf = math.inf
        outcome.row = timing.Row(case.op, case.backend, case.mode, case.size.label, inf, inf, inf, inf,
                                 timing.device_name(device_type))
    except AssertionError as exc:
        outcome.error = f"check failed: {exc}"
    except Exception as exc:
        outcome.error = describe(exc)
        outcome.log = traceback.format_exc()
    gc.collect()  # the case's tensors, before the next one measures its memory
    if device_type == "cuda":
        torch.cuda.empty_cache()
    outcome.seconds = time.perf_counter() - start
    return outcome


def write_json(path: Path, outcomes: list[Outcome], device_type: str, tier: str) -> Path:
    """The measured rows of ``outcomes`` as ``path`` in pytest-benchmark's JSON layout (stats in
    seconds: the median and, in place of the raw times, p20 and p80; the rest in ``extra_info``) and
    the skipped cases with their reasons."""
    benchmarks = []
    for o in outcomes:
        if o.row is None or math.isinf(o.row.median_ms):
            continue
        c, r = o.case, o.row
        benchmarks.append({
            "group": c.group, "name": f"selftest[{c.op}-{c.id}]", "fullname": f"selftest::{c.op}[{c.id}]",
            "params": {"case": c.id},
            "stats": {"median": r.median_ms / 1e3, "p20": r.p20_ms / 1e3, "p80": r.p80_ms / 1e3},
            "extra_info": {"op": c.op, "size": c.size.label, "mode": c.mode, "backend": c.backend,
                           "reference": c.is_reference, "anchor": c.is_anchor, "exact": c.spec.is_exact(c.backend),
                           "headline": c.headline, "peak_mib": r.peak_mib, "device": r.device,
                           "device_type": device_type, "threads": o.threads, "items": o.items,
                           "check": o.verdict, **c.work},
        })
    skipped = [{"op": o.case.op, "size": o.case.size.label, "mode": o.case.mode, "backend": o.case.backend,
                "reason": o.skipped} for o in outcomes if o.skipped]
    peaks = dataclasses.asdict(timing.measure_peaks(device_type))
    path.write_text(json.dumps({"tier": tier, "benchmarks": benchmarks, "skipped": skipped, "peaks": peaks},
                               indent=1))
    return path
