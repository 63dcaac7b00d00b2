"""Shared code of the benchmark scripts (one script per op in bench/).

Each script builds rows ``Row(op, backend, mode, size, ...)`` with :func:`measure` and
hands them to :func:`write_results`, which writes ``bench/results/<op>_<device>.csv``, a PNG plot
of time and peak memory against size, and prints a Markdown table for the README. The measuring
itself (time: ``triton.testing.do_bench`` on CUDA, a wall-clock loop on CPU; peak extra memory)
lives in :mod:`tscd.selftest.timing`, which ``python -m tscd.selftest`` shares.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tscd.selftest.timing import FIELDS, RESULTS, Row, device_name, measure, peak_memory_mib, time_ms, write_csv

__all__ = ["FIELDS", "RESULTS", "Row", "default_device", "device_name", "markdown_table", "measure",
           "peak_memory_mib", "time_ms", "timed_backends", "write_results"]


def write_results(name: str, rows: list[Row], title: str) -> None:
    """CSV + PNG (time and peak memory against size, one line per backend and mode) + table."""
    csv_path = write_csv(name, rows)
    if importlib.util.find_spec("matplotlib") is None:
        print(f"\nwrote {csv_path} (no plot: matplotlib is not installed, pip install tscd[plot])\n")
    else:
        _plot(csv_path.with_suffix(".png"), rows, title)
        print(f"\nwrote {csv_path} and its .png\n")
    print(markdown_table(rows))


def markdown_table(rows: list[Row]) -> str:
    """Time and peak memory side by side with the torch reference of the same (mode, size)."""
    ref = {(r.mode, r.size): r for r in rows if r.backend == "torch"}
    lines = [
        "| size | mode | backend | median ms (p20–p80) | peak MiB | speed-up vs torch | memory vs torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = ref.get((r.mode, r.size))
        speed = f"{base.median_ms / r.median_ms:.1f}×" if base and base.median_ms != float("inf") else "–"
        mem = f"{r.peak_mib / base.peak_mib:.3f}×" if base and base.peak_mib not in (0.0, float("inf")) else "–"
        timing = "OOM" if r.median_ms == float("inf") else f"{r.median_ms:.1f} ({r.p20_ms:.1f}–{r.p80_ms:.1f})"
        lines.append(f"| {r.size} | {r.mode} | {r.backend} | {timing} | {r.peak_mib:.1f} | {speed} | {mem} |")
    return "\n".join(lines)


def _plot(path: Path, rows: list[Row], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    series: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        series.setdefault((r.backend, r.mode), []).append(r)
    for (backend, mode), rs in series.items():
        sizes = [r.size for r in rs]
        ax_t.plot(sizes, [r.median_ms for r in rs], marker="o", label=f"{backend} {mode}")
        ax_m.plot(sizes, [r.peak_mib for r in rs], marker="o", label=f"{backend} {mode}")
    for ax, label, values in ((ax_t, "median time (ms)", [r.median_ms for r in rows]),
                              (ax_m, "peak extra memory (MiB)", [r.peak_mib for r in rows])):
        if any(0 < v < float("inf") for v in values):  # a log axis needs a positive value (tiny runs may peak at 0 MiB)
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.set_xlabel("size")
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle(f"{title} — {rows[0].device if rows else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_device() -> str:
    return os.environ.get("TSCD_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")


def timed_backends(device: str, op: str) -> list[str]:
    """The backends of ``op`` worth timing on ``device``: all available ones, except Triton on the
    CPU, where it runs only in its interpreter, which is not a timing."""
    from tscd.ops import available_backends

    return [b for b in available_backends(device, op) if device == "cuda" or b != "triton"]


def photographs(h: int, w: int, names=("astronaut",)) -> torch.Tensor:
    """scikit-image's photographs ``names`` resized to (h, w): (len(names), 3, h, w) float32 in 0–255."""
    from skimage import data

    imgs = [torch.from_numpy(np.ascontiguousarray(getattr(data, n)()[..., :3])).permute(2, 0, 1)[None].float()
            for n in names]
    return torch.cat([F.interpolate(i, size=(h, w), mode="bilinear", align_corners=False).round() for i in imgs])


def coarse_probs(batch: int, classes: int, h: int, w: int, noise: float) -> torch.Tensor:
    """Class probabilities (batch, classes, h, w) like a segmenter's: random logits at 1/8 of the
    size upsampled bilinearly, plus ``noise`` per pixel; seeded (the same every call)."""
    g = torch.Generator().manual_seed(0)
    logits = F.interpolate(torch.randn(batch, classes, max(1, h // 8), max(1, w // 8), generator=g) * 3, size=(h, w),
                           mode="bilinear", align_corners=False)
    return torch.softmax(logits + noise * torch.randn(batch, classes, h, w, generator=g), dim=1)
