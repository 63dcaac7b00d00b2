"""Datasets by name (``DATASETS``), the seeded sample stream used for training, and collation.

A dataset builder takes ``(cfg, split, train)`` and returns a Dataset whose items are dicts
with ``image`` (3,H,W) normalised, ``rgb`` (3,H,W) the same pixels in [0, 1] (what the
refinement and the dense energy loss look at), ``label`` (K-1,) multi-hot, ``box`` (4,) crop
box (y0, y1, x0, x1), ``name`` and, outside training, ``mask`` (H,W) with 255 = ignore.
New datasets register with :func:`register_dataset`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .base import DatasetError
from .coco import COCODataset
from .folder import FolderDataset
from .synthetic import SyntheticDataset
from .transforms import EvalTransform, TrainTransform, denormalize, normalize
from .voc import VOCDataset

DATASETS: dict[str, Callable] = {}


def register_dataset(name: str):
    """Decorator: ``@register_dataset("folder") def build(cfg, split, train): ...``."""
    def wrap(builder):
        DATASETS[name] = builder
        return builder
    return wrap


def train_transform(cfg) -> TrainTransform:
    d = cfg.data
    return TrainTransform(d.crop_size, d.scale_range, d.flip, d.color_jitter, d.mean, d.std)


@register_dataset("synthetic")
def _build_synthetic(cfg, split: str, train: bool):
    s = cfg.data.synthetic
    length = s.num_train if split == "train" else s.num_val
    transform = train_transform(cfg) if train else EvalTransform(cfg.data.mean, cfg.data.std)
    return SyntheticDataset(split, length, s.image_size, s.max_objects, s.seed, transform, train,
                            tuple(s.radius), s.clutter, s.textures)


@register_dataset("voc")
def _build_voc(cfg, split: str, train: bool):
    transform = train_transform(cfg) if train else EvalTransform(cfg.data.mean, cfg.data.std)
    return VOCDataset(cfg.data.root, split, train, transform, cfg.data.label_file, cfg.seed)


@register_dataset("coco")
def _build_coco(cfg, split: str, train: bool):
    transform = train_transform(cfg) if train else EvalTransform(cfg.data.mean, cfg.data.std)
    return COCODataset(cfg.data.root, split, train, transform, cfg.data.label_file, cfg.seed)


@register_dataset("folder")
def _build_folder(cfg, split: str, train: bool):
    transform = train_transform(cfg) if train else EvalTransform(cfg.data.mean, cfg.data.std)
    dataset = FolderDataset(cfg.data.root, split, train, transform, cfg.seed)
    if dataset.num_classes != cfg.data.num_classes:
        raise DatasetError(f"{dataset.root / 'classes.txt'} lists {dataset.num_classes - 1} classes: pass "
                           f"data.num_classes={dataset.num_classes} (background included)")
    return dataset


def build_dataset(cfg, split: str, train: bool):
    name = cfg.data.name
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}' (data.name); known: {', '.join(sorted(DATASETS))}")
    dataset = DATASETS[name](cfg, split, train)
    if getattr(dataset, "num_classes", cfg.data.num_classes) != cfg.data.num_classes:
        raise DatasetError(f"dataset '{name}' has {dataset.num_classes} classes but data.num_classes is "
                           f"{cfg.data.num_classes}")
    return dataset


class StreamSampler(torch.utils.data.Sampler):
    """An endless, seeded stream of ``(index, aug_seed)`` keys, sharded over ranks.

    Position p of the global stream is element p % n of the permutation of epoch p // n
    (``torch.randperm`` seeded by ``(seed, epoch)``); rank r of w takes positions
    r, r + w, r + 2w, ... starting at ``start`` (a count of global positions). The stream is
    a pure function of (seed, position), so resuming at ``start = step · global batch``
    reproduces the data order and augmentation exactly.
    """

    def __init__(self, length: int, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1):
        self.length, self.seed, self.start = int(length), int(seed), int(start)
        self.rank, self.world_size = rank, world_size

    def _perm(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start + self.rank
        epoch, perm = -1, None
        while True:
            e = pos // self.length
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield int(perm[pos % self.length]), pos
            pos += self.world_size

    def __len__(self) -> int:  # endless; DataLoader only needs this for progress estimates
        return 2**62


def collate(items: list[dict]) -> dict:
    """Stack tensors; keep names as a list."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


__all__ = ["DATASETS", "DatasetError", "register_dataset", "build_dataset", "StreamSampler", "collate",
           "SyntheticDataset", "VOCDataset", "COCODataset", "FolderDataset", "TrainTransform", "EvalTransform",
           "normalize", "denormalize"]
