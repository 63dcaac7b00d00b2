"""Exact dense energy (CRF) loss, method §8, on the tiled Gaussian-kernel product.

``L = −(1/B) Σ_b Σ_{i,k} S_ik g_i (W S)_ik`` with ``S = P·roi``, ``W_ij = exp(−‖p_i−p_j‖²/(2σ_xy²)
− ‖I_i−I_j‖²/(2σ_rgb²))`` over every pixel pair (self included) and the gate
``g = max(roi − max_k P, 0)``, set to 1 where ignored, held constant. Its gradient is
``∂L/∂P = roi · (−(1/B)) (g·WS + W(g·S))``.

The fused backends compute ``W·[S, g·S]`` in one sweep of W (the weights are evaluated once
for both products) and keep ``W(g·S)``, (B, K, N) float32, for the backward, which is then
elementwise. Keeping it costs as much memory as the probabilities themselves in float32;
recomputing it would cost a second sweep over all N² weights, which dominates the run time.
Without a gradient to compute only ``W S`` is evaluated.

``backend="lattice"`` (CPU, explicit only) replaces W by the permutohedral lattice L, the
released code's O(N) operator (≈ ``LATTICE_SCALE`` × W on photographs, method §8, so ``auto`` never picks it). L is
not symmetric (its blurs, restricted to the lattice vertices that exist, do not commute), so
the gradient of the lattice loss is ``−(1/B)(g·LS + Lᵀ(g·S))``: the forward computes ``L S``
and ``Lᵀ(g·S)`` (the transposed lattice product, its blurs in reverse order) on the same cached
lattice: two filters of K channels, as fast as one of 2K channels for K = 21 (1.5× for K = 2,
where walking the lattice dominates). The exact backends' formula with L in place of Lᵀ,
``−(1/B)(g·LS + L(g·S))``, would be ≈ 4 % RMS off it (tests/ops/test_lattice.py).
"""
from __future__ import annotations

import torch

from . import checks
from .backends import check_reference_fallback, resolve
from .gaussian import bilateral_features, gaussian_product_unchecked
from .reference import dense_energy as reference


