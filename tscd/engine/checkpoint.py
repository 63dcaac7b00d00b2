"""Checkpoints written atomically, and the random states needed to resume exactly."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model (names the file)."""


def atomic_save(obj, path) -> None:
    """``torch.save`` through :func:`tscd.engine.io.atomic_write`: never a partial checkpoint."""
    atomic_write(path, lambda f: torch.save(obj, f))


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path, map_location="cpu") -> dict:
    """A training checkpoint written by :func:`atomic_save` (a dict with at least ``model``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a tscd training checkpoint (no 'model' entry)")
    return ckpt
