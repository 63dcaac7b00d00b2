"""A procedurally generated WSSS dataset: coloured shapes on cluttered, textured backgrounds.

Every image is a pure function of ``(seed, split, index)``, generated on the fly with
vectorised numpy, cheaply enough for the training split to be a stream of fresh images drawn
while the network trains (docs/demo.md, "Where the time goes"). A class is a *shape* (disk,
square, triangle, cross, ring); each object gets a random colour, a texture (plain, stripes or
checks: random, or with ``textures="class"`` one family per class), a random size, rotation and
place; objects may occlude each other.
Backgrounds mix random gratings, noise and clutter (lines and small blobs in random colours
that belong to no class). Image-level labels are the classes whose pixels survive occlusion,
so labels and masks always agree.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..constants import IGNORE_INDEX
from .transforms import EvalTransform, TrainTransform

CLASSES = ("background", "disk", "square", "triangle", "cross", "ring")
_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}
_MIN_PIXELS = 6  # an object occluded below this many visible pixels is dropped from the labels


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of shape ``kind`` (1..5) in the rotated, centred coordinates (u, v)."""
    if kind == 1:  # disk
        return u * u + v * v <= r * r
    if kind == 2:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if kind == 3:  # equilateral triangle: three half-planes at distance r/2 from the centre
        inside = np.ones(u.shape, bool)
        for k in range(3):
            a = np.pi / 2 + 2 * np.pi * k / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.5 * r
        return inside
    if kind == 4:  # plus-shaped cross
        au, av = np.abs(u), np.abs(v)
        arm = 0.3 * r
        return ((au <= r) & (av <= arm)) | ((av <= r) & (au <= arm))
    if kind == 5:  # ring
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    raise ValueError(f"unknown shape {kind}")


TEXTURES = ("plain", "stripes", "checks")
# textures="class": squares wear checks, triangles stripes, the others are plain (told apart by
# shape alone); period, angle and colours stay random
CLASS_TEXTURES = {1: "plain", 2: "checks", 3: "stripes", 4: "plain", 5: "plain"}
TEXTURE_MODES = ("random", "class")


def _check_textures(textures: str) -> str:
    if textures not in TEXTURE_MODES:
        raise ValueError(f"synthetic textures must be one of {TEXTURE_MODES}, got {textures!r}")
    return textures


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, kind: str | None = None) -> np.ndarray:
    """Pattern in [0, 1] at the pixels (yy, xx) (any shape), of family ``kind`` (random when None)
    with a random period and angle."""
    if kind is None:
        kind = TEXTURES[rng.integers(len(TEXTURES))]
    if kind == "plain":
        return np.zeros(yy.shape, np.float32)
    period = rng.uniform(3.0, 7.0)
    a = rng.uniform(0, np.pi)
    s = (xx * np.cos(a) + yy * np.sin(a)) / period
    if kind == "stripes":
        return (np.floor(s) % 2).astype(np.float32)
    t = (-xx * np.sin(a) + yy * np.cos(a)) / period
    return ((np.floor(s) + np.floor(t)) % 2).astype(np.float32)  # checks


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray, clutter: int) -> np.ndarray:
    """(H, W, 3) float image in [0, 1]: gratings in two random colours + noise + clutter."""
    c1, c2 = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    wave = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(1, 4)):
        a, f, ph = (float(v) for v in (rng.uniform(0, np.pi), rng.uniform(0.05, 0.35), rng.uniform(0, 2 * np.pi)))
        wave += np.sin(xx * (f * math.cos(a)) + yy * (f * math.sin(a)) + ph)
    t = (wave - wave.min()) / (np.ptp(wave) + 1e-6)
    # computed channels first, then laid out (H, W, 3): the same values, with numpy's inner loops
    # running over the pixels instead of over three channels (the faster order, docs/demo.md)
    img = np.ascontiguousarray((c1[:, None, None] * (1 - t) + c2[:, None, None] * t).transpose(1, 2, 0))
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0.02, 0.08))
    # clutter: straight strokes and small blobs that belong to no class
    for _ in range(rng.integers(0, clutter + 1)):
        color = rng.uniform(0, 1, 3)
        if rng.random() < 0.5:
            y0, x0 = rng.uniform(0, size, 2)
            a, half = rng.uniform(0, np.pi), rng.uniform(0.1, 0.5) * size
            along = (xx - x0) * np.cos(a) + (yy - y0) * np.sin(a)
            across = -(xx - x0) * np.sin(a) + (yy - y0) * np.cos(a)
            m = (np.abs(along) <= half) & (np.abs(across) <= rng.uniform(0.5, 1.5))
        else:
            y0, x0 = rng.uniform(0, size, 2)
            m = (yy - y0) ** 2 + (xx - x0) ** 2 <= rng.uniform(1.0, 2.5) ** 2
        img[m] = color
    return img


