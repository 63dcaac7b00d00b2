"""Checkpoints written atomically, holding only tensors and plain data, and the random states
needed to resume exactly; which configs a checkpoint fits, and a trained model from one.

Every checkpoint is read by :func:`tscd.models.checkpoint.read_checkpoint_file` (weights only):
unpickling an arbitrary object can run code, so a file that holds anything but tensors, numbers,
strings, lists and dicts is refused (a :class:`CheckpointError` naming it) without running any of it.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from ..config import TSCDConfig, apply, config_from_dict, to_dict
from ..models import TSCD, load_checkpoint
from ..models.checkpoint import CheckpointReadError, read_checkpoint_file
from .builders import build_model
from .io import atomic_write


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model (names the file)."""


def atomic_save(obj, path) -> None:
    """``torch.save`` through :func:`tscd.engine.io.atomic_write`: never a partial checkpoint."""
    atomic_write(path, lambda f: torch.save(obj, f))


def rng_state() -> dict:
    """The python, numpy, torch and CUDA random states as tensors and plain numbers (loadable
    with ``weights_only=True``); :func:`set_rng_state` restores them."""
    version, python_key, gauss_next = random.getstate()
    kind, numpy_key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {"python": {"version": version, "key": torch.tensor(python_key, dtype=torch.int64),
                       "gauss_next": gauss_next},
            "numpy": {"kind": str(kind), "key": torch.from_numpy(numpy_key.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    """Restore the random states of :func:`rng_state` (CUDA's only where a GPU is visible)."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["key"].tolist()), py["gauss_next"]))
    np.random.set_state((npy["kind"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path, map_location="cpu") -> dict:
    """A training checkpoint written by :func:`atomic_save` (a dict with at least ``model``),
    read with ``weights_only=True``: a file holding other pickled objects is refused unread."""
    try:
        ckpt = read_checkpoint_file(path, map_location)
    except CheckpointReadError as err:
        raise CheckpointError(str(err)) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a tscd training checkpoint (no 'model' entry)")
    return ckpt


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
        raise CheckpointError(f"{checkpoint} was trained with {weights_clash}: its weights do not fit that model")
    optimizer_clash = clashes(OPTIMIZER_KEYS) if resuming else ""
    if optimizer_clash:
        raise CheckpointError(
            f"{checkpoint} was trained with {optimizer_clash}, which changes the optimiser's parameter "
            f"groups: it cannot be resumed so; start a new run in another --work-dir from its weights with "
            f"model.pretrained={checkpoint}")
    return {key: values for key, values in changed.items() if key not in MODEL_KEYS}


def load_trained(checkpoint, cfg: TSCDConfig | None = None) -> tuple[TSCD, TSCDConfig, list[str]]:
    """(model, cfg, class_names) of one of our training checkpoints.

    Without ``cfg`` the checkpoint's stored config is used; with one, it must agree with the
    stored config on :data:`MODEL_KEYS` (:func:`check_config_compatible`).
    """
    state = load(checkpoint)
    stored = config_from_dict(state["config"]) if "config" in state else None
    if cfg is None:
        if stored is None:
            raise CheckpointError(f"{checkpoint} carries no config: pass --config")
        cfg = stored
    elif stored is not None:
        if cfg.data.num_classes is None:  # left to the dataset: the trained count (the dataset checks it)
            cfg = apply(cfg, values={"data.num_classes": stored.data.num_classes})
        check_config_compatible(stored, cfg, checkpoint)
    model = build_model(cfg, pretrained=False)
    try:
        load_checkpoint(model, state["model"])
    except ValueError as err:
        raise CheckpointError(f"{checkpoint} does not fit the model: {str(err).splitlines()[0]}") from None
    names = state.get("class_names") or [f"class_{i}" for i in range(model.num_classes)]
    return model, cfg, names
