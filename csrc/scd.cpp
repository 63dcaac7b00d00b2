// Pairwise pass of the self-correspondence distillation loss (contract in scd.h): schema and
// CPU kernel.
//
// The inputs are packed into zero-padded row / panel layouts; at::parallel_for runs over
// (batch, group of kGroupRows rows), each group sweeping column tiles of kTileCols with a
// register micro-tile of rows × kPanel columns, in GCC vectors of the CPU's native width
// chosen at load time (tscd::cpu::run_native).
#include "scd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

// The vector helpers are always inlined into the per-ISA kernels, so no vector crosses an ABI
// boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

constexpr int64_t kPanel = 16;     // columns of Y in a micro-tile (the vectorised dimension)
constexpr int64_t kMaxRows = 4;    // rows of X in the widest micro-tile (register blocking)
constexpr int64_t kTileCols = 512; // columns of Y kept hot in cache while a group of rows sweeps them
constexpr int64_t kGroupRows = 64; // rows of X that share one sweep over a column tile

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

struct Batch {
  const float* xs;  // (Nx_pad, K) rows of X, row-major
  const float* xt;  // (Nx_pad, C)
  const float* ys;  // (Ny_pad / kPanel, K, kPanel) columns of Y in panels of kPanel
  const float* yt;  // (Ny_pad / kPanel, C, kPanel)
  const float* yrows;  // (Ny_pad, nk · kPanel) rows of ys, channels zero-padded
  const float* ar;     // (Nx_pad)
  const float* ac;     // (Ny_pad)
  int64_t K, C, nk;    // nk: channel chunks of kPanel in yrows
};

// Rows [r_begin, r_end) (a multiple of kMaxRows apart) against columns [j0, j1) (multiples of
// kPanel), kRows = kLanes / 4 rows at a time, each panel of kPanel columns as kVecs vectors of
// kLanes floats: 8 accumulators of s and f per micro-tile under every ISA (of 32 zmm, 16 ymm,
// 16 xmm). psum (rows, kPanel) holds per-lane partial row sums, reduced by the caller; pgrad
// (rows, nk, kPanel) the gradient sums of channels [c·kPanel, (c+1)·kPanel).
template <int kLanes>
struct MicroTiles {
  static constexpr int kRows = kLanes / 4;
  static constexpr int kVecs = kPanel / kLanes;
  static_assert(kMaxRows % kRows == 0 && kPanel % kLanes == 0);
  // Only float alignment is assumed, so std::vector storage and tensor data need no over-alignment.
  typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float)), aligned(alignof(float))));
  typedef uint32_t Bits __attribute__((vector_size(kLanes * sizeof(float)), aligned(alignof(float))));

  static TSCD_INLINE Lanes load(const float* p) {
    Lanes v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static TSCD_INLINE void store(float* p, const Lanes& v) { std::memcpy(p, &v, sizeof v); }

  static TSCD_INLINE void run(const Batch& d, int64_t r_begin, int64_t r_end, int64_t j0, int64_t j1, bool with_grad,
                              float* psum, float* pgrad) {
    for (int64_t r0 = r_begin; r0 < r_end; r0 += kRows)
      tile(d, r0, j0, j1, with_grad, psum + (r0 - r_begin) * kPanel, pgrad + (r0 - r_begin) * d.nk * kPanel);
  }

  static TSCD_INLINE void tile(const Batch& d, int64_t r0, int64_t j0, int64_t j1, bool with_grad,
                               float* __restrict psum, float* __restrict pgrad) {
    const int64_t K = d.K, C = d.C, nk = d.nk;
    const float* __restrict xs = d.xs + r0 * K;
    const float* __restrict xt = d.xt + r0 * C;
    float w[kRows][kTileCols];  // 1[s > 0] f of the tile
    for (int64_t j = j0; j < j1; j += kPanel) {
      Lanes s[kRows][kVecs] = {}, t[kRows][kVecs] = {};
      for (int64_t k = 0; k < K; ++k) {
        Lanes y[kVecs];
        for (int v = 0; v < kVecs; ++v) y[v] = load(d.ys + j * K + k * kPanel + v * kLanes);
        for (int r = 0; r < kRows; ++r)
          for (int v = 0; v < kVecs; ++v) s[r][v] += xs[r * K + k] * y[v];
      }
      for (int64_t c = 0; c < C; ++c) {
        Lanes y[kVecs];
        for (int v = 0; v < kVecs; ++v) y[v] = load(d.yt + j * C + c * kPanel + v * kLanes);
        for (int r = 0; r < kRows; ++r)
          for (int v = 0; v < kVecs; ++v) t[r][v] += xt[r * C + c] * y[v];
      }
      for (int v = 0; v < kVecs; ++v) {
        const Lanes ac = load(d.ac + j + v * kLanes);
        for (int r = 0; r < kRows; ++r) {
          const Lanes f = t[r][v] + d.ar[r0 + r] + ac;
          // 1[s > 0] f via the bits b of s: (b − 1) | b has its top bit set exactly for +0 and
          // negative s (GCC scalarises a vector float comparison here).
          const Bits b = (Bits)s[r][v];
          const Lanes wr = (Lanes)((Bits)f & ((((b - 1u) | b) >> 31) - 1u));
          float* sum = psum + r * kPanel + v * kLanes;
          store(sum, load(sum) + wr * s[r][v]);
          store(&w[r][j - j0 + v * kLanes], wr);
        }
      }
    }
    if (!with_grad) return;
    // Σ_j w[r][j] · ys_j with lanes over channels, once the whole tile's w is stored (reading
    // single floats of a vector just stored would stall on store forwarding).
    for (int64_t c = 0; c < nk; ++c) {
      Lanes g[kRows][kVecs] = {};
      for (int64_t j = j0; j < j1; ++j) {
        Lanes y[kVecs];
        for (int v = 0; v < kVecs; ++v) y[v] = load(d.yrows + (j * nk + c) * kPanel + v * kLanes);
        for (int r = 0; r < kRows; ++r)
          for (int v = 0; v < kVecs; ++v) g[r][v] += w[r][j - j0] * y[v];
      }
      for (int r = 0; r < kRows; ++r)
        for (int v = 0; v < kVecs; ++v) {
          float* grad = pgrad + (r * nk + c) * kPanel + v * kLanes;
          store(grad, load(grad) + g[r][v]);
        }
    }
  }
};

