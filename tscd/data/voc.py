"""PASCAL VOC 2012 + SBD (method §11).

Layout under ``root``::

    JPEGImages/<name>.jpg
    SegmentationClassAug/<name>.png      palette indices 0..20, 255 = boundary/ignore
    ImageSets/Segmentation/<split>.txt   one name per line (train_aug, val, ...); or <split>.txt in root

Image-level labels come from ``label_file`` (AFA's ``cls_labels_onehot.npy`` or JSON, see
:mod:`tscd.data.label_file`) or, without one, from the masks (the set of classes present).
Names in the lists are confined to the root (:func:`tscd.data.base.read_names`).
"""
from __future__ import annotations

from pathlib import Path

from .base import DatasetError, MaskFolderDataset, read_names
from .label_file import load_label_file

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def check_root(root, dataset: str, required: tuple[str, ...]) -> Path:
    if root is None:
        raise DatasetError(f"the {dataset} dataset needs a root: pass --data-root DIR (or data.root=DIR)")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{dataset} root not found: {root}")
    for sub in required:
        if not (root / sub).is_dir():
            raise DatasetError(f"{dataset} root {root} has no {sub}/ folder (expected layout: see tscd.data.{dataset})")
    return root


def find_name_list(root: Path, split: str) -> Path:
    for candidate in (root / "ImageSets" / "Segmentation" / f"{split}.txt", root / f"{split}.txt"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"no name list for split '{split}' under {root} "
                       f"(looked for ImageSets/Segmentation/{split}.txt and {split}.txt)")


class VOCStyleDataset(MaskFolderDataset):
    """A root laid out like VOC: ``JPEGImages/<name>.jpg``, ``<mask_dir>/<name>.png`` and name
    lists per split. Subclasses set the dataset's name, its mask folder and default split.
    ``check`` (default True): read every file now (:meth:`MaskFolderDataset.check`)."""

    dataset_name: str
    mask_dir: str
    default_split: str

    def __init__(self, root, split: str | None = None, train: bool = True, transform=None, label_file=None,
                 seed: int = 0, check: bool = True):
        root = check_root(root, self.dataset_name, ("JPEGImages", self.mask_dir))
        split = split or self.default_split
        name_list = find_name_list(root, split)
        names = read_names(name_list)
        labels = load_label_file(label_file) if label_file else None
        super().__init__(root, split, names, train, transform, labels, seed, f"label file {label_file}")
        self.sources = (name_list, Path(label_file)) if label_file else (name_list,)
        if check:
            self.check()

    def image_path(self, name: str) -> Path:
        return self.root / "JPEGImages" / f"{name}.jpg"

    def mask_path(self, name: str) -> Path:
        return self.root / self.mask_dir / f"{name}.png"


class VOCDataset(VOCStyleDataset):
    num_classes = 21
    class_names = VOC_CLASSES
    classes_from = "VOC"
    dataset_name, mask_dir, default_split = "voc", "SegmentationClassAug", "train_aug"
