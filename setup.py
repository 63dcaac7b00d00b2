"""Packaging for tscd.

Everything ships inside the ``tscd`` package: the Triton kernels as ``tscd.kernels``, the
C++/CUDA sources of ``tscd/csrc`` as package data (the extension is compiled just in time on
first use) and the YAML files of ``tscd/configs``. ``TSCD_BUILD_EXT=1`` compiles the
extension ahead of time into ``tscd/_C*.so`` instead; ``TSCD_FORCE_CUDA=1`` adds the CUDA
sources even where no GPU is visible (CI compile check).
"""
import glob
import os

from setuptools import find_packages, setup

CSRC = os.path.join("tscd", "csrc")


def extension_build():
    if os.environ.get("TSCD_BUILD_EXT") != "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    with_cuda = os.environ.get("TSCD_FORCE_CUDA") == "1" or (
        torch.cuda.is_available() and CUDA_HOME is not None
    )
    flags = {"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]}
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(CSRC, "*.cu")))
        ext = CUDAExtension("tscd._C", sources, include_dirs=[os.path.abspath(CSRC)], extra_compile_args=flags)
    else:
        ext = CppExtension("tscd._C", sources, include_dirs=[os.path.abspath(CSRC)],
                           extra_compile_args={"cxx": flags["cxx"]})
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extension_build()
setup(
    packages=find_packages(include=["tscd", "tscd.*"]),
    package_data={"tscd": ["csrc/*.cpp", "csrc/*.cu", "csrc/*.h", "csrc/*.cuh", "configs/*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
