"""Test setup: Triton kernels run under the interpreter when no GPU is present, and the tests
marked ``cuda`` (tests/test_cuda.py) are skipped, saying so, without a CUDA device.

TRITON_INTERPRET must be set before triton is first imported, hence at the top here.
Helpers live in ``tests/utils.py``.
"""
import os
import signal

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.utils import DEVICE  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> str:
    return DEVICE


@pytest.fixture
def interactive_sigint():
    """SIGINT handled as in a terminal (Python's KeyboardInterrupt): a background job, as CI may
    be, starts with SIGINT ignored, and an ignored signal stays ignored by the trainer."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
