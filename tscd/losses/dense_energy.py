"""The dense energy (CRF) loss of the training recipe, method §8, on ``tscd.ops.dense_energy_loss``.

The released code computes ``W S`` with a permutohedral lattice whose output is about
[`LATTICE_SCALE`][tscd.ops.LATTICE_SCALE] times the exact sum (method §8). Its weight 1e-7
was tuned on that scale, so the exact loss here reproduces the released magnitude with
``weight = 1e-7 × LATTICE_SCALE``, the default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import IGNORE_INDEX
from ..ops import checks
from ..ops.dense_energy import dense_energy_loss


class DenseEnergyLoss(nn.Module):
    """The recipe's dense energy (CRF) loss, ``weight · L_dense`` at ``scale_factor`` resolution (method §8).

    Built on [`tscd.ops.dense_energy_loss`][tscd.ops.dense_energy_loss]. The settings may be any
    finite real numbers (Python, NumPy or 0-dim tensors), stored as floats.

    Args:
        weight: multiplies the loss, >= 0: the released 1e-7 × [`LATTICE_SCALE`][tscd.ops.LATTICE_SCALE]
            by default, the released magnitude with this exact operator.
        sigma_rgb: colour kernel width (0–255 units), in ``tscd.ops.checks.SIGMA_RANGE``.
        sigma_xy: spatial kernel width in pixels of the full-resolution input, in ``SIGMA_RANGE``;
            it is scaled by ``scale_factor`` together with the inputs.
        scale_factor: the inputs are resized by this factor before the loss (1: no resizing), > 0.
        backend: passed to [`tscd.ops.dense_energy_loss`][tscd.ops.dense_energy_loss].

    Raises:
        ValueError: a setting is out of its range.
    """

    def __init__(self, weight: float = 5.8e-8, sigma_rgb: float = 15.0, sigma_xy: float = 100.0,
                 scale_factor: float = 0.5, backend: str = "auto"):
        super().__init__()
        self.weight = checks.real("weight", weight, 0.0)
        self.sigma_rgb = checks.sigma("sigma_rgb", sigma_rgb)
        self.sigma_xy = checks.sigma("sigma_xy", sigma_xy)
        self.scale_factor = checks.real("scale_factor", scale_factor, 0.0, low_open=True)
        self.backend = backend

    #: ``F.interpolate``'s ``recompute_scale_factor`` for the resizing (the AFA family's module sets it).
    recompute_scale_factor: bool | None = None

    def _resize(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        if self.scale_factor == 1:
            return x
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(x, scale_factor=self.scale_factor, mode=mode,
                             recompute_scale_factor=self.recompute_scale_factor, **kwargs)

    def at_loss_scale(self, images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor,
                      seg_label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The inputs of the op: resized by ``scale_factor`` (nearest, ``probs`` bilinear).

        Args:
            images: the images in 0–255.
            probs: class probabilities.
            roi: the crop-box mask.
            seg_label: the pseudo label.

        Shapes:
            - ``images``: (B, 3, H, W).
            - ``probs``: (B, K, H, W).
            - ``roi``: (B, H, W).
            - ``seg_label``: (B, 1, H, W).
            - returns: images (B, 3, h, w) float32, probs (B, K, h, w), roi (B, h, w) float32 and
              the ignore mask (B, h, w), True where the label is 255.

        Raises:
            ValueError: the inputs vanish at ``scale_factor``.
        """
        height, width = probs.shape[-2:]
        if height and width and min(int(height * self.scale_factor), int(width * self.scale_factor)) < 1:
            raise ValueError(f"the inputs of {height}×{width} pixels vanish at the loss's scale_factor "
                             f"{self.scale_factor:g}: the loss needs inputs of at least {1 / self.scale_factor:g} "
                             f"pixels a side")
        images = self._resize(images.to(torch.float32), "nearest")
        probs = self._resize(probs, "bilinear")
        roi = self._resize(roi[:, None].to(torch.float32), "nearest")[:, 0]
        ignore = self._resize(seg_label.to(torch.float32), "nearest")[:, 0] == IGNORE_INDEX
        return images, probs, roi, ignore

    def forward(self, images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor,
                seg_label: torch.Tensor) -> torch.Tensor:
        """The weighted loss of one batch.

        Args:
            images: the images in 0–255.
            probs: class probabilities, with gradient.
            roi: the crop-box mask.
            seg_label: the pseudo label, 255 where unlabelled (the gate is 1 there).

        Shapes:
            - ``images``: (B, 3, H, W).
            - ``probs``: (B, K, H, W).
            - ``roi``: (B, H, W).
            - ``seg_label``: (B, H, W) or (B, 1, H, W).
            - returns: () — a 0-dim tensor.

        Raises:
            ValueError: ``roi`` or ``seg_label`` has the wrong rank (the op checks the rest).
        """
        if not isinstance(seg_label, torch.Tensor) or seg_label.dim() not in (3, 4):
            raise ValueError("seg_label must be a tensor of shape (B, H, W) or (B, 1, H, W)")
        if seg_label.dim() == 3:
            seg_label = seg_label[:, None]
        if not isinstance(roi, torch.Tensor) or roi.dim() != 3:
            raise ValueError("roi must be a tensor of shape (B, H, W)")
        images, probs, roi, ignore = self.at_loss_scale(images, probs, roi, seg_label)
        loss = dense_energy_loss(images, probs, roi, ignore, sigma_rgb=self.sigma_rgb,
                                 sigma_xy=self.sigma_xy * self.scale_factor, backend=self.backend)
        return self.weight * loss
