"""The benchmark half of the self-test: the scripts of ``bench/`` run in this process, unchanged,
at the sizes of a tier, their rows collected through :func:`tscd.selftest.timing.session`.

On CUDA (tier ``cuda``) they write ``bench/results/<name>_cuda.csv`` and their plots, as when run
by hand. The ``quick`` tier (the CPU default) runs them at small sizes with timing loops cut to a
fraction of a second and writes into a scratch folder, so that the published CPU results in
``bench/results`` stay untouched: its figures only show that the benchmarks run.
The scripts live in the source checkout (``<repo>/bench``), not in an installed package.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import io
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from . import timing
from .checks import describe

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    script: str  # file name in bench/
    ops: tuple[str, ...]  # the ops it times (``train_step``: the whole objective)
    args: tuple[str, ...]  # its command line


#: The benchmarks in the order they run (the most informative first, in case the time budget ends).
#: ``cuda``: SCD B=2 C=20 K=21 at the sampled N=1600 and the dense 4096, 16384 pixels; VARM and PAR
#: 2×21×256², 10 iterations; dense energy 2×21×256² fwd, fwd+bwd and W·X; dense CRF 375×500, K=21,
#: 10 iterations; one training step of MiT-B1 at 512², B=2, and of MiT-B1, ViT-B/16 and the frozen CLIP
#: ViT-B/16 at 448² with their recipes. ``quick``: the same scripts at small sizes
#: (on the CPU the training step without the slow reference).
PLANS = {
    "cuda": (
        Benchmark("scd.py", ("scd_loss",), ("--sizes", "1600,4096,16384")),
        Benchmark("varm.py", ("varm_refine",), ("--sizes", "256")),
        Benchmark("dense_energy.py", ("dense_energy_loss", "gaussian_product"), ("--sizes", "256")),
        Benchmark("dense_crf.py", ("dense_crf",), ("--sizes", "375x500")),
        Benchmark("train_step.py", ("train_step",), ("--sizes", "voc512,mitb1_448,vitb_448,clip_frozen_448")),
    ),
    "quick": (
        Benchmark("scd.py", ("scd_loss",), ("--sizes", "256")),
        Benchmark("varm.py", ("varm_refine",), ("--sizes", "16", "--modes", "varm")),
        Benchmark("dense_energy.py", ("dense_energy_loss", "gaussian_product"), ("--sizes", "16")),
        Benchmark("dense_crf.py", ("dense_crf",), ("--sizes", "16x20")),
        Benchmark("train_step.py", ("train_step",), ("--sizes", "demo", "--backends", "cpp")),
    ),
}


@dataclasses.dataclass
class Outcome:
    """What one benchmark script did: its rows (empty when it failed or was skipped) and why not."""

    benchmark: Benchmark
    rows: list[timing.Row]
    seconds: float
    error: str = ""
    files: list[Path] = dataclasses.field(default_factory=list)
    log: str = ""


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"tscd_selftest_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _as_script(argv: list[str], device_type: str, log: io.StringIO):
    """``sys.argv`` set to ``argv``, the bench device to ``device_type``, stdout into ``log``."""
    saved_argv, saved_device = sys.argv, os.environ.get("TSCD_BENCH_DEVICE")
    sys.argv = argv
    os.environ["TSCD_BENCH_DEVICE"] = device_type
    try:
        with contextlib.redirect_stdout(log):
            yield
    finally:
        sys.argv = saved_argv
        if saved_device is None:
            del os.environ["TSCD_BENCH_DEVICE"]
        else:
            os.environ["TSCD_BENCH_DEVICE"] = saved_device


def run_benchmark(benchmark: Benchmark, device_type: str, results_dir: Path | None = None,
                  quick: bool = False, bench_dir: Path = BENCH_DIR) -> Outcome:
    """Run one bench script's ``main()`` with its arguments on ``device_type`` (``cpu`` or ``cuda``);
    failures are returned, not raised. What the script prints (and the traceback of a failure) goes
    to ``Outcome.log``. ``quick``: CPU timings of one call (:func:`tscd.selftest.timing.session`)."""
    path = bench_dir / benchmark.script
    start = time.perf_counter()
    if not path.is_file():
        return Outcome(benchmark, [], 0.0, f"{path} not found: the benchmarks need the source checkout")
    log = io.StringIO()
    with timing.session(results_dir, quick) as session:
        try:
            with _as_script([str(path), *benchmark.args], device_type, log):
                _load(path).main()
            error = ""
        except SystemExit as exc:  # argparse rejected the arguments
            error = f"{benchmark.script} exited with {exc.code} (its arguments: {' '.join(benchmark.args)})"
        except Exception as exc:
            error = describe(exc)
            traceback.print_exc(file=log)
    gc.collect()  # the script's tensors, before the next one measures its memory
    if device_type == "cuda":
        torch.cuda.empty_cache()
    rows = [row for _, written in session.written for row in written]
    return Outcome(benchmark, rows, time.perf_counter() - start, error, [p for p, _ in session.written],
                   log.getvalue())
