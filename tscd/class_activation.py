"""Class activation maps: the multi-scale CAM of method §2 and the attention random walk that
refines CAMs with the learned affinity (§5). Pseudo labels made from CAMs are in :mod:`tscd.refine`.

Conventions: ``cls_labels`` (B, K−1) is the multi-hot image label over the foreground classes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["MultiScaleCAM", "multi_scale_cam", "normalize_cam", "affinity_window", "attention_random_walk"]


def normalize_cam(cam: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per image and class min–max normalisation: ``(cam − min) / (max(cam − min) + eps)``.

    Args:
        cam: class activation maps.
        eps: added to the denominator.

    Shapes:
        - ``cam``: (B, C, H, W).
        - returns: (B, C, H, W).
    """
    cam = cam - cam.amin(dim=(-2, -1), keepdim=True)
    return cam / (cam.amax(dim=(-2, -1), keepdim=True) + eps)


@torch.no_grad()
def multi_scale_cam(model, images: torch.Tensor, scales: Sequence[float] = (1.0, 0.5, 1.5),
                    return_attention: bool = False, flip: bool = True, scale1_cam: torch.Tensor | None = None):
    """Multi-scale, flip-augmented CAM of method §2, without gradient.

    For each scale s the images are resized to (⌊sH⌋, ⌊sW⌋) (bilinear) and run together with
    their horizontal flip; both CAMs are resized to (H, W), the flipped one un-flipped, and
    relu(max(cam, cam_flip)) is summed over scales, then normalised by
    [`normalize_cam`][tscd.class_activation.normalize_cam].

    Args:
        model: a model whose ``forward_cam(x, affinity)`` returns ``(cam, attn_pred)`` (with
            ``affinity=False`` only the CAM is needed), as [`TSCD`][tscd.models.TSCD].
        images: normalised images.
        scales: the scales; at least one.
        return_attention: also return the ``attn_pred`` of the un-flipped images at the largest
            scale.
        flip: run each scale with its flip; False sums relu(cam) of the un-flipped images alone
            (half the passes).
        scale1_cam: the raw CAM at scale 1 when the caller already has it (a training step's
            own forward, the evaluation's scale-1 forward), so that pass is not run again: of the
            un-flipped images (with ``flip``, scale 1 then runs the flipped images alone), or of
            the un-flipped images followed by their flips (scale 1 runs nothing; without
            ``flip`` the second half is not used); ``scales`` must include 1.0.

    Shapes:
        - ``images``: (B, 3, H, W).
        - ``scale1_cam``: (B, K−1, h, w) or (2B, K−1, h, w).
        - returns: (B, K−1, H, W), and with ``return_attention`` also (B, N, N).

    Returns:
        The CAM in [0, 1], or ``(cam, attn_pred)`` with ``return_attention``.

    Raises:
        ValueError: ``scales`` is empty, or ``scale1_cam`` is given without scale 1.0, with
            ``return_attention`` or with neither B nor 2B rows.
    """
    if len(scales) == 0:
        raise ValueError("scales must list at least one scale")
    b, _, h, w = images.shape
    if scale1_cam is not None:
        if 1.0 not in scales:
            raise ValueError(f"scale1_cam is the CAM at scale 1.0, which scales {tuple(scales)} do not include")
        if return_attention:
            raise ValueError("return_attention needs the attention of every pass; it cannot take scale1_cam")
        if scale1_cam.shape[0] not in (b, 2 * b):
            raise ValueError(f"scale1_cam must hold the CAMs of the {b} images (and of their flips: {2 * b}), "
                             f"got {scale1_cam.shape[0]}")
    total, attention = None, None
    for s in scales:
        x = images if s == 1.0 else F.interpolate(images, size=(int(s * h), int(s * w)), mode="bilinear",
                                                  align_corners=False)
        if s == 1.0 and scale1_cam is not None:
            if not flip or scale1_cam.shape[0] == 2 * b:
                cam = scale1_cam if flip else scale1_cam[:b]
            else:
                cam = torch.cat([scale1_cam, model.forward_cam(x.flip(-1), affinity=False).cam])
            attn = None
        else:
            cam, attn = model.forward_cam(torch.cat([x, x.flip(-1)]) if flip else x,
                                          affinity=return_attention and s == max(scales))
        cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
        cam = (torch.maximum(cam[:b], cam[b:].flip(-1)) if flip else cam).relu()
        total = cam if total is None else total + cam
        if return_attention and s == max(scales):
            attention = attn[:b]
    total = normalize_cam(total)
    return (total, attention) if return_attention else total


