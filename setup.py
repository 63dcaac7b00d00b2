"""Packaging for tscd.

The repository's top-level folders are installed inside the ``tscd`` package: ``kernels/`` as
``tscd.kernels`` (the Triton kernels and the native build) and ``csrc/`` as the data package
``tscd._csrc`` (the C++/CUDA sources, compiled just in time on first use), with the YAML files of
``tscd/configs``. ``TSCD_BUILD_EXT=1`` compiles the library ahead of time instead
(``pip install --no-build-isolation .``: the build needs the installed torch), with the sources
and flags of :mod:`tscd.kernels.extension`; ``TSCD_FORCE_CUDA=1`` adds the CUDA sources even where
no GPU is visible (CI's compile check).
"""
import importlib.util
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
MAPPED = {"tscd.kernels": "kernels", "tscd._csrc": "csrc"}


def native_build():
    """The ahead-of-time extension and its build command, when ``TSCD_BUILD_EXT=1``."""
    if os.environ.get("TSCD_BUILD_EXT") != "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension

    spec = importlib.util.spec_from_file_location("tscd_native_build", ROOT / "kernels" / "extension.py")
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)
    with_cuda = os.environ.get("TSCD_FORCE_CUDA") == "1" or (torch.cuda.is_available() and CUDA_HOME is not None)
    return [extension.setuptools_extension(Path(MAPPED["tscd._csrc"]), with_cuda)], {"build_ext": BuildExtension}


ext_modules, cmdclass = native_build()
setup(
    packages=find_packages(include=["tscd", "tscd.*"]) + list(MAPPED),
    package_dir=MAPPED,
    package_data={"tscd": ["configs/*.yaml"], "tscd._csrc": ["*.cpp", "*.cu", "*.h", "*.cuh"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
