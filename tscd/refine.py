"""Pseudo labels (method §2–§4): labels from class scores and CAMs (the thresholds of §3 and the
crop box), the refiner module around ``tscd.ops.varm_refine``, ``refine_cams_with_bkg`` (the
training use of VARM, batched over images) and :class:`PseudoLabeler`, the one path from a model
and a batch to pseudo labels that training, evaluation and the pseudo-label export share.

Conventions: ``cls_labels`` (B, K−1) is the multi-hot image label over the foreground classes;
labels are class indices (0 background, 1…K−1 foreground, ``ignore_index`` 255); a crop box
(B, 4) is (y0, y1, x0, x1) with exclusive ends, the part of the crop that holds the image.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .class_activation import MultiScaleCAM
from .config import check_order
from .constants import IGNORE_INDEX, REFINE_MODES
from .ops.checks import check_dim_equal, check_same_device, check_tensor
from .ops.varm import DEFAULT_DILATIONS, varm_refine

__all__ = [
    "PseudoLabeler", "Refiner", "refine_cams_with_bkg", "pseudo_label", "cam_to_label", "crop_box_mask",
    "apply_crop_box", "class_argmax",
]


def class_argmax(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Index of the largest score along ``dim`` (the first on ties, NaN wins), as ``argmax``.

    Uses ``max(dim).indices``: on the CPU, torch's argmax over a dimension that is not the
    innermost is several times slower than max's; both pick the first maximum.

    Args:
        scores: any tensor, e.g. class scores.
        dim: the dimension reduced.

    Shapes:
        - ``scores``: (B, C, H, W) or any shape.
        - returns: ``scores``' shape without ``dim``.
    """
    return scores.max(dim=dim).indices


