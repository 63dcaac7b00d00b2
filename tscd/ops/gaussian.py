"""The tiled Gaussian-kernel product, shared by the dense energy loss and dense CRF inference.

``Y = W·X`` with ``W_ij = exp(−½‖f_i − f_j‖²)`` over per-pixel feature vectors ``f`` (the
pixel's coordinates and colours, each divided by its σ), summed exactly over every pair,
self included, without ever building the N×N matrix W: the fused backends compute W tile by
tile from feature differences and accumulate in float32 (the ``gaussian_product`` primitive of
:mod:`tscd.kernels.primitives`).

The ``lattice`` backend (CPU) approximates the same product in O(N) with the permutohedral
lattice (``csrc/lattice.h``): its sums are ≈ :data:`LATTICE_SCALE` × the exact ones on photographs
(the released ``bilateralfilter`` module's and pydensecrf's scale, method §8), so ``auto`` never
picks it here; ask for it by name.

It serves the dense energy loss, dense CRF inference and ``tscd.compat.bilateralfilter``; the
ops' autograd Functions call :func:`gaussian_product_unchecked`, which has no gradient of its own.
The public :func:`gaussian_product` is differentiable in ``x`` (and ``x2``) on every backend: the
gradient of ``W·x`` is ``Wᵀ·g``, the same product for the exact kernels and the transposed lattice
product for the lattice.
"""
from __future__ import annotations

import math

import torch

from . import checks
from .backends import check_reference_fallback, primitives, resolve
from .reference.gaussian import gaussian_product as _reference_product

# Features multiplied by this make the kernels' 2^(−‖f_i − f_j‖²) equal exp(−½‖f_i − f_j‖²).
_EXP2_SCALE = math.sqrt(0.5 * math.log2(math.e))

#: The permutohedral lattice's ``W·x`` over the exact sum on photographs (method §8): the scale of the
#: ``lattice`` backend and of the released code's lattice, on which the AFA family's loss weights were tuned.
LATTICE_SCALE = 0.58


