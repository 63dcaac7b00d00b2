"""The benchmark tables of the README and the docs from the JSON of ``pytest bench/`` or of ``python -m
tscd.selftest`` (``bench/tables.py`` is the command line; the self-test prints the headline table of
its own run).

Tables: one per op (NAME = the op: ``scd_loss``, ``varm_refine``, ``dense_energy_loss``,
``gaussian_product``, ``dense_crf``, ``compat_filter``, ``compat_dense_energy``, ``train_step``,
``eval``) with size, mode, backend, median and p20–p80 in ms, peak MiB, speed-up and memory against
the torch reference of the same size and mode and against the op's anchor (the released code,
pydensecrf2) where it ran, the rate (GFLOP/s or GB/s by the op's model of its
work, in % of the machine's peaks the run measured) where a model applies, and threads; and
``headline``: one row per op with a reference, at its headline size (else the largest size where the
reference ran), the reference against the fastest other exact backend; ``anchors``: one row per
op with an anchor, the anchor against tscd's fastest backend at the anchor's largest size. A caption line gives the
device, threads and tier; a note lists what was not timed and why. ``--write`` replaces, in each
file, the text between ``<!-- bench-table: NAME -->`` and ``<!-- /bench-table -->`` with table NAME
and leaves every other byte as it was; an unknown NAME, a table without rows or an unclosed marker
fails the run and writes no file. Several JSON files are merged, later ones replacing earlier rows
of the same case.
"""
from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from .cases import OPS

MARKER = re.compile(r"<!-- bench-table: (?P<name>[^\s>]+) -->(?P<body>.*?)<!-- /bench-table -->", re.DOTALL)
OPEN_MARKER = re.compile(r"<!-- bench-table: ")
CLOSE_MARKER = "<!-- /bench-table -->"
TABLES = ("headline", "anchors", *OPS)


class TableError(Exception):
    """A table that cannot be made or a Markdown file whose markers are wrong."""


def load(paths: list[Path]) -> tuple[dict, list[dict], dict]:
    """Rows keyed by (op, size, mode, backend, threads), each with its run's ``peaks``, the skipped
    cases, and the caption facts of the last run."""
    rows, skipped, facts = {}, {}, {}
    for path in paths:
        data = json.loads(path.read_text())
        try:
            for bench in data.get("benchmarks", []):
                info = bench["extra_info"]
                key = (info["op"], info["size"], info["mode"], info["backend"], info["threads"])
                rows[key] = {**info, "stats": bench["stats"], "peaks": data.get("peaks")}
            for skip in data.get("skipped", []):
                skipped[(skip["op"], skip["size"], skip["mode"], skip["backend"])] = skip
        except (KeyError, TypeError, AttributeError) as exc:
            raise TableError(f"{path}: not the JSON of the benchmark suite ({type(exc).__name__}: {exc})") from None
        facts = {"tier": data.get("tier", "?"), "datetime": data.get("datetime", "")[:10]}
    return rows, list(skipped.values()), facts


def _order(rows: dict) -> list[tuple]:
    """The rows' keys in the order of the cases (sizes, modes, backends as tscd.selftest.cases lists them),
    then by thread count."""
    position = {}
    for name, op in OPS.items():
        for size in op.sizes:
            for mode in op.modes:
                for backend in op.backends:
                    position[(name, size.label, mode, backend)] = len(position)
    return sorted(rows, key=lambda k: (position.get(k[:4], len(position)), k))


def _same_case(a: tuple, b: tuple) -> bool:
    """Whether two row keys share size, mode and thread count (their rows compare)."""
    return (a[1], a[2], a[4]) == (b[1], b[2], b[4])


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _spread(stats: dict) -> str:
    """p20–p80 in ms: from the raw times when the JSON has them, else from its p20/p80."""
    if stats.get("data"):
        data = stats["data"]
        q = statistics.quantiles(data, n=10, method="inclusive") if len(data) > 1 else data * 9
        low, high = q[1], q[7]
    elif "p20" in stats:
        low, high = stats["p20"], stats["p80"]
    else:
        return "–"
    return f"{_ms(low)}–{_ms(high)}"


def _speed_up(row: dict, ref: dict | None) -> str:
    if ref is None or row is ref:
        return "–"
    return f"{ref['stats']['median'] / row['stats']['median']:.3g}×"


def _memory(row: dict, ref: dict | None) -> str:
    """The row's peak against the reference's: ``1/r`` when r times smaller, ``r×`` when larger."""
    if ref is None or row is ref or row["peak_mib"] <= 0 or ref["peak_mib"] <= 0:
        return "–"
    ratio = ref["peak_mib"] / row["peak_mib"]
    return f"1/{ratio:.3g}" if ratio >= 1 else f"{1 / ratio:.3g}×"


