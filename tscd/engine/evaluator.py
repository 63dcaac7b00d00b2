"""Evaluation of method §10, streamed image by image: confusion matrices for the segmentation
output, the plain CAM labels (background at ``cam.bkg_score``), the refined pseudo labels
(refinement of §4 with one background score: a full label) and the attention random-walk
labels (§5), plus the image-level F1. Ground-truth image labels drive the CAM-based labels,
as in AFA's evaluation. The time is kept per stage (:mod:`tscd.engine.stage_timer`): the
metrics' ``stage_seconds``, and a line of ``tscd eval``'s log."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..class_activation import attention_random_walk
from ..constants import IGNORE_INDEX
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
from .stage_timer import StageTimer
from .visualize import save_grid

logger = logging.getLogger(__name__)

KINDS = ("seg", "cam", "pseudo", "aff")


def reduce_counts(mats, f1: MultiLabelF1, seen: int) -> int:
    """All-reduce confusion matrices and F1 counts in place over the ranks; the total image count."""
    extra = torch.tensor([f1.tp, f1.fp, f1.fn, seen], dtype=torch.int64)
    all_reduce_counts([m.mat for m in mats] + [extra])
    f1.tp, f1.fp, f1.fn = (int(v) for v in extra[:3])
    return int(extra[3])


class Evaluator:
    """``run(model, loader)`` -> metrics dict; ``samples`` keeps the first ``num_vis`` images
    (for :func:`tscd.engine.visualize.save_grid`), ``timer`` the seconds per stage of the last
    run. New output kinds add a confusion matrix."""

    def __init__(self, cfg, pseudo_labeler: PseudoLabeler, class_names, device, protocol: EvalProtocol | None = None,
                 *, distributed: bool = False, progress: bool = False, save_preds=None, size_hint: str = "",
                 cam_metrics: bool = True):
        """``pseudo_labeler``: the CAMs and refined labels (with the one background score
        ``cam.bkg_score``); ``protocol``: segmentation inference (default: single scale, the
        training-time check); ``distributed``: the loader holds this rank's shard, counts are
        all-reduced; ``save_preds``: a folder for palette PNGs of the protocol's final prediction;
        ``size_hint``: what the message of an image the network fails on adds (the setting
        that resizes the images); ``cam_metrics``: also the CAM, refined-label and random-walk
        outputs (False: the protocol's segmentation alone, without the multi-scale CAM's passes)."""
        self.cfg, self.pseudo_labeler, self.class_names, self.device = cfg, pseudo_labeler, class_names, device
        self.protocol = protocol or EvalProtocol()
        self.distributed, self.progress, self.save_preds = distributed, progress, save_preds
        self.size_hint, self.cam_metrics = size_hint, cam_metrics
        self.num_classes = len(class_names)
        self.samples: list[dict] = []
        self.timer = StageTimer(device)

    def _outputs(self, model, images, rgb, labels, crop_box, size, timer: StageTimer) -> dict:
        """Every prediction of one batch (images and masks of ``size``): the protocol's
        (``fwd``, ``segs``) and the CAM, CAM labels, pseudo labels and random-walk labels, each
        timed as its stage of ``timer``. The multi-scale CAM takes the scale-1 CAM of the
        protocol's forward where that ran on the images at their own size. Without
        ``cam_metrics``: ``fwd`` and ``segs`` alone."""
        bkg_score = self.cfg.cam.bkg_score
        fwd, segs = self.protocol.predict(model, images, size, rgb, timer)
        if not self.cam_metrics:
            return {"fwd": fwd, "segs": segs}
        with timer.stage("cam"):
            reuse = fwd.input_size == tuple(images.shape[-2:]) and 1.0 in self.pseudo_labeler.cams.scales
            cam = self.pseudo_labeler.cams(model, images, fwd.cam if reuse else None)
            cam_label = cam_to_label(cam, labels, bkg_score)
        with timer.stage("refine"):
            pseudo = self.pseudo_labeler.labels(rgb, cam, labels, crop_box, high=bkg_score, low=bkg_score)
        with timer.stage("walk"):
            walk = class_argmax(attention_random_walk(cam, fwd.attn_pred, labels, grid_size=fwd.grid,
                                                      radius=self.cfg.loss.aff_radius, bkg_score=self.cfg.cam.low))
        return {"fwd": fwd, "segs": segs, "cam": cam, "cam_label": cam_label, "pseudo": pseudo, "walk": walk}

    def _sample(self, rgb, labels, out: dict, pred, mask, i: int) -> dict:
        """One row of the PNG grid (:func:`~tscd.engine.visualize.save_grid`): the image, the CAM
        of its classes, its refined label, the prediction and the ground truth; without
        ``cam_metrics`` the CAM is blank and the refined label all ignored."""
        if self.cam_metrics:
            cam, present = out["cam"][i], labels.bool()
            heat, pseudo = (cam[present].amax(0) if present.any() else torch.zeros_like(cam[0])), out["pseudo"][i]
        else:
            heat, pseudo = torch.zeros(mask.shape), torch.full(mask.shape, IGNORE_INDEX)
        return {"image": (rgb * 255).permute(1, 2, 0).byte().cpu().numpy(), "cam": heat.cpu().numpy(),
                "pseudo": pseudo.cpu().numpy(), "pred": pred.cpu().numpy(), "gt": mask.cpu().numpy()}

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
                                  torch.tensor([[0, h, 0, w]], device=self.device), (h, w), StageTimer(self.device))
        finally:
            model.train(was_training)

    @torch.no_grad()
    def run(self, model, loader, max_images: int | None = None, num_vis: int = 0) -> dict:
        """The metrics of ``model`` over ``loader`` (its first ``max_images`` images): mIoU per
        output kind, per-class IoU, ``cls_f1``, ``pixel_acc``, ``num_images``, ``eval_seconds`` and
        ``stage_seconds``, this process's seconds per stage of
        :data:`~tscd.engine.stage_timer.STAGES` (the last run's
        :class:`~tscd.engine.stage_timer.StageTimer` is ``timer``)."""
        was_training = model.training
        model.eval()
        kinds = self.protocol.kinds() + (KINDS[1:] if self.cam_metrics else ())
        mats = {k: ConfusionMatrix(self.num_classes) for k in kinds}
        total = len(loader.dataset) if max_images is None else min(max_images, len(loader.dataset))
        f1 = MultiLabelF1()
        self.timer = timer = StageTimer(self.device)
        self.samples, seen, start = [], 0, time.time()
        batches = iter(loader)
        with progress_bar(total, self.progress) as bar:  # closed on an error too
            while max_images is None or seen < max_images:
                with timer.stage("io"):
                    batch = next(batches, None)
                    if batch is None:
                        break
                    images, rgb = batch["image"].to(self.device), batch["rgb"].to(self.device)
                    labels = batch["label"].to(self.device).float()
                    masks = batch["mask"].to(self.device)
                    crop_box = batch["box"].to(self.device)
                with naming_the_image(image_names(loader.dataset, batch["name"]), masks.shape[-2:], self.size_hint):
                    out = self._outputs(model, images, rgb, labels, crop_box, masks.shape[-2:], timer)
                fwd, segs = out["fwd"], out["segs"]
                if self.save_preds is not None:
                    with timer.stage("io"):
                        save_predictions(self.save_preds, batch["name"], segs[self.protocol.kinds()[-1]])
                with timer.stage("metrics"):
                    f1.update(fwd.cls, labels)
                    cam_outputs = ({"cam": out["cam_label"], "pseudo": out["pseudo"], "aff": out["walk"]}
                                   if self.cam_metrics else {})
                    for kind, p in {**segs, **cam_outputs}.items():
                        if p.shape[-2:] != masks.shape[-2:]:
                            p = F.interpolate(p[:, None].float(), size=masks.shape[-2:], mode="nearest")[:, 0].long()
                        mats[kind].update(p, masks)
                    for i in range(min(images.shape[0], num_vis - len(self.samples))):
                        self.samples.append(self._sample(rgb[i], labels[i], out, segs["seg"][i], masks[i], i))
                seen += images.shape[0]
                timer.images += images.shape[0]
                bar.update(images.shape[0])
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
        metrics["stage_seconds"] = dict(timer.seconds)
        return metrics


def run_evaluation(model, cfg, split: str, out, *, checkpoint=None, save_preds=None, reads=()) -> dict | None:
    """``tscd eval``: evaluate ``model`` on ``split`` with the protocol of ``cfg.eval``; rank 0
    writes the metrics JSON to ``out`` and the grid next to it (``out`` with ``.png``), and
    returns the metrics (other ranks of a torchrun: None) and logs rank 0's seconds per image of
    each stage; ``save_preds``: a folder for the predictions (``<name>.png``); ``reads``: other
    files the job read (the config file).
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
                          size_hint="; --resize-long N (eval.resize_long) resizes the images for the network",
                          cam_metrics=cfg.eval.cam_metrics)
    evaluator.check_sizes(model, dataset, cfg.eval.max_images)
    loader = eval_loader(shard(dataset, rank, world, cfg.eval.max_images), cfg.eval.batch_size)
    with torch.no_grad():
        metrics = evaluator.run(model, loader, None, cfg.eval.num_vis if rank == 0 else 0)
    if rank != 0:
        return None
    logger.info("eval time: %s", evaluator.timer.summary(metrics["eval_seconds"]))
    if checkpoint is not None:
        metrics["checkpoint"] = str(checkpoint)
    write_json(metrics, out)
    save_grid(evaluator.samples, out.with_suffix(".png"))
    return metrics
