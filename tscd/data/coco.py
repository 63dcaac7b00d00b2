"""COCO 2014 with per-pixel class masks converted from the instance annotations (method §11).

Layout under ``root``::

    JPEGImages/<name>.jpg                 e.g. COCO_train2014_000000000009.jpg (train and val together)
    SegmentationClass/<name>.png          class indices 0..80 (0 = background, 255 = ignore)
    ImageSets/Segmentation/<split>.txt    names per split (train, val); or <split>.txt in root

The masks are the usual WSSS conversion: each instance's category mapped to its rank among
the 80 COCO categories (1..80), later instances painted over earlier ones.
"""
from __future__ import annotations

from .voc import VOCStyleDataset


class COCODataset(VOCStyleDataset):
    num_classes = 81
    class_names = ("background",) + tuple(f"class_{i}" for i in range(1, 81))
    classes_from = "COCO"
    dataset_name, mask_dir, default_split = "coco", "SegmentationClass", "train"
