"""Helpers shared by the Triton kernels."""
from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

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


class CompileVariant(NamedTuple):
    """One launch configuration of a ``@triton.jit`` kernel, for ahead-of-time compilation.

    ``signature`` maps each runtime argument to its Triton type (``"*fp32"``, ``"i32"``,
    ``"fp32"``, ...), ``constexprs`` each ``tl.constexpr`` argument to its value, ``options``
    holds ``num_warps``/``num_stages``. Each kernel module's ``compile_variants()`` lists every
    configuration its wrapper can launch on a GPU (``python -m tscd.kernels.compile_check`` compiles them all).
    """

    kernel: object
    signature: dict
    constexprs: dict
    options: dict
    label: str


#: The channel counts (K, C) every ``compile_variants()`` covers: the ops' wrappers reach no other
#: constexprs beyond 256 channels (wider counts are chunked or split over programs).
CHANNEL_COUNTS = range(1, 257)

#: The keys of a launch configuration that are launch options rather than constexprs.
LAUNCH_OPTIONS = ("num_warps", "num_stages")


def compile_variant(kernel, signature: dict, config: dict) -> CompileVariant:
    """The variant of ``kernel`` launched with ``config`` (constexprs and :data:`LAUNCH_OPTIONS` in
    one dict, as passed to the launch); ``signature`` types the runtime arguments."""
    constexprs = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
    label = " ".join(f"{k}={v}" for k, v in config.items())
    return CompileVariant(kernel, dict(signature, **dict.fromkeys(constexprs, "constexpr")), constexprs,
                          {k: config[k] for k in LAUNCH_OPTIONS if k in config}, label)


def unique_variants(variants) -> list[CompileVariant]:
    """``variants`` without repeats (same kernel and label), in order."""
    return list({(v.kernel.fn.__name__, v.label): v for v in variants}.values())
