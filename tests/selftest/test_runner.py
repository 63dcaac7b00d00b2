"""``python -m tscd.selftest``: its CPU half passes here, in-process, at the smallest sizes; a
backend that computes wrong values, a crashing one and a missing required one make it fail; the
quick benchmarks run the package's cases into the folder asked for, check them before timing
them and measure peak memory in a child process; the package never reaches into bench/; the 2×
rule itself."""
import ast
import json
from pathlib import Path

import pytest
import torch

import tscd
import tscd.ops.varm as varm_module
from tests.utils import require
from tscd.ops import backends
from tscd.selftest import benchmarks, cases, checks, timing
from tscd.selftest.runner import main
from tscd.selftest.tolerance import error_and_bound

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_half_passes(capsys):
    assert main(["--device", "cpu", "--quick", "--no-bench"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and " 0 failed" in out
    for op in backends.OP_BACKENDS:
        assert f"\n{op:<18} cpp " in out or "cpp: the C++ extension is unavailable" in out


class _Wrong:
    """A backend's primitives with ``varm_propagate_`` and ``varm_refine_`` (the CPU's whole
    refinement in one call) writing 1 % too much."""

    def __init__(self, name):
        self._primitives = backends.primitives(name)

    def __getattr__(self, name):
        return getattr(self._primitives, name)

    def varm_propagate_(self, src, weights, dilations, out):
        self._primitives.varm_propagate_(src, weights, dilations, out)
        out.mul_(1.01)

    def varm_refine_(self, masks, *args):
        self._primitives.varm_refine_(masks, *args)
        masks.mul_(1.01)


def test_a_wrong_primitive_fails_the_run(monkeypatch, capsys):
    require("cpp", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # cpp alone: the interpreter is slow
    monkeypatch.setattr(varm_module, "primitives", _Wrong)
    assert main(["--device", "cpu", "--quick", "--no-bench", "--only", "varm_refine"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert any(line.startswith("varm_refine") and " cpp " in line and " FAIL " in line for line in out.splitlines())


def test_a_crashing_backend_is_an_error(monkeypatch):
    require("cpp", "cpu")

    def crash(*args, **kwargs):
        raise RuntimeError("kernel launch failed")

    case = next(c for c in checks.cases("quick") if c.op == "gaussian_product")
    monkeypatch.setattr("tscd.ops.gaussian.gaussian_product_unchecked", crash)
    results = checks.run_case(case, "cpu", dtypes=(torch.float32,), backends_to_check=["cpp"])
    assert [(r.status, r.detail) for r in results] == [("ERROR", "RuntimeError: kernel launch failed")]
    assert results[0].failed


def test_missing_backends_are_listed_and_can_be_required(monkeypatch, capsys):
    usable = backends.why_unusable
    monkeypatch.setattr(backends, "why_unusable", lambda b, d: "not built here" if b == "cpp" else usable(b, d))
    code = main(["--device", "cpu", "--quick", "--no-bench", "--only", "varm_affinity", "--require", "cpp"])
    out = capsys.readouterr().out
    assert code == 1
    assert "unavailable: varm_affinity on cpp: not built here" in out
    assert "required backend unusable: cpp: not built here" in out


def test_unknown_op_is_one_clear_line():
    with pytest.raises(SystemExit, match="unknown op scd; choose from gaussian_product, scd_loss"):
        main(["--device", "cpu", "--only", "scd", "--no-bench"])


def test_quick_benchmark_writes_to_its_folder_only(tmp_path, capsys):
    published = sorted((p.name, p.stat().st_mtime_ns) for p in (ROOT / "bench" / "results").glob("*"))
    assert main(["--device", "cpu", "--quick", "--only", "scd_loss", "--results-dir", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["selftest_cpu.json"]
    rows = json.loads((tmp_path / "selftest_cpu.json").read_text())["benchmarks"]
    assert {r["extra_info"]["backend"] for r in rows} >= {"torch"} and all(r["extra_info"]["op"] == "scd_loss"
                                                                           for r in rows)
    assert all(r["extra_info"]["check"].startswith("against the torch reference") for r in rows)
    out = capsys.readouterr().out
    assert "bench full N=1024" in out and "triton on the CPU runs only in its interpreter" in out
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (ROOT / "bench" / "results").glob("*")) == published


def test_a_benchmark_that_computes_wrong_values_fails_its_check(monkeypatch):
    require("cpp", "cpu")
    monkeypatch.setattr(varm_module, "primitives", _Wrong)
    case = next(c for c in cases.select("quick", "cpu", ["varm_refine"]) if c.backend == "cpp")
    outcome = benchmarks.run_case(case, "cpu", quick=True)
    assert outcome.row is None and outcome.error.startswith("check failed: masks: error")


def test_peak_memory_is_measured_in_a_child_of_its_own():
    megabytes = timing.peak_memory_mib(lambda n: torch.ones(n * 2**18).sum(), "cpu", setup=lambda: (64,))
    assert 63 <= megabytes <= 66
    with pytest.raises(RuntimeError, match="failed: ValueError: invalid literal"):
        timing.peak_memory_mib(lambda: int("no"), "cpu")


def test_cases_have_unique_ids_and_a_quick_size_per_op():
    for tier in cases.TIERS:
        for device in ("cpu", "cuda"):
            selected = cases.select(tier, device)
            assert len({(c.op, c.id) for c in selected}) == len(selected)
    assert {c.op for c in cases.select("quick", "cpu")} == set(cases.OPS)
    case = next(c for c in cases.select("quick", "cpu", ["scd_loss"]) if c.backend == "triton")
    assert "interpreter" in cases.skip_reason(case, "cpu", cases.CPU_REFERENCE_LIMIT_BYTES)


def test_the_package_never_imports_bench():
    for path in Path(tscd.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(n.split(".")[0] in ("bench", "common") for n in names), path


def test_benchmarks_after_the_budget_are_skipped(capsys):
    assert main(["--device", "cpu", "--quick", "--only", "scd_loss", "--budget-s", "0"]) == 0
    assert "skipped: the time budget is spent" in capsys.readouterr().out


def test_the_rule_is_twice_the_reference_error_plus_a_floor():
    ref64 = torch.tensor([1.0, -3.0], dtype=torch.float64)
    ref32 = torch.tensor([1.0 + 1e-3, -3.0])
    error, bound = error_and_bound(torch.tensor([1.0, -3.002]), ref32, ref64, torch.float32)
    assert error == pytest.approx(2e-3, rel=1e-3)
    assert bound == pytest.approx(2 * 1e-3 + 2e-6 * 3.0, rel=1e-3)
    assert error_and_bound(ref32, ref32, ref64, torch.float32, allowance=0.5)[1] == pytest.approx(bound + 0.5)


def test_long_sums_add_the_float32_floor_per_square_root_term():
    ref64 = torch.tensor([4.0], dtype=torch.float64)
    _, bound = error_and_bound(ref64.float(), ref64.float(), ref64, torch.bfloat16, terms=100)
    assert bound == pytest.approx(1.6e-2 * 4 + 2e-6 * 4 * 10)


def test_the_plan_says_what_would_run_without_running_it(monkeypatch, capsys):
    """``--plan`` works without the device (here: cuda on a CPU machine) and touches nothing."""
    monkeypatch.setattr(checks, "run_case", lambda *a, **k: pytest.fail("--plan ran a check"))
    monkeypatch.setattr(benchmarks, "run_case", lambda *a, **k: pytest.fail("--plan ran a benchmark"))
    assert main(["--device", "cuda", "--plan", "--only", "scd_loss,dense_crf"]) == 0
    out = capsys.readouterr().out
    assert "budget 480 s" in out and "checks" in out and "benchmark cases of the full tier" in out
    assert "scd_loss N=16384 [fwd, bwd, full]: torch, triton, cpp" in out and "dense_crf 21x375x500" in out
    assert "varm_refine" not in out and "selftest_cuda.json" in out
