// The permutohedral-lattice Gaussian-kernel product (algorithm in lattice.h) as the operator
// tscd_lattice::gaussian_product, with the schema of the exact tscd::gaussian_product
// (gaussian.h): feats (B, D, N) pre-scaled so that 2^(−‖Δfeats‖²) = exp(−½‖Δf‖²), x (B, K, N)
// → y (B, K, N) float32. The lattice undoes that pre-scaling and filters with its own
// approximation of exp(−½‖Δf‖²) (scale ≈ 0.58 of the exact sums on photographs); cut2, width and
// radius are speed hints of the exact kernel and are ignored (the lattice is O(N) without them,
// and the weights they would drop are already negligible in its blur).
//
// Work split: at::parallel_for over the batch; each image builds its lattice, transposes x to
// pixel-major (K contiguous floats per pixel, as the lattice stores them), filters, and
// transposes back.
#include "gaussian.h"
#include "lattice.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

using tscd::lattice::Lattice;

Lattice build_lattice(const float* feats, int64_t dims, int64_t n, float feature_scale) {
  switch (dims) {
    case 1: return tscd::lattice::build<1>(feats, n, feature_scale);
    case 2: return tscd::lattice::build<2>(feats, n, feature_scale);
    case 3: return tscd::lattice::build<3>(feats, n, feature_scale);
    case 4: return tscd::lattice::build<4>(feats, n, feature_scale);
    case 5: return tscd::lattice::build<5>(feats, n, feature_scale);
    case 6: return tscd::lattice::build<6>(feats, n, feature_scale);
    case 7: return tscd::lattice::build<7>(feats, n, feature_scale);
    case 8: return tscd::lattice::build<8>(feats, n, feature_scale);
    default: TORCH_CHECK(false, "feats (B, D, N): 1 to ", tscd::lattice::kMaxDims, " feature dimensions, got ", dims);
  }
}

at::Tensor lattice_product_cpu(const at::Tensor& feats, const at::Tensor& x, double /*cut2*/, int64_t /*width*/,
                               int64_t /*radius*/) {
  tscd::gaussian::check_args(feats, x);
  const int64_t B = x.size(0), K = x.size(1), N = x.size(2), D = feats.size(1);
  TORCH_CHECK(D >= 1, "feats (B, D, N): at least one feature dimension, got ", feats.sizes());
  auto y = at::empty_like(x);
  if (y.numel() == 0) return y;
  // feats = f · √(log2(e) / 2); the lattice works on f.
  const float feature_scale = static_cast<float>(1.0 / std::sqrt(0.5 * std::log2(std::exp(1.0))));
  const float* fp = feats.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xt(N * K), yt(N * K), values, scratch;
    for (int64_t b = begin; b < end; ++b) {
      const Lattice lat = build_lattice(fp + b * D * N, D, N, feature_scale);
      const float* xb = xp + b * K * N;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t i = 0; i < N; ++i) xt[i * K + k] = xb[k * N + i];
      tscd::lattice::filter(lat, xt.data(), K, yt.data(), values, scratch);
      float* yb = yp + b * K * N;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t i = 0; i < N; ++i) yb[k * N + i] = yt[i * K + k];
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(tscd_lattice, m) {
  m.def("gaussian_product(Tensor feats, Tensor x, float cut2, int width, int radius) -> Tensor");
}

TORCH_LIBRARY_IMPL(tscd_lattice, CPU, m) { m.impl("gaussian_product", &lattice_product_cpu); }