def _rate(row: dict) -> str:
    """The row's achieved rate by its op's model of the work, GFLOP/s or GB/s, with its share of the
    machine's peak its run measured (``–`` where no model applies)."""
    peaks = row.get("peaks")
    for key, unit, peak_key in (("flops", "GFLOP/s", "gflops"), ("bytes", "GB/s", "gbs")):
        if row.get(key):
            rate = row[key] / row["stats"]["median"] / 1e9
            share = f" ({100 * rate / peaks[peak_key]:.0f} %)" if peaks else ""
            return f"{rate:.3g} {unit}{share}"
    return "–"


def _has_rates(rows: list[dict]) -> bool:
    return any(r.get("flops") or r.get("bytes") for r in rows)


def _caption(rows: list[dict], facts: dict) -> str:
    devices = sorted({f"{r['device']} ({r['device_type']})" for r in rows})
    threads = sorted({r["threads"] for r in rows})
    when = f", {facts['datetime']}" if facts.get("datetime") else ""
    peaks = {(r["threads"], r["peaks"]["gflops"], r["peaks"]["gbs"]) for r in rows if r.get("peaks")}
    measured = "; ".join(f"{gflops:.0f} GFLOP/s and {gbs:.0f} GB/s at {threads} thread{'s' * (threads > 1)}"
                         for threads, gflops, gbs in sorted(peaks))
    roofline = (f" Rate: the op's work (docs/benchmarks.md, Roofline) per second, in % of the machine's peaks "
                f"measured in the run ({measured})." if peaks and _has_rates(rows) else "")
    return (f"*{', '.join(devices)}, {'/'.join(map(str, threads))} thread{'s' if threads != [1] else ''}, "
            f"{facts.get('tier', '?')} tier{when}; medians (p20–p80) of repeated calls, peak = extra memory "
            f"of one call.{roofline}*")


def _not_timed(skipped: list[dict], op: str) -> str:
    """One line per (backend, reason) of the op's skipped cases, with their sizes."""
    reasons = defaultdict(list)
    for skip in skipped:
        if skip["op"] == op and skip["size"] not in reasons[(skip["backend"], skip["reason"])]:
            reasons[(skip["backend"], skip["reason"])].append(skip["size"])
    return "\n".join(f"Not timed: {backend} at {', '.join(sizes)}: {reason}."
                     for (backend, reason), sizes in reasons.items())


