"""Naive reference of the dense energy (CRF) loss, method §8.

It builds the full N×N matrix W (B·N² numbers): for small inputs and tests only. It runs in
the dtype it is given; autograd provides the gradients.
"""
from __future__ import annotations

import torch


def dense_energy_loss(images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor, ignore: torch.Tensor,
                      sigma_rgb: float = 15.0, sigma_xy: float = 50.0) -> torch.Tensor:
    """``L = −(1/B) Σ_b Σ_{i,k} S_ik g_i (W S)_ik`` exactly as method §8, computed in ``probs.dtype``.

    images (B, 3, H, W) in 0–255; probs (B, K, H, W); roi (B, H, W) in {0, 1}; ignore (B, H, W)
    bool. ``W_ij = exp(−‖p_i−p_j‖²/(2σ_xy²) − ‖I_i−I_j‖²/(2σ_rgb²))`` over pixel coordinates p;
    ``S = P·roi``; gate ``g = max(roi − max_k P, 0)``, 1 where ignored, without gradient.
    """
    B, K, H, W = probs.shape
    dtype = probs.dtype
    ys, xs = torch.meshgrid(
        torch.arange(H, device=probs.device, dtype=dtype),
        torch.arange(W, device=probs.device, dtype=dtype),
        indexing="ij",
    )
    pos = torch.stack((xs, ys)).reshape(2, H * W)
    colour = images.to(dtype).reshape(B, 3, H * W)
    pos_d2 = ((pos[:, :, None] - pos[:, None, :]) ** 2).sum(0)  # (N, N)
    colour_d2 = ((colour[:, :, :, None] - colour[:, :, None, :]) ** 2).sum(1)  # (B, N, N)
    w = torch.exp(-pos_d2 / (2 * sigma_xy**2) - colour_d2 / (2 * sigma_rgb**2))

    roi = roi.to(dtype).reshape(B, 1, H * W)
    s = probs.reshape(B, K, H * W) * roi
    as_ = torch.einsum("bij,bkj->bki", w, s)
    with torch.no_grad():
        gate = torch.clamp(roi[:, 0] - probs.reshape(B, K, H * W).max(dim=1).values, min=0)
        gate = torch.where(ignore.reshape(B, H * W), torch.ones_like(gate), gate)
    return -(s * gate[:, None] * as_).sum() / B
