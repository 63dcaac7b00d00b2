"""Self-correspondence distillation loss module (method §6) with the released code's sampling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.scd import check_maps, scd_loss


def _sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) at the normalised positions grid (B, n, n, 2) → (B, C, n·n)."""
    out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return out.flatten(2)


class SelfCorrespondenceDistillation(nn.Module):
    """L_scd of method §6 between teacher maps (CAMs) and student maps (segmentation logits) of two views.

    Samples positions as the released code does, then calls
    [`tscd.ops.scd_loss`][tscd.ops.scd_loss].

    Args:
        num_samples: n; each view is sampled at n×n random positions (uniform in the normalised
            square, drawn per image from torch's default generator, bilinear), the same positions
            for the teacher and student of a view and independent ones for the other view.
            ``None`` uses every position (dense SCD).
        backend: passed to [`tscd.ops.scd_loss`][tscd.ops.scd_loss].

    Raises:
        ValueError: ``num_samples`` is neither a positive int nor None.
    """

    def __init__(self, num_samples: int | None = 40, backend: str = "auto"):
        super().__init__()
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}")
        self.num_samples = num_samples
        self.backend = backend

    def forward(self, t1, t2, s1, s2) -> torch.Tensor:
        """The loss of one batch; ``t1`` and ``t2`` receive no gradient.

        Args:
            t1: teacher map of view 1.
            t2: teacher map of view 2.
            s1: student map of view 1.
            s2: student map of view 2.

        Shapes:
            - ``t1``: (B, C, H1, W1).
            - ``t2``: (B, C, H2, W2).
            - ``s1``: (B, K, H1, W1).
            - ``s2``: (B, K, H2, W2).
            - returns: () — a 0-dim tensor.
        """
        if self.num_samples is None:
            return scd_loss(t1, t2, s1, s2, backend=self.backend)
        check_maps(t1, t2, s1, s2, flattened=False)
        n = self.num_samples
        grid1, grid2 = (torch.rand(t1.shape[0], n, n, 2, device=t1.device) * 2 - 1 for _ in range(2))
        return scd_loss(_sample(t1.detach(), grid1), _sample(t2.detach(), grid2), _sample(s1, grid1),
                        _sample(s2, grid2), backend=self.backend)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, backend={self.backend!r}"
