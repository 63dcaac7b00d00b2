"""Helpers of the test suite: the device under test, backend parameters that skip visibly with
the reason a backend cannot run, and the flash-attention-style tolerance rule (whose home is
:mod:`tscd.selftest.tolerance`, shared with ``python -m tscd.selftest``)."""
from __future__ import annotations

import pytest
import torch

from tscd.ops.backends import why_unusable
from tscd.selftest.tolerance import assert_within_reference_error

__all__ = ["ALL", "DEVICE", "FUSED", "assert_within_reference_error", "backend_param", "require"]

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
