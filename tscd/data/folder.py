"""Your own tagged images: the ``folder`` dataset.

Layout under ``root``::

    images/<name>.jpg | .jpeg | .png    the images
    classes.txt                          foreground class names, one per line (background is class 0)
    train.csv, val.csv, <split>.csv      header ``image,labels``; ``labels`` = class names joined by ";"
    masks/<name>.png                     optional: class ids (0 background, 255 ignore), for evaluation

``image`` is a file name in ``images/`` (``cat1.jpg``) or its stem (``cat1``). Everything is
checked when the dataset is built: an unknown class name, a missing image, a row without
labels, a duplicate row, or a mask whose size differs from its image raises
:class:`DatasetError` naming the file and line. Images without a mask evaluate as all-ignore.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..constants import IGNORE_INDEX
from .base import DatasetError, MaskFolderDataset, load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_classes(path: Path) -> tuple[str, ...]:
    """Foreground class names of ``classes.txt`` (blank lines skipped)."""
    if not path.is_file():
        raise DatasetError(f"class list not found: {path} (one foreground class name per line)")
    names, seen = [], {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name.lower() == "background":
            raise DatasetError(f"{path} line {lineno}: 'background' is implicit (class 0); list only the "
                               "foreground classes")
        if name in seen:
            raise DatasetError(f"{path} line {lineno}: class '{name}' is already listed on line {seen[name]}")
        seen[name] = lineno
        names.append(name)
    if not names:
        raise DatasetError(f"{path} lists no class")
    return tuple(names)


def _image_size(path: Path, what: str) -> tuple[int, int]:
    """(H, W) from the file header."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"cannot read {what} {path}: {err}") from None


class FolderDataset(MaskFolderDataset):
    """Images with image-level tags from a CSV file; items as :class:`tscd.data.base.MaskFolderDataset`.

    ``num_classes`` = 1 + the number of lines of ``classes.txt``.
    """

    def __init__(self, root, split: str = "train", train: bool = True, transform=None, seed: int = 0):
        if root is None:
            raise DatasetError("the folder dataset needs a root: pass --data-root DIR (or data.root=DIR)")
        root = Path(root)
        if not (root / "images").is_dir():
            raise DatasetError(f"folder dataset root {root} has no images/ folder (see tscd.data.folder)")
        foreground = read_classes(root / "classes.txt")
        self.class_names = ("background",) + foreground
        self.num_classes = len(self.class_names)
        self.files: dict[str, Path] = {}
        labels = self._read_split(root, root / f"{split}.csv", {n: i for i, n in enumerate(foreground)})
        super().__init__(root, list(self.files), train, transform, labels, seed)

    def _find_image(self, root: Path, entry: str) -> Path | None:
        direct = root / "images" / entry
        if direct.suffix.lower() in IMAGE_SUFFIXES and direct.is_file():
            return direct
        for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
            candidate = root / "images" / f"{entry}{suffix}"
            if candidate.is_file():
                return candidate
        return None

    def _read_split(self, root: Path, path: Path, index: dict[str, int]) -> dict[str, np.ndarray]:
        """Image-level labels name -> (K−1,) of a split CSV; fills ``self.files``."""
        if not path.is_file():
            raise DatasetError(f"split file not found: {path} (columns image,labels)")
        labels: dict[str, np.ndarray] = {}
        lines: dict[str, int] = {}
        with open(path, newline="") as f:
            rows = csv.reader(f)
            header = [h.strip().lower() for h in next(rows, [])]
            if header[:2] != ["image", "labels"]:
                raise DatasetError(f"{path} line 1: the header must be 'image,labels', got {','.join(header)!r}")
            for row in rows:
                lineno = rows.line_num
                if not any(cell.strip() for cell in row):
                    continue
                entry = row[0].strip()
                tags = [t.strip() for t in ";".join(row[1:]).split(";") if t.strip()]
                where = f"{path} line {lineno}"
                if not tags:
                    raise DatasetError(f"{where}: image '{entry}' has no labels (class names separated by ';')")
                unknown = [t for t in tags if t not in index]
                if unknown:
                    raise DatasetError(f"{where}: unknown class '{unknown[0]}' (classes.txt lists "
                                       f"{', '.join(index)})")
                image = self._find_image(root, entry)
                if image is None:
                    raise DatasetError(f"{where}: image '{entry}' not found in {root / 'images'}")
                name = image.stem
                if name in lines:
                    raise DatasetError(f"{where}: image '{name}' is already listed on line {lines[name]}")
                mask = root / "masks" / f"{name}.png"
                if mask.is_file() and _image_size(mask, "mask") != _image_size(image, "image"):
                    raise DatasetError(f"{where}: mask {mask} is {_image_size(mask, 'mask')}, its image {image} "
                                       f"is {_image_size(image, 'image')}")
                vector = np.zeros(len(index), np.float32)
                vector[[index[t] for t in tags]] = 1.0
                labels[name], lines[name], self.files[name] = vector, lineno, image
        if not labels:
            raise DatasetError(f"{path} lists no image")
        return labels

    def image_path(self, name: str) -> Path:
        return self.files[name]

    def mask_path(self, name: str) -> Path:
        return self.root / "masks" / f"{name}.png"

    def __getitem__(self, key):
        name = self.names[int(key[0] if isinstance(key, tuple) else key)]
        if self.train or self.mask_path(name).is_file():
            item = super().__getitem__(key)
            if "mask" in item:
                self._check_mask(name, item["mask"])
            return item
        img = load_image(self.image_path(name))  # no mask: every pixel is ignored in evaluation
        fields = self.transform(img, np.full(img.shape[:2], IGNORE_INDEX, np.int64))
        return {**fields, "label": torch.from_numpy(self.labels[name]), "name": name}

    def _check_mask(self, name: str, mask) -> None:
        bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= self.num_classes))
        if bool(bad.any()):
            raise DatasetError(f"mask {self.mask_path(name)} has class {int(mask[bad].max())}, but "
                               f"classes.txt defines {self.num_classes - 1} classes (ids 1..{self.num_classes - 1})")
