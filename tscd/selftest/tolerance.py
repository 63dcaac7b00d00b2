"""The accuracy rule of tscd's checks (flash-attention's): a fused backend run on inputs of dtype d
may err against the float64 reference at most ``factor`` (2) times as much as the torch reference
itself run on the same dtype-d inputs, plus a small floor so that an exact reference does not demand
bit-exactness. The test suite (``tests/utils.py``) and :mod:`tscd.selftest` both use it.
"""
from __future__ import annotations

import math

import torch

#: The floor of the bound per dtype, relative to max(1, max |reference|).
FLOOR = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def max_error(x: torch.Tensor, ref64: torch.Tensor) -> float:
    """max |x − ref64| computed in float64 (0 for empty tensors); x and ref64 of one shape, any devices."""
    if not x.numel():
        return 0.0
    return (x.detach().double() - ref64.detach().to(x.device, torch.float64)).abs().max().item()


def error_and_bound(out: torch.Tensor, ref_same_dtype: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype,
                    factor: float = 2.0, allowance: float = 0.0, terms: int = 1) -> tuple[float, float]:
    """(error of ``out`` against ``ref64``, the bound it must stay within).

    ``out`` (a backend's result) and ``ref_same_dtype`` (the torch reference's) were both computed
    from ``dtype`` inputs, ``ref64`` from the same inputs in float64; all three have one shape.
    ``allowance`` is an absolute error the op makes on purpose (e.g. the dense CRF's windowed
    smoothness kernel), added to the bound. ``terms``: each output is a sum of that many terms that
    the backend accumulates in float32 in another order than the reference (whose blocked matrix
    product may be more accurate): the bound gains the float32 floor times √terms, the typical
    growth of rounding errors in a sum.
    """
    if dtype not in FLOOR:
        raise ValueError(f"dtype must be one of {tuple(FLOOR)}, got {dtype}")
    scale = max(1.0, ref64.detach().double().abs().max().item()) if ref64.numel() else 1.0
    summation = FLOOR[torch.float32] * scale * math.sqrt(terms) if terms > 1 else 0.0
    bound = factor * max_error(ref_same_dtype, ref64) + FLOOR[dtype] * scale + summation + allowance
    return max_error(out, ref64), bound


def assert_within_reference_error(out, ref_same_dtype, ref64, dtype, factor: float = 2.0, what: str = "output"):
    """Raise ``AssertionError`` when ``out`` breaks the rule of :func:`error_and_bound`."""
    err, bound = error_and_bound(out, ref_same_dtype, ref64, dtype, factor)
    assert err <= bound, (
        f"{what}: error {err:.3e} against float64 exceeds {factor}x the reference's own error "
        f"(+ floor) = {bound:.3e} in {dtype}"
    )
