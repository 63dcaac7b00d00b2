"""tscd's benchmark suite: pytest-benchmark over the cases of :mod:`tscd.selftest.cases`, one test file
per op, each parametrised backend × size × mode. It is not part of the test command.

Usage, from the repository root (``python``: the project's venv)::

    python -m pytest bench/ --benchmark-only                      # quick tier: minutes
    python -m pytest bench/ --benchmark-only --tier full          # the published tables' sizes: about an hour
    python -m pytest bench/test_scd_loss.py --benchmark-only -k cpp
    python -m pytest bench/ --benchmark-only --benchmark-compare  # the same tests against the previous run
    python bench/tables.py bench/results/full_cpu.json --write README.md docs/benchmarks.md

Tiers (``--tier``): ``quick`` (default) runs every op at one small size, each case for about half a
second (at least 3 rounds), so that the suite cannot rot; ``full`` runs, on the CPU, the sizes of the
CPU tables and, on CUDA, the GPU sizes, each case for about 5 s (at least 5 rounds; calls so slow
that 5 rounds would pass a minute get as many as fit in one, at least one). Other options:
``--threads N``, torch's intra-op threads on the CPU (default 1: on a shared machine every parallel
region waits for a descheduled thread, and one thread times steadily); ``--ref-limit-gib X``, the
memory the torch reference may need (default 8 GiB on the CPU, 70 % of a GPU's). The device is
``TSCD_BENCH_DEVICE`` (``cpu`` or ``cuda``), else CUDA when there is one.

Each test skips, saying why, a case that cannot be timed here (a backend that cannot run, Triton on
the CPU, where it is only its interpreter, a torch reference beyond the memory limit, an exact O(N²)
sum the CPU would take minutes over); builds the inputs; asserts that the backend's values (and
gradients, in the modes with a backward) match the torch reference before timing (where the
reference cannot run, another exact backend stands in; where none can, an
``UncheckedBenchmarkWarning`` says so); times it with ``benchmark.pedantic``, warmed up by the
check's call (and one more round under a second); on CUDA every call ends with
``torch.cuda.synchronize()`` and ``triton.testing.do_bench``'s median, p20 and p80 are recorded
beside; then measures its peak memory in a call of its own (:mod:`tscd.selftest.timing`; on the CPU
in a forked child, so that the timed process keeps the normal allocator). ``benchmark.group`` is op
and size: each table puts the reference beside every backend. ``extra_info`` holds op, size, mode,
backend, ``reference`` (the torch row), ``anchor`` (the outside implementation's row: the released
code of :mod:`tscd.selftest.released`, pydensecrf2), ``exact`` (not an approximation), ``headline`` (the size of
the README's headline table), ``peak_mib``, ``device``, ``device_type``, ``threads``, ``tier``,
``items`` (images per call), ``check`` (the check's verdict), ``flops`` or ``bytes`` (the work of
one call by the op's model, where one applies) and, on CUDA, ``do_bench_ms``.

Results: each run writes its JSON to ``bench/results/<tier>_<device>.json`` (of the tests it ran:
run the whole tier for the tables; ``--benchmark-json PATH`` writes elsewhere), with the skipped
cases and their reasons under ``"skipped"`` and the machine's peaks under ``"peaks"`` (a matrix
product's GFLOP/s and a streamed add's GB/s on the same threads, the better of a probe at the start
and one at the end of the run, :func:`tscd.selftest.timing.measure_peaks`), and saves itself in
pytest-benchmark's storage, ``bench/results/.storage/<device>/`` (``--benchmark-storage URI`` to
change it), which ``--benchmark-compare [NUM]`` compares with. ``bench/tables.py`` makes the
README's Markdown tables from the JSON.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from pytest_benchmark.utils import get_tag

from tscd.selftest import cases, timing

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's default --benchmark-storage


@dataclasses.dataclass(frozen=True)
class RoundsPolicy:
    """How many timed rounds a case gets: enough to fill ``budget_s``, at least ``min_rounds``,
    at most ``max_rounds``, and fewer (at least one) where ``min_rounds`` would exceed ``max_s``."""

    budget_s: float
    min_rounds: int
    max_rounds: int
    max_s: float

    def rounds(self, seconds_per_call: float) -> int:
        if seconds_per_call * self.min_rounds > self.max_s:
            return max(1, int(self.max_s / seconds_per_call))
        return min(self.max_rounds, max(self.min_rounds, math.ceil(self.budget_s / max(seconds_per_call, 1e-9))))


ROUNDS = {"quick": RoundsPolicy(0.5, 3, 100, 10.0), "full": RoundsPolicy(5.0, 5, 1000, 60.0)}


@dataclasses.dataclass
class Settings:
    """The session's device, tier, reference memory limit (bytes) and the cases it skipped."""

    device: str
    tier: str
    limit: int
    skipped: list[dict] = dataclasses.field(default_factory=list)
    peaks: list[timing.Peaks] = dataclasses.field(default_factory=list)

    def best_peaks(self) -> dict:
        """The machine's peaks: the highest of its probes (a shared machine's load lowers a probe,
        never raises it)."""
        return {f.name: max(getattr(p, f.name) for p in self.peaks) for f in dataclasses.fields(timing.Peaks)}