def gate(probs: torch.Tensor, roi: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """The gate of the dense energy loss, ``g = max(roi − max_k P, 0)``, set to 1 where ignored,
    without gradient (method §8; the AFA family's loss uses the same gate).

    Args:
        probs: class probabilities, flattened.
        roi: the crop-box mask.
        ignore: True where the gate is 1 (unlabelled pixels).

    Shapes:
        - ``probs``: (B, K, N).
        - ``roi``, ``ignore``: (B, N).
        - returns: (B, N).
    """
    g = torch.clamp(roi - probs.detach().amax(dim=1), min=0)
    return torch.where(ignore, torch.ones_like(g), g)


class _DenseEnergy(torch.autograd.Function):
    """Value and gradient of the loss from flattened inputs; shared by the fused backends (triton, cpp, lattice)."""

    @staticmethod
    def forward(ctx, probs, roi, ignore, feats, backend, needs_grad):
        # probs (B, K, N) any float dtype; roi (B, N) float32; ignore (B, N) bool; feats (B, 5, N);
        # needs_grad: the caller will backpropagate (grad mode on and probs requires grad), so
        # the forward also computes Wᵀ·(g·S) for the backward: in the same sweep as W·S for the
        # exact (symmetric) kernels, by the transposed lattice product for the lattice.
        B, K = probs.shape[:2]
        ctx.probs_dtype = probs.dtype
        g = gate(probs.to(torch.float32), roi, ignore)
        s = probs.to(torch.float32) * roi[:, None]
        gs = s * g[:, None]
        if needs_grad:
            if backend == "lattice":
                ws = gaussian_product_unchecked(backend, feats, s)
                wt_gs = gaussian_product_unchecked(backend, feats, gs, transposed=True)
            else:
                y = gaussian_product_unchecked(backend, feats, torch.cat((s, gs), dim=1))
                ws, wt_gs = y[:, :K], y[:, K:]
            ctx.save_for_backward(roi, g, ws, wt_gs)
        else:
            ws = gaussian_product_unchecked(backend, feats, s)
        return -(gs * ws).sum() / B

    @staticmethod
    def backward(ctx, grad):
        roi, g, ws, wt_gs = ctx.saved_tensors
        B = ws.shape[0]
        grad_s = (g[:, None] * ws + wt_gs) * (-grad / B)
        grad_probs = (grad_s * roi[:, None]).to(ctx.probs_dtype)
        return grad_probs, None, None, None, None, None


def _check(images, probs, roi, ignore, sigma_rgb, sigma_xy):
    B, _, H, W = checks.check_images_and_probs(images, probs)
    checks.check_tensor("roi", roi, "(B, H, W)", (3,), floating=False)
    checks.check_tensor("ignore", ignore, "(B, H, W)", (3,), floating=False)
    if not (roi.dtype == torch.bool or roi.is_floating_point()):
        raise TypeError(f"roi must be a bool or float tensor, got {roi.dtype}")
    if ignore.dtype != torch.bool:
        raise TypeError(f"ignore must be a bool tensor, got {ignore.dtype}")
    for name, t in (("roi", roi), ("ignore", ignore)):
        if tuple(t.shape) != (B, H, W):
            raise ValueError(f"{name} must have shape (B, H, W) = {(B, H, W)} to match probs, got {tuple(t.shape)}")
    if B == 0:
        raise ValueError(f"dense_energy_loss needs a batch size B >= 1 (the loss is a mean over the batch), got "
                         f"probs of shape {tuple(probs.shape)}")
    sigma_rgb, sigma_xy = checks.sigma("sigma_rgb", sigma_rgb), checks.sigma("sigma_xy", sigma_xy)
    device = checks.check_same_device(images=images, probs=probs, roi=roi, ignore=ignore)
    checks.check_finite("images", images, ("sigma_rgb", sigma_rgb))
    return device, sigma_rgb, sigma_xy


def dense_energy_loss(images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor, ignore: torch.Tensor, *,
                      sigma_rgb: float = 15.0, sigma_xy: float = 50.0, backend: str = "auto") -> torch.Tensor:
    """Exact dense energy (CRF) loss of method §8, without weight or rescaling.

    ``L = −(1/B) Σ_b Σ_{i,k} S_ik g_i (W S)_ik`` with ``S = probs · roi``, the Gaussian kernel
    ``W_ij = exp(−‖p_i−p_j‖²/(2σ_xy²) − ‖I_i−I_j‖²/(2σ_rgb²))`` over every pixel pair and the gate
    ``g = max(roi − max_k probs, 0)``, 1 where ignored, held constant. The fused backends never
    build the N×N matrix W.

    Args:
        images: the images in 0–255, float or uint8; no gradient; must be finite.
        probs: class probabilities, float16/bfloat16/float32/float64.
        roi: the crop-box mask in {0, 1}, bool or float.
        ignore: bool, True where the gate is forced to 1 (unlabelled pixels).
        sigma_rgb: colour kernel width (0–255 units).
        sigma_xy: spatial kernel width in pixels.
        backend: ``"auto" | "exact" | "torch" | "triton" | "cpp" | "lattice"`` (see
            ``tscd.ops.backends``); ``"lattice"`` is the released O(N) approximation, whose loss
            is ≈ ``LATTICE_SCALE`` × the exact one.

    Shapes:
        - ``images``: (B, 3, H, W).
        - ``probs``: (B, K, H, W).
        - ``roi``: (B, H, W).
        - ``ignore``: (B, H, W).
        - returns: () — a 0-dim tensor.

    Returns:
        The loss in float32 (float64 for float64 ``probs``), with a gradient to ``probs`` only;
        0 for images of no pixels.

    Raises:
        TypeError: an argument is not a tensor of a supported dtype.
        ValueError: the shapes or devices do not match, B is 0, ``images`` holds NaN or
            infinity, or a σ lies outside ``SIGMA_RANGE`` (``tscd.ops.checks``).
    """
    device, sigma_rgb, sigma_xy = _check(images, probs, roi, ignore, sigma_rgb, sigma_xy)
    request, backend = backend, resolve("dense_energy_loss", backend, device.type)
    out_dtype = checks.compute_dtype(probs)
    if backend == "torch":
        B, _, H, W = probs.shape  # the reference's colour differences: (B, 3, N, N) and more
        check_reference_fallback("dense_energy_loss", request, device.type, B * 8 * (H * W) ** 2 * out_dtype.itemsize)
        return reference.dense_energy_loss(images, probs.to(out_dtype), roi, ignore, sigma_rgb, sigma_xy)
    B, K, H, W = probs.shape
    feats = bilateral_features(images, sigma_xy, sigma_rgb)
    loss = _DenseEnergy.apply(
        probs.reshape(B, K, H * W), roi.to(torch.float32).reshape(B, H * W), ignore.reshape(B, H * W), feats, backend,
        torch.is_grad_enabled() and probs.requires_grad,
    )
    return loss.to(out_dtype)
