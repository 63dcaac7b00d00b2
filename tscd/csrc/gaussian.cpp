// Tiled Gaussian-kernel product Y = W·X (contract in gaussian.h): schema and CPU kernel.
//
// Work split: at::parallel_for over (batch, block of BI = 128 rows); each task sweeps the
// columns in blocks of BJ = 128. For one tile the BJ x BI weights are written to a per-task
// buffer (squared distances from feature differences, a polynomial 2^-d2, 16 lanes at a
// time), then accumulated over the K channels by an outer-product micro-kernel into a
// per-task (K, BI) accumulator. The inner loops use GCC vector types and are compiled for
// AVX-512, AVX2 and baseline x86-64, chosen at load time (TSCD_ISA_CLONES).
#include "gaussian.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// The vector helpers are always inlined into the ISA clones, so no vector crosses an ABI boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

constexpr int64_t kLanes = 16;
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

constexpr int64_t kBlockI = 128;   // rows per task (a multiple of 2 * kLanes)
constexpr int64_t kBlockJ = 128;   // columns per tile (the weight tile fits in L1/L2)
using tscd::gaussian::kMaxDims;
constexpr int kRowsPerStep = 4;    // channels per micro-kernel step
// Weights below 2^-125 are flushed to exactly 0 (they could not change a float32 sum).
constexpr float kMaxExponent = 125.0f;

TSCD_INLINE vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

TSCD_INLINE void store(float* p, const vf& v) { std::memcpy(p, &v, sizeof v); }

// 2^-d2 for 0 <= d2 <= limit (<= kMaxExponent), 0 beyond: with x = -d2 = n + r, n = round(x),
// |r| <= 1/2, 2^r comes from a degree-6 least-squares polynomial (relative error ~1e-7 in
// float32) and 2^n is added to its exponent bits.
TSCD_INLINE vf exp2_neg(const vf& d2, float limit) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vf x = -(d2 < limit ? d2 : vf{} + limit);
  const vf t = x + kRound;
  const vf r = x - (t - kRound);
  vf p = vf{} + 1.546736457e-4f;
  p = p * r + 1.340043265e-3f;
  p = p * r + 9.618035518e-3f;
  p = p * r + 5.550327152e-2f;
  p = p * r + 2.402265072e-1f;
  p = p * r + 6.931471825e-1f;
  p = p * r + 1.0f;
  const vi n = (vi)t - (vi)(vf{} + kRound);
  const vf e = (vf)((vi)p + n * (1 << 23));
  return d2 <= limit ? e : vf{};
}

// wt[c * kBlockI + r] = 2^-|fi_r - fj_c|^2 (0 beyond limit) for r < kBlockI, c < nj.
// fi: (dims, kBlockI) padded row features; fj points into the (dims, n) feature planes.
TSCD_ISA_CLONES
void weight_tile(const float* fi, const float* fj, int64_t n, int64_t dims, int64_t nj, float limit,
                 float* wt) {
  for (int64_t r = 0; r < kBlockI; r += kLanes) {
    vf a[kMaxDims];
    for (int64_t d = 0; d < dims; ++d) a[d] = load(fi + d * kBlockI + r);
    for (int64_t c = 0; c < nj; ++c) {
      vf d2 = {};
      for (int64_t d = 0; d < dims; ++d) {
        const vf diff = a[d] - fj[d * n + c];
        d2 += diff * diff;
      }
      store(wt + c * kBlockI + r, exp2_neg(d2, limit));
    }
  }
}

// acc[k, r] += sum_{c < nj} x[k * n + c] * wt[c * kBlockI + r] for kRows channels from k0.
template <int kRows>
TSCD_INLINE void accumulate_rows(const float* x, int64_t n, const float* wt, int64_t nj, float* acc) {
  for (int64_t r = 0; r < kBlockI; r += 2 * kLanes) {
    vf s[kRows][2];
    for (int k = 0; k < kRows; ++k) {
      s[k][0] = load(acc + k * kBlockI + r);
      s[k][1] = load(acc + k * kBlockI + r + kLanes);
    }
    for (int64_t c = 0; c < nj; ++c) {
      const vf w0 = load(wt + c * kBlockI + r), w1 = load(wt + c * kBlockI + r + kLanes);
      for (int k = 0; k < kRows; ++k) {
        const float v = x[k * n + c];
        s[k][0] += v * w0;
        s[k][1] += v * w1;
      }
    }
    for (int k = 0; k < kRows; ++k) {
      store(acc + k * kBlockI + r, s[k][0]);
      store(acc + k * kBlockI + r + kLanes, s[k][1]);
    }
  }
}

