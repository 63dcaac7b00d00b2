// Tiled Gaussian-kernel product Y = W·X (contract in gaussian.h): schema and CPU kernel.
//
// Work split: tasks of (batch, block of BI = 128 rows) claimed by one worker per thread
// (tscd::cpu::run_workers; one thread for small products); each task sweeps the
// columns in blocks of BJ = 128. For one tile the BJ x BI weights are written to a per-task
// buffer (squared distances from feature differences, a polynomial 2^-d2, a vector
// at a time), then accumulated over the K channels by an outer-product micro-kernel into a
// per-task (K, BI) accumulator. The inner loops use GCC vectors of the CPU's native width,
// chosen at load time (tscd::cpu::run_native).
#include "gaussian.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// The vector helpers are always inlined into the per-ISA kernels, so no vector crosses an ABI
// boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

constexpr int64_t kBlockI = 128;   // rows per task (a multiple of 2 × the widest vector, 16 lanes)
constexpr int64_t kBlockJ = 128;   // columns per tile (the weight tile fits in L1/L2)
using tscd::gaussian::kMaxDims;
// Weights below 2^-125 are flushed to exactly 0 (they could not change a float32 sum).
constexpr float kMaxExponent = 125.0f;

// kLanes floats (and their int32 bit patterns) as GCC vectors.
template <int kLanes>
struct Vec {
  typedef float f __attribute__((vector_size(kLanes * sizeof(float))));
  typedef int32_t i __attribute__((vector_size(kLanes * sizeof(int32_t))));

  static TSCD_INLINE f load(const float* p) { return tscd::cpu::load_lanes<kLanes>(p); }
  static TSCD_INLINE void store(float* p, const f& v) { tscd::cpu::store_lanes<kLanes>(p, v); }

  // 2^-d2 for 0 <= d2 <= limit (<= kMaxExponent), 0 beyond: with x = -d2 = n + r, n = round(x),
  // |r| <= 1/2, 2^r comes from a degree-6 least-squares polynomial (relative error ~1e-7 in
  // float32) and 2^n is added to its exponent bits.
  static TSCD_INLINE f exp2_neg(const f& d2, float limit) {
    constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const f x = -(d2 < limit ? d2 : f{} + limit);
    const f t = x + kRound;
    const f r = x - (t - kRound);
    f p = f{} + 1.546736457e-4f;
    p = p * r + 1.340043265e-3f;
    p = p * r + 9.618035518e-3f;
    p = p * r + 5.550327152e-2f;
    p = p * r + 2.402265072e-1f;
    p = p * r + 6.931471825e-1f;
    p = p * r + 1.0f;
    const i n = (i)t - (i)(f{} + kRound);
    const f e = (f)((i)p + n * (1 << 23));
    return d2 <= limit ? e : f{};
  }
};

// wt[c * kBlockI + r] = 2^-|fi_r - fj_c|^2 (0 beyond limit) for r < kBlockI, c < nj.
// fi: (dims, kBlockI) padded row features; fj points into the (dims, n) feature planes.
template <int kLanes>
struct WeightTile {
  using V = Vec<kLanes>;
  static TSCD_INLINE void run(const float* fi, const float* fj, int64_t n, int64_t dims, int64_t nj, float limit,
                              float* wt) {
    for (int64_t r = 0; r < kBlockI; r += kLanes) {
      typename V::f a[kMaxDims];
      for (int64_t d = 0; d < dims; ++d) a[d] = V::load(fi + d * kBlockI + r);
      for (int64_t c = 0; c < nj; ++c) {
        typename V::f d2 = {};
        for (int64_t d = 0; d < dims; ++d) {
          const typename V::f diff = a[d] - fj[d * n + c];
          d2 += diff * diff;
        }
        V::store(wt + c * kBlockI + r, V::exp2_neg(d2, limit));
      }
    }
  }
};

// acc[k, r] += sum_{c < nj} x[k * n + c] * wt[c * kBlockI + r] for kRows channels: a register
// tile of kRows x 2 vectors, plus the two weight vectors and a broadcast channel value.
template <int kLanes, int kRows>
TSCD_INLINE void accumulate_rows(const float* x, int64_t n, const float* wt, int64_t nj, float* acc) {
  using V = Vec<kLanes>;
  for (int64_t r = 0; r < kBlockI; r += 2 * kLanes) {
    typename V::f s[kRows][2];
    for (int k = 0; k < kRows; ++k) {
      s[k][0] = V::load(acc + k * kBlockI + r);
      s[k][1] = V::load(acc + k * kBlockI + r + kLanes);
    }
    for (int64_t c = 0; c < nj; ++c) {
      const typename V::f w0 = V::load(wt + c * kBlockI + r), w1 = V::load(wt + c * kBlockI + r + kLanes);
      for (int k = 0; k < kRows; ++k) {
        const float v = x[k * n + c];
        s[k][0] += v * w0;
        s[k][1] += v * w1;
      }
    }
    for (int k = 0; k < kRows; ++k) {
      V::store(acc + k * kBlockI + r, s[k][0]);
      V::store(acc + k * kBlockI + r + kLanes, s[k][1]);
    }
  }
}

// The last rows < kRows channels of a tile, in one pass of that many rows.
template <int kLanes, int kRows>
TSCD_INLINE void accumulate_remainder(int rows, const float* x, int64_t n, const float* wt, int64_t nj, float* acc) {
  if constexpr (kRows > 0) {
    if (rows == kRows)
      accumulate_rows<kLanes, kRows>(x, n, wt, nj, acc);
    else
      accumulate_remainder<kLanes, kRows - 1>(rows, x, n, wt, nj, acc);
  }
}

// acc (channels, kBlockI) += x (channels, nj; row stride n) · wt (nj, kBlockI). Channels per
// step, so that the accumulators, two weight vectors and a broadcast fit the register file:
// 4 (8 of the 32 zmm, AVX-512), 6 (12 of the 16 ymm, AVX2), 4 (8 of the 16 xmm, SSE).
template <int kLanes>
struct AccumulateTile {
  static constexpr int kRowsPerStep = kLanes == 8 ? 6 : 4;
  static TSCD_INLINE void run(const float* x, int64_t n, int64_t channels, const float* wt, int64_t nj,
                              float* acc) {
    int64_t k = 0;
    for (; k + kRowsPerStep <= channels; k += kRowsPerStep)
      accumulate_rows<kLanes, kRowsPerStep>(x + k * n, n, wt, nj, acc + k * kBlockI);
    accumulate_remainder<kLanes, kRowsPerStep - 1>(static_cast<int>(channels - k), x + k * n, n, wt, nj,
                                                   acc + k * kBlockI);
  }
};

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
  const int64_t span = width > 0 ? std::min(N, (2 * radius + 1) * width + kBlockI) : N;  // columns per task
  const int64_t tasks = B * blocks, work = tasks * kBlockI * span * (D + K);
  tscd::cpu::run_workers(tscd::cpu::worker_count(work, tasks), tasks, [&](const auto& claim) {
    std::vector<float> fi(kMaxDims * kBlockI), wt(kBlockJ * kBlockI), acc(K * kBlockI);
    for (int64_t task = claim(); task >= 0; task = claim()) {
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
        tscd::cpu::run_native<WeightTile>(fi.data(), fb + j0, N, D, nj, limit, wt.data());
        tscd::cpu::run_native<AccumulateTile>(xb + j0, N, K, wt.data(), nj, acc.data());
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
