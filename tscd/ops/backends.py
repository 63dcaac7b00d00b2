"""The backends of ``tscd.ops``: which can run where, the primitives each provides, and the choice.

- ``torch``: the naive PyTorch reference of every op (``tscd/ops/reference``), the oracle.
- ``triton``: the Triton kernels of :mod:`tscd.kernels` as ``torch.ops.tscd_triton.*``; on CUDA,
  or on the CPU under its interpreter (``TRITON_INTERPRET=1``).
- ``cpp``: the C++ extension as ``torch.ops.tscd.*``; on the CPU, and on CUDA when it was
  compiled with the CUDA sources.
- ``lattice``: the permutohedral lattice of the C++ extension as ``torch.ops.tscd_lattice.*``
  (``gaussian_product`` and its transpose, on the CPU; O(N), approximate: its sums fall short of the
  exact ones by the lattice scale of method §8, which the dense CRF's normalisation cancels).
- ``pydensecrf``: the permutohedral dense CRF of the optional ``pydensecrf2`` package as
  ``torch.ops.tscd_pydensecrf.dense_crf`` (``dense_crf`` only; approximate).

The fused backends share one set of primitives with identical schemas
(:mod:`tscd.kernels.primitives`): an op asks :func:`primitives` for the namespace of the
backend :func:`resolve` chose and calls ``.gaussian_product``, ``.scd_pass``, ... on it.

An op's ``backend`` argument is ``"auto"``, ``"exact"`` (auto among the exact backends) or the
name of one of the op's backends. ``auto`` follows the environment variable ``TSCD_BACKEND``
when it is set (a user default; the library never sets it), else the op's order on the
tensors' device: triton, cpp, torch on CUDA; cpp, torch on the CPU, where the dense CRF of
images of at least :data:`CPU_CRF_LATTICE_PIXELS` pixels prefers the lattice, then pydensecrf.
The approximate backends are never chosen by ``exact``, nor by ``auto`` for the ops whose value
they would change (the gaussian product and the dense energy loss). A named backend that
cannot run falls back to the first usable one of that order with one warning per (op,
backend, device); ``auto`` left with only the torch reference (the C++ extension could not be
built, say) warns once per device type, naming each fused backend and why it cannot run. Each
choice is logged at DEBUG on ``tscd.ops``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..kernels import extension
from ..kernels.utils import interpreted as triton_interpreted

logger = logging.getLogger("tscd.ops")


@functools.cache
def _importable(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _triton_unusable(device_type: str) -> str | None:
    if not _importable("triton"):
        return "triton is not installed"
    if device_type == "cpu" and not triton_interpreted():
        return "triton runs on CPU tensors only with TRITON_INTERPRET=1"
    return None


def _native_unusable(device_type: str) -> str | None:
    reason = extension.load_failure()
    if reason is not None:
        return f"the C++ extension is unavailable ({reason})"
    if device_type == "cuda" and not extension.has_cuda_kernels():
        return "the C++ extension was compiled without CUDA"
    return None


def _lattice_unusable(device_type: str) -> str | None:
    if device_type != "cpu":
        return "no CUDA lattice yet (the permutohedral lattice runs on CPU tensors only)"
    return _native_unusable(device_type)


def _pydensecrf_unusable(device_type: str) -> str | None:
    return None if _importable("pydensecrf") else "pydensecrf2 is not installed (pip install tscd[crf])"


class Backend(NamedTuple):
    name: str
    exact: bool  # computes the op's sums exactly (lattice and pydensecrf approximate them)
    namespace: str | None  # torch.ops namespace of its primitives (None: the reference)
    modules: tuple[str, ...]  # modules whose import registers those primitives
    unusable: Callable[[str], str | None]  # device type -> None, or why it cannot run there


_REGISTRY = {b.name: b for b in (
    Backend("torch", True, None, (), lambda device_type: None),
    Backend("triton", True, "tscd_triton", ("tscd.kernels.gaussian", "tscd.kernels.scd", "tscd.kernels.varm"),
            _triton_unusable),
    Backend("cpp", True, "tscd", (), _native_unusable),
    Backend("lattice", False, "tscd_lattice", (), _lattice_unusable),
    Backend("pydensecrf", False, "tscd_pydensecrf", ("tscd.kernels.pydensecrf",), _pydensecrf_unusable),
)}
BACKENDS = tuple(_REGISTRY)
_FUSED = ("torch", "triton", "cpp")
#: The backends of each public op.
OP_BACKENDS: dict[str, tuple[str, ...]] = {
    "gaussian_product": _FUSED + ("lattice",), "scd_loss": _FUSED, "varm_affinity": _FUSED, "varm_refine": _FUSED,
    "dense_energy_loss": _FUSED + ("lattice",), "dense_crf": _FUSED + ("lattice", "pydensecrf"),
}
_REQUESTS = ("auto", "exact")
_DEVICE_ORDER = {"cuda": ("triton", "cpp", "torch"), "cpu": ("cpp", "torch")}
#: Pixel count from which ``auto`` runs the CPU dense CRF on the lattice instead of the exact cpp
#: kernels: below it the exact CRF costs hardly more, so small images stay exact; above it the
#: lattice wins by a factor that grows with the image (the timings: docs/ops.md, "The lattice").
CPU_CRF_LATTICE_PIXELS = 256
# (op, device type) -> (minimum pixel count, backends tried before the device's order from there)
_PREFERRED = {("dense_crf", "cpu"): (CPU_CRF_LATTICE_PIXELS, ("lattice", "pydensecrf"))}
_warned: set[tuple] = set()


def is_exact(backend: str) -> bool:
    """Whether ``backend`` computes the ops' sums exactly (``lattice`` and ``pydensecrf`` approximate them)."""
    return _REGISTRY[backend].exact


