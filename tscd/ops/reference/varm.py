"""Naive PyTorch reference of the variation-aware refinement (VARM) and PAR, method §4.

Written literally: the 8·len(dilations) clamped neighbours of every pixel are gathered into
(B, C, N, H, W) tensors. Runs in the dtype of its inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The 8 offsets (dy, dx) of a 3×3 neighbourhood without its centre, in row-major order.
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbour_offsets(dilations) -> list[tuple[int, int]]:
    """The N = 8·len(dilations) displacements (d·dy, d·dx), dilation-major."""
    return [(d * dy, d * dx) for d in dilations for dy, dx in OFFSETS]


def gather_neighbours(x: torch.Tensor, dilations) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, N, H, W): the value at p + n, coordinates clamped to the image."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    out = []
    for oy, ox in neighbour_offsets(dilations):
        ys = (rows + oy).clamp(0, h - 1)
        xs = (cols + ox).clamp(0, w - 1)
        out.append(x[:, :, ys][:, :, :, xs])
    return torch.stack(out, dim=2)


def position_logits(dilations, dtype=torch.float64, device=None) -> torch.Tensor:
    """PAR's position term before its softmax, (N,): −(ρ_n / (σ_ρ + 1e-8) / 0.3)²."""
    rho = torch.tensor(
        [d * (math.sqrt(2.0) if dy != 0 and dx != 0 else 1.0) for d in dilations for dy, dx in OFFSETS],
        dtype=dtype,
        device=device,
    )
    return -((rho / (rho.std() + 1e-8) / 0.3) ** 2)


def varm_affinity(images: torch.Tensor, dilations, mode: str = "varm") -> torch.Tensor:
    """Neighbour weights w_n(p) of method §4.

    images: (B, 3, H, W) in [0, 1]. Returns (B, N, H, W), N = 8·len(dilations).
    """
    nb = gather_neighbours(images, dilations)  # J_n(p), (B, 3, N, H, W)
    std = nb.std(dim=2, keepdim=True)  # unbiased, over the N neighbours
    diff = (nb - images.unsqueeze(2)).abs()
    if mode == "varm":
        a = (-((4 * diff / (std + 1e-8)) ** 2)).mean(dim=1)
        # One row down / one column right in the neighbour image J_n, clamped: the last
        # row and column compare J_n with itself.
        down = torch.cat([nb[..., 1:, :], nb[..., -1:, :]], dim=-2)
        right = torch.cat([nb[..., 1:], nb[..., -1:]], dim=-1)
        v = ((nb - down) ** 2 + (nb - right) ** 2).mean(dim=1)
        return F.softmax(a, dim=1) - 0.01 * F.softmax(v, dim=1)
    a = (-((diff / (std + 1e-8) / 0.3) ** 2)).mean(dim=1)
    pos = F.softmax(position_logits(dilations, images.dtype, images.device), dim=0)
    return F.softmax(a, dim=1) + 0.01 * pos[None, :, None, None]


def varm_refine(images: torch.Tensor, masks: torch.Tensor, dilations, num_iter: int, mode: str = "varm"):
    """Refine masks (B, K, h, w) along images (B, 3, H, W); returns (B, K, H, W).

    The masks are first resized to (H, W) (bilinear, align_corners=True), then
    ``M(p) <- sum_n w_n(p) M(clamp(p + n))`` is applied ``num_iter`` times.
    """
    masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
    weights = varm_affinity(images, dilations, mode).unsqueeze(1)  # (B, 1, N, H, W)
    for _ in range(num_iter):
        masks = (gather_neighbours(masks, dilations) * weights).sum(dim=2)
    return masks
