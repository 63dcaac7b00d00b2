"""Affinity loss from attention (method §5, from AFA): the learned affinity A = attn_pred is pulled
to 1 for pairs of positions of the attention grid (the stage-4 map) with the same pseudo label and
to 0 for different labels, within a (2r+1)×(2r+1) window."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..class_activation import affinity_window
from ..constants import IGNORE_INDEX

__all__ = ["AffinityLoss", "affinity_targets"]


def affinity_targets(label: torch.Tensor, grid_size: tuple[int, int], radius: int = 8,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pairwise affinity targets from a pseudo label (method §5).

    Args:
        label: pseudo label, class indices; downsampled to ``grid_size`` by nearest neighbour.
        grid_size: (h, w), the attention grid.
        radius: window radius: pairs farther apart (Chebyshev distance) are ignored.
        ignore_index: label value that is ignored.

    Shapes:
        - ``label``: (B, H, W).
        - returns: (B, N, N), N = h·w.

    Returns:
        int64 targets: 1 where the labels of i and j are equal, 0 where they differ,
        ``ignore_index`` where either is ignored or i and j are farther apart than ``radius``.

    Raises:
        ValueError: ``label`` is not (B, H, W).
    """
    if label.dim() != 3:
        raise ValueError(f"label must have shape (B, H, W), got {tuple(label.shape)}")
    small = F.interpolate(label[:, None].float(), size=tuple(grid_size), mode="nearest").flatten(1).long()
    same = (small[:, :, None] == small[:, None, :]).long()
    valid = (small != ignore_index)
    valid = valid[:, :, None] & valid[:, None, :] & affinity_window(*grid_size, radius, label.device)
    return same.masked_fill(~valid, ignore_index)


class AffinityLoss(nn.Module):
    """Affinity loss of method §5 (from AFA) between the learned affinity and a pseudo label.

    ``L = ½·Σ_pos (1 − A_ij)/(n_pos + 1) + ½·Σ_neg A_ij/(n_neg + 1)``, the sums and counts over
    the batch, with the pairs of [`affinity_targets`][tscd.losses.affinity_targets].

    Args:
        radius: window radius r on the attention grid (Chebyshev distance ≤ r).
        ignore_index: label value that is ignored.
    """

    def __init__(self, radius: int = 8, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.radius = radius
        self.ignore_index = ignore_index

    def forward(self, attn_pred: torch.Tensor, label: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """The loss of one batch.

        Args:
            attn_pred: the learned affinity A in (0, 1) (``TSCDOutput.attn_pred``).
            label: the refined pseudo label.
            grid_size: (h, w) of the attention grid (the size of ``TSCDOutput.cam``).

        Shapes:
            - ``attn_pred``: (B, N, N), N = h·w.
            - ``label``: (B, H, W).
            - returns: () — a 0-dim tensor.

        Raises:
            ValueError: ``attn_pred`` does not match the grid.
        """
        n = grid_size[0] * grid_size[1]
        if attn_pred.dim() != 3 or attn_pred.shape != (label.shape[0], n, n):
            raise ValueError(f"attn_pred must have shape (B, N, N) = ({label.shape[0]}, {n}, {n}) for a "
                             f"{grid_size[0]}×{grid_size[1]} grid, got {tuple(attn_pred.shape)}")
        target = affinity_targets(label, grid_size, self.radius, self.ignore_index)
        pos, neg = target == 1, target == 0
        pos_loss = (1 - attn_pred).masked_fill(~pos, 0).sum() / (pos.sum() + 1)
        neg_loss = attn_pred.masked_fill(~neg, 0).sum() / (neg.sum() + 1)
        return 0.5 * pos_loss + 0.5 * neg_loss
