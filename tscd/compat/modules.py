"""The family's ``DenseEnergyLoss``, ``PAR`` and a ``VARM`` with the same constructor."""
from __future__ import annotations

from tscd.losses.dense_energy import LATTICE_SCALE
from tscd.losses.dense_energy import DenseEnergyLoss as _ExactDenseEnergyLoss
from tscd.ops.varm import DEFAULT_DILATIONS
from tscd.refine import VARM as _Refiner


class DenseEnergyLoss(_ExactDenseEnergyLoss):
    """``DenseEnergyLoss(weight, sigma_rgb, sigma_xy, scale_factor)`` of the AFA family.

    ``forward(images, segmentations, ROIs, seg_label)``: images (B, 3, H, W) in 0–255,
    segmentations (B, K, H, W) probabilities, ROIs (B, H, W) crop-box masks, seg_label
    (B, 1, H, W) with 255 where unlabelled. Returns ``weight · 0.58 · L_dense`` — the family's
    magnitude (its lattice sums ≈ 0.58 × the exact ones, method §8) — computed exactly, with the
    correct gradient of method §8, as a 0-dim tensor on the inputs' device (the family returns a
    (1,) CPU tensor and a gradient that is exact only where the gate is uniform).
    """

    def __init__(self, weight: float, sigma_rgb: float, sigma_xy: float, scale_factor: float):
        super().__init__(weight=weight * LATTICE_SCALE, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy,
                         scale_factor=scale_factor)


class PAR(_Refiner):
    """AFA's pixel-adaptive refiner: ``PAR(dilations, num_iter)``, ``forward(imgs, masks)``
    with imgs (B, 3, H, W) in [0, 1] and masks (B, K, h, w) → (B, K, H, W)."""

    def __init__(self, dilations=DEFAULT_DILATIONS, num_iter: int = 10):
        super().__init__(dilations, num_iter, mode="par")


class VARM(_Refiner):
    """TSCD's variation-aware refiner with PAR's constructor: ``VARM(dilations, num_iter)``."""

    def __init__(self, dilations=DEFAULT_DILATIONS, num_iter: int = 10):
        super().__init__(dilations, num_iter, mode="varm")
