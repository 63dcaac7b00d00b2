"""The released code as the benchmarks' anchor: found by TSCD_RELEASED, loaded by path, or skipped
with the reason."""
from __future__ import annotations

import sys

import pytest

from tscd.selftest import cases, released


@pytest.fixture(autouse=True)
def fresh_modules():
    released.module.cache_clear()
    yield
    released.module.cache_clear()


def test_without_the_variable_the_rows_say_how_to_get_them(monkeypatch):
    monkeypatch.delenv(released.ENV, raising=False)
    reason = released.why_missing("corrloss")
    assert released.ENV in reason and "SCD-AAAI2023" in reason
    case = next(c for c in cases.cases(["scd_loss"]) if c.backend == "released")
    assert cases.skip_reason(case, "cpu", 2**40).endswith(reason)


def test_a_folder_without_the_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv(released.ENV, str(tmp_path))
    assert released.why_missing("VARM") == f"{released.ENV}={tmp_path} has no network/VARM.py"


def test_a_module_that_fails_to_load_says_why(monkeypatch, tmp_path):
    (tmp_path / "wrapper" / "bilateralfilter").mkdir(parents=True)
    (tmp_path / "wrapper" / "bilateralfilter" / "bilateralfilter.py").write_text("import _bilateralfilter\n")
    monkeypatch.setenv(released.ENV, str(tmp_path))
    reason = released.why_missing("bilateralfilter")
    assert "does not load" in reason and "_bilateralfilter" in reason


def test_modules_load_by_path_and_leave_sys_path_as_it_was(monkeypatch, tmp_path):
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "helper_of_corrloss.py").write_text("VALUE = 3\n")
    (tmp_path / "utils" / "corrloss.py").write_text("from helper_of_corrloss import VALUE\n")
    monkeypatch.setenv(released.ENV, str(tmp_path))
    before = list(sys.path)
    assert released.why_missing("corrloss") is None
    assert released.module("corrloss").VALUE == 3
    assert sys.path == before
    assert "corrloss" not in sys.modules  # loaded under a name of its own


def test_only_varm_has_a_released_par():
    backends = {(c.mode, c.backend) for c in cases.cases(["varm_refine"])}
    assert ("varm", "released") in backends and ("par", "released") not in backends
