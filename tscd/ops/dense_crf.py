"""Dense CRF post-processing, method §10: fully connected mean-field inference.

Potts compatibility, symmetric kernel normalisation, self included, as pydensecrf's
DenseCRF2D computes it, on the Gaussian-kernel product (``tscd.ops.gaussian``): per iteration
one product with the appearance kernel over all pixel pairs and one with the smoothness
kernel, which the exact backends sum in a window of radius ⌈5σ⌉ (the weights left out are
below exp(−12.5) ≈ 4e-6). The normalisers ``n_i = (Σ_j k_ij)^(−1/2)`` are the same products
with X = 1.

Backends: ``torch`` (naive reference, small images), ``triton`` and ``cpp`` (exact sums),
``lattice`` (the extension's permutohedral lattice, O(N); its scale, ``LATTICE_SCALE`` of the exact sums,
cancels in the symmetric normalisation) and ``pydensecrf`` (the same approximation in the
optional ``pydensecrf2`` package). ``auto`` picks the exact kernels on CUDA; on the CPU the
exact ``cpp`` kernels below ``backends.CPU_CRF_LATTICE_PIXELS`` pixels, where they are the
faster, and the lattice from there (pydensecrf, then the exact kernels with a one-time warning
that they take O(N²) time, when the extension cannot be built); ``exact`` never picks an
approximation.
"""
from __future__ import annotations

import math

import torch

from ..constants import CRF_PRESETS, DEFAULT_CRF_PRESET
from . import checks
from .backends import (
    CPU_CRF_LATTICE_PIXELS,
    check_reference_fallback,
    is_exact,
    primitives,
    resolve,
    warn_once,
    why_unusable,
)
from .gaussian import bilateral_features, gaussian_product_unchecked, position_features
from .reference import dense_crf as reference


def _class_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 of (B, K, N): reductions across the K planes, vectorised along N
    (``torch.softmax`` over the strided dim 1 does not vectorise along N)."""
    e = (logits - logits.amax(dim=1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=1, keepdim=True))


def _lattice_mean_field(images, probs, num_iter, smooth, appearance):
    """The lattice backend: the whole mean-field loop in one C++ call (``csrc/dense_crf.cpp``)."""
    B, K, H, W = probs.shape
    (s_xy, s_w), (a_xy, a_rgb, a_w) = smooth, appearance
    q = primitives("lattice").dense_crf_mean_field(probs.reshape(B, K, H * W).to(torch.float32).contiguous(),
                                                   position_features(B, H, W, s_xy, probs.device),
                                                   bilateral_features(images, a_xy, a_rgb), s_w, a_w, num_iter)
    return q.reshape(B, K, H, W)


def _mean_field(backend, images, probs, num_iter, smooth, appearance):
    if backend == "lattice":
        return _lattice_mean_field(images, probs, num_iter, smooth, appearance)
    B, K, H, W = probs.shape
    (s_xy, s_w), (a_xy, a_rgb, a_w) = smooth, appearance
    radius = math.ceil(5 * s_xy)  # the smoothness window, in pixels
    terms = [
        (s_w, position_features(B, H, W, s_xy, probs.device), radius / s_xy, (W, radius)),
        (a_w, bilateral_features(images, a_xy, a_rgb), None, None),
    ]
    ones = torch.ones(B, 1, H * W, device=probs.device)
    norms = [gaussian_product_unchecked(backend, f, ones, cutoff, window).rsqrt() for _, f, cutoff, window in terms]
    log_probs = torch.log(torch.clamp(probs.reshape(B, K, H * W).to(torch.float32), min=1e-5))  # −unary
    q = _class_softmax(log_probs)
    # Buffers reused by every iteration: the only new (B, K, N) tensors are the products and Q.
    logits, scaled = torch.empty_like(log_probs), torch.empty_like(log_probs)
    for _ in range(num_iter):
        logits.copy_(log_probs)
        for (weight, feats, cutoff, window), norm in zip(terms, norms):
            torch.mul(norm, q, out=scaled)
            logits.addcmul_(gaussian_product_unchecked(backend, feats, scaled, cutoff, window), norm, value=weight)
        q = _class_softmax(logits)
    return q.reshape(B, K, H, W)


#: The largest feature (pixel coordinate / σ_xy, colour / σ_rgb) that pydensecrf's lattice holds: it
#: keys its vertices by int16 coordinates, the features times at most ≈ 8.9 for the 5-D appearance
#: kernel; larger ones wrap around (wrong sums) or, far beyond, crash the process.
PYDENSECRF_MAX_FEATURE = 3500.0
_KERNEL_PARAMS = {"smooth": ("sigma_xy", "weight"), "appearance": ("sigma_xy", "sigma_rgb", "weight")}


def _kernel_params(name: str, params) -> tuple[float, ...]:
    """The σ (in ``SIGMA_RANGE``) and weight (in ``WEIGHT_RANGE``) of one kernel as Python floats."""
    labels = _KERNEL_PARAMS[name]
    try:
        params = tuple(params)
    except TypeError:
        params = ()
    if len(params) != len(labels):
        raise ValueError(f"{name} must be {len(labels)} real numbers ({', '.join(labels)}), got {params!r}")
    return tuple(
        checks.real(f"{name}[{i}] ({label})", v, *(checks.WEIGHT_RANGE if label == "weight" else checks.SIGMA_RANGE))
        for i, (label, v) in enumerate(zip(labels, params))
    )


def _check(images, probs, num_iter, smooth, appearance):
    """Validated (device, num_iter, smooth, appearance), the scalars as Python numbers."""
    K = checks.check_images_and_probs(images, probs)[1]
    if K == 0:
        raise ValueError(f"probs must have at least one class K, got shape {tuple(probs.shape)}")
    num_iter = checks.integer("num_iter", num_iter)
    smooth, appearance = _kernel_params("smooth", smooth), _kernel_params("appearance", appearance)
    device = checks.check_same_device(images=images, probs=probs)
    checks.check_finite("images", images, ("appearance[1] (sigma_rgb)", appearance[1]))
    checks.check_range("images", images, 0, 255, "the images in 0–255")
    checks.check_probabilities("probs", probs)
    return device, num_iter, smooth, appearance


def _check_pydensecrf_features(height: int, width: int, smooth, appearance) -> None:
    """pydensecrf's features (its images are uint8: colours up to 255) within its lattice."""
    extent = max(height, width) - 1
    for label, scale, sigma in (("smooth[0] (sigma_xy)", extent, smooth[0]),
                                ("appearance[0] (sigma_xy)", extent, appearance[0]),
                                ("appearance[1] (sigma_rgb)", 255, appearance[1])):
        if scale / sigma > PYDENSECRF_MAX_FEATURE:
            raise ValueError(f"the pydensecrf backend holds features (coordinates / sigma_xy, colours / sigma_rgb) "
                             f"up to {PYDENSECRF_MAX_FEATURE:g}, and {label} = {sigma:g} makes {scale / sigma:.3g}: "
                             f"use a sigma of at least {scale / PYDENSECRF_MAX_FEATURE:.3g} or another backend")


