"""Evaluation of spec §10, streamed image by image: confusion matrices for the segmentation
output, the plain CAM labels (background at ``cam.bkg_score``), the refined pseudo labels
(refinement of §4 with one background score: a full label) and the attention random-walk
labels (§5), plus the image-level F1. Ground-truth image labels drive the CAM-based labels,
as in AFA's evaluation."""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from .. import cam as cam_utils
from ..data.transforms import denormalize
from .inference import EvalProtocol, progress_bar, reduce_counts
from .metrics import ConfusionMatrix, MultiLabelF1
from .pseudo_labels import save_predictions

KINDS = ("seg", "cam", "pseudo", "aff")


class Evaluator:
    """``run(model, loader)`` -> metrics dict; ``samples`` keeps the first ``num_vis`` images
    (for :func:`tscd.engine.visualize.save_grid`). New output kinds add a confusion matrix."""

    def __init__(self, cfg, objective, class_names, device, protocol: EvalProtocol | None = None, *,
                 distributed: bool = False, progress: bool = False, save_preds=None):
        """``protocol``: segmentation inference (default: single scale, the training-time check);
        ``distributed``: the loader holds this rank's shard, counts are all-reduced;
        ``save_preds``: a folder for palette PNGs of the protocol's final prediction."""
        self.cfg, self.objective, self.class_names, self.device = cfg, objective, class_names, device
        self.protocol = protocol or EvalProtocol()
        self.distributed, self.progress, self.save_preds = distributed, progress, save_preds
        self.num_classes = cfg.data.num_classes
        self.samples: list[dict] = []

    @torch.no_grad()
    def predict(self, model, images: torch.Tensor, size):
        """(Forward, {kind: seg prediction (B,H,W)}) of the protocol: see tscd.engine.inference."""
        return self.protocol.predict(model, images, size)

    @torch.no_grad()
    def run(self, model, loader, max_images: int | None = None, num_vis: int = 0) -> dict:
        was_training = model.training
        model.eval()
        c = self.cfg.cam
        kinds = self.protocol.kinds() + KINDS[1:]
        mats = {k: ConfusionMatrix(self.num_classes) for k in kinds}
        bar = progress_bar(len(loader.dataset) if max_images is None else min(max_images, len(loader.dataset)),
                           self.progress)
        f1 = MultiLabelF1()
        self.samples, seen, start = [], 0, time.time()
        for batch in loader:
            images = batch["image"].to(self.device)
            labels = batch["label"].to(self.device).float()
            masks = batch["mask"].to(self.device)
            box = batch["box"].to(self.device)
            fwd, segs = self.predict(model, images, masks.shape[-2:])
            cls, pred, attn_pred = fwd.cls, segs["seg"], fwd.attn_pred
            f1.update(cls, labels)
            cam = cam_utils.multi_scale_cam(model, images, tuple(c.scales))
            cam_label = cam_utils.cam_to_label(cam, labels, c.bkg_score)
            pseudo = self.objective.pseudo_labels(model, images, cam, labels, box, c.bkg_score, c.bkg_score)
            walk = cam_utils.attention_random_walk(cam, attn_pred, labels, grid_size=fwd.grid,
                                                   radius=self.cfg.loss.aff_radius, bkg_score=c.low)
            if self.save_preds is not None:
                save_predictions(self.save_preds, batch["name"], segs[self.protocol.kinds()[-1]])
            for kind, p in {**segs, "cam": cam_label, "pseudo": pseudo, "aff": walk.argmax(1)}.items():
                if p.shape[-2:] != masks.shape[-2:]:
                    p = F.interpolate(p[:, None].float(), size=masks.shape[-2:], mode="nearest")[:, 0].long()
                mats[kind].update(p, masks)
            for i in range(images.shape[0]):
                if len(self.samples) < num_vis:
                    img = (denormalize(images[i:i + 1], self.cfg.data.mean, self.cfg.data.std)[0] * 255)
                    present = labels[i].bool()
                    heat = cam[i][present].amax(0) if present.any() else torch.zeros_like(cam[i, 0])
                    self.samples.append({"image": img.permute(1, 2, 0).byte().cpu().numpy(),
                                         "cam": heat.cpu().numpy(), "pseudo": pseudo[i].cpu().numpy(),
                                         "pred": pred[i].cpu().numpy(), "gt": masks[i].cpu().numpy()})
            seen += images.shape[0]
            bar.update(images.shape[0])
            if max_images is not None and seen >= max_images:
                break
        bar.close()
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
