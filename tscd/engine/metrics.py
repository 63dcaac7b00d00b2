"""Evaluation metrics of method §10: confusion-matrix IoU (streamed image by image) and the
image-level classification F1."""
from __future__ import annotations

import torch

from ..constants import IGNORE_INDEX


class ConfusionMatrix:
    """K×K counts (rows: ground truth, columns: prediction), accumulated over calls.

    Pixels whose ground truth is ``ignore_index`` (or outside 0..K-1) do not count; a
    prediction outside 0..K-1 (e.g. an "ignore" pseudo label) counts as wrong for its row.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mat = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: integer tensors of the same shape, on any device (the counts are made
        there; only the K×(K+1) result moves)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
        k = self.num_classes
        t = target.reshape(-1).long()
        p = pred.reshape(-1).long()
        p = torch.where((p >= 0) & (p < k), p, k)  # column k: "no valid class"
        # one bin per (truth, prediction) cell, and a last one, dropped, for the pixels that do not count
        cells = torch.where((t >= 0) & (t < k), t * (k + 1) + p, k * (k + 1))
        self.mat += torch.bincount(cells, minlength=k * (k + 1) + 1)[:-1].view(k, k + 1).cpu()

    def iou(self) -> torch.Tensor:
        """(K,) float64 IoU per class; NaN for a class absent from both truth and prediction."""
        m = self.mat.double()
        tp = m.diagonal()
        gt = m.sum(1)
        pred = m[:, : self.num_classes].sum(0)
        union = gt + pred - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        return float(torch.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        m = self.mat.double()
        return float(m.diagonal().sum() / m.sum().clamp(min=1))


class MultiLabelF1:
    """Micro-averaged F1 of thresholded image-level predictions (logit > 0)."""

    def __init__(self):
        self.tp = self.fp = self.fn = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        pred, true = logits.detach().cpu() > 0, labels.detach().cpu() > 0.5
        self.tp += int((pred & true).sum())
        self.fp += int((pred & ~true).sum())
        self.fn += int((~pred & true).sum())

    def f1(self) -> float:
        return 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1)
