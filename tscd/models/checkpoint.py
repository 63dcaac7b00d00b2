"""Loading weights into the MiT encoder or the TSCD network.

Accepted files (or already-loaded dicts):
- a SegFormer/MiT backbone file (``mit_b1.pth``): the encoder's own keys, possibly with the
  ImageNet ``head.*`` classifier (dropped) and possibly under ``"state_dict"``;
- a full TSCD/AFA checkpoint: ``encoder.*``, ``decoder.*``, ``classifier.*``, ``attn_proj.*``;
- one of ours: the same keys under ``"model"``.
``module.`` prefixes (DistributedDataParallel) are stripped. A backbone file loaded into a TSCD
model fills its encoder; a full checkpoint loaded into a bare encoder gives it ``encoder.*``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["load_checkpoint", "CheckpointMismatchError"]

_WRAPPER_KEYS = ("model", "state_dict")
_LISTED = 20  # keys named per category in an error message


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or tensor sizes do not match the model (the message lists them)."""


def _unwrap(obj) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(f"no state dict found in the checkpoint (top-level keys: {sorted(obj)[:10]})")
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"a checkpoint must be a state dict or a dict holding one, got {type(obj).__name__}")
    state = {}
    for k, v in obj.items():
        while k.startswith("module."):
            k = k[len("module."):]
        state[k] = v
    return state


def _is_backbone(state: Mapping[str, torch.Tensor]) -> bool:
    return "patch_embed1.proj.weight" in state


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED]) + (f", … ({len(keys) - _LISTED} more)" if len(keys) > _LISTED else "")
    return f"  {title} ({len(keys)}): {shown}"


def load_checkpoint(model: nn.Module, checkpoint, strict: bool = True, map_location="cpu",
                    weights_only: bool = True) -> dict:
    """Load ``checkpoint`` (a path or a loaded dict) into ``model`` (TSCD or MixVisionTransformer).

    strict=True: every key of the target must be present with the same size and nothing
    else may be left over, or ``CheckpointMismatchError`` lists the missing, unexpected and
    size-mismatched keys. strict=False loads the keys that match and reports the others.
    ``weights_only=False`` is needed for files that pickle other objects (only for trusted files).

    Returns ``{"target": "model" | "encoder", "loaded": [...], "dropped": [...], "missing": [...],
    "unexpected": [...], "mismatched": [...]}``.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(checkpoint, map_location=map_location, weights_only=weights_only)
    state = _unwrap(checkpoint)
    has_encoder = hasattr(model, "encoder") and isinstance(model.encoder, nn.Module)
    dropped = []
    if _is_backbone(state):
        dropped = sorted(k for k in state if k.startswith("head."))
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    if has_encoder and _is_backbone(state):
        target, target_name = model.encoder, "encoder"
    else:
        target, target_name = model, "model"
        if not has_encoder and "encoder.patch_embed1.proj.weight" in state:
            dropped = sorted(k for k in state if not k.startswith("encoder."))
            state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}

    own = target.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in own if k in state and state[k].shape != own[k].shape)
    if strict and (missing or unexpected or mismatched):
        lines = [f"checkpoint does not match the {target_name} ({type(target).__name__}):"]
        lines += [_listing(t, ks) for t, ks in (("missing", missing), ("unexpected", unexpected),
                                                  ("size mismatch", mismatched)) if ks]
        raise CheckpointMismatchError("\n".join(lines))
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    target.load_state_dict(loadable, strict=strict)
    return {"target": target_name, "loaded": sorted(loadable), "dropped": dropped, "missing": missing,
            "unexpected": unexpected, "mismatched": mismatched}
