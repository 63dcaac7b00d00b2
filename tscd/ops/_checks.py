"""Argument validation shared by the ops: clear ``TypeError``/``ValueError`` messages that
name the argument and the expected shape, raised before any kernel sees the data."""
from __future__ import annotations

import torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x, expected: str, ndims: tuple[int, ...], floating: bool = True) -> None:
    """``x`` must be a tensor of one of the ranks ``ndims`` (and floating point if asked).

    ``expected`` is the shape as the docstring writes it, e.g. ``"(B, C, H, W)"``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if floating and x.dtype not in _FLOATS:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {x.dtype}"
        )
    if x.dim() not in ndims:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; returns it."""
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on the same device, got {listing}")
    return first


def check_dim_equal(what: str, **sizes: int) -> None:
    """The named sizes (e.g. the batch size of several arguments) must agree."""
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{n}={s}" for n, s in sizes.items())
        raise ValueError(f"{what} must agree, got {listing}")


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Kernels compute in float32 (float64 stays float64 for the reference and gradcheck)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