def op_table(op: str, rows: dict, skipped: list[dict], facts: dict) -> str:
    """The Markdown table of one op (raises :class:`TableError` without rows)."""
    keys = [k for k in _order(rows) if k[0] == op]
    if not keys:
        raise TableError(f"no results for {op!r} in the JSON")
    per_item = any(rows[k].get("items", 1) > 1 for k in keys)
    versus = any(rows[k].get("reference") for k in keys)
    anchor = next((rows[k]["backend"] for k in keys if rows[k].get("anchor")), None)
    rates = _has_rates([rows[k] for k in keys])
    head = ["size", "mode", "backend", "median ms", "p20–p80 ms", *(["s/image"] if per_item else []), "peak MiB",
            *(["speed-up vs torch", "memory vs torch"] if versus else []),
            *([f"speed-up vs {anchor}", f"memory vs {anchor}"] if anchor else []), *(["rate"] if rates else []),
            "threads"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        row = rows[key]
        ref = next((rows[k] for k in keys if _same_case(k, key) and rows[k].get("reference")), None)
        outside = next((rows[k] for k in keys if _same_case(k, key) and rows[k].get("anchor")), None)
        cells = [row["size"], row["mode"], row["backend"], _ms(row["stats"]["median"]), _spread(row["stats"]),
                 *([f"{row['stats']['median'] / row.get('items', 1):.3g}"] if per_item else []),
                 f"{row['peak_mib']:.1f}", *([_speed_up(row, ref), _memory(row, ref)] if versus else []),
                 *([_speed_up(row, outside), _memory(row, outside)] if anchor else []),
                 *([_rate(row)] if rates else []), str(row["threads"])]
        lines.append("| " + " | ".join(cells) + " |")
    notes = _not_timed(skipped, op)
    return "\n".join(lines) + "\n\n" + _caption([rows[k] for k in keys], facts) + (f"\n{notes}" if notes else "")


def headline_table(rows: dict, facts: dict) -> str:
    """One row per op with a reference: the reference against the fastest other exact backend (the
    fastest approximation where no other exact one ran), at the op's smallest thread count."""
    lines = ["| op | size | mode | torch ms | fastest fused | its ms | speed-up | torch MiB | its MiB | memory "
             "| its rate |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    shown = []
    for op in OPS:
        pairs = []  # (reference row, fastest other row) per (size, mode), in the cases' order
        keys = [k for k in _order(rows) if k[0] == op]
        keys = [k for k in keys if k[4] == min(key[4] for key in keys)]
        for size, mode in dict.fromkeys(k[1:3] for k in keys):
            group = [rows[k] for k in keys if k[1:3] == (size, mode)]
            ref = next((r for r in group if r.get("reference")), None)
            others = [r for r in group if not r.get("reference") and not r.get("anchor")]
            others = [r for r in others if r.get("exact", True)] or others
            if ref is not None and others:
                pairs.append((ref, min(others, key=lambda r: r["stats"]["median"])))
        if not pairs:
            continue
        headline = [p for p in pairs if p[0].get("headline")]
        candidates = headline or [p for p in pairs if p[0]["size"] == pairs[-1][0]["size"]]
        ref, best = next((p for p in candidates if p[0]["mode"] == "full"), candidates[0])
        shown += [ref, best]
        lines.append(f"| {op} | {ref['size']} | {ref['mode']} | {_ms(ref['stats']['median'])} | {best['backend']} | "
                     f"{_ms(best['stats']['median'])} | {_speed_up(best, ref)} | {ref['peak_mib']:.1f} | "
                     f"{best['peak_mib']:.1f} | {_memory(best, ref)} | {_rate(best)} |")
    if not shown:
        raise TableError("no op in the JSON has both a reference row and another backend's")
    return "\n".join(lines) + "\n\n" + _caption(shown, facts)


def anchors_table(rows: dict, facts: dict) -> str:
    """One row per op and thread count with an outside implementation (the released code,
    pydensecrf2): at the largest size where it ran (its ``full`` mode where it has one), against
    tscd's fastest backend there."""
    lines = ["| op | size | mode | threads | anchor | its ms | its MiB | tscd | ms | MiB | speed-up | memory | rate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    shown = []
    for op in OPS:
        keys = [k for k in _order(rows) if k[0] == op]
        for threads in sorted({k[4] for k in keys}):
            anchors = [rows[k] for k in keys if k[4] == threads and rows[k].get("anchor")]
            if not anchors:
                continue
            largest = [r for r in anchors if r["size"] == anchors[-1]["size"]]
            anchor = next((r for r in largest if r["mode"] == "full"), largest[0])
            tscd = [rows[k] for k in keys if k[1:3] == (anchor["size"], anchor["mode"]) and k[4] == threads
                    and not rows[k].get("anchor") and not rows[k].get("reference")]
            if not tscd:
                continue
            best = min(tscd, key=lambda r: r["stats"]["median"])
            shown += [anchor, best]
            lines.append(f"| {op} | {anchor['size']} | {anchor['mode']} | {threads} | {anchor['backend']} | "
                         f"{_ms(anchor['stats']['median'])} | {anchor['peak_mib']:.1f} | {best['backend']} | "
                         f"{_ms(best['stats']['median'])} | {best['peak_mib']:.1f} | {_speed_up(best, anchor)} | "
                         f"{_memory(best, anchor)} | {_rate(best)} |")
    if not shown:
        raise TableError("no op in the JSON has both an anchor row (the released code, pydensecrf2) and tscd's")
    return "\n".join(lines) + "\n\n" + _caption(shown, facts)


def make_table(name: str, rows: dict, skipped: list[dict], facts: dict) -> str:
    if name not in TABLES:
        raise TableError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    if name == "headline":
        return headline_table(rows, facts)
    return anchors_table(rows, facts) if name == "anchors" else op_table(name, rows, skipped, facts)


def rewrite(text: str, path: Path, rows: dict, skipped: list[dict], facts: dict) -> str:
    """``text`` with the body of every marked block replaced by its table; nothing else changes."""
    opened = [m.start() for m in OPEN_MARKER.finditer(text)]
    blocks = list(MARKER.finditer(text))
    if len(opened) != len(blocks) or text.count(CLOSE_MARKER) != len(blocks):
        raise TableError(f"{path}: {len(opened)} opening and {text.count(CLOSE_MARKER)} closing bench-table "
                         f"markers make {len(blocks)} blocks (unclosed or nested markers)")
    out, end = [], 0
    for block in blocks:
        try:
            table = make_table(block["name"], rows, skipped, facts)
        except TableError as exc:
            line = text.count("\n", 0, block.start()) + 1
            raise TableError(f"{path}:{line}: {exc}") from None
        out += [text[end:block.start("body")], "\n", table, "\n"]
        end = block.end("body")
    return "".join(out) + text[end:]


def ordered_tables(rows: dict) -> list[str]:
    """The names of the tables ``rows`` fill: ``headline``, ``anchors`` (where an anchor ran), then each
    op in the order of the cases."""
    anchors = ["anchors"] if any(row.get("anchor") for row in rows.values()) else []
    return ["headline", *anchors, *dict.fromkeys(key[0] for key in _order(rows))]
