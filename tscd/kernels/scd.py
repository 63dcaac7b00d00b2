"""Triton pairwise pass of the self-correspondence distillation loss (method §6):
``torch.ops.tscd_triton.scd_pass``, contract in :mod:`tscd.kernels.primitives`.

One program owns BLOCK_X rows and sweeps all columns in BLOCK_Y tiles; no Nx×Ny storage.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .primitives import register_fakes
from .utils import interpreted, padded


def _configs() -> list[triton.Config]:
    if interpreted():  # few big tiles: the interpreter pays per step
        return [triton.Config({"BLOCK_X": 128, "BLOCK_Y": 128})]
    return [
        triton.Config({"BLOCK_X": 64, "BLOCK_Y": 64}, num_warps=4),
        triton.Config({"BLOCK_X": 128, "BLOCK_Y": 64}, num_warps=8),
        triton.Config({"BLOCK_X": 64, "BLOCK_Y": 128}, num_warps=8),
    ]


@triton.autotune(configs=_configs(), key=["NX", "NY", "KP", "CP", "WITH_GRAD"])
@triton.jit
def _scd_pass_kernel(
    xs, ys, xt, yt, ar, ac, rowsum, grad,
    K, C, NX, NY,
    WITH_GRAD: tl.constexpr, KP: tl.constexpr, CP: tl.constexpr,
    BLOCK_X: tl.constexpr, BLOCK_Y: tl.constexpr,
):
    b = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_X + tl.arange(0, BLOCK_X)
    row_ok = rows < NX
    ks = tl.arange(0, KP)
    cs = tl.arange(0, CP)
    # Channels are padded to KP, CP >= 16 (tl.dot) with zeros, which change no dot product.
    x_s = tl.load(xs + b * K * NX + ks[None, :] * NX + rows[:, None],
                  mask=row_ok[:, None] & (ks[None, :] < K), other=0.0).to(tl.float32)
    x_t = tl.load(xt + b * C * NX + cs[None, :] * NX + rows[:, None],
                  mask=row_ok[:, None] & (cs[None, :] < C), other=0.0).to(tl.float32)
    a_row = tl.load(ar + b * NX + rows, mask=row_ok, other=0.0).to(tl.float32)
    acc_sum = tl.zeros([BLOCK_X], dtype=tl.float32)
    acc_grad = tl.zeros([BLOCK_X, KP], dtype=tl.float32)
    for y0 in range(0, NY, BLOCK_Y):
        cols = y0 + tl.arange(0, BLOCK_Y)
        col_ok = cols < NY
        y_s = tl.load(ys + b * K * NY + ks[:, None] * NY + cols[None, :],
                      mask=(ks[:, None] < K) & col_ok[None, :], other=0.0).to(tl.float32)
        y_t = tl.load(yt + b * C * NY + cs[:, None] * NY + cols[None, :],
                      mask=(cs[:, None] < C) & col_ok[None, :], other=0.0).to(tl.float32)
        a_col = tl.load(ac + b * NY + cols, mask=col_ok, other=0.0).to(tl.float32)
        # ieee: the s > 0 decisions must not move with TF32 rounding.
        s = tl.dot(x_s, y_s, input_precision="ieee")
        f = tl.dot(x_t, y_t, input_precision="ieee") + a_row[:, None] + a_col[None, :]
        w = tl.where((s > 0) & row_ok[:, None] & col_ok[None, :], f, 0.0)  # 1[s > 0] f
        acc_sum += tl.sum(w * s, axis=1)
        if WITH_GRAD:
            acc_grad += tl.dot(w, tl.trans(y_s), input_precision="ieee")
    tl.store(rowsum + b * NX + rows, acc_sum, mask=row_ok)
    if WITH_GRAD:
        tl.store(grad + b * K * NX + ks[None, :] * NX + rows[:, None], acc_grad,
                 mask=row_ok[:, None] & (ks[None, :] < K))


@torch.library.custom_op("tscd_triton::scd_pass", mutates_args=())
def scd_pass(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, ar: torch.Tensor,
             ac: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(rowsum (B, Nx), grad (B, K, Nx) or (B, K, 0)); inputs float32."""
    xs, ys, xt, yt, ar, ac = (t.contiguous() for t in (xs, ys, xt, yt, ar, ac))
    B, K, nx = xs.shape
    C, ny = xt.shape[1], ys.shape[2]
    rowsum = torch.empty(B, nx, device=xs.device, dtype=torch.float32)
    grad = torch.empty(B, K, nx if with_grad else 0, device=xs.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(nx, meta["BLOCK_X"]), B)  # noqa: E731
    _scd_pass_kernel[grid](
        xs, ys, xt, yt, ar, ac, rowsum, grad, K, C, nx, ny,
        WITH_GRAD=with_grad, KP=padded(K), CP=padded(C),
    )
    return rowsum, grad


register_fakes("tscd_triton", ("scd_pass",))
