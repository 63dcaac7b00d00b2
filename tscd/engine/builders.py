"""What a job builds from a configuration: the model (and whether it takes the configured crop),
the pseudo-labeller, the objective and the evaluation loader.

The configuration's ``train.backend`` goes into the constructors of the modules that run
``tscd.ops`` (refiner, dense energy loss, SCD); nothing here touches ``TSCD_BACKEND``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..class_activation import MultiScaleCAM
from ..config import MAX_IMAGE_SIDE, ConfigError, TSCDConfig
from ..constants import LOSS_TERMS, REFINE_MODES
from ..data import collate, dataset_num_classes
from ..losses import (
    AffinityLoss,
    DenseEnergyLoss,
    EquivarianceLoss,
    SegmentationLoss,
    SelfCorrespondenceDistillation,
)
from ..losses.objective import TSCDObjective
from ..models import TSCD
from ..refine import PseudoLabeler


def build_model(cfg: TSCDConfig, pretrained: bool = True) -> TSCD:
    """The model of ``cfg.model`` for K = ``data.num_classes``, or the dataset's class count when that
    is unset (:func:`tscd.data.dataset_num_classes`; a given value is used as is, so that a
    checkpoint's stored config builds its model without the dataset, which checks it when built).

    ``pretrained=False`` skips ``model.pretrained`` (a model about to receive a checkpoint's
    weights needs neither the file nor the time to read it)."""
    k = dataset_num_classes(cfg) if cfg.data.num_classes is None else cfg.data.num_classes
    return TSCD(backbone=cfg.model.backbone, num_classes=k, stride=tuple(cfg.model.stride), pooling=cfg.model.pooling,
                embedding_dim=cfg.model.embedding_dim, pretrained=cfg.model.pretrained if pretrained else None,
                topk_ratio=cfg.model.topk_ratio, drop_path_rate=cfg.model.drop_path_rate,
                freeze_backbone=cfg.model.freeze_backbone)


def _crop_failure(model: TSCD, cfg: TSCDConfig, crop: int, device: torch.device) -> str | None:
    """Why ``model`` cannot take a training crop of ``crop`` px (None if it can): a forward of the
    crop and, where ``loss.scd`` or ``loss.er`` asks for it, of its second view (``loss.scd_scale``
    × the crop), in eval mode and without autograd (no state of the model changes)."""
    uses_small = cfg.loss.scd > 0 or cfg.loss.er > 0
    small = math.floor(crop * cfg.loss.scd_scale) if uses_small else None
    what = "the crop"
    if small is not None and small < 1:
        return f"the second view (loss.scd_scale={cfg.loss.scd_scale:g} × the crop) is empty"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, 3, crop, crop, device=device)
            model(x)
            if small is not None:
                what = f"the second view (loss.scd_scale={cfg.loss.scd_scale:g} × the crop)"
                model(x, torch.zeros(1, 3, small, small, device=device))
    except (ValueError, RuntimeError) as err:
        return f"{what} fails: {str(err).strip().splitlines()[0]}"
    finally:
        model.train(was_training)
    return None


def check_crop_size(model: TSCD, cfg: TSCDConfig, device: torch.device) -> None:
    """Raise a :class:`~tscd.config.ConfigError` naming ``data.crop_size``, the smallest crop the
    model can use and why, when the crop is smaller: its stage-4 map (CAM, attention grid) must
    have at least 2×2 positions (a crop of 2 × the output stride), and the network must run on the
    crop and its second view (:func:`_crop_failure`). A crop the network fails on for another
    reason (memory) is named with that reason."""
    crop, stride = cfg.data.crop_size, model.output_stride
    least = 2 * stride
    failure = _crop_failure(model, cfg, crop, device)
    if crop >= least and failure is None:
        return
    # the smallest working crop from `least` on, up to 4× the larger of the two: doubling, then
    # bisection (a network that takes a size takes every larger one, memory permitting)
    below, above, limit = least - 1, least, min(MAX_IMAGE_SIDE, 4 * max(crop, least))
    while (failing := _crop_failure(model, cfg, above, device)) is not None and above < limit:
        below, above = above, min(2 * above, limit)
    if failing is not None:
        raise ConfigError(f"'data.crop_size' is {crop}: the network fails on every crop from {least} to {limit} px "
                          f"({above} px: {failing})")
    if crop >= above:  # not a matter of a small size
        raise ConfigError(f"'data.crop_size' is {crop}: the network cannot take a crop of that size: {failure}")
    while above - below > 1:
        middle = (below + above) // 2
        below, above = (below, middle) if _crop_failure(model, cfg, middle, device) is None else (middle, above)
    if above == least:
        why = (f"its output stride is {stride} (model.backbone={cfg.model.backbone}, model.stride={cfg.model.stride}"
               f"), and a smaller crop leaves its CAM fewer than 2×2 positions")
    else:
        why = f"on a smaller one, {_crop_failure(model, cfg, above - 1, device)}"
    raise ConfigError(f"'data.crop_size' is {crop}, below {above}, the smallest crop the network can use: {why}")


def build_pseudo_labeler(cfg: TSCDConfig, refine: str | None = None) -> PseudoLabeler:
    """The pseudo-labeller of ``cam`` and ``refine`` (``refine`` replaces ``refine.mode``)."""
    mode = cfg.refine.mode if refine is None else refine
    if mode not in REFINE_MODES:
        raise ValueError(f"refine.mode must be one of {', '.join(REFINE_MODES)}, got {mode!r}")
    cam = cfg.cam
    return PseudoLabeler(MultiScaleCAM(tuple(cam.scales), cam.flip), high=cam.high, low=cam.low, mode=mode,
                         dilations=tuple(cfg.refine.dilations), num_iter=cfg.refine.num_iter, scale=cfg.refine.scale,
                         backend=cfg.train.backend)


def build_objective(cfg: TSCDConfig, pseudo_labeler: PseudoLabeler) -> TSCDObjective:
    """The objective of ``loss`` (and ``cam.reuse_forward``) around ``pseudo_labeler``: the loss module
    of every term whose weight ``loss.<term>`` is not 0, and of ``cls`` always (stage 1 trains it
    alone); the fused losses run on ``train.backend``."""
    loss, backend = cfg.loss, cfg.train.backend
    modules = {
        "cls": nn.MultiLabelSoftMarginLoss,
        "seg": SegmentationLoss,
        "dense": lambda: DenseEnergyLoss(loss.dense_weight, loss.dense_sigma_rgb, loss.dense_sigma_xy,
                                         loss.dense_scale, backend=backend),
        "aff": lambda: AffinityLoss(loss.aff_radius),
        "scd": lambda: SelfCorrespondenceDistillation(None if loss.scd_dense else loss.scd_samples, backend=backend),
        "er": lambda: EquivarianceLoss(loss.er_released),
    }
    weights = {term: getattr(loss, term) for term in LOSS_TERMS}
    terms = {term: modules[term]() for term in LOSS_TERMS if weights[term] or term == "cls"}
    return TSCDObjective(pseudo_labeler, terms, weights, loss.stage1_iters, loss.scd_scale, cfg.cam.reuse_forward)


def eval_loader(dataset, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
