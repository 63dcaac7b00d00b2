// Pairwise sweep of the self-correspondence distillation loss (contracts in scd.h): schemas and
// CPU kernels of scd_pass and scd_fused.
//
// Both run one sweep. Workers (one per thread, tscd::cpu::run_workers) claim stripes of the rows
// of X of one batch element one at a time and run the stripe's tasks of kRowBlock rows in order.
// A task packs its rows, then for every tile of kTileCols columns of Y packs the tile and runs
// three register-blocked micro-kernels in GCC vectors of the CPU's native width
// (tscd::cpu::run_native):
//   1. s and f of every pair of the tile → w = 1[s > 0] f (kept in an L2 tile), Σ_j w s;
//   2. (grad_y) Σ_i w_ij x_i into the worker's (K, Ny) buffer, added to the output in the order of
//      the row stripes (StripeCommit), so the gradient does not depend on the threads' timing;
//   3. (grad_x) Σ_j w_ij y_j per row, as per-lane partial sums reduced when the task ends.
// so each pair's s and f are computed once for the value and both gradients.
#include "scd.h"

#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

// The vector helpers are always inlined into the per-ISA kernels, so no vector crosses an ABI
// boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

constexpr int64_t kRowBlock = 48;   // rows of X per task: a multiple of every micro-kernel's rows
constexpr int64_t kRowAlign = 6;    // the rows of a partial block are rounded up to this (lcm of those)
constexpr int64_t kTileCols = 256;  // columns of Y per tile: a multiple of twice every vector width
// Row stride of the w tile and of the column-gradient buffer: one cache line more than a power of
// two, so that the same column of successive rows falls in different L1 sets.
constexpr int64_t kWStride = kTileCols + 16;
constexpr int kMaxLanes = 16;
constexpr int kMaxChannelBlock = 8;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// The gradient micro-kernels take the K channels in blocks of kb ≤ kMaxChannelBlock, as equal
// as possible (K = 21: three blocks of 7, no padding).
int channel_block(int64_t K) {
  const int64_t blocks = std::max<int64_t>(1, (K + kMaxChannelBlock - 1) / kMaxChannelBlock);
  return static_cast<int>(std::max<int64_t>(1, (K + blocks - 1) / blocks));
}

// One call: inputs (B, channels, N) contiguous float32. The columns of xs, ys, xt, yt are used
// multiplied by their scale (1 / max(‖column‖, eps) for scd_fused, 1 when null).
struct Sweep {
  const float *xs, *ys, *xt, *yt, *ar, *ac;  // ac may be null (zeros)
  const float *xs_scale, *ys_scale, *xt_scale, *yt_scale;  // (B, N), or null (unit columns)
  const float* xs_norm;  // (B, Nx) column norms of xs (for the Jacobian)
  int64_t B, K, C, nx, ny, kp, ny_pad;  // ny_pad: the row stride of Scratch::gy (as kWStride)
  int kb;
  bool grad_x, grad_y, jacobian;  // jacobian: gradients w.r.t. the raw columns of xs and ys
  float* rowsum;  // (B, nx)
  float* gx;      // (B, K, nx)
  float* gy;      // (B, K, ny), zero-initialised, accumulated by the workers
};

// A worker's buffers; sizes for the widest vectors.
struct Scratch {
  std::vector<float> xs, xt, ar;  // (kRowBlock, kp), (kRowBlock, C), (kRowBlock): the task's rows
  std::vector<float> ys, yt, ac;  // (kTileCols / L, kp, L), (kTileCols / L, C, L), (kTileCols): the tile's columns
  std::vector<float> w;           // (kRowBlock, kWStride)
  std::vector<float> gx, rs;      // (kRowBlock, kp, L), (kRowBlock, L): per-lane partial sums
  std::vector<float> gy;          // (kp, ny_pad): Σ_i w_ij x_i over the rows of the worker's stripe

  explicit Scratch(const Sweep& s)
      : xs(kRowBlock * s.kp), xt(kRowBlock * s.C), ar(kRowBlock), ys(kTileCols * s.kp), yt(kTileCols * s.C),
        ac(kTileCols), w(kRowBlock * kWStride), gx(kRowBlock * s.kp * kMaxLanes), rs(kRowBlock * kMaxLanes),
        gy(s.grad_y ? s.kp * s.ny_pad : 0, 0.f) {}
};

