"""The AFA family's loss step with tscd.compat: DenseEnergyLoss forward + backward at the
family's crop sizes (the loss runs at ×0.5: 160² for a 320 crop, 256² for a 512 crop),
B=2, K=21, σ_rgb 15, σ_xy 100, against the naive exact reference where it fits in memory.

    python bench/compat.py [--crops 128 192 320 512] [--reference-max 192]
"""
from __future__ import annotations

import argparse

import torch
from common import default_device, measure, write_results

from tscd.losses.dense_energy import LATTICE_SCALE, DenseEnergyLoss


def loss_step(crop: int, backend: str, device: str):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(2, 3, crop, crop, generator=g) * 255).to(device)
    logits = torch.randn(2, 21, crop, crop, generator=g).to(device).requires_grad_()
    rois = torch.ones(2, crop, crop, device=device)
    label = torch.randint(0, 21, (2, 1, crop, crop), generator=g).to(device)
    loss_fn = DenseEnergyLoss(1e-7 * LATTICE_SCALE, 15.0, 100.0, 0.5, backend=backend)

    def step():
        loss = loss_fn(images, logits.softmax(1), rois, label)
        loss.backward()
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--crops", type=int, nargs="+", default=[128, 192, 320, 512])
    parser.add_argument("--reference-max", type=int, default=192,
                        help="largest crop for the naive reference (it builds (B,5,N,N) tensors)")
    args = parser.parse_args()
    device = default_device()
    backends = ["torch", "triton" if device == "cuda" else "cpp"]
    rows = []
    for crop in args.crops:
        for backend in backends:
            if backend == "torch" and crop > args.reference_max:
                continue
            size = f"{crop}->{crop // 2}x{crop // 2}"
            rows.append(measure("compat_dense_energy", backend, "full", size, loss_step(crop, backend, device),
                                device, min_reps=2, budget_s=5.0))
    write_results("compat", rows, "tscd.compat.DenseEnergyLoss fwd+bwd, B=2, K=21 (crop -> loss size)")


if __name__ == "__main__":
    main()
