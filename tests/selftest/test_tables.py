"""The benchmark tables: the rate against the machine's peaks, the anchors, and the marked blocks of
the README and the docs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tscd.selftest import tables

ROOT = Path(__file__).resolve().parents[2]
PEAKS = {"gflops": 100.0, "gbs": 20.0}


def _row(op, size, mode, backend, median_s, peak_mib, threads=1, **info):
    return {"group": f"{op} {size}", "stats": {"median": median_s, "data": [median_s] * 3},
            "extra_info": {"op": op, "size": size, "mode": mode, "backend": backend, "peak_mib": peak_mib,
                           "device": "test CPU", "device_type": "cpu", "threads": threads, "items": 1,
                           "reference": backend == "torch", "exact": backend != "lattice", "headline": True,
                           **info}}


def _results(tmp_path, benchmarks, peaks=PEAKS, name="results.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"tier": "full", "benchmarks": benchmarks, "skipped": [], "peaks": peaks}))
    return path


def _scd_and_crf(tmp_path, peaks=PEAKS):
    return _results(tmp_path, [
        _row("scd_loss", "N=4096", "full", "torch", 0.5, 400.0, flops=2e9),
        _row("scd_loss", "N=4096", "full", "cpp", 0.04, 4.0, flops=2e9),
        _row("scd_loss", "N=4096", "full", "released", 0.8, 520.0, anchor=True, flops=2e9),
        _row("dense_crf", "21x375x500", "fwd", "lattice", 0.4, 100.0),
        _row("dense_crf", "21x375x500", "fwd", "pydensecrf", 0.8, 150.0, anchor=True),
    ], peaks)


def test_the_rate_is_the_work_per_second_against_the_measured_peak(tmp_path):
    rows, skipped, facts = tables.load([_scd_and_crf(tmp_path)])
    table = tables.make_table("scd_loss", rows, skipped, facts)
    cpp = next(line for line in table.splitlines() if "| cpp |" in line)
    assert "50 GFLOP/s (50 %)" in cpp  # 2e9 flops in 0.04 s against 100 GFLOP/s
    assert "100 GFLOP/s and 20 GB/s at 1 thread" in table
    crf = tables.make_table("dense_crf", rows, skipped, facts)
    assert "GFLOP/s" not in crf.split("\n\n")[0]  # approximations have no model of their work


def test_without_peaks_the_rate_has_no_share(tmp_path):
    rows, skipped, facts = tables.load([_scd_and_crf(tmp_path, peaks=None)])
    cpp = next(line for line in tables.make_table("scd_loss", rows, skipped, facts).splitlines() if "| cpp |" in line)
    assert "50 GFLOP/s |" in cpp


def test_the_anchors_table_puts_each_anchor_beside_tscds_fastest_backend(tmp_path):
    rows, skipped, facts = tables.load([_scd_and_crf(tmp_path)])
    table = tables.make_table("anchors", rows, skipped, facts)
    scd = next(line for line in table.splitlines() if line.startswith("| scd_loss"))
    cells = [c.strip() for c in scd.strip("|").split("|")]
    assert cells[3:8] == ["1", "released", "800", "520.0", "cpp"]
    assert cells[10:12] == ["20×", "1/130"]  # 0.8 s / 0.04 s; 520 MiB / 4 MiB
    crf = next(line for line in table.splitlines() if line.startswith("| dense_crf"))
    assert "| pydensecrf |" in crf and "| lattice |" in crf and "| 2× |" in crf
    headline = tables.make_table("headline", rows, skipped, facts)
    assert "released" not in headline  # the anchors are not tscd's fastest backend
    assert tables.ordered_tables(rows)[:2] == ["headline", "anchors"]


def test_the_anchors_table_needs_an_anchor(tmp_path):
    rows, skipped, facts = tables.load([_results(tmp_path, [_row("scd_loss", "N=4096", "full", "torch", 0.5, 1.0),
                                                            _row("scd_loss", "N=4096", "full", "cpp", 0.1, 1.0)])])
    with pytest.raises(tables.TableError, match="anchor"):
        tables.make_table("anchors", rows, skipped, facts)
    assert "anchors" not in tables.ordered_tables(rows)


@pytest.mark.parametrize("name", ["README.md", "docs/benchmarks.md"])
def test_every_marked_block_of_the_docs_names_a_table(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    names = re.findall(r"<!-- bench-table: (\S+) -->", text)
    assert names and set(names) <= set(tables.TABLES), sorted(set(names) - set(tables.TABLES))
    assert text.count("<!-- /bench-table -->") == len(names)


def test_runs_at_other_thread_counts_keep_their_rows_and_compare_among_themselves(tmp_path):
    one = _scd_and_crf(tmp_path)
    two = _results(tmp_path, [_row("scd_loss", "N=4096", "full", "cpp", 0.025, 5.0, threads=2, flops=2e9),
                              _row("scd_loss", "N=4096", "full", "released", 0.5, 520.0, threads=2, anchor=True,
                                   flops=2e9)],
                   peaks={"gflops": 200.0, "gbs": 30.0}, name="two.json")
    rows, skipped, facts = tables.load([one, two])
    assert len(rows) == 7
    scd = tables.make_table("scd_loss", rows, skipped, facts).splitlines()
    cpp2 = next(line for line in scd if "| cpp |" in line and line.endswith("| 2 |"))
    assert "| 20× | 1/104 |" in cpp2 and "80 GFLOP/s (40 %)" in cpp2  # against the 2-thread anchor and peak
    anchors = [line for line in tables.make_table("anchors", rows, skipped, facts).splitlines()
               if line.startswith("| scd_loss")]
    assert [line.split("|")[4].strip() for line in anchors] == ["1", "2"]
    headline = tables.make_table("headline", rows, skipped, facts)
    assert "| 40 |" in headline and "| 25 |" not in headline  # the 1-thread rows
