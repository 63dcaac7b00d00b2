// Pairwise pass of the self-correspondence distillation loss (method §6): the contract and
// argument checks that the CPU (scd.cpp) and CUDA (scd_cuda.cu) kernels share.
//
// scd_pass(xs (B,K,Nx), ys (B,K,Ny), xt (B,C,Nx), yt (B,C,Ny), ar (B,Nx), ac (B,Ny), with_grad)
// with unit-normalised float32 columns, for every pair (i, j) of one batch element:
//   s_ij = xs_i · ys_j,   f_ij = xt_i · yt_j + ar_i + ac_j
// and returns
//   rowsum (B,Nx):  Σ_j relu(s_ij) f_ij
//   grad (B,K,Nx):  Σ_j 1[s_ij > 0] f_ij ys_j      (empty unless with_grad)
// without materialising any Nx×Ny matrix. The Python layer calls it twice (rows of view 1
// against view 2 and the transpose) to get the loss and both student gradients. Inputs need
// not be contiguous: the kernels make contiguous copies.
//
// scd_fused(s1 (B,K,N1), s2 (B,K,N2), t1 (B,C,N1), t2 (B,C,N2), with_grad), CPU only: the loss's
// sweep in one pass, on the raw columns. With x̂ = x / max(‖x‖, kEps) per column and m_v the
// mean of view v's t̂ over its positions (the centred correspondence of method §6),
//   s_ij = ŝ1_i · ŝ2_j,   f_ij = t̂1_i · t̂2_j − t̂1_i · m2 + mean_b(m1 · m2),   w_ij = 1[s_ij > 0] f_ij
// it returns
//   rowsum (B,N1):  Σ_j relu(s_ij) f_ij
//   g1 (B,K,N1), g2 (B,K,N2):  the gradients of Σ rowsum w.r.t. s1 and s2 (empty unless
//   with_grad), i.e. Σ_j w_ij ŝ2_j and Σ_i w_ij ŝ1_i through the normalisation's Jacobian,
//   (g − x̂ (x̂·g)) / ‖x‖, or g / kEps where ‖x‖ < kEps (tscd/ops/scd.py's _normalise_backward).
#pragma once
#include "common.h"

namespace tscd::scd {

// The normalisation's eps (tscd.ops.reference.scd.EPS).
constexpr float kEps = 1e-10f;

// float32 inputs whose sizes agree as in the contract above.
inline void check_args(const at::Tensor& xs, const at::Tensor& ys, const at::Tensor& xt, const at::Tensor& yt,
                       const at::Tensor& ar, const at::Tensor& ac) {
  check_dim(xs, "xs", 3, "(B, K, Nx)");
  check_dim(ys, "ys", 3, "(B, K, Ny)");
  check_dim(xt, "xt", 3, "(B, C, Nx)");
  check_dim(yt, "yt", 3, "(B, C, Ny)");
  check_dim(ar, "ar", 2, "(B, Nx)");
  check_dim(ac, "ac", 2, "(B, Ny)");
  check_float32(xs, "xs");
  check_float32(ys, "ys");
  check_float32(xt, "xt");
  check_float32(yt, "yt");
  check_float32(ar, "ar");
  check_float32(ac, "ac");
  const int64_t B = xs.size(0), K = xs.size(1), C = xt.size(1), nx = xs.size(2), ny = ys.size(2);
  const bool batch_ok = ys.size(0) == B && xt.size(0) == B && yt.size(0) == B && ar.size(0) == B && ac.size(0) == B;
  const bool rows_ok = xt.size(2) == nx && ar.size(1) == nx && yt.size(2) == ny && ac.size(1) == ny;
  TORCH_CHECK(batch_ok && rows_ok && ys.size(1) == K && yt.size(1) == C,
              "scd_pass: inconsistent shapes, expected xs (B, K, Nx), ys (B, K, Ny), xt (B, C, Nx), yt (B, C, Ny), "
              "ar (B, Nx), ac (B, Ny), got ",
              xs.sizes(), ", ", ys.sizes(), ", ", xt.sizes(), ", ", yt.sizes(), ", ", ar.sizes(), ", ", ac.sizes());
}

// float32 inputs of scd_fused whose sizes agree: s1 (B,K,N1), s2 (B,K,N2), t1 (B,C,N1), t2 (B,C,N2).
inline void check_fused_args(const at::Tensor& s1, const at::Tensor& s2, const at::Tensor& t1,
                             const at::Tensor& t2) {
  check_dim(s1, "s1", 3, "(B, K, N1)");
  check_dim(s2, "s2", 3, "(B, K, N2)");
  check_dim(t1, "t1", 3, "(B, C, N1)");
  check_dim(t2, "t2", 3, "(B, C, N2)");
  check_float32(s1, "s1");
  check_float32(s2, "s2");
  check_float32(t1, "t1");
  check_float32(t2, "t2");
  const int64_t B = s1.size(0);
  const bool ok = s2.size(0) == B && t1.size(0) == B && t2.size(0) == B && s2.size(1) == s1.size(1) &&
                  t2.size(1) == t1.size(1) && t1.size(2) == s1.size(2) && t2.size(2) == s2.size(2);
  TORCH_CHECK(ok, "scd_fused: inconsistent shapes, expected s1 (B, K, N1), s2 (B, K, N2), t1 (B, C, N1), ",
              "t2 (B, C, N2), got ", s1.sizes(), ", ", s2.sizes(), ", ", t1.sizes(), ", ", t2.sizes());
}

}  // namespace tscd::scd
