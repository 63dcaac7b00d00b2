// Variation-aware refinement (VARM) and PAR (contract in varm.h): schemas and CPU kernels.
// Both primitives split the work over image rows (at::parallel_for over (batch, row)).
#include "varm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using tscd::varm::kRing;

inline int64_t clamp_index(int64_t i, int64_t n) { return std::min(std::max(i, int64_t{0}), n - 1); }

// Neighbour displacements (d·dy, d·dx) of checked dilations, dilation-major.
struct Offsets {
  std::vector<int64_t> dy, dx;
  explicit Offsets(const at::Tensor& dilations) {
    auto d = dilations.contiguous();
    for (int64_t l = 0; l < d.numel(); ++l) {
      for (int o = 0; o < kRing; ++o) {
        dy.push_back(int64_t{d.data_ptr<int>()[l]} * tscd::varm::ring_dy(o));
        dx.push_back(int64_t{d.data_ptr<int>()[l]} * tscd::varm::ring_dx(o));
      }
    }
  }
  int64_t size() const { return static_cast<int64_t>(dy.size()); }
};

// Splits a row of width w shifted by s into [0, lo) (clamped to column 0), [lo, hi) (column
// x + s inside the row) and [hi, w) (clamped to column w − 1).
struct ShiftSplit {
  int64_t lo, hi;
  ShiftSplit(int64_t w, int64_t s) {
    lo = std::min(std::max(-s, int64_t{0}), w);
    hi = std::max(std::min(w - s, w), lo);
  }
};

// dst[x] = src[clamp(x + s)] for x in [0, w).
inline void shifted_row(float* dst, const float* src, int64_t w, int64_t s) {
  const ShiftSplit sp(w, s);
  for (int64_t x = 0; x < sp.lo; ++x) dst[x] = src[0];
  for (int64_t x = sp.lo; x < sp.hi; ++x) dst[x] = src[x + s];
  for (int64_t x = sp.hi; x < w; ++x) dst[x] = src[w - 1];
}

// acc[x] += w[x]·v[x] for x in [0, n).
inline void accumulate_product(float* __restrict__ acc, const float* __restrict__ w, const float* __restrict__ v,
                               int64_t n) {
  for (int64_t x = 0; x < n; ++x) acc[x] += w[x] * v[x];
}

// In place over rows[n][x], n < count: rows[n][x] <- softmax over n, for every column x.
void softmax_columns(float* rows, int64_t count, int64_t w, float* col_max, float* col_sum) {
  std::fill(col_max, col_max + w, -std::numeric_limits<float>::infinity());
  std::fill(col_sum, col_sum + w, 0.f);
  for (int64_t n = 0; n < count; ++n)
    for (int64_t x = 0; x < w; ++x) col_max[x] = std::max(col_max[x], rows[n * w + x]);
  for (int64_t n = 0; n < count; ++n)
    for (int64_t x = 0; x < w; ++x) {
      const float e = std::exp(rows[n * w + x] - col_max[x]);
      rows[n * w + x] = e;
      col_sum[x] += e;
    }
  for (int64_t x = 0; x < w; ++x) col_sum[x] = 1.f / col_sum[x];
  for (int64_t n = 0; n < count; ++n)
    for (int64_t x = 0; x < w; ++x) rows[n * w + x] *= col_sum[x];
}

