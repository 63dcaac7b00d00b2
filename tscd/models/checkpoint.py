"""Loading weights into the MiT encoder or the TSCD network.

Accepted files (or already-loaded dicts), their layout detected from the keys:
- a SegFormer/MiT backbone file (``mit_b1.pth``): the encoder's own keys, possibly with the
  ImageNet ``head.*`` classifier (dropped) and possibly under ``"state_dict"``;
- a full TSCD/AFA checkpoint: ``encoder.*``, ``decoder.*``, ``classifier.*``, ``attn_proj.*``;
- one of ours: the same keys under ``"model"``;
- the foreign layouts of :mod:`tscd.models.pretrained`: Hugging Face transformers and mmseg
  SegFormer checkpoints (converted to MiT's names) and, for a timm ViT encoder, timm, DINOv2 and
  OpenAI-CLIP checkpoints.
``module.`` prefixes (DistributedDataParallel) are stripped. A backbone file loaded into a TSCD
model fills its encoder; a full checkpoint loaded into a bare encoder gives it ``encoder.*``.
``hf-hub:owner/name`` and ``timm:name`` fetch the file first (:func:`tscd.models.pretrained.fetch`).

Files are read safely (:func:`read_checkpoint_file`): safetensors files hold tensors only, and
PyTorch files are read weights-only: tensors and plain data (dicts, lists, numbers, strings),
never pickled objects, so a crafted file cannot run code. A file that pickles anything else is
refused, whoever wrote it.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .pretrained import LAYOUTS, error_line, fetch, is_remote, timm_vit, to_segformer_layout, to_timm_vit

__all__ = ["load_checkpoint", "read_checkpoint_file", "CheckpointMismatchError", "CheckpointReadError"]

logger = logging.getLogger(__name__)

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


def _is_torchscript(path: Path) -> bool:
    """A torch.jit.save archive: a zip whose compiled code comes with a ``constants.pkl``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _refused_global(message: str) -> str:
    """What torch's weights-only unpickler refused to build, e.g. ``GLOBAL posix.system`` (else "")."""
    found = re.search(r"\bGLOBAL ([\w.]+)", message)
    return f"GLOBAL {found.group(1)}" if found else ""


def _unpickler_reason(message: str) -> str:
    """The weights-only unpickler's own reason (e.g. ``Unsupported operand 255``), without torch's
    advice around it (which suggests loading the file unsafely)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation",
                                                           "Please file an issue", "WeightsUnpickler error:"))]
    return kept[0] if kept else "the weights-only unpickler stopped"


def read_checkpoint_file(path, map_location="cpu"):
    """The contents of the checkpoint ``path``: a safetensors file (its tensors, by name) or a
    PyTorch file loaded weights-only.

    Only tensors and plain data come back; a file that pickles other objects (code included)
    is refused before anything of it runs. Every failure is a :class:`CheckpointReadError`
    whose one-line message names the file and the reason: not found, a folder, empty, not a
    ``torch.save`` or safetensors file, a TorchScript archive, damaged, refused.
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
        return _read_safetensors(path, map_location)
    if head.startswith(_ZIP_MAGIC) and _is_torchscript(path):
        raise CheckpointReadError(
            f"{path} is a TorchScript archive (as OpenAI's CLIP .pt files), which holds code; tscd loads weights only: "
            f"pass a state-dict file instead (for CLIP: model.pretrained=timm:vit_base_patch16_clip_224.openai)")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_global(str(err))
        if refused:
            raise CheckpointReadError(
                f"refused to load {path}: loading it would run code (it pickles {refused}, not only tensors and "
                f"plain data); tscd loads weights only (re-save the state dict alone if you trust the file)") from None
        failure = pickle.UnpicklingError(_unpickler_reason(str(err)))
    except Exception as err:  # noqa: BLE001 - whatever torch.load trips on, the file is unusable
        failure = err
    if head.startswith(_ZIP_MAGIC):
        kind = "is a zip archive but not a PyTorch checkpoint, or it is damaged"
    elif head[0] == _PICKLE_PROTO:
        kind = "is damaged or not a PyTorch checkpoint"
    else:
        raise CheckpointReadError(f"{path} is not a PyTorch checkpoint (a file written by torch.save)")
    raise CheckpointReadError(f"{path} {kind} ({error_line(failure)})")


