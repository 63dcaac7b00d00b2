"""Packaging for tscd.

The Triton sources in ``kernels/`` ship as ``tscd.kernels`` and the C++/CUDA sources in
``csrc/`` as package data of ``tscd.csrc`` (the extension is compiled just in time on first
use); the YAML files in ``configs/`` ship as ``tscd/configs``. ``TSCD_BUILD_EXT=1`` compiles
the extension ahead of time into ``tscd/_C*.so`` instead; ``TSCD_FORCE_CUDA=1`` adds the CUDA
sources even where no GPU is visible (CI compile check).
"""
import glob
import os

from setuptools import find_packages, setup

PACKAGE_DIR = {"tscd.kernels": "kernels", "tscd.csrc": "csrc", "tscd.configs": "configs"}


def extension_build():
    if os.environ.get("TSCD_BUILD_EXT") != "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp"))
    with_cuda = os.environ.get("TSCD_FORCE_CUDA") == "1" or (
        torch.cuda.is_available() and CUDA_HOME is not None
    )
    flags = {"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]}
    if with_cuda:
        ext = CUDAExtension("tscd._C", sources + sorted(glob.glob("csrc/*.cu")), extra_compile_args=flags)
    else:
        ext = CppExtension("tscd._C", sources, extra_compile_args={"cxx": flags["cxx"]})
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extension_build()
setup(
    packages=find_packages(include=["tscd", "tscd.*"]) + list(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    package_data={"tscd.csrc": ["*.cpp", "*.cu", "*.h", "*.cuh"], "tscd.configs": ["*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
