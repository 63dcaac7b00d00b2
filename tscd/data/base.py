"""Shared machinery of the datasets stored as image files with palette masks (VOC, COCO)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..constants import IGNORE_INDEX
from .transforms import EvalTransform, TrainTransform


class DatasetError(ValueError):
    """A dataset root, name list, image or mask that cannot be used (the message names the file)."""


def read_names(path: Path) -> list[str]:
    """Image names, one per line (the first whitespace-separated field; blank lines skipped)."""
    if not path.is_file():
        raise DatasetError(f"name list not found: {path}")
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"name list is empty: {path}")
    return names


def load_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB; a missing or corrupt file raises DatasetError naming it."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None


def load_mask(path: Path) -> np.ndarray:
    """int64 (H, W) class indices (palette PNG or grey PNG; ``IGNORE_INDEX`` = ignore)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(f"mask {path} must be a palette or greyscale PNG of class indices, "
                                   f"got mode {im.mode}")
            return np.array(im).astype(np.int64)
    except FileNotFoundError:
        raise DatasetError(f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"cannot read mask {path}: {err}") from None


class MaskFolderDataset(torch.utils.data.Dataset):
    """Images + per-pixel masks listed by name; image-level labels from a label file or the masks.

    Subclasses set ``num_classes``, ``class_names`` and the path layout (:meth:`image_path`,
    :meth:`mask_path`). Items as :class:`tscd.data.synthetic.SyntheticDataset`.
    """

    num_classes: int
    class_names: tuple[str, ...]

    def __init__(self, root, names: list[str], train: bool, transform=None, labels: dict | None = None,
                 seed: int = 0):
        self.root, self.names, self.train = Path(root), names, train
        self.transform = transform or (TrainTransform(320, (0.5, 2.0)) if train else EvalTransform())
        self.labels, self.seed = labels, int(seed)

    def image_path(self, name: str) -> Path:
        raise NotImplementedError

    def mask_path(self, name: str) -> Path:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.names)

    def _label(self, name: str, mask: np.ndarray | None) -> np.ndarray:
        if self.labels is not None:
            if name not in self.labels:
                raise DatasetError(f"no image-level label for '{name}' in the label file")
            return np.asarray(self.labels[name], np.float32).reshape(-1)[: self.num_classes - 1]
        valid = mask[(mask != IGNORE_INDEX)]
        if valid.size and valid.max() >= self.num_classes:
            raise DatasetError(f"mask {self.mask_path(name)} has class {valid.max()} >= {self.num_classes}")
        counts = np.bincount(valid.ravel(), minlength=self.num_classes)
        return (counts[1:] > 0).astype(np.float32)

    def __getitem__(self, key):
        index, aug_seed = key if isinstance(key, tuple) else (key, key)
        name = self.names[int(index)]
        img = load_image(self.image_path(name))
        need_mask = not self.train or self.labels is None
        mask = load_mask(self.mask_path(name)) if need_mask else None
        if mask is not None and mask.shape != img.shape[:2]:
            raise DatasetError(f"mask {self.mask_path(name)} is {mask.shape}, its image is {img.shape[:2]}")
        label = torch.from_numpy(self._label(name, mask))
        if self.train:
            fields = self.transform(img, None, np.random.default_rng([self.seed, 7, int(aug_seed)]))
        else:
            fields = self.transform(img, mask)
        return {**fields, "label": label, "name": name}