// The stripes of one batch element's rows: the units that workers claim. Each sums Σ_i w_ij x_i
// over its rows in order, and the stripes are added to grad_y in order (StripeCommit), so the
// gradient does not depend on which thread ran which stripe: with one thread the whole batch
// element is one stripe, with more every element has kStripes (fewer with fewer row blocks).
constexpr int64_t kStripes = 8;

// Adds finished stripes to grad_y in the order of their index, whichever thread finished first.
class StripeCommit {
 public:
  // Adds the worker's partial sums of stripe `unit` (of batch element b) to grad_y once every
  // lower stripe is in, and clears them. Throws if a lower stripe's worker failed.
  void add(const Sweep& s, Scratch& m, int64_t b, int64_t unit) {
    for (int spin = 0; next_.load(std::memory_order_acquire) != unit; ++spin) {
      if (failed_.load(std::memory_order_relaxed)) throw std::runtime_error("scd: another worker failed");
      if (spin >= 64) std::this_thread::yield();
    }
    for (int64_t k = 0; k < s.K; ++k) {
      float* out = s.gy + (b * s.K + k) * s.ny;
      float* part = m.gy.data() + k * s.ny_pad;
      for (int64_t j = 0; j < s.ny; ++j) out[j] += part[j];
      std::fill(part, part + s.ny, 0.f);
    }
    next_.store(unit + 1, std::memory_order_release);
  }

