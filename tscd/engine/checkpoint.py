"""Checkpoints written atomically, holding only tensors and plain data, and the random states
needed to resume exactly.

Every checkpoint is read by :func:`tscd.models.checkpoint.read_checkpoint_file` (weights only):
unpickling an arbitrary object can run code, so a file that holds anything but tensors, numbers,
strings, lists and dicts is refused (a :class:`CheckpointError` naming it) without running any of it.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from ..models.checkpoint import CheckpointReadError, read_checkpoint_file
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