// x (C, N) → out (n_pad, c_pad), rows of channels; out is zero-initialised.
void pack_rows(const float* x, int64_t C, int64_t N, int64_t c_pad, float* out) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t n = 0; n < N; ++n) out[n * c_pad + c] = x[c * N + n];
}

// x (C, N) → out (n_pad / kPanel, C, kPanel): the kPanel-column vectors of all channels that a
// micro-tile reads lie next to each other (with a power-of-two N, (C, N) rows would map every
// channel's vector to the same cache set). out is zero-initialised.
void pack_panels(const float* x, int64_t C, int64_t N, float* out) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t n = 0; n < N; ++n) out[(n / kPanel * C + c) * kPanel + n % kPanel] = x[c * N + n];
}

// The inputs in the layouts the micro-tiles read, zero-padded to nx_pad rows and ny_pad
// columns (zero rows and columns have s = 0 and add nothing). Packed by plain serial loops:
// the work is O(N·C), and each extra parallel region would cost a wake-up of the pool.
struct Packed {
  int64_t K, C, nx_pad, ny_pad, nk;
  std::vector<float> xs, xt, ys, yt, yrows, ar, ac;

  Packed(const at::Tensor& xs_in, const at::Tensor& ys_in, const at::Tensor& xt_in, const at::Tensor& yt_in,
         const at::Tensor& ar_in, const at::Tensor& ac_in, bool with_grad)
      : K(xs_in.size(1)), C(xt_in.size(1)), nx_pad(round_up(xs_in.size(2), kMaxRows)),
        ny_pad(round_up(ys_in.size(2), kPanel)), nk((K + kPanel - 1) / kPanel) {
    const int64_t B = xs_in.size(0), nx = xs_in.size(2), ny = ys_in.size(2);
    xs.assign(B * nx_pad * K, 0.f);
    xt.assign(B * nx_pad * C, 0.f);
    ys.assign(B * ny_pad * K, 0.f);
    yt.assign(B * ny_pad * C, 0.f);
    yrows.assign(with_grad ? B * ny_pad * nk * kPanel : 0, 0.f);
    ar.assign(B * nx_pad, 0.f);
    ac.assign(B * ny_pad, 0.f);
    const auto xs_c = xs_in.contiguous(), ys_c = ys_in.contiguous(), xt_c = xt_in.contiguous();
    const auto yt_c = yt_in.contiguous(), ar_c = ar_in.contiguous(), ac_c = ac_in.contiguous();
    for (int64_t b = 0; b < B; ++b) {
      pack_rows(xs_c.data_ptr<float>() + b * K * nx, K, nx, K, xs.data() + b * nx_pad * K);
      pack_rows(xt_c.data_ptr<float>() + b * C * nx, C, nx, C, xt.data() + b * nx_pad * C);
      pack_panels(ys_c.data_ptr<float>() + b * K * ny, K, ny, ys.data() + b * ny_pad * K);
      pack_panels(yt_c.data_ptr<float>() + b * C * ny, C, ny, yt.data() + b * ny_pad * C);
      if (with_grad)
        pack_rows(ys_c.data_ptr<float>() + b * K * ny, K, ny, nk * kPanel, yrows.data() + b * ny_pad * nk * kPanel);
      std::copy_n(ar_c.data_ptr<float>() + b * nx, nx, ar.data() + b * nx_pad);
      std::copy_n(ac_c.data_ptr<float>() + b * ny, ny, ac.data() + b * ny_pad);
    }
  }

