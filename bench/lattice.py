"""Benchmark of the permutohedral-lattice backend (CPU) against the exact cpp kernels and pydensecrf2.

Two workloads on scikit-image photographs (astronaut, chelsea), one thread:
- ``W·S``: the Gaussian-kernel product with the bilateral features of the dense energy loss
  (σ_xy = 80, σ_rgb = 13), 2 images × K = 21 channels; the lattice is built on every call (new
  features each call, as in training), the exact cpp product where it takes seconds at most.
  The error table gives the lattice's ratio of sums ⟨S, L·S⟩ / ⟨S, W·S⟩ and its RMS shape error
  after that rescaling.
- ``dense_crf``: K = 21 coarse noisy unaries, 10 mean-field iterations, one image: lattice, cpp
  (up to ``--crf-exact-max`` pixels) and pydensecrf; the argmax agreement of each with pydensecrf,
  and the crossover (the smallest size where the lattice beats cpp, the threshold of ``auto``).

Writes bench/results/lattice_cpu.csv and .png. Usage:
``python bench/lattice.py [--sizes 64x64,128x128,256x256] [--crf-sizes 48x64,...]``.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import coarse_probs, measure, photographs, write_results  # noqa: E402

from tscd.ops import can_run, dense_crf, gaussian_product  # noqa: E402
from tscd.ops.gaussian import bilateral_features  # noqa: E402

K, ITERS = 21, 10


def product_rows(sizes, exact_max: int, errors: list[str]):
    rows = []
    for size in sizes:
        h, w = (int(v) for v in size.split("x"))
        label = f"2x{K}x{h}x{w}"
        feats = bilateral_features(photographs(h, w, ("astronaut", "chelsea")), 80.0, 13.0)
        s = coarse_probs(2, K, h, w, 0.0).reshape(2, K, h * w)
        # New features on every call (a shift of a few 1e-4 σ), so the lattice is rebuilt each time.
        shifts = itertools.count()

        def lattice(feats=feats, s=s, shifts=shifts):
            return gaussian_product(feats + (next(shifts) % 1000) * 1e-4, s, backend="lattice")

        rows.append(measure("W·S", "lattice", "fwd", label, lattice, "cpu"))
        if h * w <= exact_max:
            rows.append(measure("W·S", "cpp", "fwd", label, lambda: gaussian_product(feats, s, backend="cpp"), "cpu",
                                min_reps=2, budget_s=1.0))
            approx = gaussian_product(feats, s, backend="lattice").double()
            exact = gaussian_product(feats, s, backend="cpp").double()
            ratio = ((s * approx).sum() / (s * exact).sum()).item()
            shape = ((approx / ratio - exact).norm() / exact.norm()).item()
            errors.append(f"| {label} | {ratio:.3f} | {100 * shape:.1f} % |")
    return rows


def crf_rows(sizes, exact_max: int, agreement: list[str]):
    rows, crossover = [], None
    others = ["pydensecrf"] if can_run("pydensecrf", "cpu") else []
    for size in sizes:
        h, w = (int(v) for v in size.split("x"))
        label = f"{K}x{h}x{w}"
        images, probs = photographs(h, w, ("astronaut",)), coarse_probs(1, K, h, w, 0.5)
        results, timed = {}, {}
        for backend in ["lattice"] + (["cpp"] if h * w <= exact_max else []) + others:
            def run(backend=backend):
                results[backend] = dense_crf(images, probs, num_iter=ITERS, backend=backend)

            row = measure("dense_crf", backend, f"{ITERS} iters", label, run, "cpu", min_reps=2, budget_s=1.0)
            rows.append(row)
            timed[backend] = row.median_ms
        if crossover is None and "cpp" in timed and timed["lattice"] < timed["cpp"]:
            crossover = (label, h * w)
        for backend in [b for b in results if b != "pydensecrf"] if others else []:
            agree = (results[backend].argmax(1) == results["pydensecrf"].argmax(1)).double().mean().item()
            agreement.append(f"| {label} | {backend} vs pydensecrf | {agree:.4f} |")
    return rows, crossover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x64,128x128,256x256", help="W·S image sizes")
    parser.add_argument("--exact-max", type=int, default=128 * 128, help="largest W·S pixel count timed exactly")
    parser.add_argument("--crf-sizes", default="32x32,48x64,64x64,64x96,96x128,120x160,375x500")
    parser.add_argument("--crf-exact-max", type=int, default=120 * 160, help="largest CRF pixel count timed exactly")
    args = parser.parse_args()
    torch.set_num_threads(1)
    errors, agreement = [], []
    rows = product_rows(args.sizes.split(","), args.exact_max, errors)
    crf, crossover = crf_rows(args.crf_sizes.split(","), args.crf_exact_max, agreement)
    write_results("lattice", rows + crf, "permutohedral lattice vs exact cpp vs pydensecrf2, 1 thread")
    print("\n| W·S size | ratio of sums lattice / exact | RMS shape error |\n|---|---|---|")
    print("\n".join(errors))
    print("\n| CRF size | compared | argmax agreement |\n|---|---|---|")
    print("\n".join(agreement))
    print(f"\ncrossover (lattice faster than cpp, dense CRF): {crossover}")


if __name__ == "__main__":
    main()