// acc (channels, kBlockI) += x (channels, nj; row stride n) · wt (nj, kBlockI).
TSCD_ISA_CLONES
void accumulate_tile(const float* x, int64_t n, int64_t channels, const float* wt, int64_t nj, float* acc) {
  int64_t k = 0;
  for (; k + kRowsPerStep <= channels; k += kRowsPerStep)
    accumulate_rows<kRowsPerStep>(x + k * n, n, wt, nj, acc + k * kBlockI);
  for (; k < channels; ++k) accumulate_rows<1>(x + k * n, n, wt, nj, acc + k * kBlockI);
}

// Lower bound of |f_i - f_j|^2 over a block pair from per-dimension bounding boxes.
float box_gap2(const float* fi, int64_t ni, const float* fj, int64_t nj, int64_t n, int64_t dims) {
  float gap2 = 0.0f;
  for (int64_t d = 0; d < dims; ++d) {
    const auto [ilo, ihi] = std::minmax_element(fi + d * kBlockI, fi + d * kBlockI + ni);
    const auto [jlo, jhi] = std::minmax_element(fj + d * n, fj + d * n + nj);
    const float gap = std::max({0.0f, *jlo - *ihi, *ilo - *jhi});
    gap2 += gap * gap;
  }
  return gap2;
}

at::Tensor gaussian_product_cpu(const at::Tensor& feats, const at::Tensor& x, double cut2, int64_t width,
                                int64_t radius) {
  tscd::gaussian::check_args(feats, x);
  const int64_t B = x.size(0), K = x.size(1), N = x.size(2), D = feats.size(1);
  auto y = at::empty_like(x);
  if (y.numel() == 0) return y;
  const float limit = static_cast<float>(std::min(cut2, static_cast<double>(kMaxExponent)));
  const bool pruned = cut2 < kMaxExponent;
  const int64_t blocks = (N + kBlockI - 1) / kBlockI;
  const float* fp = feats.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> fi(kMaxDims * kBlockI), wt(kBlockJ * kBlockI), acc(K * kBlockI);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, i0 = (task % blocks) * kBlockI;
      const int64_t ni = std::min(kBlockI, N - i0);
      const float* fb = fp + b * D * N;
      const float* xb = xp + b * K * N;
      std::fill(fi.begin(), fi.end(), 0.0f);
      for (int64_t d = 0; d < D; ++d) std::copy(fb + d * N + i0, fb + d * N + i0 + ni, fi.data() + d * kBlockI);
      std::fill(acc.begin(), acc.end(), 0.0f);
      int64_t j_begin = 0, j_end = N;
      if (width > 0) {
        j_begin = std::max<int64_t>(0, i0 / width - radius) * width;
        j_end = std::min(N, ((i0 + ni - 1) / width + radius + 1) * width);
      }
      for (int64_t j0 = j_begin; j0 < j_end; j0 += kBlockJ) {
        const int64_t nj = std::min(kBlockJ, j_end - j0);
        if (pruned && box_gap2(fi.data(), ni, fb + j0, nj, N, D) > limit) continue;
        weight_tile(fi.data(), fb + j0, N, D, nj, limit, wt.data());
        accumulate_tile(xb + j0, N, K, wt.data(), nj, acc.data());
      }
      for (int64_t k = 0; k < K; ++k)
        std::copy(acc.data() + k * kBlockI, acc.data() + k * kBlockI + ni, yp + (b * K + k) * N + i0);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tscd, m) {
  m.def("gaussian_product(Tensor feats, Tensor x, float cut2, int width, int radius) -> Tensor");
}

TORCH_LIBRARY_IMPL(tscd, CPU, m) { m.impl("gaussian_product", &gaussian_product_cpu); }