  void fail() { failed_.store(true, std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> next_{0};
  std::atomic<bool> failed_{false};
};

template <int L>
struct Task {
  static constexpr int kRows1 = L == 16 ? 6 : 3;  // s and f micro-tile: kRows1 rows × 2 vectors
  static constexpr int kVecs1 = 2;
  static constexpr int kVecs2 = L == 16 ? 2 : 1;  // Σ_i w x micro-tile: kb channels × kVecs2 vectors
  static constexpr int kRows3 = L == 16 ? 3 : 1;  // Σ_j w y micro-tile: kRows3 rows × kb channels
  static_assert(kRowAlign % kRows1 == 0 && kRowAlign % kRows3 == 0 && kRowBlock % kRowAlign == 0);
  static_assert(kTileCols % (kVecs1 * L) == 0 && kTileCols % (kVecs2 * L) == 0 && L <= kMaxLanes);
  typedef float V __attribute__((vector_size(L * sizeof(float)), aligned(alignof(float))));
  typedef uint32_t U __attribute__((vector_size(L * sizeof(float)), aligned(alignof(float))));

  static TSCD_INLINE V load(const float* p) { return tscd::cpu::load_lanes<L>(p); }
  static TSCD_INLINE void store(float* p, const V& v) { tscd::cpu::store_lanes<L>(p, v); }

  static TSCD_INLINE void run(const Sweep* sp, Scratch* mp, int64_t b, int64_t i0) {
    const Sweep& s = *sp;
    Scratch& m = *mp;
    const int64_t rows = std::min(kRowBlock, s.nx - i0), rows_pad = round_up(rows, kRowAlign);
    pack_rows(s, m, b, i0, rows);
    std::fill(m.gx.begin(), m.gx.end(), 0.f);
    std::fill(m.rs.begin(), m.rs.end(), 0.f);
    for (int64_t j0 = 0; j0 < s.ny; j0 += kTileCols) {
      const int64_t cols = std::min(kTileCols, s.ny - j0), cols_pad = round_up(cols, kVecs1 * L);
      pack_columns(s, m, b, j0, cols, cols_pad);
      pairs(s, m, rows_pad, cols_pad);
      if (s.grad_y) column_gradient(s, m, rows_pad, j0, cols_pad);
      if (s.grad_x) row_gradient(s, m, rows_pad, cols_pad);
    }
    finish_rows(s, m, b, i0, rows);
  }

  // Rows [i0, i0 + rows) of xs (scaled, channels zero-padded to kp), xt (scaled) and ar; zero rows
  // up to kRowBlock (s = 0 there, so they add nothing).
  static TSCD_INLINE void pack_rows(const Sweep& s, Scratch& m, int64_t b, int64_t i0, int64_t rows) {
    std::fill(m.xs.begin(), m.xs.end(), 0.f);
    std::fill(m.xt.begin(), m.xt.end(), 0.f);
    std::fill(m.ar.begin(), m.ar.end(), 0.f);
    float xs_scale[kRowBlock], xt_scale[kRowBlock];
    for (int64_t i = 0; i < rows; ++i) {
      xs_scale[i] = s.xs_scale ? s.xs_scale[b * s.nx + i0 + i] : 1.f;
      xt_scale[i] = s.xt_scale ? s.xt_scale[b * s.nx + i0 + i] : 1.f;
      m.ar[i] = s.ar[b * s.nx + i0 + i];
    }
    for (int64_t k = 0; k < s.K; ++k) {
      const float* src = s.xs + (b * s.K + k) * s.nx + i0;
      for (int64_t i = 0; i < rows; ++i) m.xs[i * s.kp + k] = src[i] * xs_scale[i];
    }
    for (int64_t c = 0; c < s.C; ++c) {
      const float* src = s.xt + (b * s.C + c) * s.nx + i0;
      for (int64_t i = 0; i < rows; ++i) m.xt[i * s.C + c] = src[i] * xt_scale[i];
    }
  }

  // Columns [j0, j0 + cols) of ys and yt (scaled) in panels of L columns, channels next to each
  // other within a panel (with a power-of-two N, (channels, N) rows would put every channel's
  // vector in the same cache set), and ac; zero up to cols_pad columns and kp channels.
  static TSCD_INLINE void pack_columns(const Sweep& s, Scratch& m, int64_t b, int64_t j0, int64_t cols,
                                       int64_t cols_pad) {
    float scale[2][kTileCols];  // of ys, yt; 0 on the padding columns
    for (int64_t j = 0; j < cols_pad; ++j) {
      const bool in = j < cols;
      scale[0][j] = !in ? 0.f : s.ys_scale ? s.ys_scale[b * s.ny + j0 + j] : 1.f;
      scale[1][j] = !in ? 0.f : s.yt_scale ? s.yt_scale[b * s.ny + j0 + j] : 1.f;
      m.ac[j] = in && s.ac != nullptr ? s.ac[b * s.ny + j0 + j] : 0.f;
    }
    pack_panels(s.ys + b * s.K * s.ny + j0, s.K, s.kp, s.ny, cols, cols_pad, scale[0], m.ys.data());
    pack_panels(s.yt + b * s.C * s.ny + j0, s.C, s.C, s.ny, cols, cols_pad, scale[1], m.yt.data());
  }

  // x (channels, n) from column 0 → out (cols_pad / L, stride, L), times scale per column: whole
  // vectors where the panel lies inside the cols columns, the last partial one lane by lane.
  static TSCD_INLINE void pack_panels(const float* x, int64_t channels, int64_t stride, int64_t n, int64_t cols,
                                      int64_t cols_pad, const float* scale, float* out) {
    for (int64_t p = 0; p < cols_pad / L; ++p) {
      const V sc = load(scale + p * L);
      float* panel = out + p * stride * L;
      for (int64_t c = 0; c < channels; ++c) {
        const float* src = x + c * n + p * L;
        if ((p + 1) * L <= cols) {
          store(panel + c * L, load(src) * sc);
        } else {
          for (int64_t l = 0; l < L; ++l) panel[c * L + l] = p * L + l < cols ? src[l] * scale[p * L + l] : 0.f;
        }
      }
      for (int64_t c = channels; c < stride; ++c) store(panel + c * L, V{});
    }
  }

  // Micro-kernel 1 over the tile: w = 1[s > 0] f into m.w, Σ_j w s into m.rs.
  static TSCD_INLINE void pairs(const Sweep& s, Scratch& m, int64_t rows_pad, int64_t cols_pad) {
    const int64_t K = s.K, C = s.C, kp = s.kp;
    for (int64_t jv = 0; jv < cols_pad / L; jv += kVecs1) {
      const float* __restrict ys = m.ys.data() + jv * kp * L;
      const float* __restrict yt = m.yt.data() + jv * C * L;
      for (int64_t r0 = 0; r0 < rows_pad; r0 += kRows1) {
        const float* __restrict xs = m.xs.data() + r0 * kp;
        const float* __restrict xt = m.xt.data() + r0 * C;
        V sv[kRows1][kVecs1] = {}, fv[kRows1][kVecs1] = {};
        for (int64_t k = 0; k < K; ++k) {
          V y[kVecs1];
          for (int v = 0; v < kVecs1; ++v) y[v] = load(ys + (v * kp + k) * L);
          for (int r = 0; r < kRows1; ++r)
            for (int v = 0; v < kVecs1; ++v) sv[r][v] += xs[r * kp + k] * y[v];
        }
        for (int64_t c = 0; c < C; ++c) {
          V y[kVecs1];
          for (int v = 0; v < kVecs1; ++v) y[v] = load(yt + (v * C + c) * L);
          for (int r = 0; r < kRows1; ++r)
            for (int v = 0; v < kVecs1; ++v) fv[r][v] += xt[r * C + c] * y[v];
        }
        for (int v = 0; v < kVecs1; ++v) {
          const V ac = load(m.ac.data() + (jv + v) * L);
          for (int r = 0; r < kRows1; ++r) {
            const V f = fv[r][v] + m.ar[r0 + r] + ac;
            // 1[s > 0] f via the bits b of s: (b − 1) | b has its top bit set exactly for +0 and
            // negative s (GCC scalarises a vector float comparison here).
            const U bits = (U)sv[r][v];
            const V w = (V)((U)f & ((((bits - 1u) | bits) >> 31) - 1u));
            float* rs = m.rs.data() + (r0 + r) * kMaxLanes;
            store(rs, load(rs) + w * sv[r][v]);
            store(m.w.data() + (r0 + r) * kWStride + (jv + v) * L, w);
          }
        }
      }
    }
  }

  template <int KB>
  static TSCD_INLINE void column_gradient_block(const Sweep& s, Scratch& m, int64_t rows_pad, int64_t j0,
                                                int64_t cols_pad) {
    const int64_t kp = s.kp;
    for (int64_t jv = 0; jv < cols_pad / L; jv += kVecs2)
      for (int64_t k0 = 0; k0 < kp; k0 += KB) {
        V acc[KB][kVecs2] = {};
        const float* __restrict xs = m.xs.data() + k0;
        for (int64_t i = 0; i < rows_pad; ++i) {
          V w[kVecs2];
          for (int v = 0; v < kVecs2; ++v) w[v] = load(m.w.data() + i * kWStride + (jv + v) * L);
          for (int kk = 0; kk < KB; ++kk)
            for (int v = 0; v < kVecs2; ++v) acc[kk][v] += xs[i * kp + kk] * w[v];
        }
        for (int kk = 0; kk < KB; ++kk)
          for (int v = 0; v < kVecs2; ++v) {
            float* g = m.gy.data() + (k0 + kk) * s.ny_pad + j0 + (jv + v) * L;
            store(g, load(g) + acc[kk][v]);
          }
      }
  }

  template <int KB>
  static TSCD_INLINE void row_gradient_block(const Sweep& s, Scratch& m, int64_t rows_pad, int64_t cols_pad) {
    const int64_t kp = s.kp;
    for (int64_t r0 = 0; r0 < rows_pad; r0 += kRows3)
      for (int64_t k0 = 0; k0 < kp; k0 += KB) {
        V acc[kRows3][KB] = {};
        for (int64_t jv = 0; jv < cols_pad / L; ++jv) {
          V w[kRows3];
          for (int r = 0; r < kRows3; ++r) w[r] = load(m.w.data() + (r0 + r) * kWStride + jv * L);
          const float* __restrict ys = m.ys.data() + (jv * kp + k0) * L;
          for (int kk = 0; kk < KB; ++kk) {
            const V y = load(ys + kk * L);
            for (int r = 0; r < kRows3; ++r) acc[r][kk] += w[r] * y;
          }
        }
        for (int r = 0; r < kRows3; ++r)
          for (int kk = 0; kk < KB; ++kk) {
            float* g = m.gx.data() + ((r0 + r) * kp + k0 + kk) * kMaxLanes;
            store(g, load(g) + acc[r][kk]);
          }
      }
  }

#define TSCD_CHANNEL_BLOCKS(call) \
  switch (s.kb) {                 \
    case 1: call(1); break;       \
    case 2: call(2); break;       \
    case 3: call(3); break;       \
    case 4: call(4); break;       \
    case 5: call(5); break;       \
    case 6: call(6); break;       \
    case 7: call(7); break;       \
    default: call(8); break;      \
  }

  // Micro-kernel 2: Σ_i w_ij x_i into the worker's (kp, ny_pad) buffer.
  static TSCD_INLINE void column_gradient(const Sweep& s, Scratch& m, int64_t rows_pad, int64_t j0,
                                          int64_t cols_pad) {
#define TSCD_COLUMN_BLOCK(KB) column_gradient_block<KB>(s, m, rows_pad, j0, cols_pad)
    TSCD_CHANNEL_BLOCKS(TSCD_COLUMN_BLOCK)
#undef TSCD_COLUMN_BLOCK
  }

  // Micro-kernel 3: Σ_j w_ij y_j of each row as per-lane partial sums (m.gx).
  static TSCD_INLINE void row_gradient(const Sweep& s, Scratch& m, int64_t rows_pad, int64_t cols_pad) {
#define TSCD_ROW_BLOCK(KB) row_gradient_block<KB>(s, m, rows_pad, cols_pad)
    TSCD_CHANNEL_BLOCKS(TSCD_ROW_BLOCK)
#undef TSCD_ROW_BLOCK
  }
#undef TSCD_CHANNEL_BLOCKS

  // The task's row sums and row gradients from the per-lane partial sums.
  static TSCD_INLINE void finish_rows(const Sweep& s, Scratch& m, int64_t b, int64_t i0, int64_t rows) {
    for (int64_t i = 0; i < rows; ++i) {
      const float* lanes = m.rs.data() + i * kMaxLanes;
      float sum = 0.f;
      for (int l = 0; l < L; ++l) sum += lanes[l];
      s.rowsum[b * s.nx + i0 + i] = sum;
    }
    if (!s.grad_x) return;
    for (int64_t i = 0; i < rows; ++i) {
      const float* x_hat = m.xs.data() + i * s.kp;
      float* gi = m.gx.data() + i * s.kp * kMaxLanes;
      float dot = 0.f;
      for (int64_t k = 0; k < s.K; ++k) {
        float sum = 0.f;
        for (int l = 0; l < L; ++l) sum += gi[k * kMaxLanes + l];
        gi[k] = sum;  // in place: slot k lies in the lanes of a channel ≤ k, already summed
        dot += x_hat[k] * sum;
      }
      const float inv = s.jacobian ? s.xs_scale[b * s.nx + i0 + i] : 1.f;
      const bool radial = s.jacobian && s.xs_norm[b * s.nx + i0 + i] >= tscd::scd::kEps;
      for (int64_t k = 0; k < s.K; ++k)
        s.gx[(b * s.K + k) * s.nx + i0 + i] = (radial ? gi[k] - x_hat[k] * dot : gi[k]) * inv;
    }
  }
};

void sweep(const Sweep& s) {
  const int64_t blocks = (s.nx + kRowBlock - 1) / kRowBlock;
  const int64_t work = s.B * s.nx * s.ny * (s.K * (1 + s.grad_x + s.grad_y) + s.C);
  const int64_t workers = tscd::cpu::worker_count(work, s.B * std::min(blocks, kStripes));
  const int64_t stripes = workers == 1 ? 1 : std::min(blocks, kStripes);
  StripeCommit commit;
  tscd::cpu::run_workers(workers, s.B * stripes, [&](const auto& claim) {
    try {
      Scratch m(s);
      for (int64_t unit = claim(); unit >= 0; unit = claim()) {
        const int64_t b = unit / stripes, stripe = unit % stripes;
        for (int64_t block = stripe * blocks / stripes; block < (stripe + 1) * blocks / stripes; ++block)
          tscd::cpu::run_native<Task>(&s, &m, b, block * kRowBlock);
        if (s.grad_y) commit.add(s, m, b, unit);
      }
    } catch (...) {
      commit.fail();
      throw;
    }
  });
}

// (B, channels, N) → (B, N) column norms.
at::Tensor column_norms(const at::Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  auto out = at::empty({B, N}, x.options());
  const float* src = x.data_ptr<float>();
  float* norm = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    float* n = norm + b * N;
    std::fill(n, n + N, 0.f);
    for (int64_t c = 0; c < C; ++c) {
      const float* row = src + (b * C + c) * N;
      for (int64_t i = 0; i < N; ++i) n[i] += row[i] * row[i];
    }
    for (int64_t i = 0; i < N; ++i) n[i] = std::sqrt(n[i]);
  }
  return out;
}

// 1 / max(norm, eps), the scale of each column.
at::Tensor inverse(const at::Tensor& norms) {
  auto out = at::empty_like(norms);
  const float* n = norms.data_ptr<float>();
  float* inv = out.data_ptr<float>();
  for (int64_t i = 0; i < norms.numel(); ++i) inv[i] = 1.f / std::max(n[i], tscd::scd::kEps);
  return out;
}

// The Jacobian of ŷ = y / max(‖y‖, eps) applied to the column gradients g (B, K, N) in place.
void column_jacobian(const at::Tensor& y, const at::Tensor& norms, const at::Tensor& scales, at::Tensor& g) {
  const int64_t B = y.size(0), K = y.size(1), N = y.size(2);
  const float* yp = y.data_ptr<float>();
  const float* np = norms.data_ptr<float>();
  float* gp = g.data_ptr<float>();
  std::vector<float> dot(N);
  for (int64_t b = 0; b < B; ++b) {
    const float* inv = scales.data_ptr<float>() + b * N;
    std::fill(dot.begin(), dot.end(), 0.f);
    for (int64_t k = 0; k < K; ++k) {
      const float* yr = yp + (b * K + k) * N;
      const float* gr = gp + (b * K + k) * N;
      for (int64_t j = 0; j < N; ++j) dot[j] += yr[j] * inv[j] * gr[j];
    }
    for (int64_t k = 0; k < K; ++k) {
      const float* yr = yp + (b * K + k) * N;
      float* gr = gp + (b * K + k) * N;
      for (int64_t j = 0; j < N; ++j) {
        const float radial = np[b * N + j] >= tscd::scd::kEps ? yr[j] * inv[j] * dot[j] : 0.f;
        gr[j] = (gr[j] - radial) * inv[j];
      }
    }
  }
}

Sweep make_sweep(const at::Tensor& xs, const at::Tensor& ys, const at::Tensor& xt, const at::Tensor& yt,
                 const at::Tensor& ar) {
  Sweep s{};
  s.xs = xs.data_ptr<float>();
  s.ys = ys.data_ptr<float>();
  s.xt = xt.data_ptr<float>();
  s.yt = yt.data_ptr<float>();
  s.ar = ar.data_ptr<float>();
  s.B = xs.size(0);
  s.K = xs.size(1);
  s.C = xt.size(1);
  s.nx = xs.size(2);
  s.ny = ys.size(2);
  s.kb = channel_block(s.K);
  s.kp = round_up(s.K, s.kb);
  s.ny_pad = round_up(s.ny, kTileCols) + 16;
  return s;
}

std::tuple<at::Tensor, at::Tensor> scd_pass_cpu(const at::Tensor& xs_in, const at::Tensor& ys_in,
                                                const at::Tensor& xt_in, const at::Tensor& yt_in,
                                                const at::Tensor& ar_in, const at::Tensor& ac_in, bool with_grad) {
  tscd::scd::check_args(xs_in, ys_in, xt_in, yt_in, ar_in, ac_in);
  const auto xs = xs_in.contiguous(), ys = ys_in.contiguous(), xt = xt_in.contiguous(), yt = yt_in.contiguous();
  const auto ar = ar_in.contiguous(), ac = ac_in.contiguous();
  const int64_t B = xs.size(0), K = xs.size(1), nx = xs.size(2);
  auto rowsum = at::empty({B, nx}, xs.options());
  auto grad = at::empty({B, K, with_grad ? nx : 0}, xs.options());
  if (rowsum.numel() == 0) return {rowsum, grad};
  Sweep s = make_sweep(xs, ys, xt, yt, ar);
  s.ac = ac.data_ptr<float>();
  s.grad_x = with_grad;
  s.rowsum = rowsum.data_ptr<float>();
  s.gx = grad.data_ptr<float>();
  sweep(s);
  return {rowsum, grad};
}

// a (B, N1): the offsets of the centred correspondence f_ij = t̂1_i · t̂2_j + a_i (method §6),
// a_i = mean_b(m1_b · m2_b) − t̂1_i · m2 with m_v the mean of view v's normalised columns.
at::Tensor teacher_offsets(const at::Tensor& t1, const at::Tensor& t2, const at::Tensor& t1_scale,
                           const at::Tensor& t2_scale) {
  const int64_t B = t1.size(0), C = t1.size(1), n1 = t1.size(2);
  std::vector<double> m1(B * C, 0.0), m2(B * C, 0.0);
  const auto column_means = [C](const at::Tensor& t, const at::Tensor& scale, int64_t b, double* m) {
    const int64_t n = t.size(2);
    const float* sc = scale.data_ptr<float>() + b * n;
    for (int64_t c = 0; c < C; ++c) {
      const float* row = t.data_ptr<float>() + (b * C + c) * n;
      double sum = 0.0;
      for (int64_t i = 0; i < n; ++i) sum += row[i] * sc[i];
      m[c] = sum / static_cast<double>(n);
    }
  };
  double batch_mean = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    column_means(t1, t1_scale, b, m1.data() + b * C);
    column_means(t2, t2_scale, b, m2.data() + b * C);
    for (int64_t c = 0; c < C; ++c) batch_mean += m1[b * C + c] * m2[b * C + c];
  }
  batch_mean /= static_cast<double>(B);
  auto a = at::empty({B, n1}, t1.options());
  std::vector<float> dot(n1);
  for (int64_t b = 0; b < B; ++b) {
    std::fill(dot.begin(), dot.end(), 0.f);
    for (int64_t c = 0; c < C; ++c) {
      const float* row = t1.data_ptr<float>() + (b * C + c) * n1;
      const float m = static_cast<float>(m2[b * C + c]);
      for (int64_t i = 0; i < n1; ++i) dot[i] += row[i] * m;
    }
    const float* sc = t1_scale.data_ptr<float>() + b * n1;
    float* out = a.data_ptr<float>() + b * n1;
    for (int64_t i = 0; i < n1; ++i) out[i] = static_cast<float>(batch_mean) - dot[i] * sc[i];
  }
  return a;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scd_fused_cpu(const at::Tensor& s1_in, const at::Tensor& s2_in,
                                                             const at::Tensor& t1_in, const at::Tensor& t2_in,
                                                             bool with_grad) {
  tscd::scd::check_fused_args(s1_in, s2_in, t1_in, t2_in);
  const auto s1 = s1_in.contiguous(), s2 = s2_in.contiguous(), t1 = t1_in.contiguous(), t2 = t2_in.contiguous();
  const int64_t B = s1.size(0), K = s1.size(1), n1 = s1.size(2), n2 = s2.size(2);
  auto rowsum = at::empty({B, n1}, s1.options());
  auto g1 = at::empty({B, K, with_grad ? n1 : 0}, s1.options());
  auto g2 = at::zeros({B, K, with_grad ? n2 : 0}, s1.options());
  if (rowsum.numel() == 0) return {rowsum, g1, g2};
  const auto s1_norm = column_norms(s1), s2_norm = column_norms(s2);
  const auto s1_scale = inverse(s1_norm), s2_scale = inverse(s2_norm);
  const auto t1_scale = inverse(column_norms(t1)), t2_scale = inverse(column_norms(t2));
  const auto a = teacher_offsets(t1, t2, t1_scale, t2_scale);
  Sweep s = make_sweep(s1, s2, t1, t2, a);
  s.xs_scale = s1_scale.data_ptr<float>();
  s.ys_scale = s2_scale.data_ptr<float>();
  s.xt_scale = t1_scale.data_ptr<float>();
  s.yt_scale = t2_scale.data_ptr<float>();
  s.xs_norm = s1_norm.data_ptr<float>();
  s.grad_x = s.grad_y = s.jacobian = with_grad;
  s.rowsum = rowsum.data_ptr<float>();
  s.gx = g1.data_ptr<float>();
  s.gy = g2.data_ptr<float>();
  sweep(s);
  if (with_grad) column_jacobian(s2, s2_norm, s2_scale, g2);
  return {rowsum, g1, g2};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tscd, m) {
  m.def(
      "scd_pass(Tensor xs, Tensor ys, Tensor xt, Tensor yt, Tensor ar, Tensor ac, bool with_grad) "
      "-> (Tensor, Tensor)");
  m.def("scd_fused(Tensor s1, Tensor s2, Tensor t1, Tensor t2, bool with_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tscd, CPU, m) {
  m.impl("scd_pass", &scd_pass_cpu);
  m.impl("scd_fused", &scd_fused_cpu);
}