def _read_safetensors(path: Path, map_location) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (a format that holds nothing but tensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = str(torch.device(map_location)) if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointReadError(f"{path} is a damaged safetensors file ({error_line(err)})") from None


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


def _match_layout(model: nn.Module, state: dict[str, torch.Tensor], source: str):
    """``(target module, its name, layout, state in the target's names, dropped keys)``: the
    layout of ``state`` detected from its keys (:data:`tscd.models.pretrained.LAYOUTS`), or a
    one-line :class:`CheckpointMismatchError` listing the known layouts when none fits."""
    encoder = getattr(model, "encoder", None)
    encoder = encoder if isinstance(encoder, nn.Module) else None
    layout, dropped = "segformer", []
    converted = to_segformer_layout(state)
    if converted is not None:
        layout, state, dropped = converted
    if _is_backbone(state):
        dropped = sorted(dropped + [k for k in state if k.startswith("head.")])
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        target, name = (encoder, "encoder") if encoder is not None else (model, "model")
        return target, name, layout, state, dropped
    vit = timm_vit(model)
    own = model.state_dict()
    if (vit is None or vit[0] is not model) and any(k in own for k in state):
        return model, "model", "tscd", state, dropped
    if encoder is not None and any(k in encoder.state_dict() for k in state):
        return encoder, "encoder", "tscd", state, dropped
    inner = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if encoder is None and any(k in own for k in inner):
        return model, "model", "tscd", inner, sorted(k for k in state if not k.startswith("encoder."))
    if vit is not None:
        try:
            converted, dropped = to_timm_vit(state, vit[0])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointMismatchError(f"{source}: timm's checkpoint_filter_fn cannot convert it for the "
                                          f"{vit[1]} ({error_line(err)})") from None
        if any(k in vit[0].state_dict() for k in converted):
            return vit[0], vit[1], "timm", converted, dropped
    first = ", ".join(sorted(state)[:3]) + (", …" if len(state) > 3 else "")
    known = "; ".join(f"{name}: {what}" for name, what in LAYOUTS.items())
    raise CheckpointMismatchError(f"{source} is in no weights layout tscd knows for a {type(model).__name__} "
                                  f"(first keys: {first}); known layouts: {known}")


def _check_values(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse tensors that would load as garbage: a floating-point parameter or buffer of the model
    from a tensor that is not floating point (torch would cast it silently), and non-finite values
    (a diverged run's or a damaged file's weights), naming the first such key."""
    for key in sorted(state):
        value = state[key]
        if own[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointMismatchError(f"{source}: {key} holds {value.dtype} values where the model's tensor is "
                                          f"{own[key].dtype}; the file does not hold this model's weights")
    for key in sorted(state):
        value = state[key]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointMismatchError(f"{source}: {key} holds non-finite values (NaN or infinity): the weights are "
                                          f"damaged, or the run that saved them diverged")


def load_checkpoint(model: nn.Module, checkpoint, strict: bool = True, map_location="cpu") -> dict:
    """Load weights into a TSCD model or an encoder, detecting the layout from the keys.

    Accepted layouts (module docstring of ``tscd.models.checkpoint``): SegFormer/MiT backbone
    files, TSCD/AFA checkpoints and tscd's own, Hugging Face and mmseg SegFormer checkpoints, and
    for a timm ViT encoder timm, DINOv2 and OpenAI-CLIP checkpoints. Files are read weights-only:
    a file that pickles anything but tensors and plain data is refused, and so is a tensor that
    would load as garbage: a floating-point tensor of the model from an integer one, or non-finite
    values.

    Args:
        model: a [`TSCD`][tscd.models.TSCD] or an encoder. A backbone file loaded into a TSCD model
            fills its encoder; a full checkpoint loaded into a bare encoder gives it ``encoder.*``.
        checkpoint: a path, a remote source ``hf-hub:owner/name[@revision]`` or ``timm:name``
            (fetched through the Hugging Face cache first), or an already loaded dict.
        strict: every key of the target must be present with the same size and nothing else may be
            left over; False loads the keys that match and reports the others.
        map_location: where the tensors are loaded.

    Returns:
        ``{"target": "model" | "encoder" | "encoder.vit" | "vit", "layout": ..., "loaded": [...],
        "dropped": [...], "missing": [...], "unexpected": [...], "mismatched": [...]}``.

    Raises:
        CheckpointMismatchError: the layout is unknown (the message lists the known ones), or,
            with ``strict``, keys are missing, unexpected or of another size (the first line names
            the file and the first key of each kind), or a tensor would load as garbage (its key
            named).
        CheckpointReadError: the file is missing, not a checkpoint, damaged, or refused.
        tscd.models.pretrained.PretrainedSourceError: a remote source cannot be fetched (says
            why).
    """
    source = "the checkpoint"
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(checkpoint)
        path = checkpoint
        if is_remote(source):
            path = fetch(source)
            source = f"{source} ({path})"
        checkpoint = read_checkpoint_file(path, map_location)
    state = _unwrap(checkpoint, source)
    target, target_name, layout, state, dropped = _match_layout(model, state, source)

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
    _check_values(loadable, own, source)
    target.load_state_dict(loadable, strict=strict)
    logger.info("loaded %s (%s layout) into the %s: %d tensors, %d dropped", source, layout, target_name,
                len(loadable), len(dropped))
    return {"target": target_name, "layout": layout, "loaded": sorted(loadable), "dropped": dropped,
            "missing": missing, "unexpected": unexpected, "mismatched": mismatched}
