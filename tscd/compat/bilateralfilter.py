"""The two functions of the family's SWIG ``bilateralfilter`` module, on ``tscd.ops``.

Same signatures and array layout: flat float32 numpy arrays, images channel-major (3, H, W)
in 0–255, values channel-major (K, H, W); ``out``/``outs`` are filled in place with
``W·in`` where ``W_ij = exp(−‖p_i − p_j‖²/(2σ_xy²) − ‖I_i − I_j‖²/(2σ_rgb²))``.

By default ``W·in`` comes from tscd's permutohedral lattice (O(N), the ``lattice`` backend of
[`tscd.ops.gaussian_product`][tscd.ops.gaussian_product]), which gives the family's values:
≈ ``LATTICE_SCALE`` × the exact sum on photographs (method §8), like the SWIG module's own lattice.
``use_exact_sum(True)`` switches this module to the exact sum over every pixel pair (O(N²), the fused kernels)
multiplied by [`LATTICE_SCALE`][tscd.ops.LATTICE_SCALE], so that loss weights
tuned on the lattice keep their meaning. Wrong lengths or dtypes raise
``ValueError``/``TypeError`` where the SWIG module would read or write out of bounds.
"""
from __future__ import annotations

import numpy as np
import torch

from tscd.ops.backends import primitives
from tscd.ops.gaussian import bilateral_features

from ._sums import family_product, uses_exact_sum

__all__ = ["bilateralfilter", "bilateralfilter_batch", "use_exact_sum"]

_exact_sum = False  # this module's setting: see use_exact_sum


def use_exact_sum(flag: bool = True) -> bool:
    """Choose how every later call of this module computes ``W·in``.

    Args:
        flag: True: the exact sum × ``LATTICE_SCALE``; False (the module's default): the lattice.

    Returns:
        The previous setting.

    Raises:
        TypeError: ``flag`` is not a bool.
    """
    global _exact_sum
    if not isinstance(flag, bool):
        raise TypeError(f"flag must be a bool, got {flag!r}")
    previous, _exact_sum = _exact_sum, flag
    return previous


def _as_flat_float32(name: str, array, length: int, writable: bool = False) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(array).__name__}")
    if array.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {array.dtype}")
    if array.size != length:
        raise ValueError(f"{name} must hold {length} values, got {array.size} (shape {array.shape})")
    if writable and not (array.flags.c_contiguous and array.flags.writeable):
        raise ValueError(f"{name} must be a writable C-contiguous array (it is filled in place)")
    return array.reshape(-1)


def _check_sizes(**sizes) -> None:
    for name, value in sizes.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_sigmas(sigma_rgb, sigma_xy) -> None:
    for name, sigma in (("sigma_rgb", sigma_rgb), ("sigma_xy", sigma_xy)):
        if not isinstance(sigma, (int, float, np.floating)) or not np.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {sigma!r}")


def bilateralfilter_batch(images, ins, outs, N, K, H, W, sigma_rgb, sigma_xy) -> None:
    """``outs[n] = W_n · ins[n]`` for each of the N images, in place: the SWIG module's function.

    ``W`` is the lattice's, or the exact sum × ``LATTICE_SCALE`` after
    [`use_exact_sum`][tscd.compat.bilateralfilter.use_exact_sum].

    Args:
        images: flat float32 array of the images, channel-major (3, H, W) each, in 0–255.
        ins: flat float32 array of the values to filter, channel-major (K, H, W) each.
        outs: writable C-contiguous float32 array of the same length as ``ins``, filled in place.
        N: the image count.
        K: the channels per image.
        H: the image height.
        W: the image width.
        sigma_rgb: colour kernel width (0–255 units), positive and finite.
        sigma_xy: spatial kernel width in pixels, positive and finite.

    Shapes:
        - ``images``: N·3·H·W values.
        - ``ins``, ``outs``: N·K·H·W values.

    Raises:
        TypeError: an array is not a float32 ``numpy.ndarray``.
        ValueError: a length, size or σ is wrong, or ``outs`` cannot be written in place.
    """
    _check_sizes(N=N, K=K, H=H, W=W)
    _check_sigmas(sigma_rgb, sigma_xy)
    images = _as_flat_float32("images", images, N * 3 * H * W)
    ins = _as_flat_float32("ins", ins, N * K * H * W)
    out_view = _as_flat_float32("outs", outs, N * K * H * W, writable=True)
    images, ins = torch.from_numpy(images).reshape(N, 3, H, W), torch.from_numpy(ins).reshape(N, K, H * W)
    if not uses_exact_sum(_exact_sum, images.device):  # the lattice straight into outs, a lattice per thread
        primitives("lattice").bilateral_filter_(images, ins, float(sigma_rgb), float(sigma_xy),
                                                torch.from_numpy(out_view).reshape(N, K, H * W))
        return
    feats = bilateral_features(images, float(sigma_xy), float(sigma_rgb))
    out_view[:] = family_product(feats, ins, _exact_sum).reshape(-1).numpy()


def bilateralfilter(image, in_, out, H, W, sigma_rgb, sigma_xy) -> None:
    """``out = W · in_`` for one image, in place: the SWIG module's function.

    As [`bilateralfilter_batch`][tscd.compat.bilateralfilter.bilateralfilter_batch] with N = 1 and
    K = ``in_.size // (H·W)``.

    Args:
        image: flat float32 array of the image, channel-major (3, H, W), in 0–255.
        in_: flat float32 array of the values to filter, channel-major (K, H, W).
        out: writable C-contiguous float32 array of the same length as ``in_``, filled in place.
        H: the image height.
        W: the image width.
        sigma_rgb: colour kernel width (0–255 units).
        sigma_xy: spatial kernel width in pixels.

    Raises:
        TypeError: an array is not a float32 ``numpy.ndarray``.
        ValueError: a length, size or σ is wrong, or ``out`` cannot be written in place.
    """
    _check_sizes(H=H, W=W)
    if not isinstance(in_, np.ndarray) or in_.size % (H * W) or in_.size == 0:
        raise ValueError(f"in_ must be a numpy.ndarray holding K·H·W values (H·W = {H * W}), "
                         f"got {getattr(in_, 'size', type(in_).__name__)}")
    bilateralfilter_batch(image, in_, out, 1, in_.size // (H * W), H, W, sigma_rgb, sigma_xy)
