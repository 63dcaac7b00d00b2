"""Benchmark of dense CRF inference (method §10): exact tiled sums against pydensecrf2.

One photograph (scikit-image's astronaut) resized to each size, K=21 coarse noisy unaries,
10 mean-field iterations, per image: time and peak memory of every exact backend that runs
here (triton only on a GPU) and of pydensecrf2 when installed, plus the argmax agreement
of each with the exact result. Usage: ``python bench/dense_crf.py [--sizes 60x80,120x160]``.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import default_device, measure, timed_backends, write_results  # noqa: E402

from tscd.ops import can_run, dense_crf  # noqa: E402

K, ITERS = 21, 10


def inputs(h: int, w: int, device: str):
    from skimage import data

    img = torch.from_numpy(np.ascontiguousarray(data.astronaut())).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False).round()
    g = torch.Generator().manual_seed(0)
    logits = F.interpolate(torch.randn(1, K, max(1, h // 8), max(1, w // 8), generator=g) * 3, size=(h, w),
                           mode="bilinear", align_corners=False)
    probs = torch.softmax(logits + 0.5 * torch.randn(1, K, h, w, generator=g), dim=1)
    return img.to(device), probs.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="60x80,120x160")
    args = parser.parse_args()
    device = default_device()
    exact = [b for b in timed_backends(device, "gaussian_product") if b != "torch"]  # the exact CRF's product
    others = ["pydensecrf"] if can_run("pydensecrf", "cpu") else []
    rows, agreement = [], []
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.split("x"))
        label = f"{K}x{h}x{w}"
        images, probs = inputs(h, w, device)
        results = {}
        for backend in exact + others:
            def run(backend=backend):
                results[backend] = dense_crf(images, probs, num_iter=ITERS, backend=backend)

            rows.append(measure("dense_crf", backend, f"{ITERS} iters", label, run, device, min_reps=2, budget_s=1.0))
        base = results[exact[0]].argmax(1)
        for backend in exact[1:] + others:
            agree = (results[backend].argmax(1) == base).double().mean().item()
            agreement.append(f"| {label} | {backend} vs {exact[0]} | {agree:.4f} |")
        agree = (probs.argmax(1) == base).double().mean().item()
        agreement.append(f"| {label} | unaries (no CRF) vs {exact[0]} | {agree:.4f} |")
    write_results("dense_crf", rows, f"dense CRF, K={K}, {ITERS} iterations, one image")
    print("\n| size | compared | argmax agreement |\n|---|---|---|")
    print("\n".join(agreement))


if __name__ == "__main__":
    main()
