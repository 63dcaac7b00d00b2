"""The family's ``DenseEnergyLoss``, ``PAR`` and a ``VARM`` with the same constructor."""
from __future__ import annotations

import torch

from tscd.losses.dense_energy import DenseEnergyLoss as _RecipeDenseEnergyLoss
from tscd.ops import LATTICE_SCALE, dense_energy_loss
from tscd.ops.checks import check_same_device, check_tensor
from tscd.ops.dense_energy import gate
from tscd.ops.gaussian import bilateral_features
from tscd.ops.varm import DEFAULT_DILATIONS
from tscd.refine import Refiner

from ._sums import family_product, uses_exact_sum

#: The gradients :class:`DenseEnergyLoss` can give: the released code's, or the loss's own.
GRADIENTS = ("family", "true")


class _FamilyGradient(torch.autograd.Function):
    """The released loss ``−(1/B) Σ S·g·WS`` with the released backward ``−(2/B)·g·WS·roi``."""

    @staticmethod
    def forward(ctx, probs, roi, ignore, feats, exact_sum):
        # probs (B, K, N); roi (B, N) float32; ignore (B, N) bool; feats (B, 5, N)
        B = probs.shape[0]
        ctx.probs_dtype = probs.dtype
        s = probs.to(torch.float32) * roi[:, None]
        gated_ws = gate(probs.to(torch.float32), roi, ignore)[:, None] * family_product(feats, s, exact_sum)
        ctx.save_for_backward(roi, gated_ws)
        return -(s * gated_ws).sum() / B

    @staticmethod
    def backward(ctx, grad):
        roi, gated_ws = ctx.saved_tensors
        grad_probs = gated_ws * roi[:, None] * (-2 * grad / gated_ws.shape[0])
        return grad_probs.to(ctx.probs_dtype), None, None, None, None


