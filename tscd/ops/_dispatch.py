"""Backend selection shared by every op.

``backend`` is one of ``"auto" | "torch" | "triton" | "cpp"``; the environment variable
``TSCD_BACKEND`` replaces ``"auto"``. Auto picks triton, then cpp, then torch for CUDA
tensors, and cpp, then torch for CPU tensors. A backend that cannot run on the tensors'
device falls back to the next usable one with a single warning per (op, backend, device).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

from . import _cpp

BACKENDS = ("torch", "triton", "cpp")
_CHOICES = ("auto",) + BACKENDS
_AUTO_ORDER = {"cuda": ("triton", "cpp", "torch"), "cpu": ("cpp", "torch")}
_warned: set[tuple] = set()


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Triton kernels run on the CPU only under ``TRITON_INTERPRET=1``."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def why_unusable(backend: str, device_type: str) -> str | None:
    """None when ``backend`` can run on ``device_type``, else the reason it cannot."""
    if backend == "torch":
        return None
    if device_type not in _AUTO_ORDER:
        return f"no {backend} kernels for {device_type} tensors"
    if backend == "triton":
        if not _triton_importable():
            return "triton is not installed"
        if device_type == "cpu" and not triton_interpreted():
            return "triton runs on CPU tensors only with TRITON_INTERPRET=1"
        return None
    reason = _cpp.load_failure()
    if reason is None and device_type == "cuda" and not _cpp.has_cuda_kernels():
        reason = "the C++ extension was compiled without CUDA"
    return reason


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on tensors of ``device`` in this process."""
    device_type = torch.device(device).type
    return [b for b in BACKENDS if why_unusable(b, device_type) is None]


def warn_once(key: tuple, message: str, stacklevel: int = 4) -> None:
    """A ``RuntimeWarning`` the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


def _check_choice(backend, source: str) -> None:
    if backend not in _CHOICES:
        raise ValueError(f"{source} must be one of {_CHOICES}, got {backend!r}")


def resolve_backend(op: str, backend: str, device: torch.device) -> str:
    """The backend that will run ``op`` on tensors of ``device`` for the request ``backend``."""
    _check_choice(backend, "backend")
    if backend == "auto":
        backend = os.environ.get("TSCD_BACKEND", "auto") or "auto"
        _check_choice(backend, "TSCD_BACKEND")
    device_type = torch.device(device).type
    order = _AUTO_ORDER.get(device_type, ("torch",))
    if backend != "auto":
        reason = why_unusable(backend, device_type)
        if reason is None:
            return backend
        order = tuple(b for b in order if b != backend)
    else:
        reason = None
    for i, candidate in enumerate(order):
        candidate_reason = why_unusable(candidate, device_type)
        if candidate_reason is None:
            if reason is not None:
                warn_once(
                    (op, backend, device_type),
                    f"tscd.ops.{op}: backend {backend!r} cannot run on {device_type} tensors "
                    f"({reason}); using {candidate!r}",
                )
            return candidate
        if reason is None:
            backend, reason = candidate, candidate_reason
    raise AssertionError("the torch backend is always usable")
