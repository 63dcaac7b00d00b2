"""Augmentation of method §9 and normalisation, on uint8 HWC numpy images.

Training: random rescale by a factor in ``scale_range`` (bilinear image, nearest mask),
horizontal flip, optional colour jitter (torchvision v2), normalisation, then a random crop
padded with zeros (the normalised mean colour) that returns the *crop box* — the part of the
crop covered by the image; refinement and losses treat everything outside it as ignore.
Randomness comes from an explicit ``numpy.random.Generator`` so that a sample's augmentation
is reproducible from its seed.

Both transforms return the fields of a dataset item: ``image`` (3,H,W) normalised, ``rgb``
(3,H,W) the same pixels in [0, 1] (what refinement and the dense energy loss look at; padding
is the mean colour), ``box`` (4,) and, when a mask was given, ``mask`` (H,W).
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD


def normalize(img: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (3,H,W) -> float32 (3,H,W), ``(x/255 - mean) / std``."""
    return F.normalize(img.float() / 255.0, list(mean), list(std))


def denormalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(B,3,H,W) normalised -> (B,3,H,W) in [0, 1] (padding becomes the mean colour)."""
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * s + m).clamp(0, 1)


def _fields(image: torch.Tensor, mean, std, box: torch.Tensor, mask: torch.Tensor | None) -> dict:
    fields = {"image": image, "rgb": denormalize(image[None], mean, std)[0], "box": box}
    if mask is not None:
        fields["mask"] = mask
    return fields


def random_crop(image: torch.Tensor, mask: torch.Tensor | None, size: int, rng: np.random.Generator):
    """Pad with zeros to at least ``size``, then take a random size×size window.

    image (C,H,W) float; mask (H,W) or None (padded with 255). Returns (image, mask, box)
    with box = tensor([y0, y1, x0, x1]) of the image's pixels inside the crop.
    """
    _, h, w = image.shape
    ph, pw = max(size, h), max(size, w)
    oy, ox = int(rng.integers(0, ph - h + 1)), int(rng.integers(0, pw - w + 1))
    cy, cx = int(rng.integers(0, ph - size + 1)), int(rng.integers(0, pw - size + 1))
    canvas = image.new_zeros((image.shape[0], ph, pw))
    canvas[:, oy:oy + h, ox:ox + w] = image
    out = canvas[:, cy:cy + size, cx:cx + size]
    if mask is not None:
        mcanvas = mask.new_full((ph, pw), IGNORE_INDEX)
        mcanvas[oy:oy + h, ox:ox + w] = mask
        mask = mcanvas[cy:cy + size, cx:cx + size]
    y0, x0 = max(oy - cy, 0), max(ox - cx, 0)
    y1, x1 = min(oy + h - cy, size), min(ox + w - cx, size)
    return out.contiguous(), mask, torch.tensor([y0, y1, x0, x1])


class TrainTransform:
    """Rescale → flip → (colour jitter) → normalise → padded random crop with its box."""

    def __init__(self, crop_size: int, scale_range=(1.0, 1.0), flip: bool = True, color_jitter: float = 0.0,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        self.crop_size, self.scale_range, self.flip = int(crop_size), (float(lo), float(hi)), bool(flip)
        self.jitter = v2.ColorJitter(color_jitter, color_jitter, color_jitter, min(color_jitter / 4, 0.1)) \
            if color_jitter > 0 else None
        self.mean, self.std = mean, std

    def __call__(self, img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> dict:
        """img uint8 (H,W,3), mask (H,W) or None -> item fields (S×S crop, see the module)."""
        image = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        target = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).long()
        lo, hi = self.scale_range
        if hi > lo or lo != 1.0:
            s = rng.uniform(lo, hi)
            h, w = image.shape[1:]
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            image = F.resize(image, [nh, nw], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
            if target is not None:
                target = F.resize(target[None], [nh, nw], interpolation=v2.InterpolationMode.NEAREST)[0]
        if self.flip and rng.random() < 0.5:
            image = image.flip(-1)
            target = None if target is None else target.flip(-1)
        if self.jitter is not None:
            torch_rng = torch.Generator().manual_seed(int(rng.integers(2**62)))
            state = torch.get_rng_state()  # v2 draws from the global generator: isolate it
            torch.set_rng_state(torch_rng.get_state())
            image = self.jitter(image)
            torch.set_rng_state(state)
        image, target, box = random_crop(normalize(image, self.mean, self.std), target, self.crop_size, rng)
        return _fields(image, self.mean, self.std, box, target)


class EvalTransform:
    """Normalise only (full image, no crop)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean, self.std = mean, std

    def __call__(self, img: np.ndarray, mask: np.ndarray | None = None) -> dict:
        """img uint8 (H,W,3), mask (H,W) or None -> item fields (the whole image, see the module)."""
        image = normalize(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), self.mean, self.std)
        box = torch.tensor([0, img.shape[0], 0, img.shape[1]])
        target = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).long()
        return _fields(image, self.mean, self.std, box, target)
