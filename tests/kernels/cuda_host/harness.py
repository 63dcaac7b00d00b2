"""Build and call the CPU emulation of tscd's CUDA kernels (``harness.cpp`` over ``cuda_host.h``).

:func:`build` compiles ``harness.cpp`` with the host C++ compiler (``$CXX``, else ``c++``) into a
shared library cached under the torch extensions root (``TORCH_EXTENSIONS_DIR`` or torch's
default), in a folder named by a digest of the harness, the headers of the native sources, the
flags and the compiler's version. :class:`Harness` runs the kernels on torch tensors: each array
reaches the kernel inside ``GUARD`` elements of NaN (int32: ``INT_GUARD``) either side, outputs
start as NaN (an element the kernel does not write stays NaN), and after the launch the inputs
and every guard must be bit-for-bit unchanged.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from tscd.kernels.extension import source_dir

HERE = Path(__file__).resolve().parent
FLAGS = ("-std=c++20", "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-ffp-contract=off")
GUARD = 64
INT_GUARD = 1 << 30


def compiler() -> str | None:
    """The host C++ compiler (``$CXX``, else ``c++`` on the PATH), None without one."""
    return os.environ.get("CXX") or shutil.which("c++")


def build() -> Path:
    """The harness library for the current sources, compiled unless the cache holds it."""
    from torch.utils.cpp_extension import get_default_build_root

    cxx = compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    sources = [HERE / "harness.cpp", HERE / "cuda_host.h"]
    sources += sorted(p for p in source_dir().iterdir() if p.suffix in (".h", ".cuh"))
    sha = hashlib.sha256(repr((FLAGS, version)).encode())
    for path in sources:
        sha.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        sha.update(path.read_bytes())
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    library = Path(root) / f"tscd_cuda_host_{sha.hexdigest()[:12]}" / "harness.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
        os.close(fd)
        done = subprocess.run([cxx, *FLAGS, f"-I{source_dir()}", str(HERE / "harness.cpp"), "-o", partial],
                              capture_output=True, text=True)
        if done.returncode:
            os.unlink(partial)
            raise RuntimeError(f"compiling the CUDA host harness failed:\n{done.stderr[-5000:]}")
        os.replace(partial, library)  # whole or not at all, also against a concurrent build
    return library


class _Guarded:
    """A flat copy of a tensor between ``GUARD`` elements of ``fill`` either side, and its first state."""

    def __init__(self, tensor: torch.Tensor, fill: float | int):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        self.shape = tensor.shape
        self.storage = torch.full((flat.numel() + 2 * GUARD,), fill, dtype=flat.dtype)
        self.storage[GUARD:GUARD + flat.numel()] = flat
        self.first = self.storage.clone()

    @property
    def pointer(self) -> ctypes.c_void_p:
        return ctypes.c_void_p(self.storage.data_ptr() + GUARD * self.storage.element_size())

    def value(self) -> torch.Tensor:
        return self.storage[GUARD:-GUARD].reshape(self.shape).clone()

    def changed(self, whole: bool) -> bool:
        """Whether the guards (``whole``: or anything) differ bit for bit from the first state."""
        now, first = self.storage.view(torch.int32), self.first.view(torch.int32)
        if whole:
            return not torch.equal(now, first)
        return not (torch.equal(now[:GUARD], first[:GUARD]) and torch.equal(now[-GUARD:], first[-GUARD:]))


def _input(tensor: torch.Tensor) -> _Guarded:
    return _Guarded(tensor, INT_GUARD) if tensor.dtype == torch.int32 else _Guarded(tensor.float(), float("nan"))


class Harness:
    """The entry points of ``harness.cpp`` on torch tensors (copied to contiguous CPU arrays)."""

    def __init__(self, library: Path):
        self.lib = ctypes.CDLL(str(library))
        i64, ptr, count = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)
        self.lib.cuda_host_inject_fault.argtypes = [ctypes.c_char_p]
        self.lib.cuda_host_inject_fault.restype = None
        for name in ("gaussian_channel_blocks", "gaussian_dim_choices", "scd_block_sizes"):
            getattr(self.lib, name).argtypes = [count]
            getattr(self.lib, name).restype = count
        self.lib.gaussian_choose_config.argtypes = [i64, i64, count, count]
        self.lib.gaussian_choose_config.restype = None
        self.lib.scd_block_threads.argtypes = [i64, i64, ctypes.c_bool, i64]
        self.lib.scd_block_threads.restype = ctypes.c_int
        self.lib.gaussian_product.argtypes = [ptr] * 3 + [i64] * 4 + [ctypes.c_double, i64, i64] + [ctypes.c_int] * 2
        self.lib.scd_pass.argtypes = [ptr] * 8 + [i64] * 5 + [ctypes.c_bool, ctypes.c_int]
        self.lib.varm_affinity.argtypes = [ptr] * 4 + [i64] * 4 + [ctypes.c_double] * 2
        self.lib.varm_propagate.argtypes = [ptr] * 4 + [i64] * 5
        for name in ("gaussian_product", "scd_pass", "varm_affinity", "varm_propagate"):
            getattr(self.lib, name).restype = ctypes.c_char_p

    def inject_fault(self, kernel: str | None) -> None:
        """Turn on the off-by-one marked ``TSCD_FAULT(kernel)`` in the kernel sources (None: none)."""
        self.lib.cuda_host_inject_fault((kernel or "").encode())

    def _list(self, name: str) -> list[int]:
        count = ctypes.c_int()
        values = getattr(self.lib, name)(ctypes.byref(count))
        return [values[i] for i in range(count.value)]

    def gaussian_channel_blocks(self) -> list[int]:
        return self._list("gaussian_channel_blocks")

    def gaussian_dim_choices(self) -> list[int]:
        return self._list("gaussian_dim_choices")

    def gaussian_choose_config(self, K: int, D: int) -> tuple[int, int]:
        """The launcher's (dims, channels) instantiation for K channels, D feature dimensions."""
        dims, channels = ctypes.c_int(), ctypes.c_int()
        self.lib.gaussian_choose_config(K, D, ctypes.byref(dims), ctypes.byref(channels))
        return dims.value, channels.value

    def scd_block_sizes(self) -> list[int]:
        return self._list("scd_block_sizes")

    def scd_block_threads(self, K: int, C: int, with_grad: bool, limit: int) -> int:
        return self.lib.scd_block_threads(K, C, with_grad, limit)

    def _run(self, name: str, inputs: list[torch.Tensor], output_shapes: list[tuple], *scalars):
        """Run entry point ``name`` on guarded copies of ``inputs`` and NaN outputs; the outputs."""
        ins = [_input(t) for t in inputs]
        outs = [_Guarded(torch.full(shape, float("nan")), float("nan")) for shape in output_shapes]
        error = getattr(self.lib, name)(*(g.pointer for g in ins + outs), *scalars)
        if error is not None:
            raise RuntimeError(f"{name}: {error.decode()}")
        touched = [i for i, g in enumerate(ins) if g.changed(whole=True)]
        assert not touched, f"{name} wrote into its inputs {touched}"
        spilled = [i for i, g in enumerate(outs) if g.changed(whole=False)]
        assert not spilled, f"{name} wrote outside its outputs {spilled}"
        return [g.value() for g in outs]

    def gaussian_product(self, feats, x, cut2: float, width: int, radius: int, config: tuple[int, int]):
        """y (B, K, N) of feats (B, D, N), x (B, K, N) with instantiation config = (dims, channels)."""
        (B, D, N), K = feats.shape, x.shape[1]
        (y,) = self._run("gaussian_product", [feats, x], [x.shape], B, K, N, D, cut2, width, radius, *config)
        return y

    def scd_pass(self, xs, ys, xt, yt, ar, ac, with_grad: bool, threads: int):
        """(rowsum (B, nx), grad (B, K, nx) or None) with blocks of ``threads``."""
        (B, K, nx), C, ny = xs.shape, xt.shape[1], ys.shape[2]
        shapes = [(B, nx), (B, K, nx if with_grad else 0)]
        rowsum, grad = self._run("scd_pass", [xs, ys, xt, yt, ar, ac], shapes, B, K, C, nx, ny, with_grad, threads)
        return rowsum, grad if with_grad else None

    def varm_affinity(self, images, dilations, intensity_scale: float, variation_weight: float, position_term):
        """weights (B, 8L, H, W) of images (B, 3, H, W) and int32 dilations (L,)."""
        (B, _, H, W), L = images.shape, dilations.numel()
        (out,) = self._run("varm_affinity", [images, dilations, position_term], [(B, 8 * L, H, W)], B, L, H, W,
                           intensity_scale, variation_weight)
        return out

    def varm_propagate(self, src, weights, dilations):
        """out (B, K, H, W): one propagation step of src along weights (B, 8L, H, W)."""
        B, K, H, W = src.shape
        (out,) = self._run("varm_propagate", [src, weights, dilations], [src.shape], B, K, dilations.numel(), H, W)
        return out
