"""The native library of the ``cpp`` and ``lattice`` backends: its sources, flags, builds and loading.

This module is the one owner of the C++/CUDA build. The sources are the repository's top-level
``csrc/``, installed as the data package ``tscd._csrc`` and found with :mod:`importlib.resources`.
Every source file registers its operators with the PyTorch dispatcher
(``TORCH_LIBRARY_FRAGMENT(tscd, m)`` for schemas, ``TORCH_LIBRARY_IMPL(tscd, CPU|CUDA, m)`` for
kernels), so there is no binding file: once the library is loaded the operators live under
``torch.ops.tscd`` (the exact kernels) and ``torch.ops.tscd_lattice`` (the permutohedral lattice,
CPU only), and :func:`load_failure` registers their fake kernels (:mod:`tscd.kernels.primitives`).

Two ways to build, one set of sources and flags:

- **Ahead of time**: ``TSCD_BUILD_EXT=1 pip install --no-build-isolation .`` — ``setup.py`` asks
  :func:`setuptools_extension` for the extension, which is named by :func:`digest` of the sources
  it compiles (``tscd/_C_<digest>.so``), so a library built from other sources is never loaded.
- **Just in time** (otherwise): on first use, the sources are copied into a build folder named by
  the same digest under ``TORCH_EXTENSIONS_DIR`` (or torch's default) and compiled there with
  ninja. Checkouts and venvs with the same sources share one build wherever they lie (the build
  records the copies' paths, not a checkout's), edited sources get their own, and nothing is
  rebuilt over another checkout's library. "compiling" is logged (INFO) only when the folder holds
  no library yet.

``setup.py`` loads this file by path, before ``tscd`` is installed: at module level it imports
only the standard library.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("tscd.kernels.extension")

#: The data package that holds the sources (``csrc/`` of the repository).
SOURCE_PACKAGE = "tscd._csrc"
# -fopenmp: ATen's at::parallel_for is a header template that runs its body serially unless the
# including file is compiled with OpenMP; linking it pulls in libgomp.so.1, which resolves to the
# copy torch has already loaded (torch/lib/libgomp.so.1), so both share one thread pool.
CXX_FLAGS = ("-O3", "-fopenmp")
LD_FLAGS = ("-fopenmp",)
NVCC_FLAGS = ("-O3", "--use_fast_math")
SOURCE_SUFFIXES = (".cpp", ".cu", ".h", ".cuh")
#: The prefix of the ahead-of-time library's module name inside the ``tscd`` package.
PREBUILT_PREFIX = "_C_"


def source_dir() -> Path:
    """The folder of the installed C++/CUDA sources (``csrc/`` of an editable install)."""
    return Path(str(importlib.resources.files(SOURCE_PACKAGE)))


def source_files(folder: Path) -> list[Path]:
    """Every source and header in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix in SOURCE_SUFFIXES)


def compiled_sources(folder: Path, with_cuda: bool) -> list[Path]:
    """The files compiled: every ``.cpp``, and every ``.cu`` with CUDA."""
    return [p for p in source_files(folder) if p.suffix == ".cpp" or (with_cuda and p.suffix == ".cu")]


def digest(folder: Path, with_cuda: bool, cuda_arch: str = "") -> str:
    """12 hex digits naming a build: every source and header of ``folder`` (names and contents), the
    flags, ``cuda_arch`` for a CUDA build (the just-in-time build's ``TORCH_CUDA_ARCH_LIST``; an
    ahead-of-time library is found whatever list built it), and the torch, CUDA and Python versions."""
    import torch

    sha = hashlib.sha256()
    for path in source_files(folder):
        sha.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        sha.update(path.read_bytes())
    sha.update(repr((with_cuda, CXX_FLAGS, LD_FLAGS, NVCC_FLAGS if with_cuda else None, cuda_arch if with_cuda else "",
                     torch.__version__, torch.version.cuda, sys.implementation.cache_tag,
                     getattr(sys, "abiflags", ""))).encode())
    return sha.hexdigest()[:12]


def _cuda_arch() -> str:
    return os.environ.get("TORCH_CUDA_ARCH_LIST", "")


def _cuda_toolkit() -> bool:
    """Whether this process can compile and run the CUDA sources."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and CUDA_HOME is not None


def build_directory(with_cuda: bool, folder: Path | None = None) -> Path:
    """``<extensions root>/tscd_<digest>``: the root is ``TORCH_EXTENSIONS_DIR`` or torch's default."""
    from torch.utils.cpp_extension import get_default_build_root

    folder = source_dir() if folder is None else folder
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    return Path(root) / f"tscd_{digest(folder, with_cuda, _cuda_arch())}"


