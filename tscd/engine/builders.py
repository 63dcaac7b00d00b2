"""Everything a job builds from a configuration: device and threads, the model, the pseudo-labeller,
the objective, loaders, and a trained model from its checkpoint.

The configuration's ``train.backend`` goes into the constructors of the modules that run
``tscd.ops`` (refiner, dense energy loss, SCD); nothing here touches ``TSCD_BACKEND``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..class_activation import MultiScaleCAM
from ..config import MAX_IMAGE_SIDE, ConfigError, TSCDConfig, apply, config_from_dict, to_dict
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
from ..models import TSCD, load_checkpoint
from ..ops.backends import resolve, why_unusable
from ..refine import PseudoLabeler
from . import checkpoint as ckpt_io


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but no GPU is visible")
    return torch.device(name)


def setup_runtime(cfg: TSCDConfig) -> None:
    """Process settings a run needs: ``train.num_threads``."""
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))


def check_backend(cfg: TSCDConfig, device: torch.device) -> None:
    """Raise a ``ValueError`` when ``train.backend`` is ``triton`` and Triton cannot run on
    ``device`` here, saying why and what to do: on the CPU it runs only under its interpreter,
    which must be on (``TRITON_INTERPRET=1``) before Triton is first imported, so no run can
    turn it on for itself."""
    reason = why_unusable("triton", device.type) if cfg.train.backend == "triton" else None
    if reason is not None:
        raise ValueError(f"train.backend=triton cannot run on the {device.type}: {reason}; start tscd with "
                         f"TRITON_INTERPRET=1 in its environment (slow) or on a CUDA device, or choose another "
                         f"--backend (auto, cpp, torch)")


def build_model(cfg: TSCDConfig, pretrained: bool = True) -> TSCD:
    """The model of ``cfg.model`` for K = ``data.num_classes``, or the dataset's class count when that
    is unset (:func:`tscd.data.dataset_num_classes`; a given value is used as is, so that a
    checkpoint's stored config builds its model without the dataset, which checks it when built).

    ``pretrained=False`` skips ``model.pretrained`` (a model about to receive a checkpoint's
    weights needs neither the file nor the time to read it)."""
    m = cfg.model
    k = dataset_num_classes(cfg) if cfg.data.num_classes is None else cfg.data.num_classes
    return TSCD(backbone=m.backbone, num_classes=k, stride=tuple(m.stride), pooling=m.pooling,
                embedding_dim=m.embedding_dim, pretrained=m.pretrained if pretrained else None, topk_ratio=m.topk_ratio,
                drop_path_rate=m.drop_path_rate, freeze_backbone=m.freeze_backbone)


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation that failed: CUDA's ``OutOfMemoryError``, the CPU
    allocator's ``RuntimeError`` or Python's ``MemoryError``."""
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


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
    c, r = cfg.cam, cfg.refine
    return PseudoLabeler(MultiScaleCAM(tuple(c.scales), c.flip), high=c.high, low=c.low, refine=mode,
                         dilations=tuple(r.dilations), num_iter=r.num_iter, downscale=r.scale,
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


#: The ops a training step calls (through the objective and the pseudo labeler).
TRAINING_OPS = ("varm_affinity", "varm_refine", "scd_loss", "dense_energy_loss")


def prepare_backends(cfg: TSCDConfig, device: torch.device) -> dict[str, str]:
    """{op: backend} for :data:`TRAINING_OPS` under ``train.backend``, resolved now: a first build
    of the C++ extension happens here, before the first step (and before the ETA is measured),
    not at the first refinement, and a build that fails falls back with its warning up front."""
    return {op: resolve(op, cfg.train.backend, device.type) for op in TRAINING_OPS}


def eval_loader(dataset, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


#: Settings a checkpoint's weights depend on: a config that differs in one of them cannot load it.
#: (``model.freeze_backbone`` is not one: a model trained frozen has the same weights' shapes.)
MODEL_KEYS = ("data.num_classes", "model.backbone", "model.stride", "model.embedding_dim")
#: Settings a training checkpoint's optimiser state depends on (its parameter groups): a resumed run
#: cannot change them.
OPTIMIZER_KEYS = ("model.freeze_backbone",)
#: Settings that may differ from a checkpoint's without being reported (where the run is written).
UNREPORTED_KEYS = ("work_dir",)


def _flat(tree: dict, prefix: str = "") -> dict:
    """A nested dict as ``{dotted key: value}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_config_compatible(stored: TSCDConfig, asked: TSCDConfig, checkpoint, resuming: bool = False
                            ) -> dict[str, tuple]:
    """Compare the config ``checkpoint`` was trained with (``stored``) with the one ``asked`` for.

    A difference in :data:`MODEL_KEYS`, or when ``resuming`` the training run in
    :data:`OPTIMIZER_KEYS`, raises a ``CheckpointError`` naming each such key with the stored and
    the asked value. Returns the other differences, ``{dotted key: (stored, asked)}``
    (:data:`UNREPORTED_KEYS` left out), for the caller to report.
    """
    old, new = _flat(to_dict(stored)), _flat(to_dict(asked))
    changed = {key: (old[key], new[key]) for key in old if old[key] != new[key] and key not in UNREPORTED_KEYS}

    def clashes(keys: tuple[str, ...]) -> str:
        return ", ".join(f"{key}={changed[key][0]} (the config says {changed[key][1]})" for key in keys
                         if key in changed)

    weights_clash = clashes(MODEL_KEYS)
    if weights_clash:
        raise ckpt_io.CheckpointError(f"{checkpoint} was trained with {weights_clash}: its weights do not fit that "
                                      f"model")
    optimizer_clash = clashes(OPTIMIZER_KEYS) if resuming else ""
    if optimizer_clash:
        raise ckpt_io.CheckpointError(
            f"{checkpoint} was trained with {optimizer_clash}, which changes the optimiser's parameter "
            f"groups: it cannot be resumed so; start a new run in another --work-dir from its weights with "
            f"model.pretrained={checkpoint}")
    return {key: values for key, values in changed.items() if key not in MODEL_KEYS}


def load_trained(checkpoint, cfg: TSCDConfig | None = None) -> tuple[TSCD, TSCDConfig, list[str]]:
    """(model, cfg, class_names) of one of our training checkpoints.

    Without ``cfg`` the checkpoint's stored config is used; with one, it must agree with the
    stored config on :data:`MODEL_KEYS` (:func:`check_config_compatible`).
    """
    state = ckpt_io.load(checkpoint)
    stored = config_from_dict(state["config"]) if "config" in state else None
    if cfg is None:
        if stored is None:
            raise ckpt_io.CheckpointError(f"{checkpoint} carries no config: pass --config")
        cfg = stored
    elif stored is not None:
        if cfg.data.num_classes is None:  # left to the dataset: the trained count (the dataset checks it)
            cfg = apply(cfg, values={"data.num_classes": stored.data.num_classes})
        check_config_compatible(stored, cfg, checkpoint)
    model = build_model(cfg, pretrained=False)
    try:
        load_checkpoint(model, state["model"])
    except ValueError as err:
        raise ckpt_io.CheckpointError(f"{checkpoint} does not fit the model: {str(err).splitlines()[0]}") from None
    names = state.get("class_names") or [f"class_{i}" for i in range(model.num_classes)]
    return model, cfg, names
