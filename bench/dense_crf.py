"""Benchmark of dense CRF inference (method §10): exact sums, tscd's lattice and pydensecrf2.

One photograph (scikit-image's astronaut) resized to each size, K=21 coarse noisy unaries,
the settings of a CRF preset (``tscd.constants.CRF_PRESETS``, AFA's by default: 10
mean-field iterations), per image: time and peak memory of every backend that runs here —
the exact ones (triton only on a GPU; on the CPU up to ``--exact-max-pixels``), the
``lattice`` (CPU) and pydensecrf2 when installed (``tscd[crf]``) — and the argmax agreement
of each with the exact result (or, above the exact size limit, with pydensecrf2). Each call
sees new colours (the photograph shifted by 0.01·i, i cycling over 20 values), as each image
of an evaluation does: the lattice backend keeps the last 16 lattices it built, and timing
one image over and over would time that cache.

    python bench/dense_crf.py [--sizes 60x80,120x160,375x500] [--preset afa] [--exact-max-pixels 19200]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import coarse_probs, default_device, measure, photographs, timed_backends, write_results  # noqa: E402

from tscd.constants import CRF_PRESETS, DEFAULT_CRF_PRESET  # noqa: E402
from tscd.ops import dense_crf  # noqa: E402

K = 21
EXACT = ("triton", "cpp")


def inputs(h: int, w: int, device: str):
    """The astronaut at (h, w) and noisy coarse K=21 probabilities: images (1, 3, h, w), probs (1, K, h, w)."""
    return photographs(h, w).to(device), coarse_probs(1, K, h, w, 0.5).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="60x80,120x160,375x500")
    parser.add_argument("--preset", default=DEFAULT_CRF_PRESET, choices=tuple(CRF_PRESETS))
    parser.add_argument("--exact-max-pixels", type=int, default=120 * 160,
                        help="largest image (H·W) for the exact backends on the CPU, which take O(N²) time")
    args = parser.parse_args()
    device = default_device()
    preset = CRF_PRESETS[args.preset]
    backends = timed_backends(device, "dense_crf")
    rows, agreement = [], []
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.split("x"))
        label = f"{K}x{h}x{w}"
        images, probs = inputs(h, w, device)
        results, calls = {}, iter(range(10**9))
        for backend in backends:
            if backend == "torch" or (backend in EXACT and device == "cpu" and h * w > args.exact_max_pixels):
                continue

            def run(backend=backend):
                shifted = images + 0.01 * (next(calls) % 20)
                results[backend] = dense_crf(shifted, probs, num_iter=preset.num_iter, smooth=preset.smooth,
                                             appearance=preset.appearance, backend=backend)

            rows.append(measure("dense_crf", backend, f"{preset.num_iter} iters", label, run, device,
                                min_reps=2, budget_s=2.0))
        base = next((b for b in (*EXACT, "pydensecrf") if b in results), None)
        if base is None:
            continue
        for backend in results:
            if backend != base:
                agree = (results[backend].argmax(1) == results[base].argmax(1)).double().mean().item()
                agreement.append(f"| {label} | {backend} vs {base} | {agree:.4f} |")
        agree = (probs.argmax(1) == results[base].argmax(1)).double().mean().item()
        agreement.append(f"| {label} | unaries (no CRF) vs {base} | {agree:.4f} |")
    write_results("dense_crf", rows, f"dense CRF, K={K}, preset {args.preset} ({preset.num_iter} iterations), "
                                     "one image")
    print("\n| size | compared | argmax agreement |\n|---|---|---|")
    print("\n".join(agreement))


if __name__ == "__main__":
    main()
