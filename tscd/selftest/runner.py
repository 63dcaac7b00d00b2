"""``python -m tscd.selftest``: check every op on every exact backend of a device, benchmark them,
print one table, exit non-zero on any mismatch, crash or failed benchmark.

    python -m tscd.selftest --device cuda            # GPU: checks + benchmarks at the GPU sizes
    python -m tscd.selftest --device cpu             # CPU: checks at smaller sizes + a quick benchmark
    python -m tscd.selftest --quick --no-bench       # the smallest checks only
    python -m tscd.selftest --only scd_loss,dense_crf --require triton,cpp
    python -m tscd.selftest --device cuda --plan     # what it would run, in order, and the budget
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from ..ops import backends
from . import benchmarks, cases, checks, tables

OPS = tuple(backends.OP_BACKENDS)
#: The checked ops, then the benchmarked ones without checks of their own (tscd.compat, training, evaluation).
ONLY_CHOICES = OPS + tuple(op for op in cases.OPS if op not in OPS)
DEFAULT_BUDGET_S = {"cuda": 480.0, "cpu": 180.0}
BUDGET_SPENT = "the time budget is spent"
_COLUMNS = f"{'op':<18} {'backend':<10} {'check':<38} {'result':<11} {'max error / bound':<22} time"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tscd.selftest", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="the smallest sizes (checks and benchmarks)")
    parser.add_argument("--only", default=None,
                        help=f"comma list of ops to check and benchmark, of: {', '.join(ONLY_CHOICES)}")
    parser.add_argument("--no-bench", action="store_true", help="checks only")
    parser.add_argument("--require", default="",
                        help="comma list of backends that must be usable on the device (else exit 1), e.g. triton,cpp")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="total time budget; benchmarks that would start after it are skipped (default "
                             f"{DEFAULT_BUDGET_S['cuda']:.0f} s on cuda, {DEFAULT_BUDGET_S['cpu']:.0f} s on cpu)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where the benchmarks write selftest_<device>.json (default: a scratch folder)")
    parser.add_argument("--plan", action="store_true",
                        help="print what would run, in order, and the time budget, then exit (runs nothing; "
                             "works without the device)")
    return parser


def _comma_list(text: str | None, choices: tuple[str, ...], what: str) -> list[str] | None:
    if text is None:
        return None
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise SystemExit(f"tscd.selftest: unknown {what} {', '.join(unknown)}; choose from {', '.join(choices)}")
    return names


def _header(device: str, tier: str, plan: str | None) -> None:
    import triton

    name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()}, {os.cpu_count()} cores"
    print(f"tscd self-test on {device} ({name}); torch {torch.__version__}, triton {triton.__version__}, "
          f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')}, {torch.get_num_threads()} CPU threads")
    if device == "cuda":
        print(f"CUDA devices: {torch.cuda.device_count()} (a second one is checked too when present)")
    sizes = {"quick": "the smallest sizes", "cpu": "CPU sizes (smaller than the GPU's)", "cuda": "GPU sizes"}
    print(f"checks at {sizes[tier]}; benchmarks: " + ("none" if plan is None else
          "GPU sizes" if plan == "full" else "quick, small sizes (only shows that they run)"))


def _print_plan(device: str, tier: str, plan: str | None, only: list[str], budget: float,
                results_dir: Path | None) -> None:
    """What ``main`` would run with these arguments, in order, without running anything."""
    checked = [c for c in checks.cases(tier) if c.op in only]
    dtypes = ", ".join(str(d).removeprefix("torch.") for d in checks.DTYPES)
    print(f"tscd self-test plan for --device {device}: budget {budget:.0f} s (benchmarks that would start after "
          f"it are skipped and listed)")
    print("1. load the C++ library (compiled on first use: about a minute on the CPU, minutes with CUDA)")
    print(f"2. {len(checked)} checks, each on every exact backend usable on {device} against the torch reference, "
          f"value and gradients, in {dtypes}:")
    for op in dict.fromkeys(c.op for c in checked):
        labels = [c.label for c in checked if c.op == op]
        print(f"   {op} ({', '.join(checks.exact_backends(op))}): {', '.join(labels)}")
    if plan is None:
        print("3. no benchmarks (--no-bench)")
        return
    selected = cases.select(plan, device, only)
    print(f"3. {len(selected)} benchmark cases of the {plan} tier, each checked before it is timed (a backend that "
          f"cannot run on {device} is skipped with its reason), in this order:")
    for op in dict.fromkeys(c.op for c in selected):
        for size in dict.fromkeys(c.size.label for c in selected if c.op == op):
            row = [c for c in selected if c.op == op and c.size.label == size]
            modes = ", ".join(dict.fromkeys(c.mode for c in row))
            print(f"   {op} {size} [{modes}]: {', '.join(dict.fromkeys(c.backend for c in row))}")
    where = f"in {results_dir}" if results_dir is not None else "in a scratch folder (--results-dir to choose)"
    print(f"4. results: selftest_{device}.json {where}, in pytest-benchmark's layout (bench/tables.py reads it), "
          f"and the headline table printed at the end, ready for the README")


def _load_extension(device: str) -> None:
    start = time.perf_counter()
    print("loading the C++ extension (its first use compiles it, minutes)...", flush=True)
    reason = backends.why_unusable("cpp", device)
    state = "usable" if reason is None else f"unusable: {reason}"
    print(f"  cpp on {device}: {state} ({time.perf_counter() - start:.1f} s)", flush=True)


def _availability(device: str, only: list[str]) -> None:
    print("\nbackends per op (exact ones are checked against the torch reference):")
    for op in only:
        parts = []
        for backend in backends.OP_BACKENDS[op]:
            reason = backends.why_unusable(backend, device)
            kind = "" if backends.is_exact(backend) else ", approximate: not checked"
            parts.append(f"{backend} ({'usable' if reason is None else reason}{kind})")
        print(f"  {op}: " + "; ".join(parts))


def _format_result(r: checks.Result) -> str:
    if r.error is None:
        measure = ""
    elif math.isnan(r.error):
        measure = "—"
    else:
        measure = f"{r.error:.2e} / {r.bound:.2e}"
    seconds = f"{r.seconds * 1e3:.1f} ms" if r.seconds is not None else ""
    check = "every check" if r.status == "unavailable" else r.check
    line = f"{r.op:<18} {r.backend:<10} {check:<38} {r.status:<11} {measure:<22} {seconds}"
    return line + (f"  [{r.detail}]" if r.detail and r.status != "ok" else "")


def _format_row(row) -> str:
    check = f"bench {row.mode} {row.size}"
    if math.isinf(row.median_ms):
        return f"{row.op:<18} {row.backend:<10} {check:<38} {'OOM':<11}"
    timing = f"{row.median_ms:.2f} ms ({row.p20_ms:.2f}–{row.p80_ms:.2f})"
    return f"{row.op:<18} {row.backend:<10} {check:<38} {'measured':<11} {f'peak {row.peak_mib:.1f} MiB':<22} {timing}"


def _run_benchmarks(device: str, plan: str, only: list[str], deadline: float) -> list[benchmarks.Outcome]:
    """Run the cases of tier ``plan`` of the ops in ``only`` while time is left, one line each."""
    outcomes = []
    for case in cases.select(plan, device, only):
        label = f"bench {case.mode} {case.size.label}"
        if time.perf_counter() > deadline:
            print(f"{case.op:<18} {case.backend:<10} {label:<38} skipped: {BUDGET_SPENT}", flush=True)
            outcomes.append(benchmarks.Outcome(case, None, 0.0, skipped=BUDGET_SPENT))
            continue
        outcome = benchmarks.run_case(case, device, quick=plan == "quick")
        outcomes.append(outcome)
        if outcome.row is not None:
            print(_format_row(outcome.row), flush=True)
        elif outcome.skipped:
            print(f"{case.op:<18} {case.backend:<10} {label:<38} {'skipped':<11} [{outcome.skipped}]", flush=True)
        else:
            print(f"{case.op:<18} {case.backend:<10} {label:<38} {'ERROR':<11} [{outcome.error}]", flush=True)
    return outcomes


def _print_headline(written: Path) -> None:
    """The headline table of this run's JSON (what the README's headline block would hold)."""
    rows, skipped, facts = tables.load([written])
    try:
        print(f"\nheadline table (python bench/tables.py {written} --write README.md docs/benchmarks.md):\n\n"
              f"{tables.make_table('headline', rows, skipped, facts)}\n", flush=True)
    except tables.TableError as exc:  # no op had both the reference and a fused backend timed
        print(f"\nno headline table: {exc}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the self-test; 0 when every check passed and every benchmark ran, else 1."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    device = args.device
    only = _comma_list(args.only, ONLY_CHOICES, "op") or list(ONLY_CHOICES)
    required = _comma_list(args.require or None, backends.BACKENDS, "backend") or []
    tier = "quick" if args.quick else device
    plan = None if args.no_bench else benchmarks.tier_for(device, args.quick)
    budget = args.budget_s if args.budget_s is not None else DEFAULT_BUDGET_S[device]
    if args.plan:
        _print_plan(device, tier, plan, only, budget, args.results_dir)
        return 0
    if device == "cuda" and not torch.cuda.is_available():
        print("tscd.selftest: --device cuda but no CUDA device is visible")
        return 1

    _header(device, tier, plan)
    _load_extension(device)
    checked_ops = [op for op in only if op in OPS]
    _availability(device, checked_ops)
    missing = [f"{b}: {reason}" for b in required if (reason := backends.why_unusable(b, device))]

    print(f"\n{_COLUMNS}\n{'-' * len(_COLUMNS)}", flush=True)
    shown_unavailable = set()

    def report(result: checks.Result) -> None:
        if result.status == "unavailable":  # once per (op, backend), not once per case
            if (result.op, result.backend) in shown_unavailable:
                return
            shown_unavailable.add((result.op, result.backend))
        print(_format_result(result), flush=True)

    results = checks.run_checks(device, tier, checked_ops, report=report)
    checks_done = time.perf_counter()
    print(f"checks: {checks_done - start:.1f} s elapsed", flush=True)

    bench_failures, bench_skipped = [], []
    if plan is not None:
        outcomes = _run_benchmarks(device, plan, only, start + budget)
        results_dir = args.results_dir or Path(tempfile.mkdtemp(prefix="tscd_selftest_"))
        results_dir.mkdir(parents=True, exist_ok=True)
        written = benchmarks.write_json(results_dir / f"selftest_{device}.json", outcomes, device, plan)
        crashes = "".join(f"{o.case.op} {o.case.id}:\n{o.log}\n" for o in outcomes if o.log)
        if crashes:
            (results_dir / "selftest_tracebacks.log").write_text(crashes)
        bench_failures = [f"{o.case.op} {o.case.id}: {o.error}" for o in outcomes if o.error]
        bench_skipped = [f"{o.case.op} {o.case.id}" for o in outcomes if o.skipped == BUDGET_SPENT]
        print(f"benchmarks: {time.perf_counter() - checks_done:.1f} s; results in {written}"
              + (", tracebacks in selftest_tracebacks.log beside it" if crashes else ""), flush=True)
        _print_headline(written)

    failed = [r for r in results if r.failed]
    passed = sum(r.status == "ok" for r in results)
    unavailable = sorted({(r.op, r.backend, r.detail) for r in results if r.status == "unavailable"})
    print(f"\n{passed} checks passed, {len(failed)} failed, {len(unavailable)} (op, backend) pairs unavailable")
    for op, backend, reason in unavailable:
        print(f"  unavailable: {op} on {backend}: {reason}")
    for r in failed:
        print(f"  {r.status}: {_format_result(r)}")
    for line in bench_failures:
        print(f"  benchmark failed: {line}")
    for line in bench_skipped:
        print(f"  benchmark skipped (time budget): {line}")
    for line in missing:
        print(f"  required backend unusable: {line}")
    elapsed = time.perf_counter() - start
    over = f" (over the {budget:.0f} s budget)" if elapsed > budget else f" (budget {budget:.0f} s)"
    ok = not failed and not bench_failures and not missing
    print(f"{'PASSED' if ok else 'FAILED'} in {elapsed:.1f} s{over}")
    return 0 if ok else 1
