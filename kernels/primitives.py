"""The primitives every fused backend implements: their contracts and fake (meta) kernels.

The C++/CUDA extension defines them as ``torch.ops.tscd.<name>`` and the Triton kernels as
``torch.ops.tscd_triton.<name>``, with identical schemas. All tensors are float32 and
contiguous unless stated (the op layer upcasts); ``dilations`` is int32.

- ``gaussian_product(feats (B,D,N), x (B,K,N), cut2, width, radius) -> y (B,K,N)``:
  ``y[b,k,i] = Σ_j 2^(−‖feats_i − feats_j‖²) x[b,k,j]`` over every pair, self included; ``feats``
  is pre-scaled so that this equals ``exp(−½‖f_i − f_j‖²)``; pairs with squared distance above
  ``cut2`` weigh 0 (``inf``: none); with ``width > 0`` pixel i lies in row ``i // width`` and
  only pairs at most ``radius`` rows apart are visited (a speed hint: ``cut2`` must already
  give the others weight 0). D ≤ 8.
- ``gaussian_product_transposed``: the same schema; only ``torch.ops.tscd_lattice`` has it (the
  permutohedral lattice's operator L is not symmetric, so its loss gradient needs ``Lᵀ·x``;
  the exact W is symmetric).
- ``bilateral_filter_(images (B,3,H,W), x (B,K,N), sigma_rgb, sigma_xy, out (B,K,N)) -> ()``: only
  ``torch.ops.tscd_lattice`` has it (CPU): ``out = gaussian_product_lattice(bilateral_features(images,
  sigma_xy, sigma_rgb), x)`` written into ``out``, the features computed on the fly and no lattice
  kept (``tscd.compat.bilateralfilter``, with the family's module's memory).
- ``dense_crf_mean_field(probs (B,K,N), smooth_feats (B,Ds,N), appearance_feats (B,Da,N),
  smooth_weight, appearance_weight, num_iter) -> Q (B,K,N)``: only ``torch.ops.tscd_lattice`` has it
  (CPU): the dense CRF's whole mean-field loop on the permutohedral lattices of the two feature sets
  (coordinates and colours divided by their σ), ``Q ← softmax_k(U + Σ_L w_L n_L ⊙ L(n_L ⊙ Q))`` from
  ``Q = softmax_k(U)``, ``U = log(max(probs, 1e-5))``, ``n_L = (L·1)^(−1/2)`` (``csrc/dense_crf.cpp``).
- ``scd_pass(xs (B,K,Nx), ys (B,K,Ny), xt (B,C,Nx), yt (B,C,Ny), ar (B,Nx), ac (B,Ny), with_grad)
  -> (rowsum (B,Nx), grad (B,K,Nx) or (B,K,0))``: with ``s_ij = xs_i·ys_j`` and
  ``f_ij = xt_i·yt_j + ar_i + ac_j``, ``rowsum_i = Σ_j relu(s_ij) f_ij`` and
  ``grad_i = Σ_j 1[s_ij > 0] f_ij ys_j`` (method §6); inputs may be non-contiguous.
- ``scd_fused(s1 (B,K,N1), s2 (B,K,N2), t1 (B,C,N1), t2 (B,C,N2), with_grad)
  -> (rowsum (B,N1), g1 (B,K,N1), g2 (B,K,N2))``, CPU only (``torch.ops.tscd``): the whole sweep of
  the loss in one pass on the raw maps, which it normalises per column (x̂ = x / max(‖x‖, 1e-10)):
  ``s_ij = ŝ1_i·ŝ2_j``, ``f_ij = t̂1_i·t̂2_j − t̂1_i·m2 + mean_b(m1·m2)`` with ``m_v`` the mean of
  ``t̂_v`` over its positions, ``rowsum_i = Σ_j relu(s_ij) f_ij``, and ``g1``, ``g2`` the gradients
  of ``Σ rowsum`` w.r.t. ``s1`` and ``s2`` (N1, N2 = 0 unless ``with_grad``).
- ``varm_affinity(images (B,3,H,W), dilations (L,), intensity_scale, variation_weight,
  position_term (8L,)) -> weights (B,8L,H,W)``: ``softmax_n(a_n) − variation_weight·softmax_n(v_n)
  + position_term[n]`` over the 8L clamped neighbours (method §4).
- ``varm_propagate_(src (B,K,H,W), weights (B,8L,H,W), dilations, out (B,K,H,W)) -> ()``:
  ``out(p) = Σ_n w_n(p) src(clamp(p + n))``, one refinement step written into ``out``.
- ``varm_refine_(masks (B,K,H,W), images (B,3,H,W), dilations, intensity_scale, variation_weight,
  position_term, num_iter) -> ()``, CPU only (``torch.ops.tscd``): ``num_iter`` of those steps with
  the weights of ``varm_affinity``, in place on ``masks``.

The fake kernels below give the output shapes for ``torch.compile`` and ``torch.library.opcheck``.
"""
from __future__ import annotations

