"""The launch configurations of the Triton kernels, as ahead-of-time compilation takes them.

Each kernel module's ``compile_variants()`` lists every :class:`CompileVariant` its wrapper can
launch on a GPU, built with :func:`compile_variant` from the same launch configuration the
wrapper passes; ``python -m tscd.kernels.compile_check`` compiles them all. This module imports
nothing of Triton, and no kernel module imports the compile check (which leaves the interpreter
and loads Triton's compiler when imported).
"""
from __future__ import annotations

from typing import NamedTuple


class CompileVariant(NamedTuple):
    """One launch configuration of a ``@triton.jit`` kernel, for ahead-of-time compilation.

    ``signature`` maps each runtime argument to its Triton type (``"*fp32"``, ``"i32"``,
    ``"fp32"``, ...), ``constexprs`` each ``tl.constexpr`` argument to its value, ``options``
    holds ``num_warps``/``num_stages``.
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
