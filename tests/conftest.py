"""Test setup: Triton kernels run under the interpreter when no GPU is present.

TRITON_INTERPRET must be set before triton is first imported, hence at the top here.
Helpers live in ``tests/utils.py``.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.utils import DEVICE  # noqa: E402


@pytest.fixture(scope="session")
def device() -> str:
    return DEVICE
