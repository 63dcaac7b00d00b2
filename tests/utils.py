"""Helpers of the test suite: the device under test, backend parameters that skip visibly with
the reason a backend cannot run, and flash-attention-style tolerances."""
from __future__ import annotations

import pytest
import torch

from tscd.ops.backends import why_unusable

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def backend_param(backend: str, device: str = DEVICE):
    """``backend`` as a pytest parameter, skipped with the reason when it cannot run on ``device``."""
    reason = why_unusable(backend, torch.device(device).type)
    marks = pytest.mark.skip(reason=f"backend {backend!r} unavailable on {device}: {reason}") if reason else ()
    return pytest.param(backend, marks=marks, id=backend)


#: The exact fused backends (compared with the torch reference), each skipped where it cannot run.
FUSED = [backend_param(b) for b in ("triton", "cpp")]
#: The same plus the reference itself.
ALL = [backend_param("torch")] + FUSED


def require(backend: str, device: str = DEVICE) -> None:
    """Skip the calling test, with the reason, when ``backend`` cannot run on ``device``."""
    reason = why_unusable(backend, torch.device(device).type)
    if reason:
        pytest.skip(f"backend {backend!r} unavailable on {device}: {reason}")


# ---- tolerances ----------------------------------------------------------------------------
# A backend evaluated in dtype d passes when its error against the float64 reference is within
# ``factor`` times the error of the torch reference itself run in d (plus a small floor, so an
# exact reference does not demand bit-exactness).
_FLOOR = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def max_error(x: torch.Tensor, ref64: torch.Tensor) -> float:
    return (x.double() - ref64.double()).abs().max().item() if x.numel() else 0.0


def assert_within_reference_error(out, ref_same_dtype, ref64, dtype, factor: float = 2.0, what: str = "output"):
    """``out`` (backend) and ``ref_same_dtype`` (torch reference) both computed from ``dtype`` inputs."""
    scale = max(1.0, ref64.double().abs().max().item()) if ref64.numel() else 1.0
    ref_err = max_error(ref_same_dtype, ref64)
    err = max_error(out, ref64)
    bound = factor * ref_err + _FLOOR[dtype] * scale
    assert err <= bound, (
        f"{what}: error {err:.3e} against float64 exceeds {factor}x the reference's own error "
        f"{ref_err:.3e} (+ floor) = {bound:.3e} in {dtype}"
    )
