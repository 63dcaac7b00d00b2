"""Triton kernels of the variation-aware refinement (VARM) and PAR, method §4: the primitives
``torch.ops.tscd_triton.varm_affinity`` and ``varm_propagate_`` (contracts in
:mod:`tscd.kernels.primitives`).

- :func:`varm_affinity`: one program per block of pixels holds a (pixels × neighbours) tile of the
  neighbour values of one channel at a time, so the standard deviation, both logit sets and
  both softmaxes over the N = 8·L neighbours are computed in one pass, writing only (B, N, H, W).
- :func:`varm_propagate_`: one propagation step; every program gathers the N clamped neighbours
  of a block of pixels for a block of channels on the fly.

All tensors are float32 and contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .primitives import register_fakes


@triton.jit
def _displacement(n, dil_ptr, mask):
    """(d·dy, d·dx) of neighbour index n (dilation-major, 8 row-major offsets per dilation)."""
    d = tl.load(dil_ptr + n // 8, mask=mask, other=0)
    o = n % 8
    j = o + (o >= 4)  # position in the 3x3 neighbourhood, skipping its centre
    return d * (j // 3 - 1), d * (j % 3 - 1)


@triton.jit
def _affinity_kernel(
    img_ptr, dil_ptr, pos_ptr, out_ptr, H, W, N, scale, variation_weight,
    VARIATION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    HW = H * W
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < HW
    y = p // W
    x = p % W
    n = tl.arange(0, BLOCK_N)
    n_mask = n < N
    tile_mask = p_mask[:, None] & n_mask[None, :]
    oy, ox = _displacement(n, dil_ptr, n_mask)
    ys = tl.minimum(tl.maximum(y[:, None] + oy[None, :], 0), H - 1)
    xs = tl.minimum(tl.maximum(x[:, None] + ox[None, :], 0), W - 1)
    nb_idx = ys * W + xs
    # One row down / one column right in the neighbour image J_n, both clamped.
    y_down = tl.minimum(tl.maximum(tl.minimum(y + 1, H - 1)[:, None] + oy[None, :], 0), H - 1)
    x_right = tl.minimum(tl.maximum(tl.minimum(x + 1, W - 1)[:, None] + ox[None, :], 0), W - 1)
    down_idx = y_down * W + xs
    right_idx = ys * W + x_right

    a = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    v = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for c in tl.static_range(3):
        plane = img_ptr + (b * 3 + c) * HW
        centre = tl.load(plane + p, mask=p_mask, other=0.0).to(tl.float32)
        nb = tl.load(plane + nb_idx, mask=tile_mask, other=0.0).to(tl.float32)
        mean = tl.sum(nb, axis=1) / N
        dev = tl.where(tile_mask, nb - mean[:, None], 0.0)
        inv = scale / (tl.sqrt(tl.sum(dev * dev, axis=1) / (N - 1)) + 1e-8)
        t = tl.abs(nb - centre[:, None]) * inv[:, None]
        a -= t * t
        if VARIATION:
            dd = nb - tl.load(plane + down_idx, mask=tile_mask, other=0.0).to(tl.float32)
            dr = nb - tl.load(plane + right_idx, mask=tile_mask, other=0.0).to(tl.float32)
            v += dd * dd + dr * dr

    a = tl.where(n_mask[None, :], a / 3.0, float("-inf"))
    e = tl.exp(a - tl.max(a, axis=1)[:, None])
    w = e / tl.sum(e, axis=1)[:, None]
    w += tl.load(pos_ptr + n, mask=n_mask, other=0.0)[None, :]
    if VARIATION:
        v = tl.where(n_mask[None, :], v / 3.0, float("-inf"))
        e = tl.exp(v - tl.max(v, axis=1)[:, None])
        w -= variation_weight * (e / tl.sum(e, axis=1)[:, None])
    tl.store(out_ptr + (b * N + n[None, :]) * HW + p[:, None], w, mask=tile_mask)


@triton.jit
def _gather_add(acc, w_ptrs, rows, q, p_mask, tile_mask):
    """acc += w[None, :] * src[:, q] for one neighbour (w at w_ptrs, source index q per pixel)."""
    w = tl.load(w_ptrs, mask=p_mask, other=0.0).to(tl.float32)
    m = tl.load(rows + q[None, :], mask=tile_mask, other=0.0).to(tl.float32)
    return acc + w[None, :] * m


@triton.jit
def _propagate_kernel(
    src_ptr, w_ptr, dil_ptr, out_ptr, K, H, W, L,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_k = tl.program_id(1)
    b = tl.program_id(2)
    HW = H * W
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < HW
    y = p // W
    x = p % W
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    tile_mask = (k < K)[:, None] & p_mask[None, :]
    rows = src_ptr + (b * K + k[:, None]) * HW
    acc = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
    for level in range(L):
        d = tl.load(dil_ptr + level)
        # Clamped rows above/below and columns left/right at distance d.
        up = tl.maximum(y - d, 0) * W
        mid = y * W
        down = tl.minimum(y + d, H - 1) * W
        left = tl.maximum(x - d, 0)
        right = tl.minimum(x + d, W - 1)
        w_ptrs = w_ptr + (b * 8 * L + level * 8) * HW + p
        acc = _gather_add(acc, w_ptrs, rows, up + left, p_mask, tile_mask)
        acc = _gather_add(acc, w_ptrs + HW, rows, up + x, p_mask, tile_mask)
        acc = _gather_add(acc, w_ptrs + 2 * HW, rows, up + right, p_mask, tile_mask)
        acc = _gather_add(acc, w_ptrs + 3 * HW, rows, mid + left, p_mask, tile_mask)
        acc = _gather_add(acc, w_ptrs + 4 * HW, rows, mid + right, p_mask, tile_mask)
        acc = _gather_add(acc, w_ptrs + 5 * HW, rows, down + left, p_mask, tile_mask)
        acc = _gather_add(acc, w_ptrs + 6 * HW, rows, down + x, p_mask, tile_mask)
        acc = _gather_add(acc, w_ptrs + 7 * HW, rows, down + right, p_mask, tile_mask)
    tl.store(out_ptr + (b * K + k[:, None]) * HW + p[None, :], acc, mask=tile_mask)


@torch.library.custom_op("tscd_triton::varm_affinity", mutates_args=())
def varm_affinity(images: torch.Tensor, dilations: torch.Tensor, intensity_scale: float, variation_weight: float,
                  position_term: torch.Tensor) -> torch.Tensor:
    """images (B, 3, H, W), dilations (L,) int32, position_term (N,) -> weights (B, N, H, W)."""
    B, _, H, W = images.shape
    N = 8 * dilations.numel()
    out = torch.empty((B, N, H, W), device=images.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    block_p = 32
    _affinity_kernel[(triton.cdiv(H * W, block_p), B)](
        images, dilations, position_term, out, H, W, N, float(intensity_scale), float(variation_weight),
        VARIATION=variation_weight != 0, BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(N), num_warps=4,
    )
    return out


@torch.library.custom_op("tscd_triton::varm_propagate_", mutates_args=("out",))
def varm_propagate_(src: torch.Tensor, weights: torch.Tensor, dilations: torch.Tensor, out: torch.Tensor) -> None:
    """One step ``out(p) = sum_n w_n(p) src(clamp(p + n))``; src/out (B, K, H, W), weights (B, N, H, W)."""
    B, K, H, W = src.shape
    if src.numel() == 0:
        return
    block_p = 128
    block_k = min(triton.next_power_of_2(K), 32)
    grid = (triton.cdiv(H * W, block_p), triton.cdiv(K, block_k), B)
    _propagate_kernel[grid](src, weights, dilations, out, K, H, W, dilations.numel(),
                            BLOCK_P=block_p, BLOCK_K=block_k, num_warps=4)


register_fakes("tscd_triton", ("varm_affinity", "varm_propagate_"))
