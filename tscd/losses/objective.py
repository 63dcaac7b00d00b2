"""The TSCD training objective (spec §2–§9): model outputs + batch -> named loss terms.

One step, after the L_cls-only stage (iterations ≤ ``loss.stage1_iters``):

1. the 0.3× view x′ of the batch (§6);
2. multi-scale CAMs of both views, without gradient (§2): T for x, T′ for x′;
3. pseudo labels of x from T (§3), refined by VARM/PAR through ``tscd.refine`` (§4);
4. one trainable forward of both views (:class:`TwoViewNet`, the module DDP wraps):
   image logits, seg logits and attention affinity of x; seg logits and live CAM of x′;
5. the terms: cls (multilabel soft margin), seg (§8), dense energy (§8), aff (§5),
   scd (§6: teacher T, T′; students = seg logits upsampled to the CAM sizes), er (§7).

A term whose weight is 0 is not computed at all. The weighted sum is ``total``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import cam as cam_utils
from ..data.transforms import denormalize
from .equivariance import equivariance_loss, live_cam
from .segmentation import segmentation_loss

TERMS = ("cls", "seg", "dense", "aff", "scd", "er")


class TwoViewNet(nn.Module):
    """The trainable forward of a step: the full view (and optionally the 0.3× view)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, x_small: torch.Tensor | None = None) -> dict:
        """x (B,3,H,W) -> cls (B,K-1), seg (B,K,H/4,W/4), attn_pred (B,N,N); with x_small
        (B,3,H',W') also seg_small (B,K,H'/4,W'/4) and cam_small (B,K-1,h',w'), with gradient."""
        cls, seg, _, attn_pred = self.model(x)
        out = {"cls": cls, "seg": seg, "attn_pred": attn_pred}
        if x_small is not None:
            features, _ = self.model.encoder(x_small)
            out["seg_small"] = self.model.decoder(features)
            out["cam_small"] = self.model.cam(features[3])
        return out


