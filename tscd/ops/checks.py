"""Argument validation of the ops and of every layer above that takes tensors or settings (the
losses, the refinement, the compat drop-ins): clear ``TypeError``/``ValueError`` messages that
name the argument and the expected shape or range, raised before any kernel sees the data.

The numerical contract, the same on every backend:

- Images and features must hold finite values that float32 can represent (the kernels compute
  in float32): :func:`check_finite` refuses NaN and ±inf, where the reference would return NaN
  and the fused kernels a finite, wrong value. It costs one reduction over the input and, for
  CUDA tensors, one host synchronisation; it is skipped while ``torch.compile`` traces (a graph
  cannot branch on data), where the permutohedral lattice still checks its own features.
- Scalars (σ, weights, cut-offs) are any real number: a Python number, a numpy scalar or a
  0-dim tensor (:func:`real`); counts and sizes are integers (:func:`integer`). Each is
  checked against the range in which every backend computes correctly: :data:`SIGMA_RANGE`
  for kernel widths, :data:`WEIGHT_RANGE` for the dense CRF's kernel weights.
- Ranges that only a caller's mistake leaves: images in [0, 1] where an op expects them so
  (:func:`check_range`: 0–255 images would run and give a wrong answer), class probabilities
  where they are expected (:func:`check_probabilities`: non-negative, summing to 1 over the
  classes). One more reduction each, skipped while tracing like :func:`check_finite`.
- Empty inputs: the per-pixel ops return an empty output of the right shape; the losses, means
  over the batch, refuse a batch of size 0 (and scd_loss, a mean over position pairs, empty maps).
"""
from __future__ import annotations

import math
import numbers

import torch

from ..config import Bounds

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLOAT32_MAX = torch.finfo(torch.float32).max

#: Kernel widths σ (pixels or colour units) every backend computes with correctly: σ² and 1/σ²
#: are normal float32 numbers (the references divide squared distances by 2σ², the fused kernels
#: square distances/σ), with two decades to spare. At the small end every kernel is the identity,
#: at the large end all ones. The lattice backends also bound the features distances/σ (see
#: ``csrc/lattice.h`` and :data:`tscd.ops.dense_crf.PYDENSECRF_MAX_FEATURE`).
SIGMA_RANGE = (1e-18, 1e18)
#: The dense CRF's kernel weights: a message is at most √N (N pixels), so weight × message stays
#: far inside float32 for any image that fits in memory.
WEIGHT_RANGE = (-1e18, 1e18)


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


def check_images_and_probs(images, probs) -> tuple[int, int, int, int]:
    """``probs`` must be per-pixel class probabilities (B, K, H, W) of a floating dtype and
    ``images`` their images in 0–255, a float or uint8 tensor (B, 3, H, W) of the same batch and
    size (the inputs of the dense CRF and the dense energy loss); returns (B, K, H, W).

    Args:
        images: the images.
        probs: the class probabilities.

    Raises:
        TypeError: ``probs`` or ``images`` is not a tensor of those dtypes.
        ValueError: a shape does not match.
    """
    check_tensor("probs", probs, "(B, K, H, W)", (4,))
    if not isinstance(images, torch.Tensor) or not (images.is_floating_point() or images.dtype == torch.uint8):
        raise TypeError(f"images must be a float or uint8 torch.Tensor of shape (B, 3, H, W) in 0-255, "
                        f"got {images.dtype if isinstance(images, torch.Tensor) else type(images).__name__}")
    B, K, H, W = probs.shape
    if tuple(images.shape) != (B, 3, H, W):
        raise ValueError(f"images must have shape (B, 3, H, W) = {(B, 3, H, W)} to match probs, "
                         f"got {tuple(images.shape)}")
    return B, K, H, W


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


