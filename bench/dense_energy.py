"""Benchmark of the exact dense energy loss (method §8) and of the bare Gaussian-kernel product.

B=2, K=21 at 64², 128², 160² (×0.5 of 128, 256, 320 crops): forward, forward+backward, and
the product W·X alone (K=21), for every fused backend that runs here, against the naive
torch reference where its N×N matrices fit in memory (it is skipped, and said so, elsewhere).
Usage: ``python bench/dense_energy.py [--sizes 64,128,160] [--ref-limit-gib 4]``.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import default_device, measure, timed_backends, write_results  # noqa: E402

from tscd.ops import dense_energy_loss  # noqa: E402
from tscd.ops.gaussian import bilateral_features, gaussian_product  # noqa: E402

B, K = 2, 21
SIGMA_RGB, SIGMA_XY = 15.0, 50.0


def inputs(side: int, device: str):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (B, 3, side, side), generator=g).float()
    probs = torch.softmax(torch.randn(B, K, side, side, generator=g), dim=1)
    roi = torch.rand(B, side, side, generator=g) > 0.1
    ignore = torch.rand(B, side, side, generator=g) < 0.2
    return images.to(device), probs.to(device), roi.to(device), ignore.to(device)


def reference_bytes(side: int) -> int:
    """Rough peak of the naive reference: about eight (B, N, N) float32 temporaries."""
    n = side * side
    return 8 * B * n * n * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,160")
    parser.add_argument("--ref-limit-gib", type=float, default=4.0,
                        help="skip the torch reference where it would need more memory than this")
    args = parser.parse_args()
    device = default_device()
    fused = [b for b in timed_backends(device, "dense_energy_loss") if b != "torch"]
    rows, skipped = [], []
    for side in (int(s) for s in args.sizes.split(",")):
        size = f"{B}x{K}x{side}x{side}"
        images, probs, roi, ignore = inputs(side, device)
        backends = list(fused)
        if reference_bytes(side) <= args.ref_limit_gib * 2**30:
            backends.insert(0, "torch")
        else:
            skipped.append(f"torch reference at {size}: needs about {reference_bytes(side) / 2**30:.0f} GiB")
        for backend in backends:
            def forward(backend=backend):
                with torch.no_grad():
                    return dense_energy_loss(images, probs, roi, ignore, sigma_rgb=SIGMA_RGB,
                                             sigma_xy=SIGMA_XY, backend=backend)

            def forward_backward(backend=backend):
                p = probs.detach().requires_grad_()
                dense_energy_loss(images, p, roi, ignore, sigma_rgb=SIGMA_RGB, sigma_xy=SIGMA_XY,
                                  backend=backend).backward()
                return p.grad

            rows.append(measure("dense_energy", backend, "fwd", size, forward, device))
            rows.append(measure("dense_energy", backend, "fwd+bwd", size, forward_backward, device))
            feats = bilateral_features(images, SIGMA_XY, SIGMA_RGB)
            x = probs.reshape(B, K, side * side)
            rows.append(measure("gaussian_product", backend, "W·X", size,
                                lambda backend=backend: gaussian_product(feats, x, backend=backend), device))
    write_results("dense_energy", rows, f"dense energy loss, B={B}, K={K}")
    for line in skipped:
        print(f"skipped: {line}")


if __name__ == "__main__":
    main()
