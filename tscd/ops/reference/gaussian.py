"""Naive reference of the Gaussian-kernel product ``W·x`` (method §8): builds the full N×N matrix W."""
from __future__ import annotations

import torch


def gaussian_product(feats: torch.Tensor, x: torch.Tensor, cutoff: float | None = None) -> torch.Tensor:
    """``W·x`` with ``W_ij = exp(−½‖f_i − f_j‖²)`` (0 where ``‖f_i − f_j‖ > cutoff``), in the inputs' dtype.

    feats (B, D, N), x (B, K, N) -> (B, K, N). B·N² numbers: small inputs and tests only.
    """
    d2 = ((feats[:, :, :, None] - feats[:, :, None, :]) ** 2).sum(1)  # (B, N, N)
    w = torch.exp(-0.5 * d2)
    if cutoff is not None:
        w = torch.where(d2 <= cutoff * cutoff, w, torch.zeros_like(w))
    return torch.einsum("bkj,bij->bki", x, w)