def _copy_sources(folder: Path, directory: Path) -> Path:
    """``directory/src``: a copy of the sources of ``folder``, made once, whole or not at all."""
    target = directory / "src"
    if not target.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="src.", dir=directory))
        for path in source_files(folder):
            shutil.copy2(path, staging / path.name)
        try:
            staging.rename(target)
        except OSError:  # another process copied them first
            shutil.rmtree(staging, ignore_errors=True)
    return target


def jit_build(folder: Path | None = None) -> None:
    """Compile (or load the earlier build of) the library of ``folder``'s sources with ninja and load it."""
    from torch.utils.cpp_extension import load

    folder = source_dir() if folder is None else folder
    with_cuda = _cuda_toolkit()
    name = "tscd_cuda" if with_cuda else "tscd_cpu"
    directory = build_directory(with_cuda, folder)
    if (directory / f"{name}.so").exists():
        logger.debug("tscd: loading the C++ extension built in %s", directory)
    else:
        count = len(compiled_sources(folder, with_cuda))
        logger.info("tscd: compiling the C++%s extension into %s (%d files; once per version of its sources, "
                    "about 10 s of CPU per C++ file%s)...", "/CUDA" if with_cuda else "", directory, count,
                    ", a minute per CUDA file" if with_cuda else "")
    copy = _copy_sources(folder, directory)
    load(
        name=name,
        sources=[str(p) for p in compiled_sources(copy, with_cuda)],
        extra_cflags=list(CXX_FLAGS),
        extra_ldflags=list(LD_FLAGS),
        extra_cuda_cflags=list(NVCC_FLAGS),
        extra_include_paths=[str(copy)],
        build_directory=str(directory),
        is_python_module=False,
        verbose=os.environ.get("TSCD_VERBOSE_BUILD") == "1",
    )


def prebuilt_library(folder: Path | None = None, package: Path | None = None) -> Path | None:
    """The ahead-of-time library in ``package`` (the installed ``tscd``) built from exactly the sources of
    ``folder`` (the CUDA build first), if any."""
    folder = source_dir() if folder is None else folder
    package = Path(str(importlib.resources.files("tscd"))) if package is None else package
    for with_cuda in (True, False):
        found = sorted(package.glob(f"{PREBUILT_PREFIX}{digest(folder, with_cuda)}*.so"))
        if found:
            return found[0]
    stale = sorted(package.glob("_C*.so"))
    if stale:
        logger.debug("tscd: ignoring %s, built from other sources than %s", ", ".join(map(str, stale)), folder)
    return None


def setuptools_extension(folder: Path, with_cuda: bool):
    """The ahead-of-time ``Extension`` of ``setup.py`` for the sources of ``folder`` (a relative path)."""
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    name = f"tscd.{PREBUILT_PREFIX}{digest(folder, with_cuda)}"
    sources = [str(p) for p in compiled_sources(folder, with_cuda)]
    if with_cuda:
        return CUDAExtension(name, sources, include_dirs=[str(folder.resolve())],
                             extra_compile_args={"cxx": list(CXX_FLAGS), "nvcc": list(NVCC_FLAGS)},
                             extra_link_args=list(LD_FLAGS))
    return CppExtension(name, sources, include_dirs=[str(folder.resolve())],
                        extra_compile_args={"cxx": list(CXX_FLAGS)}, extra_link_args=list(LD_FLAGS))


@functools.cache
def load_failure() -> str | None:
    """Load the library once (prebuilt, else just in time); None on success, else why it cannot be used."""
    import torch

    from .primitives import COMMON, CPU_ONLY, LATTICE, register_fakes

    try:
        prebuilt = prebuilt_library()
        if prebuilt is not None:
            logger.debug("tscd: loading the prebuilt C++ extension %s", prebuilt)
            torch.ops.load_library(str(prebuilt))
        else:
            jit_build()
    except Exception as exc:  # compiler missing, build error, ABI mismatch, ...
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text.splitlines()[-1] if text else repr(exc)}"
    register_fakes("tscd", COMMON + CPU_ONLY)
    register_fakes("tscd_lattice", LATTICE)
    return None


def has_cuda_kernels() -> bool:
    """Whether the loaded library registered CUDA kernels (it was compiled with the CUDA sources)."""
    import torch

    return load_failure() is None and torch._C._dispatch_has_kernel_for_dispatch_key("tscd::gaussian_product", "CUDA")
