"""The TSCD training objective (method §2–§9): model outputs + batch -> named loss terms.

One step, after the L_cls-only stage (iterations ≤ ``stage1_iters``):

1. the 0.3× view x′ of the batch (§6);
2. multi-scale CAMs of both views, without gradient (§2): T for x, T′ for x′;
3. pseudo labels of x from T (§3), refined by VARM/PAR (§4) — the :class:`~tscd.refine.PseudoLabeler`;
4. one trainable forward of both views, ``net(x, x′)`` (the model, possibly DDP-wrapped):
   image logits, seg logits and attention affinity of x; seg logits and live CAM of x′
   (with ``reuse_forward_cam`` it runs before 2, whose scale-1 passes then take its CAMs);
5. the terms: cls (multilabel soft margin), seg (§8), dense energy (§8), aff (§5),
   scd (§6: teacher T, T′; students = seg logits upsampled to the CAM sizes), er (§7).

A term whose weight is 0 is not computed at all. The weighted sum is ``total``.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..refine import PseudoLabeler, crop_box_mask
from .affinity import AffinityLoss
from .dense_energy import DenseEnergyLoss
from .equivariance import equivariance_loss, live_cam
from .scd import SelfCorrespondenceDistillation
from .segmentation import segmentation_loss

TERMS = ("cls", "seg", "dense", "aff", "scd", "er")


def crop_roi(box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,4) crop boxes (y0, y1, x0, x1) -> (B,H,W) float mask, 1 inside."""
    return crop_box_mask(box, box.shape[0], *size, device=box.device).float()