def _scalar(value):
    """value as a Python int or float when it is a real number (not a bool), else None."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
            return None
        return value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None  # numpy's bool_ is not a numbers.Real; its ints and floats are
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def real(name: str, value, low: float = -math.inf, high: float = math.inf, low_open: bool = False) -> float:
    """``value`` as a Python float: a finite real number (Python, numpy scalar or 0-dim tensor; not a
    bool) in ``[low, high]`` (``(low, high]`` when ``low_open``); else a ``ValueError`` naming
    ``name`` and the range."""
    number = _scalar(value)
    if number is None or number not in Bounds(low, high, low_open=low_open):
        if low == 0 and high == math.inf:
            expected = f"{'positive' if low_open else 'non-negative'} (a finite real number)"
        else:
            left, right = "(" if low_open or math.isinf(low) else "[", ")" if math.isinf(high) else "]"
            expected = f"a real number in {left}{low:g}, {high:g}{right}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(number)


def sigma(name: str, value) -> float:
    """A kernel width in :data:`SIGMA_RANGE`, as a Python float."""
    return real(name, value, *SIGMA_RANGE)


def integer(name: str, value, low: int = 0, high: int | None = None, expected: str | None = None) -> int:
    """``value`` as a Python int: an integer (Python, numpy or a 0-dim integer tensor; not a bool,
    not a float, even 2.0) in ``[low, high]``; else a ``ValueError`` naming ``name`` and
    ``expected`` (default: "a non-negative int" for low 0)."""
    number = _scalar(value)
    if not isinstance(number, int) or number < low or (high is not None and number > high):
        if expected is None:
            expected = "a non-negative int" if low == 0 and high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def check_finite(name: str, x: torch.Tensor, divisor: tuple[str, float] | None = None) -> None:
    """``x`` (images or features) holds values that are finite in float32, also once divided by
    ``divisor`` = (its name, its value) when given (a σ: the features the kernels compute).

    One reduction over ``x``; for CUDA tensors one host synchronisation. Skipped while
    ``torch.compile`` traces (see the module docstring).
    """
    if torch.compiler.is_compiling() or x.numel() == 0:
        return
    peak = x.detach().abs().amax().item()
    if not peak <= FLOAT32_MAX:  # NaN compares false
        raise ValueError(f"{name} must hold finite values (within float32, the kernels' precision), "
                         f"got {'NaN' if math.isnan(peak) else 'a value of magnitude ' + format(peak, 'g')}")
    if divisor is not None and peak / divisor[1] > FLOAT32_MAX:
        raise ValueError(f"{name} / {divisor[0]} must stay within float32 (the kernels' features), got a value of "
                         f"magnitude {peak:g} / {divisor[1]:g}")


def check_range(name: str, x: torch.Tensor, low: float, high: float, hint: str = "") -> None:
    """``x`` holds values in ``[low, high]``; else a ``ValueError`` naming ``name``, the range found
    and ``hint`` (what the caller probably did). One reduction; skipped while tracing."""
    if torch.compiler.is_compiling() or x.numel() == 0:
        return
    found_low, found_high = torch.stack(torch.aminmax(x.detach())).tolist()
    if not (low <= found_low and found_high <= high):  # NaN compares false
        raise ValueError(f"{name} must hold values in [{low:g}, {high:g}], got values in [{found_low:g}, "
                         f"{found_high:g}]" + (f" ({hint})" if hint else ""))


#: How far class probabilities may sum from 1 (float16 inputs round each of up to 256 classes).
PROBABILITY_SUM_TOLERANCE = 1e-2


def check_probabilities(name: str, probs: torch.Tensor, dim: int = 1) -> None:
    """``probs`` holds class probabilities along ``dim``: non-negative, summing to 1 (within
    :data:`PROBABILITY_SUM_TOLERANCE`); else a ``ValueError`` naming ``name``. Skipped while tracing."""
    if torch.compiler.is_compiling() or probs.numel() == 0:
        return
    detached = probs.detach()
    lowest = detached.amin().item()
    worst = (detached.sum(dim, dtype=torch.float32) - 1).abs().amax().item()
    if not lowest >= 0:
        raise ValueError(f"{name} must hold probabilities (non-negative, summing to 1 over the classes, e.g. a "
                         f"softmax), got a value of {lowest:g}")
    if not worst <= PROBABILITY_SUM_TOLERANCE:
        raise ValueError(f"{name} must hold probabilities summing to 1 over the classes (dimension {dim}, e.g. a "
                         f"softmax), got a sum that is {worst:g} away from 1")
