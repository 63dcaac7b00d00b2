"""The AFA family's drop-ins in tscd.compat, on one photograph (scikit-image's astronaut):

- ``compat_filter``: ``bilateralfilter.bilateralfilter_batch`` (W·S forward), B=2, K=21,
  σ_rgb 15, σ_xy 50 (the family's 100 at its ×0.5 loss scale), on the lattice (the default)
  and as the exact sum (``use_exact_sum(True)``);
- ``compat_dense_energy``: ``DenseEnergyLoss(1e-7, 15, 100, 0.5)`` forward + backward at the
  family's crops (ToCo 448 → a 224² loss, TSCD 512 → 256²), B=2, K=21, with the family's
  gradient and the true one, on the lattice and (for sums over images of at most
  ``--exact-max`` pixels a side) with the exact sum, which takes O(N²) time on the CPU.

The lattice rows are CPU-only; on CUDA the exact sum is what tscd.compat runs. The released
SWIG module is not built here (see the README for its side-by-side figures). Every call sees
new colours (the photograph shifted by 0.01·i, i cycling over :data:`VARIANTS`), as every
training step does: the lattice backend keeps the last 16 lattices it built, and timing one
image over and over would time that cache.

    python bench/compat.py [--sizes 64 128 256] [--crops 128 448 512] [--exact-max 64]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import default_device, measure, photographs, write_results  # noqa: E402

from tscd.compat import DenseEnergyLoss, bilateralfilter  # noqa: E402
from tscd.ops import can_run  # noqa: E402

B, K = 2, 21
VARIANTS = 20  # more than the lattice cache holds


def cycled(make):
    """A call that runs ``make(i)()`` for i = 0, 1, …, VARIANTS − 1, 0, … (closures built up front)."""
    calls = [make(i) for i in range(VARIANTS)]
    count = iter(range(10**9))
    return lambda: calls[next(count) % VARIANTS]()


def photo_batch(size: int, device: str = "cpu"):
    """Images (B, 3, size, size) in 0–255 (the astronaut and its mirror image) and smooth class
    probabilities (B, K, size, size)."""
    img = photographs(size, size)
    images = torch.cat((img, img.flip(-1)))
    g = torch.Generator().manual_seed(0)
    logits = F.interpolate(torch.randn(B, K, max(1, size // 16), max(1, size // 16), generator=g) * 3,
                           size=(size, size), mode="bilinear", align_corners=False)
    return images.to(device), logits.to(device)


def filter_call(size: int, exact: bool):
    images, logits = photo_batch(size)
    values = logits.softmax(1).numpy().reshape(-1).copy()
    out = np.zeros_like(values)

    def make(i):
        image_arr = (images + 0.01 * i).numpy().reshape(-1).copy()

        def run():
            previous = bilateralfilter.use_exact_sum(exact)
            try:
                bilateralfilter.bilateralfilter_batch(image_arr, values, out, B, K, size, size, 15.0, 50.0)
            finally:
                bilateralfilter.use_exact_sum(previous)

        return run

    return cycled(make)


def loss_step(crop: int, gradient: str, exact: bool, device: str):
    images, logits = photo_batch(crop, device)
    logits.requires_grad_()
    rois = torch.zeros(B, crop, crop, device=device)
    rois[:, : crop - crop // 8, crop // 16:] = 1  # a crop box
    label = torch.randint(0, K, (B, 1, crop, crop), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    label[:, :, : crop // 3] = 255
    label = label.to(device)
    loss_fn = DenseEnergyLoss(1e-7, 15.0, 100.0, 0.5, gradient=gradient, exact_sum=exact)

    def make(i):
        shifted = images + 0.01 * i

        def step():
            logits.grad = None
            loss = loss_fn(shifted, logits.softmax(1), rois, label)
            loss.backward()
            return loss

        return step

    return cycled(make)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="W·S sizes (pixels a side)")
    parser.add_argument("--crops", type=int, nargs="+", default=[128, 448, 512], help="loss crops (loss at ×0.5)")
    parser.add_argument("--exact-max", type=int, default=64,
                        help="on the CPU, the largest summed image (pixels a side) for the exact sum")
    args = parser.parse_args()
    device = default_device()
    sums = (["lattice"] if device == "cpu" and can_run("lattice", "cpu") else []) + ["exact"]
    rows = []
    if device == "cpu":
        for size in args.sizes:
            for name in sums:
                if name == "exact" and size > args.exact_max:
                    continue
                rows.append(measure("compat_filter", name, "fwd", f"{B}x{K}x{size}x{size}",
                                    filter_call(size, name == "exact"), device, min_reps=3, budget_s=3.0))
    for crop in args.crops:
        for name in sums:
            if name == "exact" and crop // 2 > args.exact_max and device == "cpu":
                continue
            for gradient in ("family", "true"):
                rows.append(measure("compat_dense_energy", name, gradient, f"{crop}->{crop // 2}x{crop // 2}",
                                    loss_step(crop, gradient, name == "exact", device), device,
                                    min_reps=2, budget_s=3.0))
    write_results("compat", rows, f"tscd.compat, B={B}, K={K}: W·S forward; DenseEnergyLoss fwd+bwd (crop -> loss)")


if __name__ == "__main__":
    main()
