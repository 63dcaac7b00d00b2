"""Where and how a job runs: its device and threads, the ops' backends (checked, and resolved before
the first step), and telling a failed allocation from other errors.
"""
from __future__ import annotations

import torch

from ..config import TSCDConfig
from ..ops.backends import resolve, why_unusable


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but no GPU is visible")
    return torch.device(name)


def setup_runtime(cfg: TSCDConfig) -> None:
    """Process settings a run needs: ``train.num_threads``."""
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))


def check_backend(cfg: TSCDConfig, device: torch.device) -> None:
    """Raise a ``ValueError`` when ``train.backend`` is ``triton`` and Triton cannot run on
    ``device`` here, saying why and what to do: on the CPU it runs only under its interpreter,
    which must be on (``TRITON_INTERPRET=1``) before Triton is first imported, so no run can
    turn it on for itself."""
    reason = why_unusable("triton", device.type) if cfg.train.backend == "triton" else None
    if reason is not None:
        raise ValueError(f"train.backend=triton cannot run on the {device.type}: {reason}; start tscd with "
                         f"TRITON_INTERPRET=1 in its environment (slow) or on a CUDA device, or choose another "
                         f"--backend (auto, cpp, torch)")


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation that failed: CUDA's ``OutOfMemoryError``, the CPU
    allocator's ``RuntimeError`` or Python's ``MemoryError``."""
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


#: The ops a training step calls (through the objective and the pseudo labeler).
TRAINING_OPS = ("varm_affinity", "varm_refine", "scd_loss", "dense_energy_loss")


def prepare_backends(cfg: TSCDConfig, device: torch.device) -> dict[str, str]:
    """{op: backend} for :data:`TRAINING_OPS` under ``train.backend``, resolved now: a first build
    of the C++ extension happens here, before the first step (and before the ETA is measured),
    not at the first refinement, and a build that fails falls back with its warning up front."""
    return {op: resolve(op, cfg.train.backend, device.type) for op in TRAINING_OPS}