class DenseEnergyLoss(_RecipeDenseEnergyLoss):
    """The AFA family's ``DenseEnergyLoss(weight, sigma_rgb, sigma_xy, scale_factor)`` (method §8).

    As the released module, ``forward`` resizes its inputs by ``scale_factor`` (nearest, bilinear
    for the segmentations; sizes rounded down), uses ``sigma_xy · scale_factor`` and returns
    ``weight · L`` with ``L = −(1/B) Σ S·g·(W S)``, ``S = segmentations · ROIs``,
    ``g = max(ROIs − max_k S, 0)`` (1 where unlabelled).

    Deliberate differences from the released module: the loss is a 0-dim float32 tensor on the
    inputs' device (the released one is a (1,) CPU tensor, which its callers move with
    ``.cuda()``; both work with a 0-dim tensor); no input is moved to the CPU or to CUDA.

    Args:
        weight: multiplies the loss (1e-7 in the family's scripts); ``.weight`` is the weight given.
        sigma_rgb: colour kernel width (15 in the family's scripts).
        sigma_xy: spatial kernel width at full resolution (100 in the family's scripts).
        scale_factor: the inputs' resize factor (0.5 in the family's scripts).
        gradient: ``"family"`` (default): the released backward ``−(2/B)·g·(W S)·ROIs``, the
            gradient the family's loss weights were tuned with; it is exact only where g is
            uniform and W symmetric, which the lattice is not quite (its error: docs/dropins.md).
            ``"true"``: the loss's own gradient ``−(1/B)(g·W S + Wᵀ(g·S))·ROIs`` (tscd's recipe).
        exact_sum: ``None`` (default): ``W S`` on tscd's permutohedral lattice for CPU tensors
            (the released values, like its SWIG module) and the exact sum × ``LATTICE_SCALE`` on CUDA;
            ``True``: the exact sum × [`LATTICE_SCALE`][tscd.ops.LATTICE_SCALE] (O(N²));
            ``False``: the lattice (CPU tensors only).

    Raises:
        ValueError: ``gradient`` is unknown, or a setting is out of its range.
        TypeError: ``exact_sum`` is not True, False or None.
    """

    recompute_scale_factor = True  # the released module's resizing (sizes rounded down)

    def __init__(self, weight: float, sigma_rgb: float, sigma_xy: float, scale_factor: float, *,
                 gradient: str = "family", exact_sum: bool | None = None):
        super().__init__(weight, sigma_rgb, sigma_xy, scale_factor)
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        if exact_sum is not None and not isinstance(exact_sum, bool):
            raise TypeError(f"exact_sum must be True, False or None, got {exact_sum!r}")
        self.gradient = gradient
        self.exact_sum = exact_sum

    def forward(self, images: torch.Tensor, segmentations: torch.Tensor, ROIs: torch.Tensor,
                seg_label: torch.Tensor) -> torch.Tensor:
        """The weighted loss, as the released module's ``forward``.

        Args:
            images: the images in 0–255.
            segmentations: class probabilities.
            ROIs: the crop-box masks.
            seg_label: the pseudo labels, 255 where unlabelled.

        Shapes:
            - ``images``: (B, 3, H, W).
            - ``segmentations``: (B, K, H, W).
            - ``ROIs``: (B, H, W).
            - ``seg_label``: (B, 1, H, W) or (B, H, W).
            - returns: () — a 0-dim tensor.

        Raises:
            TypeError: an argument is not a tensor.
            ValueError: the shapes or devices do not match.
        """
        check_tensor("segmentations", segmentations, "(B, K, H, W)", (4,))
        check_tensor("images", images, "(B, 3, H, W)", (4,), floating=False)
        check_tensor("ROIs", ROIs, "(B, H, W)", (3,), floating=False)
        check_tensor("seg_label", seg_label, "(B, 1, H, W) or (B, H, W)", (3, 4), floating=False)
        check_same_device(images=images, segmentations=segmentations, ROIs=ROIs, seg_label=seg_label)
        B, _, H, W = segmentations.shape
        label = seg_label if seg_label.dim() == 4 else seg_label[:, None]
        for name, t, shape in (("images", images, (B, 3, H, W)), ("ROIs", ROIs, (B, H, W)),
                               ("seg_label", label, (B, 1, H, W))):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape} to match segmentations, got {tuple(t.shape)}")
        images, probs, roi, unlabelled = self.at_loss_scale(images, segmentations, ROIs, label)
        sigma_xy = self.sigma_xy * self.scale_factor
        if self.gradient == "true":
            exact = uses_exact_sum(self.exact_sum, probs.device)
            loss = dense_energy_loss(images, probs, roi, unlabelled, sigma_rgb=self.sigma_rgb, sigma_xy=sigma_xy,
                                     backend="exact" if exact else "lattice")
            loss = loss * LATTICE_SCALE if exact else loss
        else:
            b, k, h, w = probs.shape
            loss = _FamilyGradient.apply(probs.reshape(b, k, h * w), roi.reshape(b, h * w),
                                         unlabelled.reshape(b, h * w),
                                         bilateral_features(images, sigma_xy, self.sigma_rgb), self.exact_sum)
        return self.weight * loss

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, sigma_rgb={self.sigma_rgb}, sigma_xy={self.sigma_xy}, "
                f"scale_factor={self.scale_factor}, gradient={self.gradient!r}, exact_sum={self.exact_sum}")


class PAR(Refiner):
    """AFA's pixel-adaptive refiner, with its constructor: ``PAR(dilations, num_iter)``.

    ``forward(imgs, masks)`` as [`tscd.refine.Refiner`][tscd.refine.Refiner] in ``mode="par"``: imgs
    (B, 3, H, W) in [0, 1], masks (B, K, h, w) → (B, K, H, W).

    Args:
        dilations: the neighbourhood's dilations.
        num_iter: propagation iterations.
    """

    def __init__(self, dilations=DEFAULT_DILATIONS, num_iter: int = 10):
        super().__init__(dilations, num_iter, mode="par")


class VARM(Refiner):
    """TSCD's variation-aware refiner with PAR's constructor: ``VARM(dilations, num_iter)``.

    ``forward(imgs, masks)`` as [`tscd.refine.Refiner`][tscd.refine.Refiner] in ``mode="varm"``.

    Args:
        dilations: the neighbourhood's dilations.
        num_iter: propagation iterations.
    """

    def __init__(self, dilations=DEFAULT_DILATIONS, num_iter: int = 10):
        super().__init__(dilations, num_iter, mode="varm")
