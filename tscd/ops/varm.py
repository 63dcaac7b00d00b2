"""Variation-aware refinement (VARM) of method §4 and its PAR baseline, as one operator.

``varm_refine(images, masks)`` resizes the masks to the image size (bilinear,
align_corners=True) and applies ``num_iter`` times ``M(p) <- sum_n w_n(p) M(clamp(p + n))``
over the N = 8·len(dilations) clamped neighbours n, with the per-pixel weights
``varm_affinity(images)``:

- ``mode="varm"``: ``w_n = softmax_n(a_n) - 0.01·softmax_n(v_n)``, intensity term ×4;
- ``mode="par"``:  ``w_n = softmax_n(a_n) + 0.01·softmax_n(position_n)``, intensity term /0.3.

The refinement runs without gradient: outputs never require grad. The fused backends
(triton, cpp) compute in float32 through two primitives, ``varm_affinity`` and
``varm_propagate_`` (:mod:`tscd.kernels.primitives`); this module holds the logic they share
(upcasting, resizing, constants, the ping-pong buffers). Their memory is O(B·(N + 2K)·H·W); on
the CPU the ``cpp`` backend runs every iteration in place in one call (``varm_refine_``), in
O(B·(N + K)·H·W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import primitives, resolve
from .checks import check_dim_equal, check_finite, check_range, check_same_device, check_tensor, integer
from .reference import varm as reference

DEFAULT_DILATIONS = (1, 2, 4, 8, 12, 24)
#: The largest dilation: the fused kernels compute pixel + offset in int32 (and no image is 2^30 pixels wide).
MAX_DILATION = 2**30
MODES = ("varm", "par")
# Per mode: the factor of the intensity term, the weight of the subtracted variation softmax
# and the weight of the added position softmax.
_CONSTANTS = {"varm": (4.0, 0.01, 0.0), "par": (1.0 / 0.3, 0.0, 0.01)}


def _check_options(dilations, num_iter, mode: str) -> tuple[tuple[int, ...], int | None]:
    """(dilations, num_iter) as Python ints (num_iter None stays None)."""
    if isinstance(dilations, int) or not hasattr(dilations, "__iter__"):
        raise TypeError(f"dilations must be a sequence of positive ints, got {dilations!r}")
    dilations = tuple(dilations)
    if not dilations:
        raise ValueError("dilations must be a non-empty sequence of positive ints, got an empty one")
    expected = f"positive ints up to {MAX_DILATION} (the kernels offset pixels in int32)"
    dilations = tuple(integer("dilations", d, low=1, high=MAX_DILATION, expected=expected) for d in dilations)
    if num_iter is not None:
        num_iter = integer("num_iter", num_iter)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return dilations, num_iter


#: How far outside [0, 1] an image value may lie (less than one grey level of 0–255).
IMAGE_RANGE_SLACK = 1 / 512


def _check_images(images) -> None:
    check_tensor("images", images, "(B, 3, H, W)", (4,))
    if images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W) with 3 colour channels, got {tuple(images.shape)}")
    check_finite("images", images)
    check_range("images", images, -IMAGE_RANGE_SLACK, 1 + IMAGE_RANGE_SLACK,
                "the images in [0, 1]: divide 0–255 images by 255, de-normalise normalised ones")


def affinity_arguments(dilations: tuple[int, ...], mode: str, device) -> tuple:
    """The ``varm_affinity`` primitive's arguments besides the images for ``mode``: (dilations as an
    int32 tensor, intensity scale, variation weight, position term (N,) float32) on ``device``."""
    scale, variation_weight, position_weight = _CONSTANTS[mode]
    dil = torch.tensor(dilations, dtype=torch.int32, device=device)
    position = position_weight * F.softmax(reference.position_logits(dilations), dim=0)
    return dil, scale, variation_weight, position.to(device=device, dtype=torch.float32)


def _fused_affinity(backend: str, images: torch.Tensor, dilations: tuple[int, ...], mode: str):
    """(weights (B, N, H, W) float32, dilations as an int32 tensor on the images' device)."""
    dil, scale, variation_weight, position = affinity_arguments(dilations, mode, images.device)
    weights = primitives(backend).varm_affinity(images.float().contiguous(), dil, scale, variation_weight, position)
    return weights, dil


def varm_affinity(images: torch.Tensor, *, dilations=DEFAULT_DILATIONS, mode: str = "varm",
                  backend: str = "auto") -> torch.Tensor:
    """Per-pixel neighbour weights ``w_n`` of method §4, which [`varm_refine`][tscd.ops.varm_refine] propagates.

    Args:
        images: the images, with values in [0, 1]; must be finite.
        dilations: the neighbourhood's dilations; each gives the 8 neighbours at that distance.
        mode: ``"varm"`` (TSCD) or ``"par"`` (AFA's PAR).
        backend: ``"auto" | "exact" | "torch" | "triton" | "cpp"`` (see ``tscd.ops.backends``).

    Shapes:
        - ``images``: (B, 3, H, W).
        - returns: (B, N, H, W), N = 8·len(dilations), the neighbours dilation-major with the 8
          offsets in row-major order.

    Returns:
        The weights in the images' dtype, without gradient; empty when B, H or W is 0.

    Raises:
        TypeError: ``images`` is not a floating-point tensor, or ``dilations`` not a sequence.
        ValueError: a shape, mode or dilation is invalid, or ``images`` holds NaN or infinity.
    """
    _check_images(images)
    dilations, _ = _check_options(dilations, None, mode)
    if images.numel() == 0:
        B, _, H, W = images.shape
        return images.new_zeros((B, 8 * len(dilations), H, W))
    which = resolve("varm_affinity", backend, images.device.type)
    with torch.no_grad():
        if which == "torch":
            return reference.varm_affinity(images, dilations, mode)
        return _fused_affinity(which, images, dilations, mode)[0].to(images.dtype)


def varm_refine(images: torch.Tensor, masks: torch.Tensor, *, dilations=DEFAULT_DILATIONS, num_iter: int = 10,
                mode: str = "varm", backend: str = "auto") -> torch.Tensor:
    """Refine masks along the image: the variation-aware refinement of method §4, or AFA's PAR.

    The masks are resized to the images' size (bilinear, ``align_corners=True``), then each of
    ``num_iter`` iterations replaces every pixel by the weighted sum of its neighbours, with the
    weights of [`varm_affinity`][tscd.ops.varm_affinity]. Runs without gradient.

    Args:
        images: the images, with values in [0, 1]; must be finite.
        masks: the masks to refine (e.g. class probabilities), at any size.
        dilations: the neighbourhood's dilations; each gives the 8 neighbours at that distance.
        num_iter: propagation iterations (0: the resized masks).
        mode: ``"varm"`` (TSCD) or ``"par"`` (AFA's PAR).
        backend: ``"auto" | "exact" | "torch" | "triton" | "cpp"`` (see ``tscd.ops.backends``).

    Shapes:
        - ``images``: (B, 3, H, W).
        - ``masks``: (B, K, h, w).
        - returns: (B, K, H, W).

    Returns:
        The refined masks in the promoted dtype of ``images`` and ``masks``; empty when B, K, H
        or W is 0.

    Raises:
        TypeError: an argument is not a floating-point tensor, or ``dilations`` not a sequence.
        ValueError: the shapes, devices, mode or options are invalid, or ``images`` holds NaN
            or infinity.
    """
    _check_images(images)
    check_tensor("masks", masks, "(B, K, h, w)", (4,))
    check_dim_equal("the batch sizes of images and masks", images=images.shape[0], masks=masks.shape[0])
    check_same_device(images=images, masks=masks)
    dilations, num_iter = _check_options(dilations, num_iter, mode)
    dtype = torch.promote_types(images.dtype, masks.dtype)
    B, K, (H, W) = masks.shape[0], masks.shape[1], images.shape[2:]
    if B * K * H * W == 0:
        return masks.new_zeros((B, K, H, W), dtype=dtype)
    if masks.shape[2] * masks.shape[3] == 0:
        raise ValueError(f"masks must have at least one pixel to be resized to the images' {H}×{W}, "
                         f"got {tuple(masks.shape)}")
    which = resolve("varm_refine", backend, images.device.type)
    with torch.no_grad():
        if which == "torch":
            return reference.varm_refine(images.to(dtype), masks.to(dtype), dilations, num_iter, mode)
        masks = masks.float()
        resized = masks.shape[-2:] != images.shape[-2:]
        if resized:
            masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
        if num_iter == 0:
            return masks.to(dtype, copy=True)
        if which == "cpp" and images.device.type == "cpu":  # the weights and every iteration in one call, in place
            refined = masks if resized else masks.contiguous().clone()
            primitives(which).varm_refine_(refined, images.float().contiguous(),
                                           *affinity_arguments(dilations, mode, images.device), num_iter)
            return refined.to(dtype)
        weights, dil = _fused_affinity(which, images, dilations, mode)
        propagate_ = primitives(which).varm_propagate_
        src = masks.contiguous()
        buffers = [torch.empty_like(src) for _ in range(min(num_iter, 2))]
        for i in range(num_iter):
            propagate_(src, weights, dil, buffers[i % 2])
            src = buffers[i % 2]
        return src.to(dtype)
