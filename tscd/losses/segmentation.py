"""Segmentation loss of method §8: the background and foreground pixels weigh half each."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import IGNORE_INDEX


def _masked_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross entropy over the non-ignored pixels; 0 (with a graph) when there are none."""
    valid = (target != ignore_index).sum()
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return total / valid.clamp(min=1)


def segmentation_loss(seg_logits: torch.Tensor, label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Segmentation loss of method §8: ``½·CE(seg, bkg-only label) + ½·CE(seg, fg-only label)``.

    The background and foreground pixels weigh half each; each cross entropy is the mean over its
    non-ignored pixels (0 when there are none).

    Args:
        seg_logits: segmentation logits, upsampled bilinearly to the label's size.
        label: int64 pseudo label: 0 background, 1…K−1 the classes, ``ignore_index`` ignored.
        ignore_index: label value that is ignored.

    Shapes:
        - ``seg_logits``: (B, K, h, w).
        - ``label``: (B, H, W).
        - returns: () — a 0-dim tensor.

    Returns:
        The loss.
    """
    if seg_logits.shape[-2:] != label.shape[-2:]:
        seg_logits = F.interpolate(seg_logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    label = label.long()
    bkg = torch.where(label == 0, label, torch.full_like(label, ignore_index))
    fg = torch.where((label != 0) & (label != ignore_index), label, torch.full_like(label, ignore_index))
    return 0.5 * _masked_ce(seg_logits, bkg, ignore_index) + 0.5 * _masked_ce(seg_logits, fg, ignore_index)


class SegmentationLoss(nn.Module):
    """[`segmentation_loss`][tscd.losses.segmentation_loss] as a module.

    Args:
        ignore_index: label value that is ignored.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, seg_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``segmentation_loss(seg_logits, label, ignore_index)``."""
        return segmentation_loss(seg_logits, label, self.ignore_index)
