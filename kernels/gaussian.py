"""Triton kernel of the tiled Gaussian-kernel product ``Y = W·X`` (flash-attention style):
``torch.ops.tscd_triton.gaussian_product``, contract in :mod:`tscd.kernels.primitives`.

One program owns a block of BLOCK_I rows and BLOCK_K channels of one image and sweeps the
columns of its row window in blocks of BLOCK_J: the weight tile is computed in float32 from
feature differences, then ``acc += tile @ x_block`` with ``tl.dot`` in 3×TF32 (tensor cores,
as accurate as a plain float32 product: tests/kernels/test_tf32_accuracy.py). W is never stored.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .primitives import register_fakes
from .utils import interpreted, launch_device, padded
from .variants import CHANNEL_COUNTS, CompileVariant, compile_variant, unique_variants

#: Feature dimensions D the contract allows.
FEATURE_DIMS = range(1, 9)


@triton.jit
def _gaussian_product_kernel(
    f_ptr, x_ptr, y_ptr, N, K, cut2, width, radius,
    D: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_i = tl.program_id(0)
    pid_k = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_i = offs_i < N
    mask_k = offs_k < K
    f_b = f_ptr + b * D * N
    x_b = x_ptr + b * K * N
    acc = tl.zeros((BLOCK_I, BLOCK_K), dtype=tl.float32)
    # Columns of the rows at most `radius` rows away from this block's first and last row.
    i_last = tl.minimum(pid_i * BLOCK_I + BLOCK_I, N) - 1
    j_begin = tl.maximum((pid_i * BLOCK_I) // width - radius, 0) * width
    j_end = tl.minimum((i_last // width + radius + 1) * width, N)
    for j0 in range(j_begin, j_end, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = offs_j < j_end
        d2 = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
        for d in tl.static_range(D):
            fi = tl.load(f_b + d * N + offs_i, mask=mask_i, other=0.0)
            fj = tl.load(f_b + d * N + offs_j, mask=mask_j, other=0.0)
            diff = fi[:, None] - fj[None, :]
            d2 += diff * diff
        w = tl.where(d2 <= cut2, tl.exp2(-d2), 0.0)
        xj = tl.load(x_b + offs_k[None, :] * N + offs_j[:, None], mask=mask_j[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(w, xj, acc, input_precision="tf32x3")
    tl.store(
        y_ptr + b * K * N + offs_k[None, :] * N + offs_i[:, None], acc,
        mask=mask_i[:, None] & mask_k[None, :],
    )


def _launch_config(K: int, D: int, interpreter: bool = False) -> dict:
    """The constexprs and launch options of ``_gaussian_product_kernel`` for K channels, D features.

    On a GPU: 128×16 weight tiles and up to 64 channels per program, 8 warps, 2 stages: the widest
    tiles that run ``tl.dot`` on tensor cores without register spills on sm_80 and sm_90 for every
    D ≤ 8 (docs/gpu.md, "The kernels"; ``python -m tscd.kernels.compile_check`` checks every
    configuration). The interpreter pays per tile rather than per register, so it gets 128×128 tiles.
    """
    # Channels padded to >= 16 for tl.dot; wide channel counts are split over programs.
    return {"D": D, "BLOCK_I": 128, "BLOCK_J": 128 if interpreter else 16, "BLOCK_K": min(64, padded(K)),
            "num_warps": 8, "num_stages": 2}


_SIGNATURE = {"f_ptr": "*fp32", "x_ptr": "*fp32", "y_ptr": "*fp32", "N": "i32", "K": "i32", "cut2": "fp32",
              "width": "i32", "radius": "i32"}


def compile_variants() -> list[CompileVariant]:
    """Every GPU launch configuration of the wrapper: each D of the contract × each channel block."""
    return unique_variants(compile_variant(_gaussian_product_kernel, _SIGNATURE, _launch_config(K, D))
                           for D in FEATURE_DIMS for K in CHANNEL_COUNTS)


def launch(kernel, config: dict, feats: torch.Tensor, x: torch.Tensor, cut2: float, width: int,
           radius: int) -> torch.Tensor:
    """``W·x`` by ``kernel`` (``_gaussian_product_kernel``) launched with ``config`` (its constexprs
    and launch options); arguments as :func:`gaussian_product`, contiguous. The wrapper launches
    with :func:`_launch_config`'s choice; the tests launch every compile variant through here."""
    B, K, N = x.shape
    y = torch.empty((B, K, N), device=x.device, dtype=torch.float32)
    if y.numel() == 0:
        return y
    grid = (triton.cdiv(N, config["BLOCK_I"]), triton.cdiv(K, config["BLOCK_K"]), B)
    if width <= 0:  # no window: one row of N pixels
        width, radius = N, 0
    with launch_device(x):
        kernel[grid](feats, x, y, N, K, float(cut2), width, radius, **config)
    return y


@torch.library.custom_op("tscd_triton::gaussian_product", mutates_args=())
def gaussian_product(feats: torch.Tensor, x: torch.Tensor, cut2: float, width: int, radius: int) -> torch.Tensor:
    """``y[b, k, i] = Σ_j 2^(−‖feats_i − feats_j‖²) x[b, k, j]`` (B, K, N) float32; ``width`` ≤ 0: no row window.

    feats (B, D, N) and x (B, K, N) float32.
    """
    config = _launch_config(x.shape[1], feats.shape[1], interpreted())
    return launch(_gaussian_product_kernel, config, feats.contiguous(), x.contiguous(), cut2, width, radius)


register_fakes("tscd_triton", ("gaussian_product",))