_DEFAULT = CRF_PRESETS[DEFAULT_CRF_PRESET]  # the published TSCD/AFA protocol's settings


def dense_crf(images: torch.Tensor, probs: torch.Tensor, *, num_iter: int = _DEFAULT.num_iter,
              smooth: tuple[float, float] = _DEFAULT.smooth,
              appearance: tuple[float, float, float] = _DEFAULT.appearance,
              backend: str = "auto") -> torch.Tensor:
    """Mean-field dense CRF of method §10: fully connected, Potts, as pydensecrf's ``DenseCRF2D``.

    The defaults are the ``afa`` preset of ``tscd.constants.CRF_PRESETS`` (the published TSCD/AFA
    protocol): 10 iterations, smoothness (3, 3), appearance (64, 5, 4). Runs without gradient.

    Args:
        images: the images in 0–255, float or uint8; must be finite.
        probs: class probabilities (e.g. a softmax), any float dtype, at least one class:
            non-negative and summing to 1 over the classes (within 0.01).
        num_iter: mean-field iterations.
        smooth: (σ_xy, weight) of the smoothness kernel.
        appearance: (σ_xy, σ_rgb, weight) of the appearance kernel.
        backend: ``"auto" | "exact" | "torch" | "triton" | "cpp" | "lattice" | "pydensecrf"`` (see
            ``tscd.ops.backends``); on the CPU ``auto`` takes the lattice from 256 pixels.

    Shapes:
        - ``images``: (B, 3, H, W).
        - ``probs``: (B, K, H, W).
        - returns: (B, K, H, W).

    Returns:
        The refined probabilities Q in float32 (float64 for the float64 torch reference); an
        empty batch gives an empty output.

    Raises:
        TypeError: ``images`` or ``probs`` is not a tensor of a supported dtype.
        ValueError: the shapes or devices do not match, ``images`` holds NaN, infinity or values
            outside 0–255, ``probs`` is not probabilities or has no class, a σ
            lies outside ``SIGMA_RANGE`` or a weight outside ``WEIGHT_RANGE``
            (``tscd.ops.checks``), or an approximate backend cannot hold the features
            (coordinates / σ and colours / σ: ``PYDENSECRF_MAX_FEATURE``,
            ``csrc/lattice.h``).
    """
    device, num_iter, smooth, appearance = _check(images, probs, num_iter, smooth, appearance)
    pixels = probs.shape[2] * probs.shape[3]
    resolved = resolve("dense_crf", backend, device.type, pixels)
    if (backend == "auto" and device.type == "cpu" and pixels >= CPU_CRF_LATTICE_PIXELS
            and is_exact(resolved)):
        warn_once(("dense_crf", "exact on cpu"), "tscd.ops.dense_crf: exact O(N²) CRF on the CPU (slow at full "
                  f"resolution): the lattice backend cannot run ({why_unusable('lattice', 'cpu')})", stacklevel=3)
    with torch.no_grad():
        if resolved == "pydensecrf":
            _check_pydensecrf_features(*probs.shape[2:], smooth, appearance)
            return primitives(resolved).dense_crf(images, probs, num_iter, *smooth, *appearance)
        if resolved == "torch":
            dtype = checks.compute_dtype(probs)
            check_reference_fallback("dense_crf", backend, device.type, probs.shape[0] * 7 * pixels**2 * dtype.itemsize)
            return reference.dense_crf(images, probs.to(dtype), num_iter, smooth, appearance)
        return _mean_field(resolved, images, probs, num_iter, smooth, appearance)
