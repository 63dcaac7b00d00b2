// The tiled Gaussian-kernel product Y = W·X, W never materialised: the contract and argument
// checks that the CPU (gaussian.cpp) and CUDA (gaussian_cuda.cu) kernels share.
//
// gaussian_product(feats, x, cut2, width, radius) -> y; also the contract of the Triton kernel
// (tscd/ops/gaussian.py prepares the inputs):
//   feats (B, D, N) float32, already multiplied by sqrt(log2(e) / 2), so that
//     W_ij = exp(-1/2 |f_i - f_j|^2) = 2^(-|feats_i - feats_j|^2);
//   x (B, K, N) float32; cut2: pairs with |feats_i - feats_j|^2 > cut2 get weight 0
//   (infinity: the exact sum over all pairs, self included);
//   width, radius: when width > 0, pixel i lies in row i / width and only pairs at most radius
//   rows apart are visited, tile by tile (a hint: the caller's cut2 must already give the other
//   pairs weight 0; used for windowed spatial kernels).
//   Returns y (B, K, N) float32 with y[b, k, i] = sum_j W_ij x[b, k, j].
#pragma once
#include "common.h"
#include "gaussian_limits.h"

namespace tscd::gaussian {

// feats (B, D, N) and x (B, K, N), float32, contiguous, agreeing in B and N; D <= kMaxDims.
inline void check_args(const at::Tensor& feats, const at::Tensor& x) {
  check_float32_contiguous(feats, "feats", 3, "(B, D, N)");
  check_float32_contiguous(x, "x", 3, "(B, K, N)");
  TORCH_CHECK(feats.size(0) == x.size(0) && feats.size(2) == x.size(2),
              "feats (B, D, N) and x (B, K, N) must agree in B and N, got ", feats.sizes(), " and ", x.sizes());
  TORCH_CHECK(feats.size(1) <= kMaxDims, "feats (B, D, N): at most ", kMaxDims, " feature dimensions, got ",
              feats.size(1));
}

}  // namespace tscd::gaussian