at::Tensor affinity_cpu(const at::Tensor& images, const at::Tensor& dilations, double intensity_scale,
                        double variation_weight, const at::Tensor& position_term) {
  tscd::varm::check_affinity_args(images, dilations, position_term);
  const Offsets off(dilations);
  const int64_t N = off.size(), B = images.size(0), H = images.size(2), W = images.size(3), HW = H * W;
  auto out = at::empty({B, N, H, W}, images.options());
  const float* img = images.data_ptr<float>();
  const auto pos_c = position_term.contiguous();  // kept alive: pos must not dangle
  const float* pos = pos_c.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const float scale = static_cast<float>(intensity_scale);
  const float vw = static_cast<float>(variation_weight);
  const bool variation = vw != 0.f;

  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    // Per row: the neighbour rows J_n of each channel (and one row down for the variation
    // term), the two logit sets a_n, v_n, and per-column statistics.
    std::vector<float> nb(3 * N * W), nb_down(variation ? 3 * N * W : 0), a(N * W), v(variation ? N * W : 0);
    std::vector<float> mean(W), inv(W), col_max(W), col_sum(W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H, y_down = std::min(y + 1, H - 1);
      std::fill(a.begin(), a.end(), 0.f);
      std::fill(v.begin(), v.end(), 0.f);
      for (int64_t c = 0; c < 3; ++c) {
        const float* plane = img + (b * 3 + c) * HW;
        const float* centre = plane + y * W;
        float* J = nb.data() + c * N * W;
        for (int64_t n = 0; n < N; ++n)
          shifted_row(J + n * W, plane + clamp_index(y + off.dy[n], H) * W, W, off.dx[n]);
        // Unbiased standard deviation over the N neighbours, two passes.
        std::fill(mean.begin(), mean.end(), 0.f);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t x = 0; x < W; ++x) mean[x] += J[n * W + x];
        for (int64_t x = 0; x < W; ++x) mean[x] /= static_cast<float>(N);
        std::fill(inv.begin(), inv.end(), 0.f);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t x = 0; x < W; ++x) {
            const float dev = J[n * W + x] - mean[x];
            inv[x] += dev * dev;
          }
        for (int64_t x = 0; x < W; ++x) inv[x] = scale / (std::sqrt(inv[x] / static_cast<float>(N - 1)) + 1e-8f);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t x = 0; x < W; ++x) {
            const float t = std::abs(J[n * W + x] - centre[x]) * inv[x];
            a[n * W + x] -= t * t;
          }
        if (variation) {
          float* Jd = nb_down.data() + c * N * W;
          for (int64_t n = 0; n < N; ++n)
            shifted_row(Jd + n * W, plane + clamp_index(y_down + off.dy[n], H) * W, W, off.dx[n]);
          for (int64_t n = 0; n < N; ++n) {
            const float* Jn = J + n * W;
            const float* Jdn = Jd + n * W;
            float* vn = v.data() + n * W;
            for (int64_t x = 0; x < W; ++x) {
              const float dd = Jn[x] - Jdn[x];
              const float dr = Jn[x] - Jn[std::min(x + 1, W - 1)];
              vn[x] += dd * dd + dr * dr;
            }
          }
        }
      }
      for (auto& t : a) t /= 3.f;
      softmax_columns(a.data(), N, W, col_max.data(), col_sum.data());
      if (variation) {
        for (auto& t : v) t /= 3.f;
        softmax_columns(v.data(), N, W, col_max.data(), col_sum.data());
      }
      for (int64_t n = 0; n < N; ++n) {
        float* o = dst + (b * N + n) * HW + y * W;
        const float* an = a.data() + n * W;
        for (int64_t x = 0; x < W; ++x) o[x] = an[x] + pos[n];
        if (variation) {
          const float* vn = v.data() + n * W;
          for (int64_t x = 0; x < W; ++x) o[x] -= vw * vn[x];
        }
      }
    }
  });
  return out;
}

void propagate_cpu(const at::Tensor& src, const at::Tensor& weights, const at::Tensor& dilations, at::Tensor out) {
  tscd::varm::check_propagate_args(src, weights, dilations, out);
  if (out.numel() == 0) return;
  const Offsets off(dilations);
  const int64_t N = off.size(), B = src.size(0), K = src.size(1), H = src.size(2), W = src.size(3), HW = H * W;
  // A shift of W or more clamps every column to the same edge as a shift of W does, so the
  // rows are padded by at most W replicated edge pixels on each side; every neighbour's row
  // is then one contiguous, branch-free slice (refinement runs on short rows, where the
  // clamped borders cost more than the sums).
  std::vector<int64_t> shift(N);
  int64_t pad = 0;
  for (int64_t n = 0; n < N; ++n) {
    shift[n] = std::min(std::max(off.dx[n], -W), W);
    pad = std::max(pad, std::abs(shift[n]));
  }
  const int64_t Wp = W + 2 * pad;
  // a tensor, not a std::vector, so that torch's allocator (and the benchmarks' peak) sees it
  auto padded_rows = at::empty({B * K * H, Wp}, src.options());
  float* padded = padded_rows.data_ptr<float>();
  const float* s = src.data_ptr<float>();
  at::parallel_for(0, B * K * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = s + r * W;
      float* dst = padded + r * Wp;
      std::fill_n(dst, pad, row[0]);
      std::copy_n(row, W, dst + pad);
      std::fill_n(dst + pad + W, pad, row[W - 1]);
    }
  });
  const float* wt = weights.data_ptr<float>();
  float* o = out.data_ptr<float>();

  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      for (int64_t k = 0; k < K; ++k) {
        float* acc = o + (b * K + k) * HW + y * W;
        const float* plane = padded + (b * K + k) * H * Wp + pad;
        std::fill_n(acc, W, 0.f);
        for (int64_t n = 0; n < N; ++n) {
          const float* wrow = wt + (b * N + n) * HW + y * W;
          const float* nb = plane + clamp_index(y + off.dy[n], H) * Wp + shift[n];
          accumulate_product(acc, wrow, nb, W);
        }
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tscd, m) {
  m.def(
      "varm_affinity(Tensor images, Tensor dilations, float intensity_scale, float variation_weight, "
      "Tensor position_term) -> Tensor");
  m.def("varm_propagate_(Tensor src, Tensor weights, Tensor dilations, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(tscd, CPU, m) {
  m.impl("varm_affinity", &affinity_cpu);
  m.impl("varm_propagate_", &propagate_cpu);
}