import torch


def gaussian_product(feats: torch.Tensor, x: torch.Tensor, cut2: float, width: int, radius: int) -> torch.Tensor:
    return x.new_empty(x.shape, dtype=torch.float32)


def bilateral_filter_(images, x, sigma_rgb: float, sigma_xy: float, out) -> None:
    return None


def dense_crf_mean_field(probs, smooth_feats, appearance_feats, smooth_weight: float, appearance_weight: float,
                         num_iter: int) -> torch.Tensor:
    return probs.new_empty(probs.shape, dtype=torch.float32)


def scd_pass(xs, ys, xt, yt, ar, ac, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    batch, channels, rows = xs.shape
    rowsum = xs.new_empty((batch, rows), dtype=torch.float32)
    return rowsum, xs.new_empty((batch, channels, rows if with_grad else 0), dtype=torch.float32)


def scd_fused(s1, s2, t1, t2, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, channels, n1 = s1.shape
    n2 = s2.shape[2] if with_grad else 0
    return (s1.new_empty((batch, n1), dtype=torch.float32),
            s1.new_empty((batch, channels, n1 if with_grad else 0), dtype=torch.float32),
            s1.new_empty((batch, channels, n2), dtype=torch.float32))


def varm_affinity(images, dilations, intensity_scale: float, variation_weight: float, position_term) -> torch.Tensor:
    batch, _, height, width = images.shape
    return images.new_empty((batch, 8 * dilations.shape[0], height, width), dtype=torch.float32)


def varm_propagate_(src, weights, dilations, out) -> None:
    return None


def varm_refine_(masks, images, dilations, intensity_scale: float, variation_weight: float, position_term,
                 num_iter: int) -> None:
    return None


#: The primitives every fused backend implements.
COMMON = ("gaussian_product", "scd_pass", "varm_affinity", "varm_propagate_")
#: The primitives only the C++ library's CPU kernels implement (``torch.ops.tscd``).
CPU_ONLY = ("scd_fused", "varm_refine_")
FAKES = {"gaussian_product": gaussian_product, "gaussian_product_transposed": gaussian_product, "scd_pass": scd_pass,
         "scd_fused": scd_fused, "varm_affinity": varm_affinity, "varm_propagate_": varm_propagate_,
         "varm_refine_": varm_refine_, "dense_crf_mean_field": dense_crf_mean_field,
         "bilateral_filter_": bilateral_filter_}
#: The primitives of ``torch.ops.tscd_lattice`` (CPU).
LATTICE = ("gaussian_product", "gaussian_product_transposed", "dense_crf_mean_field", "bilateral_filter_")


def register_fakes(namespace: str, names=COMMON) -> None:
    """Register the fake kernels of ``names`` for ``torch.ops.<namespace>.*`` (the operators must exist)."""
    for name in names:
        torch.library.register_fake(f"{namespace}::{name}")(FAKES[name])
