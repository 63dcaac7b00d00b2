"""What a run's data is, in one line: the line ``tscd train`` prints before its first step."""
from __future__ import annotations

from pathlib import Path


def label_source(cfg, dataset) -> str:
    """Where the image-level labels of ``dataset`` come from, as a phrase."""
    name = cfg.data.name
    if name in ("voc", "coco"):
        if cfg.data.label_file:
            return f"the label file {Path(cfg.data.label_file)}"
        return f"the masks ({getattr(dataset, 'mask_dir', 'masks')}/)"
    if name == "folder":
        split_file = getattr(dataset, "split_file", None)
        return f"{split_file.name}" if split_file is not None else "the split's CSV file"
    if name == "synthetic":
        return "the generator (procedural shapes)"
    return "the dataset"


def describe_data(cfg, train_set, val_set=None) -> str:
    """``data: voc at ROOT: train_aug 10,582 images, val 1,449 images; 21 classes (VOC); labels from the
    label file ...`` for the datasets of a run (``val_set`` None on ranks that do not evaluate).

    Args:
        cfg: the run's config (``tscd.config.TSCDConfig``).
        train_set: the training dataset, as :func:`tscd.data.build_dataset` returns it.
        val_set: the evaluation dataset, or None.

    Returns:
        One line, without a trailing newline.
    """
    data = cfg.data
    where = f" at {Path(data.root)}" if data.root and data.name != "synthetic" else ""
    splits = [f"{data.train_split} {len(train_set):,} images"]
    if val_set is not None:
        splits.append(f"{data.val_split} {len(val_set):,} images")
    k = getattr(train_set, "num_classes", data.num_classes)
    origin = getattr(train_set, "classes_from", None)
    classes = f"{k} classes" + (f" ({origin})" if origin and origin != "the dataset" else "")
    labels = label_source(cfg, train_set)
    return f"data: {data.name}{where}: {', '.join(splits)}; {classes}; image-level labels from {labels}"