  Batch batch(int64_t b) const {
    const float* yr = yrows.empty() ? nullptr : yrows.data() + b * ny_pad * nk * kPanel;
    return {xs.data() + b * nx_pad * K, xt.data() + b * nx_pad * C, ys.data() + b * ny_pad * K,
            yt.data() + b * ny_pad * C, yr, ar.data() + b * nx_pad, ac.data() + b * ny_pad, K, C, nk};
  }
};

std::tuple<at::Tensor, at::Tensor> scd_pass_cpu(const at::Tensor& xs, const at::Tensor& ys, const at::Tensor& xt,
                                                const at::Tensor& yt, const at::Tensor& ar, const at::Tensor& ac,
                                                bool with_grad) {
  tscd::scd::check_args(xs, ys, xt, yt, ar, ac);
  const int64_t B = xs.size(0), K = xs.size(1), nx = xs.size(2);
  const Packed packed(xs, ys, xt, yt, ar, ac, with_grad);
  const int64_t nk = packed.nk, ny_pad = packed.ny_pad;
  auto rowsum = at::empty({B, nx}, xs.options());
  auto grad = at::empty({B, K, with_grad ? nx : 0}, xs.options());
  float* const out_sum = rowsum.data_ptr<float>();
  float* const out_grad = grad.data_ptr<float>();

  const int64_t groups = (nx + kGroupRows - 1) / kGroupRows;
  at::parallel_for(0, B * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> psum(kGroupRows * kPanel), pgrad(kGroupRows * nk * kPanel);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / groups, g0 = (task % groups) * kGroupRows;
      const int64_t g1 = std::min(g0 + kGroupRows, packed.nx_pad);
      const Batch d = packed.batch(b);
      std::fill(psum.begin(), psum.end(), 0.f);
      std::fill(pgrad.begin(), pgrad.end(), 0.f);
      for (int64_t j0 = 0; j0 < ny_pad; j0 += kTileCols) {
        const int64_t j1 = std::min(j0 + kTileCols, ny_pad);
        tscd::cpu::run_native<MicroTiles>(d, g0, g1, j0, j1, with_grad, psum.data(), pgrad.data());
      }
      for (int64_t r = g0; r < std::min(g1, nx); ++r) {
        const float* lanes = psum.data() + (r - g0) * kPanel;
        out_sum[b * nx + r] = std::accumulate(lanes, lanes + kPanel, 0.f);
        if (!with_grad) continue;
        for (int64_t k = 0; k < K; ++k) out_grad[(b * K + k) * nx + r] = pgrad[(r - g0) * nk * kPanel + k];
      }
    }
  });
  return {rowsum, grad};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tscd, m) {
  m.def(
      "scd_pass(Tensor xs, Tensor ys, Tensor xt, Tensor yt, Tensor ar, Tensor ac, bool with_grad) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tscd, CPU, m) { m.impl("scd_pass", &scd_pass_cpu); }