def _contrasting_colour(rng: np.random.Generator, behind: np.ndarray, min_distance: float = 0.35) -> np.ndarray:
    """A random colour at least ``min_distance`` (mean absolute difference) from ``behind``,
    so that an object is visible against what it covers (its shape stays the class cue)."""
    b0, b1, b2 = (float(b) for b in behind)
    for _ in range(20):
        colour = rng.uniform(0, 1, 3)
        # the mean absolute difference in Python floats: numpy's per-call cost dominates on three numbers
        if (abs(colour[0] - b0) + abs(colour[1] - b1) + abs(colour[2] - b2)) / 3 >= min_distance:
            return colour
    return np.where(behind > 0.5, 0.0, 1.0)


@functools.cache
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only float32 (H, W) row and column indices of a size×size image."""
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    grid.flags.writeable = False
    return grid[0], grid[1]


def generate(seed: int, split: str, index: int, size: int = 64, max_objects: int = 3,
             radius: tuple[float, float] = (0.13, 0.24), clutter: int = 6, textures: str = "random"):
    """One image: (uint8 (H, W, 3), int64 mask (H, W) with class ids 0..5).

    ``textures``: ``"random"`` (plain, stripes or checks for any object: only the shape tells
    the class) or ``"class"`` (each class its own family, :data:`CLASS_TEXTURES`).
    """
    _check_textures(textures)
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    yy, xx = _pixel_grid(size)
    img = _background(rng, size, yy, xx, clutter)
    mask = np.zeros((size, size), np.int64)
    for _ in range(rng.integers(1, max_objects + 1)):
        kind = int(rng.integers(1, len(CLASSES)))
        r = rng.uniform(*radius) * size
        cy, cx = rng.uniform(r * 0.6, size - r * 0.6, 2)
        a = float(rng.uniform(0, 2 * np.pi))
        ca, sa = math.cos(a), math.sin(a)
        dx, dy = xx - float(cx), yy - float(cy)
        u = dx * ca + dy * sa
        v = -dx * sa + dy * ca
        m = _shape_mask(kind, u, v, r)
        behind = img[m].mean(0) if m.any() else np.full(3, 0.5)
        base = _contrasting_colour(rng, behind)
        other = _contrasting_colour(rng, behind)
        # the texture at the object's pixels only (a pattern is a pure function of the position)
        tex = _texture(rng, yy[m], xx[m], CLASS_TEXTURES[kind] if textures == "class" else None)[:, None]
        img[m] = base * (1 - tex) + other * tex
        mask[m] = kind
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return img, mask


def labels_from_mask(mask: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Multi-hot (K-1,) float32 vector of the foreground classes present in ``mask``."""
    counts = np.bincount(mask[mask != ignore_index].ravel(), minlength=num_classes)[:num_classes]
    return (counts[1:] > 0).astype(np.float32)


class SyntheticDataset(torch.utils.data.Dataset):
    """Synthetic shapes (K = 6). Items: dict(image (3,H,W) normalised, rgb (3,H,W) in [0, 1],
    label (K-1,), box (4,) = (y0, y1, x0, x1) of the valid region, name; and mask (H,W)
    outside training).

    ``dataset[i]`` or ``dataset[(i, aug_seed)]`` (the seeded form makes augmentation
    reproducible; see :class:`tscd.data.StreamSampler`).
    """

    num_classes = len(CLASSES)
    class_names = CLASSES

    def __init__(self, split: str = "train", length: int = 1000, image_size: int = 64, max_objects: int = 3,
                 seed: int = 0, transform=None, train: bool | None = None, radius=(0.13, 0.24), clutter: int = 6,
                 textures: str = "random"):
        if split not in _SPLIT_IDS:
            raise ValueError(f"synthetic split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        self.split, self.length, self.size = split, int(length), int(image_size)
        self.max_objects, self.seed = int(max_objects), int(seed)
        self.radius, self.clutter = (float(radius[0]), float(radius[1])), int(clutter)
        self.textures = _check_textures(textures)
        self.train = (split == "train") if train is None else train
        self.transform = transform or (TrainTransform(self.size) if self.train else EvalTransform())

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int):
        """(uint8 image (H,W,3), mask (H,W)) before any transform."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        mask_pixels = lambda m: np.bincount(m.ravel(), minlength=self.num_classes)  # noqa: E731
        img, mask = generate(self.seed, self.split, index, self.size, self.max_objects, self.radius, self.clutter,
                             self.textures)
        counts = mask_pixels(mask)
        for c in np.nonzero((counts > 0) & (counts < _MIN_PIXELS))[0]:
            if c:  # slivers left by occlusion are too small to name: give them to the background
                mask[mask == c] = 0
        return img, mask

    def __getitem__(self, key):
        index, aug_seed = key if isinstance(key, tuple) else (key, key)
        img, mask = self.raw(int(index))
        label = labels_from_mask(mask, self.num_classes)
        if self.train:
            fields = self.transform(img, None, np.random.default_rng([self.seed, 7, int(aug_seed)]))
        else:
            fields = self.transform(img, mask)
        return {**fields, "label": torch.from_numpy(label), "name": f"{self.split}_{index:06d}"}
