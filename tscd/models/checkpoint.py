"""Loading weights into the MiT encoder or the TSCD network.

Accepted files (or already-loaded dicts):
- a SegFormer/MiT backbone file (``mit_b1.pth``): the encoder's own keys, possibly with the
  ImageNet ``head.*`` classifier (dropped) and possibly under ``"state_dict"``;
- a full TSCD/AFA checkpoint: ``encoder.*``, ``decoder.*``, ``classifier.*``, ``attn_proj.*``;
- one of ours: the same keys under ``"model"``.
``module.`` prefixes (DistributedDataParallel) are stripped. A backbone file loaded into a TSCD
model fills its encoder; a full checkpoint loaded into a bare encoder gives it ``encoder.*``.

Files are always read weights-only (:func:`read_checkpoint_file`): tensors and plain data
(dicts, lists, numbers, strings), never pickled objects, so a crafted file cannot run code. A
file that pickles anything else is refused, whoever wrote it.
"""
from __future__ import annotations

import os
import pickle
import re
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_checkpoint", "read_checkpoint_file", "CheckpointMismatchError", "CheckpointReadError"]

_WRAPPER_KEYS = ("model", "state_dict")
_LISTED = 20  # keys named per category in an error message
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format (the default since PyTorch 1.6)
_PICKLE_PROTO = 0x80  # first byte of a protocol-2+ pickle: torch.save's legacy format


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or tensor sizes do not match the model (the message lists them)."""


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be used: missing, not a PyTorch checkpoint, damaged, or refused
    because it pickles objects other than tensors and plain data (one line naming the file)."""


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: a little-endian u64 header length, then the JSON header."""
    return len(head) >= 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] <= size - 8


def _refused_global(message: str) -> str:
    """What torch's weights-only unpickler refused, e.g. ``GLOBAL builtins.open`` (else "")."""
    found = re.search(r"WeightsUnpickler error: (?:Unsupported global: )?([^\n]*?)(?: was not an allowed global"
                      r" by default|\. Please|$)", message, re.MULTILINE)
    return found.group(1).strip() if found else ""


def read_checkpoint_file(path, map_location="cpu"):
    """The contents of the PyTorch checkpoint ``path``, loaded weights-only.

    Only tensors and plain data come back; a file that pickles other objects (code included)
    is refused before anything of it runs. Every failure is a :class:`CheckpointReadError`
    whose one-line message names the file and the reason: not found, a folder, empty, a
    safetensors file, not a ``torch.save`` file, damaged, refused.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointReadError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointReadError(f"checkpoint {path} is a folder, not a file")
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError as err:
        raise CheckpointReadError(f"cannot read checkpoint {path}: {err.strerror}") from None
    if not head:
        raise CheckpointReadError(f"checkpoint {path} is empty")
    if _is_safetensors(head, path.stat().st_size):
        raise CheckpointReadError(f"{path} is a safetensors file; tscd reads PyTorch checkpoints (torch.save): "
                                  f"convert it with torch.save(safetensors.torch.load_file(path), 'weights.pth')")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_global(str(err))
        if refused:
            raise CheckpointReadError(
                f"refused to load {path}: besides tensors it pickles Python objects ({refused}), which could run "
                f"code; tscd loads weights only (re-save the state dict alone if you trust the file)") from None
        failure = err
    except Exception as err:  # noqa: BLE001 - whatever torch.load trips on, the file is unusable
        failure = err
    if head.startswith(_ZIP_MAGIC):
        kind = "is a zip archive but not a PyTorch checkpoint, or it is damaged"
    elif head[0] == _PICKLE_PROTO:
        kind = "is damaged or not a PyTorch checkpoint"
    else:
        raise CheckpointReadError(f"{path} is not a PyTorch checkpoint (a file written by torch.save)")
    reason = str(failure).strip().splitlines()[0] if str(failure).strip() else type(failure).__name__
    raise CheckpointReadError(f"{path} {kind} ({type(failure).__name__}: {reason})")


def _unwrap(obj, source: str) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(f"no state dict found in {source} (top-level keys: {sorted(obj)[:10]})")
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} must be a state dict or a dict holding one, got {type(obj).__name__}")
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


def load_checkpoint(model: nn.Module, checkpoint, strict: bool = True, map_location="cpu") -> dict:
    """Load ``checkpoint`` (a path or a loaded dict) into ``model`` (TSCD or MixVisionTransformer).

    A path is read by :func:`read_checkpoint_file` (weights only; a ``CheckpointReadError``
    names an unusable file). strict=True: every key of the target must be present with the
    same size and nothing else may be left over, or ``CheckpointMismatchError`` lists the
    missing, unexpected and size-mismatched keys (its first line names the file and the first
    key of each kind). strict=False loads the keys that match and reports the others.

    Returns ``{"target": "model" | "encoder", "loaded": [...], "dropped": [...], "missing": [...],
    "unexpected": [...], "mismatched": [...]}``.
    """
    source = "the checkpoint"
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(checkpoint)
        checkpoint = read_checkpoint_file(checkpoint, map_location)
    state = _unwrap(checkpoint, source)
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
        kinds = [(t, ks) for t, ks in (("missing", missing), ("unexpected", unexpected), ("size mismatch", mismatched))
                 if ks]
        first = "; ".join(f"{t} ({len(ks)}): {ks[0]}" + (", …" if len(ks) > 1 else "") for t, ks in kinds)
        lines = [f"{source} does not match the {target_name} ({type(target).__name__}): {first}"]
        lines += [_listing(t, ks) for t, ks in kinds]
        raise CheckpointMismatchError("\n".join(lines))
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    target.load_state_dict(loadable, strict=strict)
    return {"target": target_name, "loaded": sorted(loadable), "dropped": dropped, "missing": missing,
            "unexpected": unexpected, "mismatched": mismatched}
