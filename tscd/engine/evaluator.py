"""Evaluation of method §10, streamed image by image: confusion matrices for the segmentation
output, the plain CAM labels (background at ``cam.bkg_score``), the refined pseudo labels
(refinement of §4 with one background score: a full label) and the attention random-walk
labels (§5), plus the image-level F1. Ground-truth image labels drive the CAM-based labels,
as in AFA's evaluation."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..class_activation import attention_random_walk
from ..data import build_dataset
from ..refine import PseudoLabeler, cam_to_label, class_argmax
from .builders import build_pseudo_labeler, eval_loader
from .distributed import all_reduce_counts, init_distributed, shard
from .inference import EvalProtocol, image_names, naming_the_image, progress_bar, smallest_images
from .io import write_json
from .metrics import ConfusionMatrix, MultiLabelF1
from .outputs import check_output_folder, check_outputs
from .pseudo_labels import save_predictions
from .runtime import check_backend, pick_device
from .visualize import save_grid

KINDS = ("seg", "cam", "pseudo", "aff")


def reduce_counts(mats, f1: MultiLabelF1, seen: int) -> int:
    """All-reduce confusion matrices and F1 counts in place over the ranks; the total image count."""
    extra = torch.tensor([f1.tp, f1.fp, f1.fn, seen], dtype=torch.int64)
    all_reduce_counts([m.mat for m in mats] + [extra])
    f1.tp, f1.fp, f1.fn = (int(v) for v in extra[:3])
    return int(extra[3])


class Evaluator:
    """``run(model, loader)`` -> metrics dict; ``samples`` keeps the first ``num_vis`` images
    (for :func:`tscd.engine.visualize.save_grid`). New output kinds add a confusion matrix."""

    def __init__(self, cfg, pseudo_labeler: PseudoLabeler, class_names, device, protocol: EvalProtocol | None = None,
                 *, distributed: bool = False, progress: bool = False, save_preds=None, size_hint: str = ""):
        """``pseudo_labeler``: the CAMs and refined labels (with the one background score
        ``cam.bkg_score``); ``protocol``: segmentation inference (default: single scale, the
        training-time check); ``distributed``: the loader holds this rank's shard, counts are
        all-reduced; ``save_preds``: a folder for palette PNGs of the protocol's final prediction;
        ``size_hint``: what the message of an image the network fails on adds (the setting
        that resizes the images)."""
        self.cfg, self.pseudo_labeler, self.class_names, self.device = cfg, pseudo_labeler, class_names, device
        self.protocol = protocol or EvalProtocol()
        self.distributed, self.progress, self.save_preds = distributed, progress, save_preds
        self.size_hint = size_hint
        self.num_classes = len(class_names)
        self.samples: list[dict] = []

    def _outputs(self, model, images, rgb, labels, crop_box, size) -> dict:
        """Every prediction of one batch (images and masks of ``size``): the protocol's
        (``fwd``, ``segs``) and the CAM, CAM labels, pseudo labels and random-walk scores."""
        bkg_score = self.cfg.cam.bkg_score
        fwd, segs = self.protocol.predict(model, images, size, rgb)
        cam = self.pseudo_labeler.cams(model, images)
        return {"fwd": fwd, "segs": segs, "cam": cam, "cam_label": cam_to_label(cam, labels, bkg_score),
                "pseudo": self.pseudo_labeler.labels(rgb, cam, labels, crop_box, high=bkg_score, low=bkg_score),
                "walk": attention_random_walk(cam, fwd.attn_pred, labels, grid_size=fwd.grid,
                                              radius=self.cfg.loss.aff_radius, bkg_score=self.cfg.cam.low)}

    @torch.no_grad()
    def check_sizes(self, model, dataset, max_images: int | None = None) -> None:
        """Run every prediction on blank images of the sizes of the smallest images of
        ``dataset`` (:func:`~tscd.engine.inference.smallest_images`), before the evaluation: an
        image the network cannot take raises :class:`~tscd.engine.inference.ImageError` naming it,
        now rather than when its turn comes. No state of the model changes."""
        was_training = model.training
        model.eval()
        try:
            for name, (h, w) in smallest_images(dataset, max_images).items():
                blank = torch.zeros(1, 3, h, w, device=self.device)
                with naming_the_image(image_names(dataset, [name]), (h, w), self.size_hint):
                    self._outputs(model, blank, blank, torch.ones(1, self.num_classes - 1, device=self.device),
                                  torch.tensor([[0, h, 0, w]], device=self.device), (h, w))
        finally:
            model.train(was_training)

    @torch.no_grad()
    def run(self, model, loader, max_images: int | None = None, num_vis: int = 0) -> dict:
        was_training = model.training
        model.eval()
        kinds = self.protocol.kinds() + KINDS[1:]
        mats = {k: ConfusionMatrix(self.num_classes) for k in kinds}
        total = len(loader.dataset) if max_images is None else min(max_images, len(loader.dataset))
        f1 = MultiLabelF1()
        self.samples, seen, start = [], 0, time.time()
        with progress_bar(total, self.progress) as bar:  # closed on an error too
            for batch in loader:
                images, rgb = batch["image"].to(self.device), batch["rgb"].to(self.device)
                labels = batch["label"].to(self.device).float()
                masks = batch["mask"].to(self.device)
                crop_box = batch["box"].to(self.device)
                with naming_the_image(image_names(loader.dataset, batch["name"]), masks.shape[-2:], self.size_hint):
                    out = self._outputs(model, images, rgb, labels, crop_box, masks.shape[-2:])
                fwd, segs, cam, pseudo = out["fwd"], out["segs"], out["cam"], out["pseudo"]
                pred = segs["seg"]
                f1.update(fwd.cls, labels)
                if self.save_preds is not None:
                    save_predictions(self.save_preds, batch["name"], segs[self.protocol.kinds()[-1]])
                for kind, p in {**segs, "cam": out["cam_label"], "pseudo": pseudo,
                                "aff": class_argmax(out["walk"])}.items():
                    if p.shape[-2:] != masks.shape[-2:]:
                        p = F.interpolate(p[:, None].float(), size=masks.shape[-2:], mode="nearest")[:, 0].long()
                    mats[kind].update(p, masks)
                for i in range(images.shape[0]):
                    if len(self.samples) < num_vis:
                        img = rgb[i] * 255
                        present = labels[i].bool()
                        heat = cam[i][present].amax(0) if present.any() else torch.zeros_like(cam[i, 0])
                        self.samples.append({"image": img.permute(1, 2, 0).byte().cpu().numpy(),
                                             "cam": heat.cpu().numpy(), "pseudo": pseudo[i].cpu().numpy(),
                                             "pred": pred[i].cpu().numpy(), "gt": masks[i].cpu().numpy()})
                seen += images.shape[0]
                bar.update(images.shape[0])
                if max_images is not None and seen >= max_images:
                    break
        model.train(was_training)
        if self.distributed:
            seen = reduce_counts(mats.values(), f1, seen)
        metrics = {f"{k}_miou": mats[k].miou() for k in kinds}
        metrics["cls_f1"] = f1.f1()
        metrics["pixel_acc"] = mats["seg"].pixel_accuracy()
        metrics["per_class_iou"] = {name: (None if np.isnan(v) else float(v))
                                    for name, v in zip(self.class_names, mats["seg"].iou().tolist())}
        metrics["per_class_iou_by_output"] = {k: {name: (None if np.isnan(v) else float(v))
                                                  for name, v in zip(self.class_names, mats[k].iou().tolist())}
                                              for k in kinds}
        metrics["num_images"] = seen
        metrics["eval_seconds"] = time.time() - start
        return metrics


def run_evaluation(model, cfg, split: str, out, *, checkpoint=None, save_preds=None, reads=()) -> dict | None:
    """``tscd eval``: evaluate ``model`` on ``split`` with the protocol of ``cfg.eval``; rank 0
    writes the metrics JSON to ``out`` and the grid next to it (``out`` with ``.png``), and
    returns the metrics (other ranks of a torchrun: None); ``save_preds``: a folder for the
    predictions (``<name>.png``); ``reads``: other files the job read (the config file).
    Checked first (:func:`tscd.engine.outputs.check_outputs`): nothing overwrites ``checkpoint``,
    ``reads`` or the dataset's files (images, masks, lists, CSVs, class and label files),
    nothing goes into the dataset's image or mask folders, no two outputs share a path."""
    rank, world, device = init_distributed(pick_device(cfg.train.device))
    check_backend(cfg, device)
    model.to(device)
    dataset = build_dataset(cfg, split, train=False)
    out = Path(out)
    check_output_folder(out.parent)
    outputs = [(out, "the metrics"), (out.with_suffix(".png"), f"the grid of the metrics {out.name}")]
    if save_preds is not None:
        check_output_folder(save_preds)
        outputs += [(Path(save_preds) / f"{name}.png", f"the prediction of {name}")
                    for name in getattr(dataset, "names", ())]  # a dataset of files lists them
    check_outputs(outputs, inputs=[*reads, *([checkpoint] if checkpoint is not None else [])], datasets=[dataset])
    evaluator = Evaluator(cfg, build_pseudo_labeler(cfg), dataset.class_names, device, EvalProtocol.from_config(cfg),
                          distributed=world > 1, progress=rank == 0, save_preds=save_preds,
                          size_hint="; --resize-long N (eval.resize_long) resizes the images for the network")
    evaluator.check_sizes(model, dataset, cfg.eval.max_images)
    loader = eval_loader(shard(dataset, rank, world, cfg.eval.max_images), cfg.eval.batch_size)
    with torch.no_grad():
        metrics = evaluator.run(model, loader, None, cfg.eval.num_vis if rank == 0 else 0)
    if rank != 0:
        return None
    if checkpoint is not None:
        metrics["checkpoint"] = str(checkpoint)
    write_json(metrics, out)
    save_grid(evaluator.samples, out.with_suffix(".png"))
    return metrics
