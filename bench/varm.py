"""Benchmark of tscd.ops.varm_refine (method §4, 10 iterations, default dilations).

Sizes B×K×H×W: 2×21×256×256 (the ×0.5 size of a 512 crop), 2×21×160×160 (of a 320 crop)
and 2×21×64×64; masks given at the image size, both modes. On CPU: torch reference vs cpp
(Triton runs on CPU only under its interpreter, far too slow to time: it is timed on CUDA
only). Usage: ``python bench/varm.py [--sizes 64 160 256] [--modes varm par] [--threads 1]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_device, measure, timed_backends, write_results  # noqa: E402

from tscd.ops import varm_refine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 160, 256])
    parser.add_argument("--modes", nargs="+", default=["varm", "par"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = default_device()
    backends = timed_backends(device, "varm_refine")
    rows = []
    for size in args.sizes:
        g = torch.Generator().manual_seed(0)
        images = torch.rand(args.batch, 3, size, size, generator=g).to(device)
        masks = torch.rand(args.batch, args.classes, size, size, generator=g).softmax(1).to(device)
        label = f"{args.batch}x{args.classes}x{size}x{size}"
        for mode in args.modes:
            for backend in backends:
                # The reference takes tens of seconds per call on CPU at the large sizes.
                reps = dict(min_reps=1, budget_s=0.0) if backend == "torch" and device == "cpu" else {}
                rows.append(measure(
                    "varm_refine", backend, mode, label,
                    lambda: varm_refine(images, masks, mode=mode, backend=backend), device, **reps,
                ))
    write_results("varm", rows, "varm_refine, 10 iterations, 48 neighbours")


if __name__ == "__main__":
    main()