def position_features(batch: int, height: int, width: int, sigma_xy: float,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """``(x/σ_xy, y/σ_xy)`` per pixel as (B, 2, N) float32; x is the column, y the row index."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    pos = torch.stack((xs, ys)).reshape(1, 2, height * width) / sigma_xy
    return pos.expand(batch, 2, height * width).contiguous()


def bilateral_features(images: torch.Tensor, sigma_xy: float, sigma_rgb: float) -> torch.Tensor:
    """``(x/σ_xy, y/σ_xy, c_1/σ_rgb, …, c_C/σ_rgb)`` per pixel of images (B, C, H, W): (B, 2+C, N) float32."""
    B, C, H, W = images.shape
    pos = position_features(B, H, W, sigma_xy, images.device)
    colours = images.to(torch.float32).reshape(B, C, H * W) / sigma_rgb
    return torch.cat((pos, colours), dim=1)


def gaussian_product_unchecked(backend: str, feats: torch.Tensor, x: torch.Tensor, cutoff: float | None = None,
                               row_window: tuple[int, int] | None = None, transposed: bool = False) -> torch.Tensor:
    """:func:`gaussian_product`'s ``W·x`` (B, K, N) float32 by a fused backend's primitive, without
    its checks and autograd (the ops' autograd Functions check their inputs themselves).

    ``feats`` (B, D, N) float32 (unscaled, as :func:`bilateral_features` makes them), ``x`` (B, K, N).
    ``cutoff``: pairs with ``‖f_i − f_j‖ > cutoff`` get weight 0 (None: every pair).
    ``row_window`` = (width, radius): the pixels are in raster order with rows of ``width``, and
    tiles more than ``radius`` rows apart are skipped. Only a speed hint: ``cutoff`` must
    already give those pairs weight 0 (true for position features ``p/σ`` and ``cutoff ≤ radius/σ``).
    The ``lattice`` backend ignores ``cutoff`` and ``row_window`` (its blur is local by construction).
    ``transposed``: ``Wᵀ·x`` — the same product for the exact backends (W is symmetric), the
    transposed operator for the lattice, whose blurs do not commute (``gaussian_product_transposed``).
    """
    feats = (feats.to(torch.float32) * _EXP2_SCALE).contiguous()
    cut2 = math.inf if cutoff is None else cutoff * cutoff * _EXP2_SCALE**2
    width, radius = row_window if row_window is not None else (0, 0)
    if width > 0:  # no two pixels are more rows apart than there are rows (kernels index rows in int32)
        radius = min(radius, feats.shape[2] // width)
    ops = primitives(backend)
    product = ops.gaussian_product_transposed if transposed and backend == "lattice" else ops.gaussian_product
    return product(feats, x.to(torch.float32).contiguous(), cut2, width, radius)


class _Product(torch.autograd.Function):
    """``W·x`` by a fused backend, differentiable in ``x``: the backward is ``Wᵀ·grad``."""

    @staticmethod
    def forward(ctx, feats, x, backend, cutoff, row_window):
        ctx.save_for_backward(feats)
        ctx.settings = (backend, cutoff, row_window, x.dtype)
        return gaussian_product_unchecked(backend, feats, x, cutoff, row_window)

    @staticmethod
    def backward(ctx, grad):
        (feats,) = ctx.saved_tensors
        backend, cutoff, row_window, dtype = ctx.settings
        grad_x = gaussian_product_unchecked(backend, feats, grad, cutoff, row_window, transposed=True).to(dtype)
        return None, grad_x, None, None, None


def _row_window(row_window, pixels: int) -> tuple[int, int]:
    """(width, radius) as Python ints: width >= 1 dividing N = ``pixels``, radius >= 0."""
    try:
        width, radius = (checks.integer("row_window", v) for v in row_window)
    except (TypeError, ValueError):
        width = radius = -1
    if width < 1 or radius < 0 or pixels % width:
        raise ValueError(f"row_window must be (width, radius) with width >= 1 dividing N = {pixels} and radius "
                         f">= 0, got {row_window!r}")
    return width, radius


def gaussian_product(feats: torch.Tensor, x: torch.Tensor, x2: torch.Tensor | None = None, *,
                     cutoff: float | None = None, row_window: tuple[int, int] | None = None,
                     backend: str = "auto"):
    """The Gaussian-kernel product ``W·x``, ``W_ij = exp(−½‖f_i − f_j‖²)``, summed over every pair.

    The fused backends compute W tile by tile from the features and never build it; the product
    serves the dense energy loss, the dense CRF and ``tscd.compat.bilateralfilter``. With ``x2``,
    ``W·x2`` comes from the same sweep over W. Gradients flow to ``x`` and ``x2`` on
    every backend, to ``feats`` only on ``torch``.

    Args:
        feats: per-pixel feature vectors (e.g. coordinates and colours, each divided by its σ);
            must be finite.
        x: the values to filter.
        x2: more values to filter with the same weights, or None.
        cutoff: pairs with ``‖f_i − f_j‖ > cutoff`` are left out (None: all pairs, exact); a
            finite real number of at least ``SIGMA_RANGE[0]`` (``tscd.ops.checks``).
        row_window: ``(width, radius)``, a speed hint for windowed spatial kernels: the pixels are
            in raster order with rows of ``width``, and rows more than ``radius`` apart are
            skipped; ``cutoff`` must already give those pairs weight 0.
        backend: ``"auto" | "exact" | "torch" | "triton" | "cpp" | "lattice"`` (see
            ``tscd.ops.backends``); ``"lattice"`` (by name only) is the O(N) approximation,
            short of the exact sums by the lattice scale (method §8), which ignores ``cutoff`` and
            ``row_window``.

    Shapes:
        - ``feats``: (B, D, N) with 1 ≤ D ≤ 8.
        - ``x``: (B, K, N).
        - ``x2``: (B, K2, N).
        - returns: (B, K, N), or the pair ((B, K, N), (B, K2, N)) with ``x2``.

    Returns:
        ``W·x``, or the pair ``(W·x, W·x2)`` when ``x2`` is given, in float32 (float64 for the
        float64 torch reference).

    Raises:
        TypeError: an argument is not a floating-point tensor.
        ValueError: the shapes or devices do not match, ``feats`` holds NaN or infinity (or, for
            the lattice, values beyond ±16384: ``csrc/lattice.h``), ``cutoff`` or ``row_window``
            is invalid, or ``feats`` requires a gradient under grad mode on a fused backend.
    """
    checks.check_tensor("feats", feats, "(B, D, N)", (3,))
    checks.check_tensor("x", x, "(B, K, N)", (3,))
    tensors = {"feats": feats, "x": x}
    if x2 is not None:
        checks.check_tensor("x2", x2, "(B, K2, N)", (3,))
        tensors["x2"] = x2
    device = checks.check_same_device(**tensors)
    checks.check_dim_equal("the batch size B", **{n: t.shape[0] for n, t in tensors.items()})
    checks.check_dim_equal("the pixel count N", **{n: t.shape[2] for n, t in tensors.items()})
    if not 1 <= feats.shape[1] <= 8:
        raise ValueError(f"feats must have 1 to 8 feature dimensions D, got {feats.shape[1]}")
    if cutoff is not None:  # a distance in feature units, like σ: its square is a normal float32
        cutoff = checks.real("cutoff", cutoff, checks.SIGMA_RANGE[0])
    if row_window is not None:
        row_window = _row_window(row_window, feats.shape[2])
    checks.check_finite("feats", feats)
    request, backend = backend, resolve("gaussian_product", backend, device.type)
    if backend != "torch" and feats.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"gaussian_product on backend {backend!r} differentiates with respect to x only, but feats "
                         "requires a gradient: detach feats, or pass backend='torch' for the gradient in feats")
    xs = x if x2 is None else torch.cat((x, x2.to(x.dtype)), dim=1)
    if backend == "torch":
        dtype = checks.compute_dtype(feats, xs)
        B, D, N = feats.shape
        check_reference_fallback("gaussian_product", request, device.type, B * (D + 2) * N * N * dtype.itemsize)
        y = _reference_product(feats.to(dtype), xs.to(dtype), cutoff)
    else:
        y = _Product.apply(feats, xs, backend, cutoff, row_window)
    return y if x2 is None else (y[:, : x.shape[1]], y[:, x.shape[1]:])
