"""The TSCD training objective (method §2–§9): model outputs + batch -> named loss terms.

One step, after the L_cls-only stage (iterations ≤ ``stage1_iters``):

1. the 0.3× view x′ of the batch (§6);
2. multi-scale CAMs of both views, without gradient (§2): T for x, T′ for x′;
3. pseudo labels of x from T (§3), refined by VARM/PAR (§4) — the :class:`~tscd.refine.PseudoLabeler`;
4. one trainable forward of both views, ``net(x, x′)`` (the model, possibly DDP-wrapped):
   image logits, seg logits and attention affinity of x; seg logits and live CAM of x′
   (with ``reuse_forward`` it runs before 2, whose scale-1 passes then take its CAMs);
5. the terms: cls (multilabel soft margin), seg (§8), dense energy (§8), aff (§5),
   scd (§6: teacher T, T′; students = seg logits upsampled to the CAM sizes), er (§7).

Only the terms the objective is given are computed. The weighted sum is ``total``.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import LOSS_TERMS
from ..refine import PseudoLabeler, crop_box_mask
from .equivariance import live_cam


class TSCDObjective(nn.Module):
    """The training objective of method §9: the weighted sum of the recipe's terms, with its schedule.

    Iterations up to ``stage1_iters`` train L_cls alone; after that a step makes the pseudo labels
    and computes every term it was given (module docstring: the order of a step).

    Args:
        pseudo_labeler: makes the CAMs and refined pseudo labels of a batch.
        terms: the loss modules by term name (of ``tscd.constants.LOSS_TERMS``): ``cls``
            (``(logits, labels)``, e.g. ``nn.MultiLabelSoftMarginLoss``, required), ``seg``
            ([`SegmentationLoss`][tscd.losses.SegmentationLoss]), ``dense``
            ([`DenseEnergyLoss`][tscd.losses.DenseEnergyLoss]), ``aff``
            ([`AffinityLoss`][tscd.losses.AffinityLoss]), ``scd``
            ([`SelfCorrespondenceDistillation`][tscd.losses.SelfCorrespondenceDistillation]), ``er``
            ([`EquivarianceLoss`][tscd.losses.EquivarianceLoss]); a term left out is not computed.
        weights: the weight of each term in ``terms``.
        stage1_iters: iterations ≤ this train L_cls only.
        scd_scale: the size of the second view, relative to the first.
        reuse_forward: the teachers' un-flipped scale-1 CAMs are the trainable forward's CAMs
            (detached) rather than a separate no-gradient pass, one encoder pass of each view fewer:
            the same numbers when the forward is deterministic (no stochastic depth or dropout) and,
            with flips and BatchNorm, up to the batch statistics (x alone rather than x with its
            flip). With stochastic depth the teacher shares the student's draw instead of its own.

    Raises:
        ValueError: a term is unknown, ``cls`` or a weight is missing, or ``reuse_forward`` is set
            but the pseudo labeler's scales lack 1.0.
    """

    def __init__(self, pseudo_labeler: PseudoLabeler, terms: Mapping[str, nn.Module], weights: Mapping[str, float],
                 stage1_iters: int = 2000, scd_scale: float = 0.3, reuse_forward: bool = False):
        super().__init__()
        unknown = set(terms) - set(LOSS_TERMS)
        if unknown or "cls" not in terms or not set(terms) <= set(weights):
            raise ValueError(f"terms must be loss modules of {LOSS_TERMS}, cls among them, each with a weight; got "
                             f"terms {sorted(terms)} and weights {sorted(weights)}")
        if reuse_forward and 1.0 not in pseudo_labeler.cams.scales:
            raise ValueError(f"reuse_forward (cam.reuse_forward) takes the scale-1 CAM from the forward, but the CAM "
                             f"scales (cam.scales) {list(pseudo_labeler.cams.scales)} do not include 1.0")
        self.pseudo_labeler = pseudo_labeler
        self.terms = nn.ModuleDict({t: terms[t] for t in LOSS_TERMS if t in terms})
        self.weights = {t: float(weights[t]) for t in self.terms}
        self.stage1_iters, self.scd_scale, self.reuse_forward = stage1_iters, scd_scale, reuse_forward

    def in_stage1(self, step: int) -> bool:
        """Iteration ``step`` (1-based) trains L_cls only."""
        return step <= self.stage1_iters

    def forward(self, net: nn.Module, batch: dict, step: int):
        """The loss terms of one training step.

        Args:
            net: the model as it is trained: a [`TSCD`][tscd.models.TSCD], or one wrapped in
                ``DistributedDataParallel`` (the no-gradient CAMs run on the model inside it).
            batch: ``image`` normalised, ``rgb`` the same images in [0, 1], ``label`` the
                image-level labels, ``box`` the crop boxes (y0, y1, x0, x1).
            step: the iteration, from 1.

        Shapes:
            - ``batch["image"]``, ``batch["rgb"]``: (B, 3, H, W).
            - ``batch["label"]``: (B, K−1).
            - ``batch["box"]``: (B, 4).

        Returns:
            ``(total, terms, aux)``: the weighted sum; each computed term's unweighted value by
            name; for display, the step's ``cam`` (B, K−1, H, W) and ``pseudo`` label (B, H, W)
            (empty in the L_cls-only stage).
        """
        images, labels = batch["image"], batch["label"].float()
        crop_box = batch.get("box")
        terms, w = self.terms, self.weights
        if self.in_stage1(step):
            out = net(images, classify_only=True)
            values = {"cls": terms["cls"](out.cls, labels)}
            return w["cls"] * values["cls"], values, {}

        model = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
        small = (F.interpolate(images, scale_factor=self.scd_scale, mode="bilinear", align_corners=True)
                 if "scd" in terms or "er" in terms else None)
        labeler = self.pseudo_labeler
        out = net(images, small) if self.reuse_forward else None
        with torch.no_grad():
            cam = labeler.cams(model, images, None if out is None else out.cam.detach())
            cam_small = (labeler.cams(model, small, None if out is None else out.cam_small.detach())
                         if small is not None else None)
            pseudo = labeler.labels(batch["rgb"], cam, labels, crop_box)
        if out is None:
            out = net(images, small)
        values = {"cls": terms["cls"](out.cls, labels)}
        seg = out.seg
        if "seg" in terms:
            values["seg"] = terms["seg"](seg, pseudo)
        if "aff" in terms:
            values["aff"] = terms["aff"](out.attn_pred, pseudo, tuple(out.cam.shape[-2:]))
        if "dense" in terms:
            up = F.interpolate(seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
            roi = (crop_box_mask(crop_box, crop_box.shape[0], *images.shape[-2:], device=crop_box.device).float()
                   if crop_box is not None else torch.ones_like(up[:, 0]))
            values["dense"] = terms["dense"](batch["rgb"] * 255.0, up.softmax(1), roi, pseudo)
        if "scd" in terms:
            s1 = F.interpolate(seg, size=cam.shape[-2:], mode="bilinear", align_corners=True)
            s2 = F.interpolate(out.seg_small, size=cam_small.shape[-2:], mode="bilinear", align_corners=True)
            values["scd"] = terms["scd"](cam, cam_small, s1, s2)
        if "er" in terms:
            # the released term compares the two teachers; the paper's, the teacher with the live CAM of x′
            student = cam_small if terms["er"].released else live_cam(out.cam_small, cam_small.shape[-2:])
            values["er"] = terms["er"](cam, student)
        total = sum(w[k] * v for k, v in values.items())
        return total, values, {"cam": cam, "pseudo": pseudo}
