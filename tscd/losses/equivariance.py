"""Equivariance regularisation of method §7 between the full view and the 0.3× view."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cam import normalize_cam


def live_cam(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A CAM with its gradient, made comparable to a multi-scale CAM (§2): resize (bilinear)
    to ``size``, relu, per image and class min–max normalisation. (B,C,h,w) -> (B,C,H,W)."""
    if tuple(cam.shape[-2:]) != tuple(size):
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return normalize_cam(F.relu(cam))


def equivariance_loss(cam_full: torch.Tensor, cam_small: torch.Tensor, released: bool = False) -> torch.Tensor:
    """``mean |down(cam_full) − cam_small|`` over foreground channels.

    cam_full (B,C,H,W): the full view's multi-scale CAM (constant teacher); cam_small
    (B,C,H',W'): the 0.3× view's CAM at its own size — live (with gradient) for the paper's
    term. ``released=True`` reproduces the released code: both sides detached (the term is
    inert) and the first foreground channel sliced off.
    """
    down = F.interpolate(cam_full.detach(), size=cam_small.shape[-2:], mode="bilinear", align_corners=False)
    if released:
        down, cam_small = down[:, 1:], cam_small.detach()[:, 1:]
    return (down - cam_small).abs().mean()


class EquivarianceLoss(nn.Module):
    def __init__(self, released: bool = False):
        super().__init__()
        self.released = released

    def forward(self, cam_full: torch.Tensor, cam_small: torch.Tensor) -> torch.Tensor:
        return equivariance_loss(cam_full, cam_small, self.released)