class MultiScaleCAM:
    """[`multi_scale_cam`][tscd.class_activation.multi_scale_cam] with fixed settings: the CAMs that
    pseudo labels are made from (method §2), ``cams(model, images, scale1_cam=None)``.

    Args:
        scales: the scales; at least one.
        flip: run each scale with its flip too.
    """

    def __init__(self, scales: Sequence[float] = (1.0, 0.5, 1.5), flip: bool = True):
        self.scales, self.flip = tuple(scales), flip

    def __call__(self, model, images: torch.Tensor, scale1_cam: torch.Tensor | None = None) -> torch.Tensor:
        """The CAMs in [0, 1] of normalised images.

        Args:
            model: a model with ``forward_cam``, e.g. [`TSCD`][tscd.models.TSCD].
            images: normalised images.
            scale1_cam: the model's raw CAM of the images at scale 1 when already computed (a
                training step's own forward, the evaluation's scale-1 forward), of the images or
                of the images followed by their flips, so that pass is not run again.

        Shapes:
            - ``images``: (B, 3, H, W).
            - ``scale1_cam``: (B, K−1, h, w) or (2B, K−1, h, w).
            - returns: (B, K−1, H, W).
        """
        return multi_scale_cam(model, images, self.scales, flip=self.flip, scale1_cam=scale1_cam)

    def __repr__(self) -> str:
        return f"MultiScaleCAM(scales={self.scales}, flip={self.flip})"


def affinity_window(h: int, w: int, radius: int = 8, device=None) -> torch.Tensor:
    """Which positions i, j of an h×w grid lie within Chebyshev distance ``radius``.

    Args:
        h: grid height.
        w: grid width.
        radius: the window radius.
        device: the mask's device.

    Shapes:
        - returns: (h·w, h·w) bool.
    """
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    return ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)


def attention_random_walk(cam: torch.Tensor, attn_pred: torch.Tensor, cls_labels: torch.Tensor,
                          grid_size: tuple[int, int] | None = None, radius: int = 8,
                          bkg_score: float = 0.35, power: int = 2, eps: float = 0.1) -> torch.Tensor:
    """Refine a CAM by one random-walk step on the learned affinity (method §5, evaluation).

    ``P = (A ⊙ window)^power`` with rows divided by (row sum + eps); the CAM, with a background
    channel of value ``bkg_score`` prepended and softmaxed over the present classes plus
    background (absent classes get 0), is propagated as ``cam′_i = Σ_j P_ij cam_j``. For the
    symmetric A of [`TSCD`][tscd.models.TSCD] this equals AFA's column-normalised product. The CAM
    is resized (bilinear) to the grid and the result back to (H, W).

    Args:
        cam: foreground CAMs in [0, 1].
        attn_pred: the learned affinity A on the attention grid.
        cls_labels: image-level labels.
        grid_size: (h, w) of the attention grid; None: (H, W) is the grid.
        radius: window radius (Chebyshev distance).
        bkg_score: the background channel's value.
        power: the exponent applied to the affinity.
        eps: added to the row sums.

    Shapes:
        - ``cam``: (B, K−1, H, W).
        - ``attn_pred``: (B, N, N), N = h·w.
        - ``cls_labels``: (B, K−1).
        - returns: (B, K, H, W), channel 0 background.

    Raises:
        ValueError: ``attn_pred`` does not match the grid.
    """
    b, _, h_in, w_in = cam.shape
    gh, gw = grid_size if grid_size is not None else (h_in, w_in)
    if attn_pred.shape != (b, gh * gw, gh * gw):
        raise ValueError(f"attn_pred must have shape (B, N, N) = ({b}, {gh * gw}, {gh * gw}) for a {gh}×{gw} "
                         f"grid, got {tuple(attn_pred.shape)}; pass grid_size=(h, w) of the attention grid")
    if (gh, gw) != (h_in, w_in):
        cam = F.interpolate(cam, size=(gh, gw), mode="bilinear", align_corners=False)
    scores = torch.cat([torch.full_like(cam[:, :1], bkg_score), cam], dim=1).flatten(2)  # (B, K, N)
    present = torch.cat([torch.ones_like(cls_labels[:, :1]), cls_labels], dim=1).bool()[:, :, None]
    probs = scores.masked_fill(~present, float("-inf")).softmax(dim=1)
    affinity = attn_pred.detach().masked_fill(~affinity_window(gh, gw, radius, attn_pred.device), 0) ** power
    walk = affinity / (affinity.sum(dim=-1, keepdim=True) + eps)  # (B, N, N)
    out = (probs.to(walk.dtype) @ walk.transpose(1, 2)).reshape(b, -1, gh, gw)  # out_c,i = Σ_j P_ij p_c,j
    if (gh, gw) != (h_in, w_in):
        out = F.interpolate(out, size=(h_in, w_in), mode="bilinear", align_corners=False)
    return out
