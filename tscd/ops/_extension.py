"""Loading of the C++/CUDA extension that backs the ``cpp`` and ``lattice`` backends.

Every source file in ``tscd/csrc`` registers its operators with the PyTorch dispatcher
(``TORCH_LIBRARY_FRAGMENT(tscd, m)`` for schemas, ``TORCH_LIBRARY_IMPL(tscd, CPU|CUDA, m)``
for kernels), so there is no binding file: once the library is loaded the operators live
under ``torch.ops.tscd`` (the exact kernels) and ``torch.ops.tscd_lattice`` (the permutohedral
lattice, CPU only: its product and transposed product), and their fake kernels
(:mod:`tscd.kernels.primitives`) are registered.
An ahead-of-time build (``TSCD_BUILD_EXT=1 pip install .``) is used when present;
otherwise the sources are compiled with ninja on first use and cached by
``torch.utils.cpp_extension`` (``TORCH_EXTENSIONS_DIR``).
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

from ..kernels.primitives import register_fakes

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
SOURCE_DIR = PACKAGE_DIR / "csrc"


def _prebuilt_library() -> Path | None:
    found = sorted(PACKAGE_DIR.glob("_C*.so"))
    return found[0] if found else None


def _cuda_toolkit() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and CUDA_HOME is not None


def _jit_build() -> None:
    from torch.utils.cpp_extension import load

    sources = sorted(str(p) for p in SOURCE_DIR.glob("*.cpp"))
    with_cuda = _cuda_toolkit()
    if with_cuda:
        sources += sorted(str(p) for p in SOURCE_DIR.glob("*.cu"))
    logger.info("tscd: compiling the C++%s extension (%d files; first use only, about a minute per file)...",
                "/CUDA" if with_cuda else "", len(sources))
    load(
        name="tscd_cuda" if with_cuda else "tscd_cpu",
        sources=sources,
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "--use_fast_math"],
        extra_include_paths=[str(SOURCE_DIR)],
        is_python_module=False,
        verbose=os.environ.get("TSCD_VERBOSE_BUILD") == "1",
    )


@functools.cache
def load_failure() -> str | None:
    """Load the library once; None on success, else why it cannot be used."""
    try:
        prebuilt = _prebuilt_library()
        if prebuilt is not None:
            torch.ops.load_library(str(prebuilt))
        else:
            _jit_build()
    except Exception as exc:  # compiler missing, build error, ABI mismatch, ...
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text.splitlines()[-1] if text else repr(exc)}"
    register_fakes("tscd")
    register_fakes("tscd_lattice", ("gaussian_product", "gaussian_product_transposed"))
    return None


def has_cuda_kernels() -> bool:
    """Whether the loaded extension registered CUDA kernels (it was compiled with the CUDA sources)."""
    return load_failure() is None and torch._C._dispatch_has_kernel_for_dispatch_key("tscd::gaussian_product", "CUDA")
