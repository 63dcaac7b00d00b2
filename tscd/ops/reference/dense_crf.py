"""Naive reference of dense CRF inference, method §10 (fully connected mean field, Potts,
symmetric normalisation, self included). Builds both N×N kernels: small images only."""
from __future__ import annotations

import torch


def _kernel(feats: torch.Tensor) -> torch.Tensor:
    """exp(−½‖f_i − f_j‖²) for feats (B, D, N) -> (B, N, N)."""
    return torch.exp(-0.5 * ((feats[:, :, :, None] - feats[:, :, None, :]) ** 2).sum(1))


def dense_crf(images: torch.Tensor, probs: torch.Tensor, num_iter: int = 10,
              smooth: tuple[float, float] = (3.0, 3.0),
              appearance: tuple[float, float, float] = (64.0, 5.0, 4.0)) -> torch.Tensor:
    """Q (B, K, H, W) after ``num_iter`` mean-field updates, in ``probs.dtype``.

    images (B, 3, H, W) in 0–255; probs (B, K, H, W); ``smooth`` = (σ_xy, weight),
    ``appearance`` = (σ_xy, σ_rgb, weight). With U = −log(max(P, 1e-5)) and Q = softmax(−U):
    ``Q ← softmax_k(−U + Σ_m w_m n_m ⊙ K_m (n_m ⊙ Q))``, ``n_m = (K_m 1)^(−1/2)``.
    """
    B, K, H, W = probs.shape
    dtype = probs.dtype
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dtype, device=probs.device),
                            torch.arange(W, dtype=dtype, device=probs.device), indexing="ij")
    pos = torch.stack((xs, ys)).reshape(1, 2, H * W).expand(B, 2, H * W)
    colour = images.to(dtype).reshape(B, 3, H * W)
    (s_xy, s_w), (a_xy, a_rgb, a_w) = smooth, appearance
    kernels = [
        (s_w, _kernel(pos / s_xy)),
        (a_w, _kernel(torch.cat((pos / a_xy, colour / a_rgb), dim=1))),
    ]
    unary = -torch.log(torch.clamp(probs.reshape(B, K, H * W), min=1e-5))
    q = torch.softmax(-unary, dim=1)
    for _ in range(num_iter):
        logits = -unary
        for weight, k in kernels:
            norm = k.sum(-1).rsqrt()[:, None]  # (B, 1, N)
            logits = logits + weight * norm * torch.einsum("bij,bkj->bki", k, norm * q)
        q = torch.softmax(logits, dim=1)
    return q.reshape(B, K, H, W)
