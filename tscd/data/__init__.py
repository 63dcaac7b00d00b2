"""Datasets by name (``DATASETS``, :mod:`tscd.data.registry`), the seeded sample stream used for
training and collation (:mod:`tscd.data.loader`).

A dataset builder takes ``(cfg, split, train)`` and returns a Dataset whose items are dicts
with ``image`` (3,H,W) normalised, ``rgb`` (3,H,W) the same pixels in [0, 1] (what the
refinement and the dense energy loss look at), ``label`` (K-1,) multi-hot, ``box`` (4,) crop
box (y0, y1, x0, x1), ``name`` and, outside training, ``mask`` (H,W) with 255 = ignore.
New datasets register with :func:`register_dataset`. ``data.num_classes`` unset (None) means
the dataset's own class count (:func:`dataset_num_classes`); every file-based dataset checks
all its files when built (:mod:`tscd.data.base`).
"""
from __future__ import annotations

from .base import DatasetError
from .coco import COCODataset
from .folder import FolderDataset
from .loader import StreamSampler, collate
from .registry import (
    CLASS_COUNTS,
    DATASETS,
    build_dataset,
    dataset_num_classes,
    register_dataset,
    resolve_num_classes,
)
from .synthetic import SyntheticDataset
from .transforms import EvalTransform, TrainTransform, denormalize, normalize
from .voc import VOCDataset

__all__ = ["DATASETS", "CLASS_COUNTS", "DatasetError", "register_dataset", "build_dataset", "dataset_num_classes",
           "resolve_num_classes", "StreamSampler", "collate",
           "SyntheticDataset", "VOCDataset", "COCODataset", "FolderDataset", "TrainTransform", "EvalTransform",
           "normalize", "denormalize"]
