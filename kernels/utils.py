"""Launch helpers shared by the Triton kernels: the interpreter switch, the launch device, tile padding."""
from __future__ import annotations

import contextlib
import os

import torch


def interpreted() -> bool:
    """Triton kernels run on CPU tensors only in its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def launch_device(tensor: torch.Tensor):
    """The context to launch a kernel in: the tensor's CUDA device (Triton launches on the current one)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def padded(n: int, minimum: int = 16) -> int:
    """The next power of two ≥ n and ≥ ``minimum`` (``tl.dot`` needs dimensions of at least 16)."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())