def crop_roi(box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,4) crop boxes (y0, y1, x0, x1) -> (B,H,W) float mask, 1 inside."""
    ones = torch.ones((box.shape[0], *size), dtype=torch.long, device=box.device)
    return (cam_utils.apply_crop_box(ones, box, ignore_index=0) == 1).float()


class TSCDObjective(nn.Module):
    """Builds the loss modules from the config sections ``loss``, ``cam``, ``refine``, ``data``.

    ``forward(net, model, batch, step)`` returns ``(total, terms, aux)``: ``terms`` maps each
    computed term name to its unweighted value (detached for logging is up to the caller),
    ``aux`` holds the step's ``cam`` (B,K-1,H,W) and ``pseudo`` label (B,H,W) for display.
    ``net`` is the (possibly DDP-wrapped) :class:`TwoViewNet`, ``model`` the bare TSCD
    used for the no-gradient CAMs.
    """

    def __init__(self, cfg):
        super().__init__()
        self.loss_cfg, self.cam_cfg, self.refine_cfg = cfg.loss, cfg.cam, cfg.refine
        self.mean, self.std = tuple(cfg.data.mean), tuple(cfg.data.std)
        self.weights = {t: float(self.loss_cfg[t]) for t in TERMS}
        lc = self.loss_cfg
        if self.weights["aff"]:
            from .affinity import AffinityLoss
            self.aff = AffinityLoss(radius=lc.aff_radius)
        if self.weights["dense"]:
            from .dense_energy import DenseEnergyLoss
            self.dense = DenseEnergyLoss(weight=lc.dense_weight, sigma_rgb=lc.dense_sigma_rgb,
                                         sigma_xy=lc.dense_sigma_xy, scale_factor=lc.dense_scale)
        if self.weights["scd"]:
            from .scd import SelfCorrespondenceDistillation
            self.scd = SelfCorrespondenceDistillation(num_samples=None if lc.scd_dense else lc.scd_samples)

        r = self.refine_cfg
        if r.mode not in ("varm", "par", "none"):
            raise ValueError(f"refine.mode must be varm, par or none, got {r.mode!r}")
        self.refiner = None
        if r.mode != "none":
            from ..refine import VARM
            self.refiner = VARM(dilations=tuple(r.dilations), num_iter=r.num_iter, mode=r.mode)

    def in_stage1(self, step: int) -> bool:
        """Iteration ``step`` (1-based) trains L_cls only."""
        return step <= self.loss_cfg.stage1_iters

    @torch.no_grad()
    def pseudo_labels(self, model, images: torch.Tensor, cam: torch.Tensor, labels: torch.Tensor,
                      box: torch.Tensor | None, high: float, low: float) -> torch.Tensor:
        """Refined (or plain, with ``refine.mode=none``) pseudo labels (B,H,W) of §3–§4."""
        if self.refiner is None:
            return cam_utils.pseudo_label(cam, labels, box, high=high, low=low)
        from ..refine import refine_cams_with_bkg
        return refine_cams_with_bkg(denormalize(images, self.mean, self.std), cam, labels, high=high, low=low,
                                    crop_boxes=box, downscale=self.refine_cfg.scale, refiner=self.refiner)

    def forward(self, net: nn.Module, model: nn.Module, batch: dict, step: int):
        images, labels = batch["image"], batch["label"].float()
        box = batch.get("box")
        lc, w = self.loss_cfg, self.weights
        if self.in_stage1(step):
            out = net(images)
            terms = {"cls": F.multilabel_soft_margin_loss(out["cls"], labels)}
            return w["cls"] * terms["cls"], terms, {}

        need_small = any(w[t] for t in ("scd", "er"))
        small = (F.interpolate(images, scale_factor=lc.scd_scale, mode="bilinear", align_corners=True)
                 if need_small else None)
        scales = tuple(self.cam_cfg.scales)
        with torch.no_grad():
            cam = cam_utils.multi_scale_cam(model, images, scales)
            cam_small = cam_utils.multi_scale_cam(model, small, scales) if need_small else None
            pseudo = self.pseudo_labels(model, images, cam, labels, box, self.cam_cfg.high, self.cam_cfg.low)
        out = net(images, small)
        terms = {"cls": F.multilabel_soft_margin_loss(out["cls"], labels)}
        seg = out["seg"]
        if w["seg"]:
            terms["seg"] = segmentation_loss(seg, pseudo)
        if w["aff"]:
            terms["aff"] = self._affinity(out, pseudo, model)
        if w["dense"]:
            up = F.interpolate(seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
            roi = crop_roi(box, images.shape[-2:]) if box is not None else torch.ones_like(up[:, 0])
            rgb = denormalize(images, self.mean, self.std) * 255.0
            terms["dense"] = self.dense(rgb, up.softmax(1), roi, pseudo)
        if w["scd"]:
            s1 = F.interpolate(seg, size=cam.shape[-2:], mode="bilinear", align_corners=True)
            s2 = F.interpolate(out["seg_small"], size=cam_small.shape[-2:], mode="bilinear", align_corners=True)
            terms["scd"] = self.scd(cam, cam_small, s1, s2)
        if w["er"]:
            if lc.er_released:
                terms["er"] = equivariance_loss(cam, cam_small, released=True)
            else:
                terms["er"] = equivariance_loss(cam, live_cam(out["cam_small"], cam_small.shape[-2:]))
        total = sum(w[k] * v for k, v in terms.items())
        return total, terms, {"cam": cam, "pseudo": pseudo}

    def _affinity(self, out: dict, pseudo: torch.Tensor, model) -> torch.Tensor:
        stride = getattr(model, "output_stride", 16)
        h, w = pseudo.shape[-2:]
        grid = (-(-h // stride), -(-w // stride))
        return self.aff(out["attn_pred"], pseudo, grid_size=grid)
