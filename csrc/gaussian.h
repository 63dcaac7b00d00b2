// The tiled Gaussian-kernel product Y = W·X, W_ij = 2^(−‖f_i − f_j‖²): what the CPU and CUDA
// kernels share.
#pragma once
#include "common.h"

namespace tscd_gaussian {

constexpr int kMaxDims = 8;  // feature dimensions per pixel (x, y and up to 6 colour channels)

// feats (B, D, N) and x (B, K, N), float32, contiguous, agreeing in B and N.
inline void check_args(const at::Tensor& feats, const at::Tensor& x) {
  TSCD_CHECK_FLOAT(feats);
  TSCD_CHECK_FLOAT(x);
  TSCD_CHECK_CONTIGUOUS(feats);
  TSCD_CHECK_CONTIGUOUS(x);
  TORCH_CHECK(feats.dim() == 3 && x.dim() == 3, "feats must be (B, D, N) and x (B, K, N)");
  TORCH_CHECK(feats.size(0) == x.size(0) && feats.size(2) == x.size(2),
              "feats (B, D, N) and x (B, K, N) must agree in B and N");
  TORCH_CHECK(feats.size(1) <= kMaxDims, "at most ", kMaxDims, " feature dimensions, got ", feats.size(1));
}

}  // namespace tscd_gaussian
