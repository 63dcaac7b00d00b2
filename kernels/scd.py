"""Triton pairwise pass of the self-correspondence distillation loss (method §6):
``torch.ops.tscd_triton.scd_pass``, contract in :mod:`tscd.kernels.primitives`.

Program (i, g, b) owns BLOCK_X rows of batch b and sweeps every column in BLOCK_Y tiles; no
Nx×Ny storage. Per tile, ``s = xsᵀ ys`` and the teacher product ``xtᵀ yt`` are tensor-core dots
(3×TF32, as accurate as a plain float32 product) reduced over channel chunks of K_CHUNK and
C_CHUNK, so registers and shared memory stay bounded for any K and C; when each side fits one
chunk (RESIDENT), the program's x rows are loaded once and stay in registers.

The gradient accumulator is BLOCK_X × GRAD_CHUNK: program g owns gradient channels
[g·GRAD_CHUNK, (g+1)·GRAD_CHUNK) and recomputes s and f for them. Up to K = MAX_GRAD_CHUNK (64)
one program covers all channels; beyond, the dot work per pair grows from 2(K + C) + 2K to
⌈K/64⌉·2(K + C) + 2K FLOPs (docs/gpu.md, "The kernels"), the price of an accumulator that fits
registers without atomics. Every output element is written by exactly one program:
results are deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .primitives import register_fakes
from .utils import interpreted, launch_device, padded
from .variants import CHANNEL_COUNTS, CompileVariant, compile_variant

#: The largest gradient channel block one program accumulates (BLOCK_X × MAX_GRAD_CHUNK float32 in
#: registers); twice as many leaves too little headroom before spilling (docs/gpu.md, "The kernels").
MAX_GRAD_CHUNK = 64


#: Autotune configs on a GPU. Small column tiles keep the 3×TF32 operand splits in registers;
#: no software pipelining (its prefetch buffers cost registers too). All compile without spills
#: on sm_80 and sm_90.
GPU_CONFIGS = [
    triton.Config({"BLOCK_X": 128, "BLOCK_Y": 16}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK_X": 64, "BLOCK_Y": 32}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK_X": 64, "BLOCK_Y": 16}, num_warps=4, num_stages=1),
]
#: The interpreter pays per step, not per register: one big tile.
INTERPRETER_CONFIGS = [triton.Config({"BLOCK_X": 128, "BLOCK_Y": 128})]


@triton.jit
def _rows_chunk(x, rows, ch0, n_ch, NX, CHUNK: tl.constexpr):
    """x[ch0 : ch0 + CHUNK, rows]ᵀ as a (BLOCK_X, CHUNK) float32 tile, zeros outside (n_ch, NX)."""
    ch = ch0 + tl.arange(0, CHUNK)
    mask = (rows[:, None] < NX) & (ch[None, :] < n_ch)
    return tl.load(x + ch[None, :] * NX + rows[:, None], mask=mask, other=0.0)


@triton.jit
def _cols_chunk(y, cols, ch0, n_ch, NY, CHUNK: tl.constexpr):
    """y[ch0 : ch0 + CHUNK, cols] as a (CHUNK, BLOCK_Y) float32 tile, zeros outside (n_ch, NY)."""
    ch = ch0 + tl.arange(0, CHUNK)
    mask = (ch[:, None] < n_ch) & (cols[None, :] < NY)
    return tl.load(y + ch[:, None] * NY + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _channel_dot(x, y, rows, cols, n_ch, NX, NY, CHUNK: tl.constexpr, BLOCK_X: tl.constexpr,
                 BLOCK_Y: tl.constexpr):
    """Σ_c x[c, rows] y[c, cols] as a (BLOCK_X, BLOCK_Y) tile, reduced over chunks of CHUNK channels."""
    acc = tl.zeros([BLOCK_X, BLOCK_Y], dtype=tl.float32)
    for ch0 in range(0, n_ch, CHUNK):
        acc = tl.dot(_rows_chunk(x, rows, ch0, n_ch, NX, CHUNK), _cols_chunk(y, cols, ch0, n_ch, NY, CHUNK),
                     acc, input_precision="tf32x3")
    return acc


@triton.autotune(
    configs=INTERPRETER_CONFIGS if interpreted() else GPU_CONFIGS,
    key=["ROWS_BUCKET", "COLS_BUCKET", "WITH_GRAD", "RESIDENT", "K_CHUNK", "C_CHUNK", "GRAD_CHUNK"],
)
@triton.jit(do_not_specialize=["ROWS_BUCKET", "COLS_BUCKET"])
def _scd_pass_kernel(
    xs, ys, xt, yt, ar, ac, rowsum, grad,
    K, C, NX, NY, ROWS_BUCKET, COLS_BUCKET,
    WITH_GRAD: tl.constexpr, RESIDENT: tl.constexpr,
    K_CHUNK: tl.constexpr, C_CHUNK: tl.constexpr, GRAD_CHUNK: tl.constexpr,
    BLOCK_X: tl.constexpr, BLOCK_Y: tl.constexpr,
):
    # ROWS_BUCKET, COLS_BUCKET: autotune key only (power-of-two buckets of B·Nx and Ny).
    g = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    xs += b * K * NX
    ys += b * K * NY
    xt += b * C * NX
    yt += b * C * NY
    rows = tl.program_id(0) * BLOCK_X + tl.arange(0, BLOCK_X)
    row_ok = rows < NX
    a_row = tl.load(ar + b * NX + rows, mask=row_ok, other=0.0)
    if RESIDENT:  # K <= K_CHUNK and C <= C_CHUNK: one chunk a side, loaded once
        x_s = _rows_chunk(xs, rows, 0, K, NX, K_CHUNK)
        x_t = _rows_chunk(xt, rows, 0, C, NX, C_CHUNK)
    row_sum = tl.zeros([BLOCK_X], dtype=tl.float32)
    grad_acc = tl.zeros([BLOCK_X, GRAD_CHUNK], dtype=tl.float32)
    for y0 in range(0, NY, BLOCK_Y):
        cols = y0 + tl.arange(0, BLOCK_Y)
        a_col = tl.load(ac + b * NY + cols, mask=cols < NY, other=0.0)
        if RESIDENT:
            y_s = _cols_chunk(ys, cols, 0, K, NY, K_CHUNK)
            s = tl.dot(x_s, y_s, input_precision="tf32x3")
            f = tl.dot(x_t, _cols_chunk(yt, cols, 0, C, NY, C_CHUNK), input_precision="tf32x3")
        else:
            s = _channel_dot(xs, ys, rows, cols, K, NX, NY, K_CHUNK, BLOCK_X, BLOCK_Y)
            f = _channel_dot(xt, yt, rows, cols, C, NX, NY, C_CHUNK, BLOCK_X, BLOCK_Y)
        # Rows and columns past the edge load zeros, so s = 0 and w = 0 there.
        w = tl.where(s > 0, f + a_row[:, None] + a_col[None, :], 0.0)  # 1[s > 0] f
        row_sum += tl.sum(w * s, axis=1)
        if WITH_GRAD:
            if RESIDENT:  # GRAD_CHUNK == K_CHUNK: the s operand is this program's gradient block
                y_g = y_s
            else:
                y_g = _cols_chunk(ys, cols, g * GRAD_CHUNK, K, NY, GRAD_CHUNK)
            grad_acc = tl.dot(w, tl.trans(y_g), grad_acc, input_precision="tf32x3")
    tl.store(rowsum + b * NX + rows, row_sum, mask=row_ok & (g == 0))
    if WITH_GRAD:
        ch = g * GRAD_CHUNK + tl.arange(0, GRAD_CHUNK)
        tl.store(grad + b * K * NX + ch[None, :] * NX + rows[:, None], grad_acc,
                 mask=row_ok[:, None] & (ch[None, :] < K))


def _launch_constexprs(K: int, C: int, with_grad: bool) -> dict:
    """The constexprs of ``_scd_pass_kernel`` besides the autotuned blocks, for K and C channels.

    The wrapper and compile_variants() both derive theirs from here. Up to 32 channels a side
    is one resident chunk (padded to 16 or 32 for tl.dot); otherwise both reductions run in
    chunks of 16. Without the gradient, GRAD_CHUNK is a placeholder (one program per row block).
    """
    resident = K <= 32 and C <= 32
    return {
        "WITH_GRAD": with_grad,
        "RESIDENT": resident,
        "K_CHUNK": padded(K) if resident else 16,
        "C_CHUNK": padded(C) if resident else 16,
        # with RESIDENT this equals K_CHUNK, as the kernel relies on
        "GRAD_CHUNK": min(padded(K), MAX_GRAD_CHUNK) if with_grad else 16,
    }


def _bucket(n: int) -> int:
    """The power-of-two bucket of n >= 1 (autotuning is shared within a bucket)."""
    return 1 << (n - 1).bit_length()


_SIGNATURE = {
    **dict.fromkeys(("xs", "ys", "xt", "yt", "ar", "ac", "rowsum", "grad"), "*fp32"),
    **dict.fromkeys(("K", "C", "NX", "NY", "ROWS_BUCKET", "COLS_BUCKET"), "i32"),
}


def compile_variants() -> list[CompileVariant]:
    """Every GPU launch configuration of the wrapper: each of GPU_CONFIGS × each constexpr set
    reached for K, C in CHANNEL_COUNTS with and without the gradient."""
    reached = {
        tuple(_launch_constexprs(K, C, with_grad).items())
        for K in CHANNEL_COUNTS for C in CHANNEL_COUNTS for with_grad in (False, True)
    }
    return [
        compile_variant(_scd_pass_kernel.fn, _SIGNATURE, {
            **dict(items), **config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages})
        for config in GPU_CONFIGS for items in sorted(reached)
    ]


def launch(kernel, config: dict, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
           ar: torch.Tensor, ac: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`scd_pass` by ``kernel`` launched with ``config``: the autotuned ``_scd_pass_kernel`` with
    :func:`_launch_constexprs`' choice (the wrapper), or its ``.fn`` with a whole compile variant
    (constexprs, blocks and launch options: the tests). Inputs contiguous float32."""
    B, K, nx = xs.shape
    C, ny = xt.shape[1], ys.shape[2]
    if max(K, C) * max(nx, ny) >= 2**31:
        raise ValueError(f"scd_pass indexes one image with int32: needs max(K, C)·max(Nx, Ny) < 2^31, "
                         f"got K={K}, C={C}, Nx={nx}, Ny={ny}")
    rowsum = torch.empty(B, nx, device=xs.device, dtype=torch.float32)
    grad = torch.empty(B, K, nx if with_grad else 0, device=xs.device, dtype=torch.float32)
    grad_blocks = triton.cdiv(K, config["GRAD_CHUNK"]) if with_grad else 1
    grid = lambda meta: (triton.cdiv(nx, meta["BLOCK_X"]), grad_blocks, B)  # noqa: E731
    with launch_device(xs):
        kernel[grid](xs, ys, xt, yt, ar, ac, rowsum, grad, K, C, nx, ny, _bucket(B * nx), _bucket(ny), **config)
    return rowsum, grad


@torch.library.custom_op("tscd_triton::scd_pass", mutates_args=())
def scd_pass(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, ar: torch.Tensor,
             ac: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(rowsum (B, Nx), grad (B, K, Nx) or (B, K, 0)) of xs, ys (B, K, Nx|Ny), xt, yt (B, C, Nx|Ny),
    ar (B, Nx), ac (B, Ny), all float32."""
    xs, ys, xt, yt, ar, ac = (t.contiguous() for t in (xs, ys, xt, yt, ar, ac))
    config = _launch_constexprs(xs.shape[1], xt.shape[1], with_grad)
    return launch(_scd_pass_kernel, config, xs, ys, xt, yt, ar, ac, with_grad)


register_fakes("tscd_triton", ("scd_pass",))