class TSCDObjective(nn.Module):
    """The training objective of method §9: the weighted sum of the recipe's terms, with its schedule.

    Iterations up to ``stage1_iters`` train L_cls alone; after that a step makes the pseudo labels
    and computes every term whose weight is not 0 (module docstring: the order of a step).

    Args:
        pseudo_labeler: makes the CAMs and refined pseudo labels of a batch.
        weights: the weight of each term of ``TERMS`` (``cls``, ``seg``, ``dense``, ``aff``,
            ``scd``, ``er``); 0 switches a term off.
        stage1_iters: iterations ≤ this train L_cls only.
        dense_weight: the weight inside [`DenseEnergyLoss`][tscd.losses.DenseEnergyLoss].
        dense_sigma_rgb: its colour kernel width.
        dense_sigma_xy: its spatial kernel width.
        dense_scale: its ``scale_factor``.
        scd_samples: positions sampled per view by
            [`SelfCorrespondenceDistillation`][tscd.losses.SelfCorrespondenceDistillation]
            (None: every position).
        scd_scale: the size of the second view, relative to the first.
        aff_radius: window radius of [`AffinityLoss`][tscd.losses.AffinityLoss].
        er_released: the released code's inert ER term instead of the live one (method §7).
        reuse_forward_cam: the teachers' un-flipped scale-1 CAMs are the trainable forward's CAMs
            (detached) rather than a separate no-gradient pass, one encoder pass of each view fewer:
            the same numbers when the forward is deterministic (no stochastic depth or dropout) and,
            with flips and BatchNorm, up to the batch statistics (x alone rather than x with its
            flip). With stochastic depth the teacher shares the student's draw instead of its own.
        backend: the ``tscd.ops`` backend of the fused losses.

    Raises:
        ValueError: ``reuse_forward_cam`` is set but the pseudo labeler's scales lack 1.0.
    """

    def __init__(self, pseudo_labeler: PseudoLabeler, weights: Mapping[str, float], *, stage1_iters: int = 2000,
                 dense_weight: float = 1e-7 * 0.58, dense_sigma_rgb: float = 15.0, dense_sigma_xy: float = 100.0,
                 dense_scale: float = 0.5, scd_samples: int | None = 40, scd_scale: float = 0.3,
                 aff_radius: int = 8, er_released: bool = False, reuse_forward_cam: bool = False,
                 backend: str = "auto"):
        super().__init__()
        if reuse_forward_cam and 1.0 not in pseudo_labeler.cams.scales:
            raise ValueError(f"reuse_forward_cam (cam.reuse_forward) takes the scale-1 CAM from the forward, but "
                             f"the CAM scales (cam.scales) {list(pseudo_labeler.cams.scales)} do not include 1.0")
        self.pseudo_labeler = pseudo_labeler
        self.reuse_forward_cam = reuse_forward_cam
        self.weights = {t: float(weights[t]) for t in TERMS}
        self.stage1_iters, self.scd_scale, self.er_released = stage1_iters, scd_scale, er_released
        if self.weights["aff"]:
            self.aff = AffinityLoss(radius=aff_radius)
        if self.weights["dense"]:
            self.dense = DenseEnergyLoss(weight=dense_weight, sigma_rgb=dense_sigma_rgb, sigma_xy=dense_sigma_xy,
                                         scale_factor=dense_scale, backend=backend)
        if self.weights["scd"]:
            self.scd = SelfCorrespondenceDistillation(num_samples=scd_samples, backend=backend)

    def in_stage1(self, step: int) -> bool:
        """Iteration ``step`` (1-based) trains L_cls only."""
        return step <= self.stage1_iters

    def forward(self, net: nn.Module, model: nn.Module, batch: dict, step: int):
        """The loss terms of one training step.

        Args:
            net: the model as it is trained (possibly DDP-wrapped).
            model: the bare [`TSCD`][tscd.models.TSCD], for the no-gradient CAMs.
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
        box = batch.get("box")
        w = self.weights
        if self.in_stage1(step):
            out = net(images, classify_only=True)
            terms = {"cls": F.multilabel_soft_margin_loss(out.cls, labels)}
            return w["cls"] * terms["cls"], terms, {}

        need_small = any(w[t] for t in ("scd", "er"))
        small = (F.interpolate(images, scale_factor=self.scd_scale, mode="bilinear", align_corners=True)
                 if need_small else None)
        labeler = self.pseudo_labeler
        out = net(images, small) if self.reuse_forward_cam else None
        with torch.no_grad():
            cam = labeler.cams(model, images, None if out is None else out.cam.detach())
            cam_small = (labeler.cams(model, small, None if out is None else out.cam_small.detach())
                         if need_small else None)
            pseudo = labeler.labels(batch["rgb"], cam, labels, box)
        if out is None:
            out = net(images, small)
        terms = {"cls": F.multilabel_soft_margin_loss(out.cls, labels)}
        seg = out.seg
        if w["seg"]:
            terms["seg"] = segmentation_loss(seg, pseudo)
        if w["aff"]:
            terms["aff"] = self._affinity(out.attn_pred, pseudo, model)
        if w["dense"]:
            up = F.interpolate(seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
            roi = crop_roi(box, images.shape[-2:]) if box is not None else torch.ones_like(up[:, 0])
            terms["dense"] = self.dense(batch["rgb"] * 255.0, up.softmax(1), roi, pseudo)
        if w["scd"]:
            s1 = F.interpolate(seg, size=cam.shape[-2:], mode="bilinear", align_corners=True)
            s2 = F.interpolate(out.seg_small, size=cam_small.shape[-2:], mode="bilinear", align_corners=True)
            terms["scd"] = self.scd(cam, cam_small, s1, s2)
        if w["er"]:
            if self.er_released:
                terms["er"] = equivariance_loss(cam, cam_small, released=True)
            else:
                terms["er"] = equivariance_loss(cam, live_cam(out.cam_small, cam_small.shape[-2:]))
        total = sum(w[k] * v for k, v in terms.items())
        return total, terms, {"cam": cam, "pseudo": pseudo}

    def _affinity(self, attn_pred: torch.Tensor, pseudo: torch.Tensor, model) -> torch.Tensor:
        stride = model.output_stride
        h, w = pseudo.shape[-2:]
        grid = (-(-h // stride), -(-w // stride))
        return self.aff(attn_pred, pseudo, grid_size=grid)
