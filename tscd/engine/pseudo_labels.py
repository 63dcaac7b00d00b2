"""Export of refined pseudo labels for a second, fully supervised stage (``tscd pseudo-labels``).

For every image of a split, on the full image (no crop) and with that image's image-level
labels: the :class:`~tscd.refine.PseudoLabeler` (multi-scale CAM of method §2, the pseudo
label of §3 refined by VARM or PAR (§4) or left plain), optionally a dense CRF (§10) on the
confident pixels.
Each label is written as ``OUT/<name>.png``, a VOC palette PNG of the image's size holding
class ids with 255 where uncertain. Files are written atomically and existing ones are
skipped, so an interrupted export resumes where it stopped. Where ground-truth masks exist
the pseudo-label mIoU is reported (a 255 pixel counts as wrong, as in the evaluator).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..constants import IGNORE_INDEX
from ..data import DatasetError, build_dataset, collate
from ..data.base import load_mask
from ..ops.dense_crf import dense_crf
from ..refine import PseudoLabeler, class_argmax
from .builders import build_pseudo_labeler
from .distributed import all_reduce_counts, init_distributed, shard
from .inference import image_names, naming_the_image, progress_bar
from .io import write_json
from .metrics import ConfusionMatrix
from .outputs import check_output_folder, check_outputs
from .runtime import check_backend, pick_device
from .visualize import write_palette_png

CRF_LABEL_CONFIDENCE = 0.7  # probability given to a pixel's label in the CRF's unary term


def save_predictions(folder, names, labels: torch.Tensor) -> None:
    """``folder/<name>.png`` palette PNGs of labels (B, H, W), one per name."""
    for name, label in zip(names, labels.cpu().numpy()):
        write_palette_png(label, Path(folder) / f"{name}.png")


def item_name(dataset, index: int) -> str:
    """Name of item ``index`` without loading it when the dataset lists its names."""
    names = getattr(dataset, "names", None)
    return str(names[index]) if names is not None else str(dataset[index]["name"])


def _stored_mask(dataset, name: str) -> np.ndarray | None:
    """The ground-truth mask of ``name`` when the dataset has one on disk, else None."""
    mask_path = getattr(dataset, "mask_path", None)
    if mask_path is None:
        return None
    path = mask_path(name)
    return load_mask(path) if path is not None and Path(path).is_file() else None


def crf_on_labels(rgb: torch.Tensor, label: torch.Tensor, cls_labels: torch.Tensor, crf: str) -> torch.Tensor:
    """Dense CRF on pseudo labels, one image at a time over background + its present classes.

    The unary term gives a labelled pixel probability 0.7 for its label (the rest spread over
    the other present classes) and an uncertain pixel a uniform distribution. Uncertain pixels
    stay ``IGNORE_INDEX`` in the result; the CRF re-decides the confident ones. ``crf``: the
    ``tscd.ops.dense_crf`` backend request.
    rgb (B, 3, H, W) in 0–255; label (B, H, W) int64; cls_labels (B, K−1). Returns (B, H, W).
    """
    out = label.clone()
    for i in range(label.shape[0]):
        keys = torch.cat([label.new_zeros(1), cls_labels[i].nonzero()[:, 0] + 1])  # channel -> class id
        n = keys.numel()
        if n == 1:  # background alone: nothing for the CRF to decide
            continue
        lab = label[i]
        sure = lab != IGNORE_INDEX
        onehot = (lab[None] == keys[:, None, None]).float()  # (n, H, W)
        rest = (1 - CRF_LABEL_CONFIDENCE) / max(n - 1, 1)
        probs = torch.where(sure[None], onehot * (CRF_LABEL_CONFIDENCE - rest) + rest,
                            torch.full_like(onehot, 1.0 / n))
        refined = class_argmax(dense_crf(rgb[i:i + 1], probs[None], backend=crf)[0], dim=0)
        out[i] = torch.where(sure, keys[refined], lab)
    return out


@torch.no_grad()
def pseudo_labels_for_batch(labeler: PseudoLabeler, model, images: torch.Tensor, rgb: torch.Tensor,
                            cls_labels: torch.Tensor, crf: str = "none") -> torch.Tensor:
    """Pseudo labels (B, H, W) int64 (``IGNORE_INDEX`` = uncertain) of full images: normalised
    (B, 3, H, W) and their [0, 1] view ``rgb``."""
    cls_labels = cls_labels.float()
    _, label = labeler(model, images, rgb, cls_labels)
    if crf != "none":
        label = crf_on_labels((rgb.float() * 255).round(), label, cls_labels, crf)
    return label


def _same_size_collate(items: list[dict]) -> dict:
    sizes = {tuple(it["image"].shape) for it in items}
    if len(sizes) > 1:
        raise DatasetError(f"images of different sizes {sorted(sizes)} in one batch: set eval.batch_size=1")
    return collate(items)


def export_pseudo_labels(labeler: PseudoLabeler, model, dataset, out_dir, *, crf: str = "none", device="cpu",
                         batch_size: int = 1, num_workers: int = 0, progress: bool = True, rank: int = 0,
                         world: int = 1, reads=()) -> dict:
    """Write ``out_dir/<name>.png`` for every image of ``dataset`` (eval items: full images).

    Images whose file exists are skipped (their stored labels still count towards the mIoU
    when the dataset has the mask on disk). Nothing is written into the folders of the
    dataset's images or masks, nor over any of its files or ``reads`` (the other files the job
    read: checkpoint, config), all checked before the first label
    (:func:`tscd.engine.outputs.check_outputs`). Under torchrun each rank takes every
    ``world``-th missing image and the counts are summed over ranks. Returns a summary:
    num_images, written, skipped, pseudo_miou (None without masks), per_class_iou,
    ignore_fraction (of the evaluated pixels labelled 255), and writes it to
    ``out_dir/summary.json`` (rank 0).
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    names = [item_name(dataset, i) for i in range(len(dataset))]
    path_of = lambda name: out_dir / f"{name}.png"  # noqa: E731
    check_outputs([(path_of(name), f"the pseudo label of {name}") for name in names]
                  + [(out_dir / "summary.json", "the summary")], inputs=reads, datasets=[dataset])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    todo = [i for i, name in enumerate(names) if not path_of(name).is_file()]
    done = [i for i, name in enumerate(names) if path_of(name).is_file()]
    k = dataset.num_classes
    mat = ConfusionMatrix(k)
    ignored = torch.zeros(2, dtype=torch.int64)  # (pixels labelled 255, pixels evaluated)

    def count(label: torch.Tensor, mask: torch.Tensor) -> None:
        mat.update(label, mask)
        valid = (mask >= 0) & (mask < k)
        ignored.add_(torch.tensor([int((valid & (label == IGNORE_INDEX)).sum()), int(valid.sum())]))

    for i in done[rank::world]:  # already written: count them where the mask is on disk
        mask = _stored_mask(dataset, names[i])
        if mask is not None:
            count(torch.from_numpy(np.asarray(Image.open(path_of(names[i])), np.int64)), torch.from_numpy(mask))

    part = shard(torch.utils.data.Subset(dataset, todo), rank, world)
    loader = torch.utils.data.DataLoader(part, batch_size=batch_size, shuffle=False, collate_fn=_same_size_collate,
                                         num_workers=num_workers)
    with progress_bar(len(part), progress and rank == 0, desc="pseudo-labels") as bar:  # closed on an error too
        for batch in loader:
            images = batch["image"].to(device)
            with naming_the_image(image_names(dataset, batch["name"]), images.shape[-2:]):
                label = pseudo_labels_for_batch(labeler, model, images, batch["rgb"].to(device),
                                                batch["label"].to(device), crf).cpu()
            for j, name in enumerate(batch["name"]):
                write_palette_png(label[j].numpy(), path_of(name))
            if "mask" in batch:
                count(label, batch["mask"])
            bar.update(images.shape[0])

    all_reduce_counts([mat.mat, ignored])
    has_masks = bool(mat.mat.sum())
    iou = mat.iou().tolist()
    summary = {
        "num_images": len(names), "written": len(todo), "skipped": len(done), "refine": labeler.mode, "crf": crf,
        "pseudo_miou": mat.miou() if has_masks else None,
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(dataset.class_names, iou)}
        if has_masks else {},
        "ignore_fraction": float(ignored[0]) / max(int(ignored[1]), 1) if has_masks else None,
    }
    if rank == 0:
        write_json(summary, out_dir / "summary.json")
    return summary


def run_export(model, cfg, split: str, out_dir, *, refine: str | None = None, crf: str = "none", reads=()) -> dict:
    """``tscd pseudo-labels``: export the pseudo labels of ``split`` (refinement ``refine``,
    default ``refine.mode``) with the pseudo-labeller of ``cfg``; the summary of
    :func:`export_pseudo_labels` (``reads``: the files the job read besides the dataset, which
    no label overwrites). Under torchrun the ranks share the work."""
    rank, world, device = init_distributed(pick_device(cfg.train.device))
    check_backend(cfg, device)
    dataset = build_dataset(cfg, split, train=False)
    return export_pseudo_labels(build_pseudo_labeler(cfg, refine), model.to(device), dataset, out_dir, crf=crf,
                                device=device, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers,
                                rank=rank, world=world, reads=reads)