def why_unusable(backend: str, device_type: str) -> str | None:
    """None when ``backend`` can run on tensors of ``device_type``, else the reason it cannot."""
    if backend != "torch" and device_type not in _DEVICE_ORDER:
        return f"no {backend} kernels for {device_type} tensors"
    return _REGISTRY[backend].unusable(device_type)


def can_run(backend: str, device: str | torch.device) -> bool:
    """Whether ``backend`` can run on tensors of ``device`` in this process."""
    return why_unusable(backend, torch.device(device).type) is None


def available_backends(device: str | torch.device = "cpu", op: str | None = None) -> list[str]:
    """The backends (of ``op``, or of any op) that can run on tensors of ``device``."""
    names = OP_BACKENDS[op] if op is not None else BACKENDS
    return [b for b in names if can_run(b, device)]


def warn_once(key: tuple, message: str, stacklevel: int = 4) -> None:
    """A ``RuntimeWarning`` the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


def _order(op: str, device_type: str, exact_only: bool, pixels: int) -> tuple[str, ...]:
    threshold, preferred = _PREFERRED.get((op, device_type), (0, ()))
    order = (preferred if pixels >= threshold else ()) + _DEVICE_ORDER.get(device_type, ("torch",))
    return tuple(b for b in order if b in OP_BACKENDS[op] and (is_exact(b) or not exact_only))


def _requested(op: str, backend) -> str:
    """The request after validation, with ``TSCD_BACKEND`` in place of ``auto``."""
    choices = _REQUESTS + OP_BACKENDS[op]
    if backend not in choices:
        raise ValueError(f"backend must be one of {choices}, got {backend!r}")
    if backend == "auto":
        default = os.environ.get("TSCD_BACKEND") or "auto"
        if default not in _REQUESTS + BACKENDS:
            raise ValueError(f"TSCD_BACKEND must be one of {_REQUESTS + BACKENDS}, got {default!r}")
        backend = default if default in choices else "auto"
    return backend


@torch.compiler.assume_constant_result
def resolve(op: str, backend: str, device_type: str, pixels: int = 0) -> str:
    """The backend that runs ``op`` on ``device_type`` tensors for the request ``backend``.

    ``pixels``: the image size N, for the choices that depend on it (the CPU dense CRF).
    Its primitives are registered on return. Under ``torch.compile`` the choice is made once,
    while tracing, and becomes a constant of the graph.
    """
    request = _requested(op, backend)
    order = _order(op, device_type, exact_only=request == "exact", pixels=pixels)
    chosen = reason = None
    if request in _REGISTRY:
        reason = why_unusable(request, device_type)
        chosen = request if reason is None else None
        order = tuple(b for b in order if b != request)
    if chosen is None:
        chosen = next(b for b in order if why_unusable(b, device_type) is None)
        if reason is not None:
            warn_once((op, request, device_type), f"tscd.ops.{op}: backend {request!r} cannot run on {device_type} "
                      f"tensors ({reason}); using {chosen!r}")
        elif chosen == "torch" and len(order) > 1:
            reasons = "; ".join(f"{b}: {why_unusable(b, device_type)}" for b in order if b != "torch")
            warn_once(("reference fallback", device_type),
                      f"tscd.ops: no fused backend can run on {device_type} tensors ({reasons}); the ops run on the "
                      f"naive torch reference, many times slower and with O(N²) memory")
    for module in _REGISTRY[chosen].modules:
        importlib.import_module(module)
    logger.debug("tscd.ops.%s on %s tensors: %s (requested %r)", op, device_type, chosen, backend)
    return chosen


#: The most memory a fall-back to the naive reference may ask for when the caller did not name it.
REFERENCE_FALLBACK_BYTES = 4 * 2**30


def check_reference_fallback(op: str, backend: str, device_type: str, nbytes: int) -> None:
    """Refuse a fall-back to the torch reference that would allocate about ``nbytes`` > 4 GiB.

    Called by the quadratic ops (their references build (B, N, N) tensors: ~26 GB for the
    training-size dense energy loss) when :func:`resolve` chose ``torch`` although ``backend``
    did not name it: an error naming each fused backend and why it cannot run, instead of an
    allocation that fails or swaps minutes later.
    """
    if nbytes <= REFERENCE_FALLBACK_BYTES or _requested(op, backend) == "torch":
        return
    reasons = "; ".join(f"{b}: {why_unusable(b, device_type)}" for b in OP_BACKENDS[op]
                        if b != "torch" and is_exact(b))
    raise RuntimeError(
        f"tscd.ops.{op}: no fused backend can run on {device_type} tensors ({reasons}), and the torch "
        f"reference would allocate about {nbytes / 2**30:.0f} GiB; make one of them usable, or pass "
        f"backend='torch' to run the reference anyway")


def primitives(backend: str):
    """The ``torch.ops`` namespace of a fused backend's primitives (after :func:`resolve` chose it)."""
    return getattr(torch.ops, _REGISTRY[backend].namespace)
