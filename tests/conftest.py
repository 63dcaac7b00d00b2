"""Test setup: Triton kernels run under the interpreter when no GPU is present.

TRITON_INTERPRET must be set before triton is first imported, hence at the top here.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tscd.ops import available_backends  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def device() -> str:
    return DEVICE


def fused_backends() -> list[str]:
    """The non-reference backends that run here (for parametrize)."""
    return [b for b in available_backends(DEVICE) if b != "torch"]