def crop_box_mask(crop_box, batch: int, height: int, width: int, device=None,
                  name: str = "crop_box") -> torch.Tensor:
    """A mask that is True inside each image's crop box (y0, y1, x0, x1), ends exclusive.

    Args:
        crop_box: integer boxes, a tensor or array.
        batch: B.
        height: H.
        width: W.
        device: the mask's device.
        name: the argument's name in error messages.

    Shapes:
        - ``crop_box``: (B, 4).
        - returns: (B, H, W) bool.

    Raises:
        ValueError: ``crop_box`` is not an integer (B, 4) array.
    """
    boxes = torch.as_tensor(crop_box, device=device)
    if boxes.shape != (batch, 4) or boxes.is_floating_point() or boxes.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer (B, 4) = ({batch}, 4) array of (y0, y1, x0, x1), got "
                         f"{tuple(boxes.shape)} {boxes.dtype}")
    rows = torch.arange(height, device=boxes.device)[None, :, None]
    cols = torch.arange(width, device=boxes.device)[None, None, :]
    y0, y1, x0, x1 = (boxes[:, i, None, None] for i in range(4))
    return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def apply_crop_box(label: torch.Tensor, crop_box, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """A copy of ``label`` with ``ignore_index`` outside each image's crop box.

    Args:
        label: class indices.
        crop_box: integer (y0, y1, x0, x1) boxes, or None (``label`` is returned).
        ignore_index: the value set outside the boxes.

    Shapes:
        - ``label``: (B, H, W).
        - ``crop_box``: (B, 4).
        - returns: (B, H, W).
    """
    if crop_box is None:
        return label
    inside = crop_box_mask(crop_box, *label.shape, device=label.device)
    return torch.where(inside, label, torch.full_like(label, ignore_index))


def _best_class(cam: torch.Tensor, cls_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v, c = max and argmax + 1 over classes of the CAM masked by the image labels."""
    if cls_labels.shape != cam.shape[:2]:
        raise ValueError(f"cls_labels must have shape (B, K-1) = {tuple(cam.shape[:2])}, "
                         f"got {tuple(cls_labels.shape)}")
    value, index = (cam * cls_labels[:, :, None, None].to(cam.dtype)).max(dim=1)
    return value, index + 1


def cam_to_label(cam: torch.Tensor, cls_labels: torch.Tensor, bkg_score: float = 0.45) -> torch.Tensor:
    """Plain CAM label for evaluation: the argmax class, background where the max ≤ ``bkg_score``.

    Args:
        cam: foreground CAMs in [0, 1].
        cls_labels: image-level labels; absent classes are never chosen.
        bkg_score: the background threshold.

    Shapes:
        - ``cam``: (B, K−1, H, W).
        - ``cls_labels``: (B, K−1).
        - returns: (B, H, W) int64.

    Raises:
        ValueError: ``cls_labels`` does not match ``cam``.
    """
    value, label = _best_class(cam, cls_labels)
    return label.masked_fill(value <= bkg_score, 0)


def pseudo_label(cam: torch.Tensor, cls_labels: torch.Tensor, crop_box: torch.Tensor | None = None,
                 high: float = 0.55, low: float = 0.35, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pseudo label of method §3 from a CAM, without refinement.

    The class where the largest score of a present class is > ``high``, ``ignore_index`` where it
    lies in (``low``, ``high``], background where it is ≤ ``low``, ``ignore_index`` outside the
    crop box.

    Args:
        cam: foreground CAMs in [0, 1].
        cls_labels: image-level labels.
        crop_box: integer (y0, y1, x0, x1) boxes, or None.
        high: the foreground threshold.
        low: the background threshold.
        ignore_index: the label of uncertain pixels.

    Shapes:
        - ``cam``: (B, K−1, H, W).
        - ``cls_labels``: (B, K−1).
        - ``crop_box``: (B, 4).
        - returns: (B, H, W) int64.

    Raises:
        ValueError: ``low`` exceeds ``high``, or ``cls_labels`` does not match ``cam``.
    """
    check_order("low", low, "high", high)
    value, label = _best_class(cam, cls_labels)
    label = label.masked_fill(value <= high, ignore_index).masked_fill(value <= low, 0)
    return apply_crop_box(label, crop_box, ignore_index)


class Refiner(nn.Module):
    """The refiner of method §4 as a module: [`tscd.ops.varm_refine`][tscd.ops.varm_refine] with fixed
    settings, TSCD's VARM or AFA's PAR by ``mode``.

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
    crop_box=None,
    scale: float = 0.5,
    refiner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Refined pseudo labels from CAMs, the training use of method §4 (AFA's ``refine_cams_with_bkg_v2``).

    At size (⌊H·scale⌋, ⌊W·scale⌋) (bilinear, ``align_corners=False``, as AFA) the CAMs
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
        crop_box: None (the whole image) or integer (y0, y1, x0, x1) boxes with exclusive ends,
            the region of each image that is not padding.
        scale: the refinement runs at this fraction of the image size, in (0, 1].
        refiner: ``(images, masks) -> refined masks`` at the images' size; default
            [`Refiner()`][tscd.refine.Refiner].

    Shapes:
        - ``images``: (B, 3, H, W).
        - ``cams``: (B, K−1, h, w).
        - ``cls_labels``: (B, K−1).
        - ``crop_box``: (B, 4).
        - returns: (B, H, W).

    Returns:
        int64 labels: 0 background, 1…K−1 the classes, ``ignore_index`` uncertain.

    Raises:
        TypeError: an argument is not a tensor (floating point for ``images`` and ``cams``).
        ValueError: the shapes, devices, ``scale`` or ``crop_box`` are invalid.
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
    small = (int(h * scale), int(w * scale))
    if not 0 < scale <= 1 or min(small) < 1:
        raise ValueError(f"scale must be in (0, 1] and leave at least one pixel of {h}x{w}, got {scale}")
    if refiner is None:
        refiner = Refiner()

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
        keys.gather(1, class_argmax(part).flatten(1)).view(b, h, w) for part in refined.split(kp, dim=1)
    )

    label = label_high.masked_fill(label_high == 0, ignore_index)
    label = label.masked_fill((label_high == 0) & (label_low == 0), 0)
    if crop_box is not None:
        label = label.masked_fill(~crop_box_mask(crop_box, b, h, w, images.device),
                                  ignore_index)
    return label


class PseudoLabeler:
    """Model + batch → CAMs → thresholds → refinement → pseudo labels (method §2–§4).

    The one path from a model and a batch to pseudo labels, shared by training, evaluation and the
    pseudo-label export. [`cams`][tscd.class_activation.MultiScaleCAM] gives the CAMs,
    [`labels`][tscd.refine.PseudoLabeler.labels] the labels from them, and calling the object,
    ``labeler(model, images, rgb, cls_labels, crop_box)``, does both and returns
    ``(cams, labels)``. Runs without gradient.

    Args:
        cams: the multi-scale CAM of method §2 (default [`MultiScaleCAM()`][tscd.class_activation.MultiScaleCAM]).
        high: background score of method §3: a pixel is its class where the CAM exceeds ``high``.
        low: background score of method §3: uncertain (ignored) between ``low`` and ``high``,
            background below ``low``.
        mode: ``"varm"`` (TSCD), ``"par"`` (AFA) or ``"none"`` (the plain CAM labels of §3).
        dilations: the refiner's neighbourhood.
        num_iter: the refiner's iterations.
        scale: the refinement runs at this fraction of the image size (§4).
        backend: the ``tscd.ops`` backend of the refinement.

    Raises:
        ValueError: ``mode`` is unknown or ``low`` exceeds ``high``.
    """

    def __init__(self, cams: MultiScaleCAM | None = None, high: float = 0.55, low: float = 0.35,
                 mode: str = "varm", dilations=DEFAULT_DILATIONS, num_iter: int = 10, scale: float = 0.5,
                 backend: str = "auto"):
        if mode not in REFINE_MODES:
            raise ValueError(f"mode must be one of {REFINE_MODES}, got {mode!r}")
        check_order("low", low, "high", high)
        self.cams = MultiScaleCAM() if cams is None else cams
        self.high, self.low, self.scale, self.mode = high, low, scale, mode
        self.refiner = None if mode == "none" else Refiner(dilations, num_iter, mode, backend)

    @torch.no_grad()
    def labels(self, rgb: torch.Tensor, cams: torch.Tensor, cls_labels: torch.Tensor, crop_box=None,
               high: float | None = None, low: float | None = None) -> torch.Tensor:
        """Pseudo labels from CAMs: thresholds (§3), then the refinement (§4) unless ``mode="none"``.

        Args:
            rgb: the images in [0, 1].
            cams: their CAMs, from [`cams`][tscd.class_activation.MultiScaleCAM].
            cls_labels: image-level labels.
            crop_box: integer (y0, y1, x0, x1) boxes, or None.
            high: replaces the ``high`` threshold for this call.
            low: replaces the ``low`` threshold for this call (evaluation asks for full labels
                with high = low).

        Shapes:
            - ``rgb``: (B, 3, H, W).
            - ``cams``: (B, K−1, H, W).
            - ``cls_labels``: (B, K−1).
            - ``crop_box``: (B, 4).
            - returns: (B, H, W).

        Returns:
            int64 labels, ``IGNORE_INDEX`` (255) where uncertain or outside the crop box.
        """
        high = self.high if high is None else high
        low = self.low if low is None else low
        if self.refiner is None:
            return pseudo_label(cams, cls_labels, crop_box, high=high, low=low)
        return refine_cams_with_bkg(rgb, cams, cls_labels, high=high, low=low, crop_box=crop_box,
                                    scale=self.scale, refiner=self.refiner)

    def __call__(self, model, images: torch.Tensor, rgb: torch.Tensor, cls_labels: torch.Tensor,
                 crop_box=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cams (B, K−1, H, W), labels (B, H, W)) of normalised images and their [0, 1] view ``rgb``."""
        cams = self.cams(model, images)
        return cams, self.labels(rgb, cams, cls_labels, crop_box)

    def __repr__(self) -> str:
        return (f"PseudoLabeler(cams={self.cams}, high={self.high}, low={self.low}, mode={self.mode!r}, "
                f"scale={self.scale}, refiner={self.refiner})")
