"""Loading of the C++/CUDA extension that backs the ``cpp`` backend.

Every source file in ``csrc/`` registers its operators with the PyTorch dispatcher
(``TORCH_LIBRARY_FRAGMENT(tscd, m)`` for schemas, ``TORCH_LIBRARY_IMPL(tscd, CPU|CUDA, m)``
for kernels), so there is no binding file: once the library is loaded the operators live
under ``torch.ops.tscd``. An ahead-of-time build (``TSCD_BUILD_EXT=1 pip install .``) is
used when present; otherwise the sources are compiled with ninja on first use and cached
by ``torch.utils.cpp_extension`` (``TORCH_EXTENSIONS_DIR``).
"""
from __future__ import annotations

import functools
import glob
import os
import sys
from pathlib import Path

import torch


class ExtensionUnavailable(RuntimeError):
    """The extension could not be built or loaded; the message says why."""


def source_dir() -> Path:
    import tscd.csrc

    return Path(tscd.csrc.__path__[0])


def _prebuilt_library() -> str | None:
    package_dir = Path(__file__).resolve().parent.parent
    found = sorted(glob.glob(str(package_dir / "_C*.so")))
    return found[0] if found else None


def _cuda_toolkit() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and CUDA_HOME is not None


def _jit_build() -> None:
    from torch.utils.cpp_extension import load

    src = source_dir()
    sources = sorted(str(p) for p in src.glob("*.cpp"))
    with_cuda = _cuda_toolkit()
    if with_cuda:
        sources += sorted(str(p) for p in src.glob("*.cu"))
    print(
        f"tscd: compiling the C++{'/CUDA' if with_cuda else ''} extension "
        f"({len(sources)} files; first use only, about a minute per file)...",
        file=sys.stderr,
        flush=True,
    )
    load(
        name="tscd_cuda" if with_cuda else "tscd_cpu",
        sources=sources,
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "--use_fast_math"],
        extra_include_paths=[str(src)],
        is_python_module=False,
        verbose=os.environ.get("TSCD_VERBOSE_BUILD") == "1",
    )


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
    """Load the library once; return None on success, else the reason it failed."""
    try:
        prebuilt = _prebuilt_library()
        if prebuilt is not None:
            torch.ops.load_library(prebuilt)
        else:
            _jit_build()
    except Exception as exc:  # compiler missing, build error, ABI mismatch, ...
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}"
    return None


def load_failure() -> str | None:
    """Why the extension cannot be used (None when it loaded)."""
    return _load()


def has_cuda_kernels() -> bool:
    """Whether the loaded extension registered CUDA kernels (compiled with the CUDA sources)."""
    if _load() is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("tscd::__cuda_marker", "CUDA")


def ops():
    """The ``torch.ops.tscd`` namespace, building the extension if needed."""
    reason = _load()
    if reason is not None:
        raise ExtensionUnavailable(f"the tscd C++ extension is unavailable ({reason})")
    return torch.ops.tscd
