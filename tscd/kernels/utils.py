"""Helpers shared by the Triton kernels."""
from __future__ import annotations

import os


def interpreted() -> bool:
    """Triton kernels run on CPU tensors only in its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def padded(n: int, minimum: int = 16) -> int:
    """The next power of two ≥ n and ≥ ``minimum`` (``tl.dot`` needs dimensions of at least 16)."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())
