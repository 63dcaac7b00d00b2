"""COCO 2014 with per-pixel class masks converted from the instance annotations (spec §11).

Layout under ``root``::

    JPEGImages/<name>.jpg                 e.g. COCO_train2014_000000000009.jpg (train and val together)
    SegmentationClass/<name>.png          class indices 0..80 (0 = background, 255 = ignore)
    ImageSets/Segmentation/<split>.txt    names per split (train, val); or <split>.txt in root

The masks are the usual WSSS conversion: each instance's category mapped to its rank among
the 80 COCO categories (1..80), later instances painted over earlier ones.
"""
from __future__ import annotations

from pathlib import Path

from .base import MaskFolderDataset, read_names
from .voc import check_root, find_name_list, load_label_file


class COCODataset(MaskFolderDataset):
    num_classes = 81
    class_names = ("background",) + tuple(f"class_{i}" for i in range(1, 81))

    def __init__(self, root, split: str = "train", train: bool = True, transform=None, label_file=None,
                 seed: int = 0):
        root = check_root(root, "coco", ("JPEGImages", "SegmentationClass"))
        names = read_names(find_name_list(root, split))
        labels = load_label_file(label_file) if label_file else None
        super().__init__(root, names, train, transform, labels, seed)

    def image_path(self, name: str) -> Path:
        return self.root / "JPEGImages" / f"{name}.jpg"

    def mask_path(self, name: str) -> Path:
        return self.root / "SegmentationClass" / f"{name}.png"
