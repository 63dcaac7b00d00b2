"""Pseudo labels (method §2–§4): the refiner module around ``tscd.ops.varm_refine``,
``refine_cams_with_bkg`` (the training use of VARM, batched over images) and
:class:`PseudoLabeler`, the one path from a model and a batch to pseudo labels that training,
evaluation and the pseudo-label export share."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import cam as cam_utils
from .constants import IGNORE_INDEX, REFINE_MODES
from .ops._checks import check_dim_equal, check_same_device, check_tensor
from .ops.varm import DEFAULT_DILATIONS, varm_refine


class VARM(nn.Module):
    """The refiner of method §4 as a module: [`tscd.ops.varm_refine`][tscd.ops.varm_refine] with fixed settings.

    No parameters, no gradient.

    Args:
        dilations: the neighbourhood's dilations.
        num_iter: propagation iterations.
        mode: ``"varm"`` (TSCD) or ``"par"`` (AFA's PAR).
        backend: the ``tscd.ops`` backend.
    """

    def __init__(self, dilations=DEFAULT_DILATIONS, num_iter: int = 10, mode: str = "varm", backend: str = "auto"):
        super().__init__()
        self.dilations = tuple(dilations)
        self.num_iter = num_iter
        self.mode = mode
        self.backend = backend

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The refined masks.

        Args:
            images: the images, with values in [0, 1].
            masks: the masks to refine, at any size.

        Shapes:
            - ``images``: (B, 3, H, W).
            - ``masks``: (B, K, h, w).
            - returns: (B, K, H, W).
        """
        return varm_refine(images, masks, dilations=self.dilations, num_iter=self.num_iter, mode=self.mode,
                           backend=self.backend)

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, num_iter={self.num_iter}, mode={self.mode!r}"


def _present_channels(cls_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the channel ids (background 0, class c at c) of background and the present
    classes, ascending, padded to the largest count over the batch.

    Returns (keys (B, Kp) long, valid (B, Kp) bool); padded entries are not valid.
    """
    b = cls_labels.shape[0]
    present = torch.cat([cls_labels.new_ones(b, 1, dtype=torch.bool), cls_labels != 0], dim=1)
    count = present.sum(dim=1)
    # Present channels first, each group in ascending channel order.
    channel = torch.arange(present.shape[1], device=present.device)
    order = torch.argsort((~present) * present.shape[1] + channel, dim=1)
    kp = int(count.max())
    keys = order[:, :kp]
    valid = torch.arange(kp, device=present.device) < count[:, None]
    return keys, valid


@torch.no_grad()
def refine_cams_with_bkg(
    images: torch.Tensor,
    cams: torch.Tensor,
    cls_labels: torch.Tensor,
    *,
    high: float = 0.55,
    low: float = 0.35,
    ignore_index: int = IGNORE_INDEX,
    crop_boxes=None,
    downscale: float = 0.5,
    refiner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Refined pseudo labels from CAMs, the training use of method §4 (AFA's ``refine_cams_with_bkg_v2``).

    At size (⌊H·downscale⌋, ⌊W·downscale⌋) (bilinear, ``align_corners=False``, as AFA) the CAMs
    with a constant background channel prepended, once of value ``high`` and once ``low``,
    restricted to background and the present classes, go through a softmax over those channels
    and the refiner; the result is upsampled to (H, W) and its argmax mapped back to class ids.
    The label is the "high" label where it is foreground, 0 where both labels are background, and
    ``ignore_index`` where only the "low" label is foreground and outside the crop box.

    Batched: every image keeps the channels of its present classes (padded to the largest count in
    the batch); padded channels get logit −inf, hence probability 0, stay 0 under the (linear)
    refinement and upsampling, and never win the argmax. Runs without gradient.

    Args:
        images: the de-normalised input in [0, 1].
        cams: foreground CAMs in [0, 1], at any size (usually (H, W)).
        cls_labels: image-level labels (nonzero = present).
        high: the background score of the "high" label.
        low: the background score of the "low" label.
        ignore_index: the label value of uncertain pixels.
        crop_boxes: None (the whole image) or integer (y0, y1, x0, x1) boxes with exclusive ends,
            the region of each image that is not padding.
        downscale: the refinement runs at this fraction of the image size, in (0, 1].
        refiner: ``(images, masks) -> refined masks`` at the images' size; default
            [`VARM()`][tscd.refine.VARM].

    Shapes:
        - ``images``: (B, 3, H, W).
        - ``cams``: (B, K−1, h, w).
        - ``cls_labels``: (B, K−1).
        - ``crop_boxes``: (B, 4).
        - returns: (B, H, W).

    Returns:
        int64 labels: 0 background, 1…K−1 the classes, ``ignore_index`` uncertain.

    Raises:
        TypeError: an argument is not a tensor (floating point for ``images`` and ``cams``).
        ValueError: the shapes, devices, ``downscale`` or ``crop_boxes`` are invalid.
    """
    check_tensor("images", images, "(B, 3, H, W)", (4,))
    if images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    check_tensor("cams", cams, "(B, K-1, h, w)", (4,))
    check_tensor("cls_labels", cls_labels, "(B, K-1)", (2,), floating=False)
    b, _, h, w = images.shape
    check_dim_equal("the batch sizes of images, cams and cls_labels", images=b, cams=cams.shape[0],
                    cls_labels=cls_labels.shape[0])
    check_dim_equal("the class counts of cams and cls_labels", cams=cams.shape[1], cls_labels=cls_labels.shape[1])
    check_same_device(images=images, cams=cams, cls_labels=cls_labels)
    small = (int(h * downscale), int(w * downscale))
    if not 0 < downscale <= 1 or min(small) < 1:
        raise ValueError(f"downscale must be in (0, 1] and leave at least one pixel of {h}x{w}, got {downscale}")
    if refiner is None:
        refiner = VARM()

    keys, valid = _present_channels(cls_labels)
    kp = keys.shape[1]
    cams = cams.to(torch.promote_types(images.dtype, cams.dtype))
    small_images = F.interpolate(images.to(cams.dtype), size=small, mode="bilinear", align_corners=False)
    probs = []
    for bkg in (high, low):
        with_bkg = torch.cat([torch.full_like(cams[:, :1], bkg), cams], dim=1)
        chosen = with_bkg.gather(1, keys[:, :, None, None].expand(-1, -1, *cams.shape[-2:]))
        chosen = F.interpolate(chosen, size=small, mode="bilinear", align_corners=False)
        probs.append(chosen.masked_fill(~valid[:, :, None, None], float("-inf")).softmax(dim=1))
    # Both background levels share the image, hence the weights: refine them in one call.
    refined = refiner(small_images, torch.cat(probs, dim=1))
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
    label_high, label_low = (
        keys.gather(1, cam_utils.class_argmax(part).flatten(1)).view(b, h, w) for part in refined.split(kp, dim=1)
    )

    label = label_high.masked_fill(label_high == 0, ignore_index)
    label = label.masked_fill((label_high == 0) & (label_low == 0), 0)
    if crop_boxes is not None:
        label = label.masked_fill(~cam_utils.crop_box_mask(crop_boxes, b, h, w, images.device, "crop_boxes"),
                                  ignore_index)
    return label


class PseudoLabeler:
    """Model + batch → CAMs → thresholds → refinement → pseudo labels (method §2–§4).

    The one path from a model and a batch to pseudo labels, shared by training, evaluation and the
    pseudo-label export. [`cams`][tscd.refine.PseudoLabeler.cams] gives the CAMs,
    [`labels`][tscd.refine.PseudoLabeler.labels] the labels from them, and calling the object,
    ``labeler(model, images, rgb, cls_labels, crop_boxes)``, does both and returns
    ``(cams, labels)``. Runs without gradient.

    Args:
        scales: the multi-scale CAM's scales (method §2).
        high: background score of method §3: a pixel is its class where the CAM exceeds ``high``.
        low: background score of method §3: uncertain (ignored) between ``low`` and ``high``,
            background below ``low``.
        refine: ``"varm"`` (TSCD), ``"par"`` (AFA) or ``"none"`` (the plain CAM labels of §3).
        dilations: the refiner's neighbourhood.
        num_iter: the refiner's iterations.
        downscale: the refinement runs at this fraction of the image size (§4).
        backend: the ``tscd.ops`` backend of the refinement.
        flip: whether each scale also runs the flipped images (§2; False halves the passes).

    Raises:
        ValueError: ``refine`` is unknown or ``low`` exceeds ``high``.
    """

    def __init__(self, scales: Sequence[float] = (1.0, 0.5, 1.5), high: float = 0.55, low: float = 0.35,
                 refine: str = "varm", dilations=DEFAULT_DILATIONS, num_iter: int = 10, downscale: float = 0.5,
                 backend: str = "auto", flip: bool = True):
        if refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
        if not low <= high:
            raise ValueError(f"low ({low}) must not exceed high ({high})")
        self.scales, self.high, self.low, self.downscale, self.refine = tuple(scales), high, low, downscale, refine
        self.flip = flip
        self.refiner = None if refine == "none" else VARM(dilations, num_iter, refine, backend)

    @torch.no_grad()
    def cams(self, model, images: torch.Tensor, scale1_cam: torch.Tensor | None = None) -> torch.Tensor:
        """Multi-scale CAMs in [0, 1] of normalised images ([`multi_scale_cam`][tscd.cam.multi_scale_cam]).

        Args:
            model: a model with ``forward_cam``, e.g. [`TSCD`][tscd.models.TSCD].
            images: normalised images.
            scale1_cam: the model's raw CAM of the images at scale 1 when already computed (a
                training step's own forward), so that pass is not run again.

        Shapes:
            - ``images``: (B, 3, H, W).
            - ``scale1_cam``: (B, K−1, h, w).
            - returns: (B, K−1, H, W).
        """
        return cam_utils.multi_scale_cam(model, images, self.scales, flip=self.flip, scale1_cam=scale1_cam)

    @torch.no_grad()
    def labels(self, rgb: torch.Tensor, cams: torch.Tensor, cls_labels: torch.Tensor, crop_boxes=None,
               high: float | None = None, low: float | None = None) -> torch.Tensor:
        """Pseudo labels from CAMs: thresholds (§3), then the refinement (§4) unless ``refine="none"``.

        Args:
            rgb: the images in [0, 1].
            cams: their CAMs, from [`cams`][tscd.refine.PseudoLabeler.cams].
            cls_labels: image-level labels.
            crop_boxes: integer (y0, y1, x0, x1) boxes, or None.
            high: replaces the ``high`` threshold for this call.
            low: replaces the ``low`` threshold for this call (evaluation asks for full labels
                with high = low).

        Shapes:
            - ``rgb``: (B, 3, H, W).
            - ``cams``: (B, K−1, H, W).
            - ``cls_labels``: (B, K−1).
            - ``crop_boxes``: (B, 4).
            - returns: (B, H, W).

        Returns:
            int64 labels, ``IGNORE_INDEX`` (255) where uncertain or outside the crop box.
        """
        high = self.high if high is None else high
        low = self.low if low is None else low
        if self.refiner is None:
            return cam_utils.pseudo_label(cams, cls_labels, crop_boxes, high=high, low=low)
        return refine_cams_with_bkg(rgb, cams, cls_labels, high=high, low=low, crop_boxes=crop_boxes,
                                    downscale=self.downscale, refiner=self.refiner)

    def __call__(self, model, images: torch.Tensor, rgb: torch.Tensor, cls_labels: torch.Tensor,
                 crop_boxes=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cams (B, K−1, H, W), labels (B, H, W)) of normalised images and their [0, 1] view ``rgb``."""
        cams = self.cams(model, images)
        return cams, self.labels(rgb, cams, cls_labels, crop_boxes)

    def __repr__(self) -> str:
        return (f"PseudoLabeler(scales={self.scales}, flip={self.flip}, high={self.high}, low={self.low}, "
                f"refine={self.refine!r}, downscale={self.downscale}, refiner={self.refiner})")