SETTINGS = pytest.StashKey[Settings]()


class UncheckedBenchmarkWarning(UserWarning):
    """A case timed without a reference to compare it with (its reference would not fit)."""


def pytest_addoption(parser):
    group = parser.getgroup("tscd bench")
    group.addoption("--tier", choices=cases.TIERS, default="quick",
                    help="quick (default): small sizes, minutes in all; full: the published tables' sizes")
    group.addoption("--threads", type=int, default=1, help="torch's intra-op threads on the CPU (default 1)")
    group.addoption("--ref-limit-gib", type=float, default=None,
                    help="skip the torch reference where it would need more memory (default: 8 on the CPU, "
                         "70 %% of a GPU's)")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads the JSON path and the storage
def pytest_configure(config):
    device = os.environ.get("TSCD_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") or device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"TSCD_BENCH_DEVICE={device!r}: choose cpu, or cuda on a machine with a CUDA device")
    if device == "cpu":
        torch.set_num_threads(config.getoption("threads"))
    tier = config.getoption("tier")
    limit_gib = config.getoption("ref_limit_gib")
    limit = cases.reference_limit_bytes(device) if limit_gib is None else int(limit_gib * 2**30)
    config.stash[SETTINGS] = Settings(device, tier, limit)
    if config.option.collectonly:
        return
    config.stash[SETTINGS].peaks.append(timing.measure_peaks(device))
    if config.option.benchmark_json is None:
        RESULTS.mkdir(exist_ok=True)
        config.option.benchmark_json = RESULTS / f"{tier}_{device}.json"
    if config.option.benchmark_storage == DEFAULT_STORAGE:
        config.option.benchmark_storage = f"file://{RESULTS / '.storage' / device}"
    if not config.option.benchmark_save and not config.option.benchmark_autosave:
        config.option.benchmark_autosave = get_tag()


def pytest_generate_tests(metafunc):
    """``test_<op>(case, ...)`` runs for every case of the op in the session's tier and device."""
    if "case" in metafunc.fixturenames:
        settings = metafunc.config.stash[SETTINGS]
        op = metafunc.function.__name__.removeprefix("test_")
        selected = cases.select(settings.tier, settings.device, [op])
        metafunc.parametrize("case", selected, ids=[c.id for c in selected])


def pytest_benchmark_update_machine_info(config, machine_info):
    settings = config.stash[SETTINGS]
    machine_info["tscd_device"] = timing.device_name(settings.device)
    machine_info["torch_threads"] = torch.get_num_threads()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    settings = config.stash[SETTINGS]
    output_json["tier"] = settings.tier
    settings.peaks.append(timing.measure_peaks(settings.device))  # the run's end; its start probed in configure
    output_json["peaks"] = settings.best_peaks()
    output_json["skipped"] = settings.skipped


def _skip(settings: Settings, case: cases.BenchCase, reason: str):
    settings.skipped.append({"op": case.op, "size": case.size.label, "mode": case.mode, "backend": case.backend,
                             "reason": reason})
    pytest.skip(reason)


@pytest.fixture
def check_and_time(benchmark, request):
    """``check_and_time(case)``: skip it with the reason, or check it against the reference, time it
    and measure its peak memory (see the module's docstring)."""
    settings = request.config.stash[SETTINGS]
    device = settings.device

    def run(case: cases.BenchCase) -> None:
        reason = cases.skip_reason(case, device, settings.limit)
        if reason is not None:
            _skip(settings, case, reason)
        try:
            with case.workload(device) as work:
                verdict, seconds = cases.check(case, work, device, settings.limit)
                if verdict.startswith("unchecked"):
                    warnings.warn(f"{case.op} {case.id}: {verdict}", UncheckedBenchmarkWarning, stacklevel=1)
                call = timing.synchronized(work.run, device)
                setup = timing.synchronized(work.setup, device) if work.setup is not None else None
                benchmark.group = case.group
                benchmark.extra_info.update(
                    op=case.op, size=case.size.label, mode=case.mode, backend=case.backend,
                    reference=case.is_reference, anchor=case.is_anchor, exact=case.spec.is_exact(case.backend),
                    headline=case.headline,
                    device=timing.device_name(device),
                    device_type=device, threads=torch.get_num_threads(), tier=settings.tier, check=verdict,
                    items=work.items, **case.work)
                benchmark.pedantic(call, setup=(lambda: (setup(), {})) if setup is not None else None,
                                   rounds=ROUNDS[settings.tier].rounds(seconds), iterations=1,
                                   warmup_rounds=1 if seconds < 1.0 else 0)
                if device == "cuda":
                    benchmark.extra_info["do_bench_ms"] = timing.time_ms(work.run, device, work.setup)
                benchmark.extra_info["peak_mib"] = timing.peak_memory_mib(work.run, device, work.setup)
        except torch.OutOfMemoryError as exc:
            if device == "cuda":
                torch.cuda.empty_cache()
            _skip(settings, case, f"out of memory on {device}: {str(exc).splitlines()[0]}")

    return run
