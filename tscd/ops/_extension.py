"""Loading of the C++/CUDA extension that backs the ``cpp`` and ``lattice`` backends.

Every source file in ``tscd/csrc`` registers its operators with the PyTorch dispatcher
(``TORCH_LIBRARY_FRAGMENT(tscd, m)`` for schemas, ``TORCH_LIBRARY_IMPL(tscd, CPU|CUDA, m)``
for kernels), so there is no binding file: once the library is loaded the operators live
under ``torch.ops.tscd`` (the exact kernels) and ``torch.ops.tscd_lattice`` (the permutohedral
lattice, CPU only: its product and transposed product), and their fake kernels
(:mod:`tscd.kernels.primitives`) are registered.
An ahead-of-time build (``TSCD_BUILD_EXT=1 pip install .``) is used when present;
otherwise the sources are compiled with ninja on first use by ``torch.utils.cpp_extension``
into a build folder named by a hash of what the library depends on (:func:`build_directory`):
checkouts with the same sources share one build, edited sources get their own, and nothing is
rebuilt over another checkout's library. "compiling" is logged (INFO) only when that folder
holds no library yet; loading a built one is logged at DEBUG.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
from pathlib import Path

import torch

from ..kernels.primitives import register_fakes

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
SOURCE_DIR = PACKAGE_DIR / "csrc"
_CFLAGS = ["-O3"]
_CUDA_CFLAGS = ["-O3", "--use_fast_math"]


def _prebuilt_library() -> Path | None:
    found = sorted(PACKAGE_DIR.glob("_C*.so"))
    return found[0] if found else None


def _cuda_toolkit() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and CUDA_HOME is not None


def _sources(with_cuda: bool, source_dir: Path = SOURCE_DIR) -> list[Path]:
    """The files compiled: every .cpp, and every .cu with CUDA."""
    return sorted(p for p in source_dir.iterdir() if p.suffix == ".cpp" or (with_cuda and p.suffix == ".cu"))


def build_directory(with_cuda: bool, source_dir: Path = SOURCE_DIR) -> Path:
    """``<extensions root>/tscd_<hash12>``: the root is ``TORCH_EXTENSIONS_DIR`` or torch's default;
    the hash covers every source and header in ``source_dir``, the compiler flags, the CUDA arch
    list of a CUDA build, and the torch, CUDA and Python versions."""
    from torch.utils.cpp_extension import get_default_build_root

    digest = hashlib.sha256()
    for path in sorted(source_dir.iterdir()):
        if path.suffix in (".cpp", ".cu", ".h", ".cuh"):
            digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
    digest.update(repr((with_cuda, _CFLAGS, _CUDA_CFLAGS if with_cuda else None, arch, torch.__version__,
                        torch.version.cuda, sys.implementation.cache_tag, getattr(sys, "abiflags", ""))).encode())
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    return Path(root) / f"tscd_{digest.hexdigest()[:12]}"


def _jit_build() -> None:
    from torch.utils.cpp_extension import load

    with_cuda = _cuda_toolkit()
    sources = _sources(with_cuda)
    name = "tscd_cuda" if with_cuda else "tscd_cpu"
    directory = build_directory(with_cuda)
    if (directory / f"{name}.so").exists():
        logger.debug("tscd: loading the C++ extension built in %s", directory)
    else:
        logger.info("tscd: compiling the C++%s extension into %s (%d files; once per version of its sources, "
                    "about 10 s of CPU per C++ file%s)...", "/CUDA" if with_cuda else "", directory, len(sources),
                    ", a minute per CUDA file" if with_cuda else "")
    directory.mkdir(parents=True, exist_ok=True)
    load(
        name=name,
        sources=[str(p) for p in sources],
        extra_cflags=_CFLAGS,
        extra_cuda_cflags=_CUDA_CFLAGS,
        extra_include_paths=[str(SOURCE_DIR)],
        build_directory=str(directory),
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
