"""Triton kernels of the variation-aware refinement (VARM) and PAR, method §4: the primitives
``torch.ops.tscd_triton.varm_affinity`` and ``varm_propagate_`` (contracts in
:mod:`tscd.kernels.primitives`).

- :func:`varm_affinity`: one program per block of pixels holds a (pixels × neighbours) tile of the
  neighbour values of one channel at a time, so the standard deviation, both logit sets and
  both softmaxes over the N = 8·L neighbours are computed in one pass, writing only (B, N, H, W).
  Beyond :data:`RESIDENT_DILATIONS` dilations the neighbours are swept in chunks instead (four
  sweeps: mean, deviation, online softmax, weights).
- :func:`varm_propagate_`: one propagation step; every program gathers the N clamped neighbours
  of a block of pixels for a block of channels on the fly.

All tensors are float32 (dilations int32) and contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .primitives import register_fakes
from .utils import interpreted, launch_device
from .variants import CHANNEL_COUNTS, CompileVariant, compile_variant, unique_variants

#: The most dilations L (N = 8·L neighbours) the affinity kernel holds in one tile; beyond, the
#: chunked kernel sweeps the neighbours in chunks of :data:`CHUNK_NEIGHBOURS`.
RESIDENT_DILATIONS = 64
CHUNK_NEIGHBOURS = 128
# Values per tile (affinity: pixels × neighbours, propagation: channels × pixels): 8 per thread
# at 4 warps, so that the affinity's dozen live tiles and the propagation's 8 gathers in flight fit
# in registers without spilling.
_TILE = 1024


@triton.jit
def _pixels(pid, H, W, BLOCK_P: tl.constexpr):
    """The BLOCK_P flat pixel indices p of program ``pid``, their mask, rows y and columns x."""
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    return p, p < H * W, p // W, p % W


@triton.jit
def _displacement(o, d):
    """(d·dy, d·dx) of offset o (0..7, the 3×3 neighbourhood's cells in row-major order without
    its centre) at dilation d. Neighbour n = 8·level + o (dilation-major)."""
    j = o + (o >= 4)  # cell of the 3x3 neighbourhood
    return d * (j // 3 - 1), d * (j % 3 - 1)


@triton.jit
def _clamped(y, x, H, W):
    """Flat index of (y, x) clamped into the H×W image (replicate padding)."""
    return tl.minimum(tl.maximum(y, 0), H - 1) * W + tl.minimum(tl.maximum(x, 0), W - 1)


@triton.jit
def _affinity_kernel(
    img_ptr, dil_ptr, pos_ptr, out_ptr, H, W, N, scale, variation_weight,
    VARIATION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(1)
    HW = H * W
    # Neighbour slots past N (masked out below) repeat the last neighbour's displacement.
    n = tl.arange(0, BLOCK_N)
    n_mask = n < N
    p, p_mask, y, x = _pixels(tl.program_id(0), H, W, BLOCK_P)
    n_read = tl.minimum(n, N - 1)
    oy, ox = _displacement(n_read % 8, tl.load(dil_ptr + n_read // 8))
    tile_mask = p_mask[:, None] & n_mask[None, :]
    ys = y[:, None] + oy[None, :]
    xs = x[:, None] + ox[None, :]
    nb_idx = _clamped(ys, xs, H, W)
    # One row down / one column right in the neighbour image J_n, both clamped.
    down_idx = _clamped(tl.minimum(y + 1, H - 1)[:, None] + oy[None, :], xs, H, W)
    right_idx = _clamped(ys, tl.minimum(x + 1, W - 1)[:, None] + ox[None, :], H, W)

    a = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    v = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for c in tl.static_range(3):
        plane = img_ptr + (b * 3 + c) * HW
        centre = tl.load(plane + p, mask=p_mask, other=0.0)
        nb = tl.load(plane + nb_idx, mask=tile_mask, other=0.0)
        mean = tl.sum(nb, axis=1) / N
        dev = tl.where(tile_mask, nb - mean[:, None], 0.0)
        inv = scale / (tl.sqrt(tl.sum(dev * dev, axis=1) / (N - 1)) + 1e-8)
        t = tl.abs(nb - centre[:, None]) * inv[:, None]
        a -= t * t
        if VARIATION:
            dd = nb - tl.load(plane + down_idx, mask=tile_mask, other=0.0)
            dr = nb - tl.load(plane + right_idx, mask=tile_mask, other=0.0)
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
def _neighbour_chunk(dil_ptr, n0, N, y, x, H, W, BLOCK_N: tl.constexpr):
    """Neighbours n0 … n0 + BLOCK_N − 1 of the pixels (y, x): their mask, and the flat indices of each
    neighbour, of the pixel one row below it and of the pixel one column right of it (all clamped)."""
    n = n0 + tl.arange(0, BLOCK_N)
    n_mask = n < N
    n_read = tl.minimum(n, N - 1)
    oy, ox = _displacement(n_read % 8, tl.load(dil_ptr + n_read // 8))
    ys = y[:, None] + oy[None, :]
    xs = x[:, None] + ox[None, :]
    down = _clamped(tl.minimum(y + 1, H - 1)[:, None] + oy[None, :], xs, H, W)
    right = _clamped(ys, tl.minimum(x + 1, W - 1)[:, None] + ox[None, :], H, W)
    return n, n_mask, _clamped(ys, xs, H, W), down, right


@triton.jit
def _chunk_logits(img_ptr, b, HW, p, p_mask, n_mask, nb_idx, down_idx, right_idx, inv0, inv1, inv2,
                  VARIATION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """The intensity logits a and variation logits v of one chunk of neighbours, −inf past N."""
    tile_mask = p_mask[:, None] & n_mask[None, :]
    a = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    v = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for c in tl.static_range(3):
        inv = inv0 if c == 0 else (inv1 if c == 1 else inv2)
        plane = img_ptr + (b * 3 + c) * HW
        centre = tl.load(plane + p, mask=p_mask, other=0.0)
        nb = tl.load(plane + nb_idx, mask=tile_mask, other=0.0)
        t = tl.abs(nb - centre[:, None]) * inv[:, None]
        a -= t * t
        if VARIATION:
            dd = nb - tl.load(plane + down_idx, mask=tile_mask, other=0.0)
            dr = nb - tl.load(plane + right_idx, mask=tile_mask, other=0.0)
            v += dd * dd + dr * dr
    return tl.where(n_mask[None, :], a / 3.0, float("-inf")), tl.where(n_mask[None, :], v / 3.0, float("-inf"))


@triton.jit
def _affinity_chunked_kernel(
    img_ptr, dil_ptr, pos_ptr, out_ptr, H, W, N, scale, variation_weight,
    VARIATION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """``_affinity_kernel`` for more neighbours than one tile holds: the neighbours in chunks of
    BLOCK_N, in four sweeps — the per-channel mean, the standard deviation about it, the softmaxes'
    running maxima and sums (online softmax), then the weights."""
    b = tl.program_id(1)
    HW = H * W
    p, p_mask, y, x = _pixels(tl.program_id(0), H, W, BLOCK_P)
    sum0 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    sum1 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    sum2 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n, n_mask, nb_idx, down_idx, right_idx = _neighbour_chunk(dil_ptr, n0, N, y, x, H, W, BLOCK_N)
        tile_mask = p_mask[:, None] & n_mask[None, :]
        sum0 += tl.sum(tl.load(img_ptr + (b * 3) * HW + nb_idx, mask=tile_mask, other=0.0), axis=1)
        sum1 += tl.sum(tl.load(img_ptr + (b * 3 + 1) * HW + nb_idx, mask=tile_mask, other=0.0), axis=1)
        sum2 += tl.sum(tl.load(img_ptr + (b * 3 + 2) * HW + nb_idx, mask=tile_mask, other=0.0), axis=1)
    mean0, mean1, mean2 = sum0 / N, sum1 / N, sum2 / N
    ss0 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    ss1 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    ss2 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n, n_mask, nb_idx, down_idx, right_idx = _neighbour_chunk(dil_ptr, n0, N, y, x, H, W, BLOCK_N)
        tile_mask = p_mask[:, None] & n_mask[None, :]
        d0 = tl.where(tile_mask, tl.load(img_ptr + (b * 3) * HW + nb_idx, mask=tile_mask, other=0.0)
                      - mean0[:, None], 0.0)
        d1 = tl.where(tile_mask, tl.load(img_ptr + (b * 3 + 1) * HW + nb_idx, mask=tile_mask, other=0.0)
                      - mean1[:, None], 0.0)
        d2 = tl.where(tile_mask, tl.load(img_ptr + (b * 3 + 2) * HW + nb_idx, mask=tile_mask, other=0.0)
                      - mean2[:, None], 0.0)
        ss0 += tl.sum(d0 * d0, axis=1)
        ss1 += tl.sum(d1 * d1, axis=1)
        ss2 += tl.sum(d2 * d2, axis=1)
    inv0 = scale / (tl.sqrt(ss0 / (N - 1)) + 1e-8)
    inv1 = scale / (tl.sqrt(ss1 / (N - 1)) + 1e-8)
    inv2 = scale / (tl.sqrt(ss2 / (N - 1)) + 1e-8)
    max_a = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
    max_v = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
    sum_a = tl.zeros((BLOCK_P,), dtype=tl.float32)
    sum_v = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n, n_mask, nb_idx, down_idx, right_idx = _neighbour_chunk(dil_ptr, n0, N, y, x, H, W, BLOCK_N)
        a, v = _chunk_logits(img_ptr, b, HW, p, p_mask, n_mask, nb_idx, down_idx, right_idx, inv0, inv1, inv2,
                             VARIATION, BLOCK_P, BLOCK_N)
        new_max = tl.maximum(max_a, tl.max(a, axis=1))
        sum_a = sum_a * tl.exp(max_a - new_max) + tl.sum(tl.exp(a - new_max[:, None]), axis=1)
        max_a = new_max
        if VARIATION:
            new_max = tl.maximum(max_v, tl.max(v, axis=1))
            sum_v = sum_v * tl.exp(max_v - new_max) + tl.sum(tl.exp(v - new_max[:, None]), axis=1)
            max_v = new_max
    for n0 in range(0, N, BLOCK_N):
        n, n_mask, nb_idx, down_idx, right_idx = _neighbour_chunk(dil_ptr, n0, N, y, x, H, W, BLOCK_N)
        a, v = _chunk_logits(img_ptr, b, HW, p, p_mask, n_mask, nb_idx, down_idx, right_idx, inv0, inv1, inv2,
                             VARIATION, BLOCK_P, BLOCK_N)
        w = tl.exp(a - max_a[:, None]) / sum_a[:, None] + tl.load(pos_ptr + n, mask=n_mask, other=0.0)[None, :]
        if VARIATION:
            w -= variation_weight * (tl.exp(v - max_v[:, None]) / sum_v[:, None])
        tl.store(out_ptr + (b * N + n[None, :]) * HW + p[:, None], w, mask=p_mask[:, None] & n_mask[None, :])


@triton.jit
def _propagate_kernel(
    src_ptr, w_ptr, dil_ptr, out_ptr, K, H, W, L,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    b = tl.program_id(2)
    HW = H * W
    p, p_mask, y, x = _pixels(tl.program_id(0), H, W, BLOCK_P)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    tile_mask = (k < K)[:, None] & p_mask[None, :]
    rows = src_ptr + (b * K + k[:, None]) * HW
    acc = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
    for level in range(L):
        d = tl.load(dil_ptr + level)
        # Clamped rows above/at/below and columns left/at/right at distance d, shared by the 8 offsets.
        row = (tl.maximum(y - d, 0) * W, y * W, tl.minimum(y + d, H - 1) * W)
        col = (tl.maximum(x - d, 0), x, tl.minimum(x + d, W - 1))
        for j in tl.static_range(9):  # the cells of the 3x3 neighbourhood, offset o = j without the centre
            if j != 4:
                w = tl.load(w_ptr + ((b * L + level) * 8 + j - (j > 4)) * HW + p, mask=p_mask, other=0.0)
                acc += w[None, :] * tl.load(rows + (row[j // 3] + col[j % 3])[None, :], mask=tile_mask, other=0.0)
    tl.store(out_ptr + (b * K + k[:, None]) * HW + p[None, :], acc, mask=tile_mask)


def _affinity_launch(num_dilations: int, variation: bool, interpreter: bool = False) -> tuple:
    """(kernel, constexprs and launch options) of the affinity for L dilations (N = 8·L neighbours):
    the resident kernel up to :data:`RESIDENT_DILATIONS`, the chunked one beyond.

    The interpreter pays per tile operation rather than per register: 8× bigger tiles there.
    """
    tile, max_p = (8 * _TILE, 1024) if interpreter else (_TILE, 128)
    if num_dilations > RESIDENT_DILATIONS:  # more live tiles (three neighbour indices): more threads
        kernel, block_n, warps = _affinity_chunked_kernel, CHUNK_NEIGHBOURS, 8
    else:
        kernel, block_n, warps = _affinity_kernel, triton.next_power_of_2(8 * num_dilations), 4
    return kernel, {"VARIATION": variation, "BLOCK_P": min(max_p, tile // block_n), "BLOCK_N": block_n,
                    "num_warps": warps, "num_stages": 1}


#: Dilation counts whose launches cover every affinity configuration (all beyond RESIDENT_DILATIONS
#: share the chunked kernel's one configuration).
DILATION_COUNTS = range(1, RESIDENT_DILATIONS + 2)


def _propagate_config(K: int, interpreter: bool = False) -> dict:
    """Constexprs and launch options of ``_propagate_kernel`` for K channels (interpreter: bigger tiles)."""
    block_k = min(triton.next_power_of_2(K), 32)
    tile, max_p = (8 * _TILE, 1024) if interpreter else (_TILE, 128)
    return {"BLOCK_P": min(max_p, tile // block_k), "BLOCK_K": block_k, "num_warps": 4, "num_stages": 1}


_AFFINITY_SIGNATURE = {"img_ptr": "*fp32", "dil_ptr": "*i32", "pos_ptr": "*fp32", "out_ptr": "*fp32", "H": "i32",
                       "W": "i32", "N": "i32", "scale": "fp32", "variation_weight": "fp32"}
_PROPAGATE_SIGNATURE = {"src_ptr": "*fp32", "w_ptr": "*fp32", "dil_ptr": "*i32", "out_ptr": "*fp32", "K": "i32",
                        "H": "i32", "W": "i32", "L": "i32"}


def compile_variants() -> list[CompileVariant]:
    """Every GPU launch configuration of both wrappers: every dilation count (:data:`DILATION_COUNTS`)
    with and without the variation term, and channel counts 1 to 256."""
    affinity = [_affinity_launch(L, variation) for L in DILATION_COUNTS for variation in (False, True)]
    return unique_variants(
        [compile_variant(kernel, _AFFINITY_SIGNATURE, config) for kernel, config in affinity]
        + [compile_variant(_propagate_kernel, _PROPAGATE_SIGNATURE, _propagate_config(K)) for K in CHANNEL_COUNTS]
    )


def launch_affinity(kernel, config: dict, images: torch.Tensor, dilations: torch.Tensor, intensity_scale: float,
                    variation_weight: float, position_term: torch.Tensor) -> torch.Tensor:
    """:func:`varm_affinity` by ``kernel`` launched with ``config`` (the wrapper's choice, or a compile
    variant in the tests)."""
    B, _, H, W = images.shape
    N = 8 * dilations.numel()
    out = torch.empty((B, N, H, W), device=images.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    with launch_device(images):
        kernel[(triton.cdiv(H * W, config["BLOCK_P"]), B)](
            images, dilations, position_term, out, H, W, N, float(intensity_scale), float(variation_weight), **config,
        )
    return out


def launch_propagate(kernel, config: dict, src: torch.Tensor, weights: torch.Tensor, dilations: torch.Tensor,
                     out: torch.Tensor) -> None:
    """:func:`varm_propagate_` by ``kernel`` launched with ``config``."""
    B, K, H, W = src.shape
    if src.numel() == 0:
        return
    grid = (triton.cdiv(H * W, config["BLOCK_P"]), triton.cdiv(K, config["BLOCK_K"]), B)
    with launch_device(src):
        kernel[grid](src, weights, dilations, out, K, H, W, dilations.numel(), **config)


@torch.library.custom_op("tscd_triton::varm_affinity", mutates_args=())
def varm_affinity(images: torch.Tensor, dilations: torch.Tensor, intensity_scale: float, variation_weight: float,
                  position_term: torch.Tensor) -> torch.Tensor:
    """images (B, 3, H, W), dilations (L,) int32 with L ≥ 1, position_term (N,) -> weights (B, N, H, W)."""
    L = dilations.numel()
    if L < 1:
        raise ValueError("dilations: the Triton kernel needs at least one dilation")
    kernel, config = _affinity_launch(L, variation_weight != 0, interpreted())
    return launch_affinity(kernel, config, images, dilations, intensity_scale, variation_weight, position_term)


@torch.library.custom_op("tscd_triton::varm_propagate_", mutates_args=("out",))
def varm_propagate_(src: torch.Tensor, weights: torch.Tensor, dilations: torch.Tensor, out: torch.Tensor) -> None:
    """One step ``out(p) = sum_n w_n(p) src(clamp(p + n))``; src/out (B, K, H, W), weights (B, N, H, W)."""
    launch_propagate(_propagate_kernel, _propagate_config(src.shape[1], interpreted()), src, weights, dilations, out)


register_fakes("tscd_triton", ("varm_affinity", "varm_propagate_"))
