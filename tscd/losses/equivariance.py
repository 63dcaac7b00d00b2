"""Equivariance regularisation of method §7 between the full view and the 0.3× view."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..class_activation import normalize_cam


def live_cam(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A CAM with its gradient, made comparable to a multi-scale CAM (§2): resize (bilinear)
    to ``size``, relu, per image and class min–max normalisation. (B,C,h,w) -> (B,C,H,W)."""
    if tuple(cam.shape[-2:]) != tuple(size):
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return normalize_cam(F.relu(cam))


def equivariance_loss(cam_full: torch.Tensor, cam_small: torch.Tensor, released: bool = False) -> torch.Tensor:
    """Equivariance regularisation of method §7: ``mean |down(cam_full) − cam_small|``.

    ``cam_full`` is resized (bilinear) to the size of ``cam_small``; the mean runs over every
    foreground channel and position.

    Args:
        cam_full: the full view's multi-scale CAM, a constant teacher (detached).
        cam_small: the 0.3× view's CAM at its own size, live (with gradient) for the paper's term.
        released: reproduce the released code: both sides detached (the term is inert) and the
            first foreground channel sliced off.

    Shapes:
        - ``cam_full``: (B, C, H, W).
        - ``cam_small``: (B, C, H′, W′).
        - returns: () — a 0-dim tensor.

    Returns:
        The loss.
    """
    down = F.interpolate(cam_full.detach(), size=cam_small.shape[-2:], mode="bilinear", align_corners=False)
    if released:
        down, cam_small = down[:, 1:], cam_small.detach()[:, 1:]
    return (down - cam_small).abs().mean()


class EquivarianceLoss(nn.Module):
    """[`equivariance_loss`][tscd.losses.equivariance_loss] as a module.

    Args:
        released: the released code's inert term instead of the live one (method §7).
    """

    def __init__(self, released: bool = False):
        super().__init__()
        self.released = released

    def forward(self, cam_full: torch.Tensor, cam_small: torch.Tensor) -> torch.Tensor:
        """``equivariance_loss(cam_full, cam_small, released)``."""
        return equivariance_loss(cam_full, cam_small, self.released)
