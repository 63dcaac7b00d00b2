"""The README's and the docs' benchmark tables from the JSON of ``pytest bench/`` (or of
``python -m tscd.selftest``); the tables themselves are made by :mod:`tscd.selftest.tables`.

    python bench/tables.py bench/results/full_cpu.json                      # print every table
    python bench/tables.py bench/results/full_cpu.json --write README.md docs/benchmarks.md

``--write`` replaces, in each file, the text between ``<!-- bench-table: NAME -->`` and
``<!-- /bench-table -->`` with table NAME and leaves every other byte as it was; an unknown NAME, a
table without rows or an unclosed marker fails the run and writes no file. Several JSON files are
merged, later ones replacing earlier rows of the same case.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tscd.selftest.tables import MARKER, TableError, load, make_table, ordered_tables, rewrite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path, help="results of pytest bench/ (bench/results/*.json)")
    parser.add_argument("--write", nargs="+", type=Path, default=[], metavar="MARKDOWN",
                        help="rewrite the marked blocks of these files instead of printing every table")
    args = parser.parse_args(argv)
    try:
        rows, skipped, facts = load(args.json)
        if not args.write:
            print("\n\n".join(f"### {name}\n\n{make_table(name, rows, skipped, facts)}"
                                for name in ordered_tables(rows)))
            return 0
        rewritten = {}
        for path in args.write:
            with open(path, encoding="utf-8", newline="") as f:
                rewritten[path] = rewrite(f.read(), path, rows, skipped, facts)
    except (TableError, OSError, ValueError) as exc:  # ValueError: JSON that does not parse
        print(f"bench/tables.py: {exc}", file=sys.stderr)
        return 1
    for path, text in rewritten.items():
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        count = len(MARKER.findall(text))
        print(f"rewrote {count} table{'s' if count != 1 else ''} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
