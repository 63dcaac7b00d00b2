"""The datasets by name: ``DATASETS`` (builders), ``CLASS_COUNTS``, :func:`register_dataset`,
:func:`build_dataset` and the class count of a config's dataset; the built-in synthetic, voc,
coco and folder datasets are registered here."""
from __future__ import annotations

from collections.abc import Callable

from ..config import TSCDConfig, apply
from .base import DatasetError
from .coco import COCODataset
from .folder import FolderDataset, folder_root, read_classes
from .synthetic import SyntheticDataset
from .transforms import EvalTransform, TrainTransform
from .voc import VOCDataset

#: dataset name -> builder ``(cfg, split, train) -> Dataset``
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


def _transform(cfg, train: bool) -> TrainTransform | EvalTransform:
    """Random crops and augmentation for training items, else the whole image, both normalised."""
    data = cfg.data
    if train:
        return TrainTransform(data.crop_size, data.scale_range, data.flip, data.color_jitter, data.mean, data.std)
    return EvalTransform(data.mean, data.std)


@register_dataset("synthetic", _fixed(SyntheticDataset))
def _build_synthetic(cfg, split: str, train: bool):
    s = cfg.data.synthetic
    length = s.num_train if split == "train" else s.num_val
    return SyntheticDataset(split, length, s.image_size, s.max_objects, s.seed, _transform(cfg, train), train,
                            tuple(s.radius), s.clutter, s.textures)


@register_dataset("voc", _fixed(VOCDataset))
def _build_voc(cfg, split: str, train: bool):
    return VOCDataset(cfg.data.root, split, train, _transform(cfg, train), cfg.data.label_file, cfg.seed)


@register_dataset("coco", _fixed(COCODataset))
def _build_coco(cfg, split: str, train: bool):
    return COCODataset(cfg.data.root, split, train, _transform(cfg, train), cfg.data.label_file, cfg.seed)


@register_dataset("folder", _folder_classes)
def _build_folder(cfg, split: str, train: bool):
    return FolderDataset(cfg.data.root, split, train, _transform(cfg, train), cfg.seed)


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
