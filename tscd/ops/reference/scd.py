"""Naive self-correspondence distillation loss (method §6): builds the N1×N2 matrices."""
from __future__ import annotations

import torch

EPS = 1e-10


def normalise(x: torch.Tensor) -> torch.Tensor:
    """``x / max(‖x‖, eps)`` over the channel dimension of ``x`` (B, C, N).

    float16 cannot hold 1e-10, so there eps is raised to the smallest normal float16
    (an all-zero vector then still maps to zero instead of 0/0).
    """
    eps = max(EPS, torch.finfo(x.dtype).tiny)
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def scd_loss(t1: torch.Tensor, t2: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """SCD loss of teacher t1 (B, C, N1), t2 (B, C, N2) and student s1 (B, K, N1), s2 (B, K, N2).

    Returns a 0-dim tensor; the teacher is detached. Runs in the inputs' dtype.
    """
    t_hat1, t_hat2 = normalise(t1.detach()), normalise(t2.detach())
    s_hat1, s_hat2 = normalise(s1), normalise(s2)
    s = torch.bmm(s_hat1.transpose(1, 2), s_hat2)  # (B, N1, N2)
    t = torch.bmm(t_hat1.transpose(1, 2), t_hat2)
    f = t - t.mean(dim=2, keepdim=True) + t.mean()
    return -(torch.relu(s) * f).mean()
