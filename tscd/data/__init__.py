"""Datasets by name (``DATASETS``), the seeded sample stream used for training, and collation.

A dataset builder takes ``(cfg, split, train)`` and returns a Dataset whose items are dicts
with ``image`` (3,H,W) normalised, ``rgb`` (3,H,W) the same pixels in [0, 1] (what the
refinement and the dense energy loss look at), ``label`` (K-1,) multi-hot, ``box`` (4,) crop
box (y0, y1, x0, x1), ``name`` and, outside training, ``mask`` (H,W) with 255 = ignore.
New datasets register with :func:`register_dataset`. ``data.num_classes`` unset (None) means
the dataset's own class count (:func:`dataset_num_classes`); every file-based dataset checks
all its files when built (:mod:`tscd.data.base`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..config import TSCDConfig, apply
from .base import DatasetError
from .coco import COCODataset
from .folder import FolderDataset, folder_root, read_classes
from .synthetic import SyntheticDataset
from .transforms import EvalTransform, TrainTransform, denormalize, normalize
from .voc import VOCDataset

DATASETS: dict[str, Callable] = {}
#: dataset name -> ``count(cfg) -> (K, where K comes from)``, for datasets that know their class count
CLASS_COUNTS: dict[str, Callable[[TSCDConfig], tuple[int, str]]] = {}


def register_dataset(name: str, num_classes: Callable[[TSCDConfig], tuple[int, str]] | None = None):
    """Register a dataset builder under ``name`` (a decorator), for ``data.name`` and
    [`build_dataset`][tscd.data.build_dataset].

    ``@register_dataset("folder", count) def build(cfg, split, train): ...``: the builder takes
    the config, the split name and whether it is for training, and returns a Dataset whose items
    are dicts (module docstring of ``tscd.data``).

    Args:
        name: the dataset's name (``data.name``).
        num_classes: ``num_classes(cfg)`` returns (K, a phrase saying where K comes from)
            without building the dataset; without it, ``data.num_classes`` must be set for that
            dataset.

    Returns:
        The decorator, which returns the builder unchanged.
    """
    def wrap(builder):
        DATASETS[name] = builder
        if num_classes is not None:
            CLASS_COUNTS[name] = num_classes
        return builder
    return wrap


def _fixed(dataset) -> Callable[[TSCDConfig], tuple[int, str]]:
    return lambda cfg: (dataset.num_classes, f"the {cfg.data.name} dataset has {dataset.num_classes} classes")


def _folder_classes(cfg: TSCDConfig) -> tuple[int, str]:
    path = folder_root(cfg.data.root) / "classes.txt"
    foreground = len(read_classes(path))
    return 1 + foreground, f"{path} lists {foreground} classes"


def _check_name(cfg: TSCDConfig) -> str:
    if cfg.data.name not in DATASETS:
        raise DatasetError(f"unknown dataset '{cfg.data.name}' (data.name); known: {', '.join(sorted(DATASETS))}")
    return cfg.data.name


def dataset_num_classes(cfg: TSCDConfig) -> int:
    """K, background included, of the dataset of ``cfg.data``, without building it.

    The dataset's own count (synthetic 6, VOC 21, COCO 81, folder 1 + the classes of
    ``classes.txt``), or ``data.num_classes`` for a dataset that does not know its count.

    Args:
        cfg: the run's config (``tscd.config.TSCDConfig``).

    Returns:
        K.

    Raises:
        DatasetError: the dataset is unknown, an explicit ``data.num_classes`` differs from the
            dataset's count (the message names both), or neither says how many classes there are.
    """
    name, explicit = _check_name(cfg), cfg.data.num_classes
    if name not in CLASS_COUNTS:
        if explicit is None:
            raise DatasetError(f"dataset '{name}' does not say how many classes it has: set data.num_classes "
                               "(background included)")
        return explicit
    k, source = CLASS_COUNTS[name](cfg)
    if explicit is not None and explicit != k:
        raise DatasetError(f"data.num_classes={explicit} does not match the dataset: {source}: pass "
                           f"data.num_classes={k} (background included) or leave it unset")
    return k


def resolve_num_classes(cfg: TSCDConfig) -> TSCDConfig:
    """A copy of ``cfg`` with ``data.num_classes`` set to :func:`dataset_num_classes` (what a run
    records, so that its checkpoint builds its model without the dataset)."""
    return apply(cfg, values={"data.num_classes": dataset_num_classes(cfg)})


def train_transform(cfg) -> TrainTransform:
    d = cfg.data
    return TrainTransform(d.crop_size, d.scale_range, d.flip, d.color_jitter, d.mean, d.std)


@register_dataset("synthetic", _fixed(SyntheticDataset))
def _build_synthetic(cfg, split: str, train: bool):
    s = cfg.data.synthetic
    length = s.num_train if split == "train" else s.num_val
    transform = train_transform(cfg) if train else EvalTransform(cfg.data.mean, cfg.data.std)
    return SyntheticDataset(split, length, s.image_size, s.max_objects, s.seed, transform, train,
                            tuple(s.radius), s.clutter, s.textures)


@register_dataset("voc", _fixed(VOCDataset))
def _build_voc(cfg, split: str, train: bool):
    transform = train_transform(cfg) if train else EvalTransform(cfg.data.mean, cfg.data.std)
    return VOCDataset(cfg.data.root, split, train, transform, cfg.data.label_file, cfg.seed)


@register_dataset("coco", _fixed(COCODataset))
def _build_coco(cfg, split: str, train: bool):
    transform = train_transform(cfg) if train else EvalTransform(cfg.data.mean, cfg.data.std)
    return COCODataset(cfg.data.root, split, train, transform, cfg.data.label_file, cfg.seed)


@register_dataset("folder", _folder_classes)
def _build_folder(cfg, split: str, train: bool):
    transform = train_transform(cfg) if train else EvalTransform(cfg.data.mean, cfg.data.std)
    return FolderDataset(cfg.data.root, split, train, transform, cfg.seed)


def build_dataset(cfg, split: str, train: bool):
    """The dataset ``cfg.data.name`` of ``split``, every file checked when it is built.

    Its items are dicts with ``image`` (3, H, W) normalised, ``rgb`` (3, H, W) the same pixels in
    [0, 1], ``label`` (K−1,) multi-hot, ``box`` (4,) the crop box (y0, y1, x0, x1), ``name`` and,
    outside training, ``mask`` (H, W) with 255 = ignore.

    Args:
        cfg: the run's config (``tscd.config.TSCDConfig``); ``cfg.data`` names and configures
            the dataset.
        split: the split, e.g. ``"train_aug"`` or ``"val"`` for VOC.
        train: training items (random crops and augmentation) or evaluation items (whole images
            with their masks).

    Returns:
        A ``torch.utils.data.Dataset``.

    Raises:
        DatasetError: the dataset is unknown, a file is missing or bad (the message names the
            first one), or its class count is not [`dataset_num_classes`][tscd.data.dataset_num_classes].
    """
    k = dataset_num_classes(cfg)
    dataset = DATASETS[cfg.data.name](cfg, split, train)
    if getattr(dataset, "num_classes", k) != k:
        raise DatasetError(f"dataset '{cfg.data.name}' has {dataset.num_classes} classes but data.num_classes is {k}")
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


__all__ = ["DATASETS", "CLASS_COUNTS", "DatasetError", "register_dataset", "build_dataset", "dataset_num_classes",
           "resolve_num_classes", "StreamSampler", "collate",
           "SyntheticDataset", "VOCDataset", "COCODataset", "FolderDataset", "TrainTransform", "EvalTransform",
           "normalize", "denormalize"]
