// Pairwise pass of the self-correspondence distillation loss (contract in scd.h): schema and
// CPU kernel.
//
// The inputs are packed into zero-padded row / panel layouts; at::parallel_for runs over
// (batch, group of kGroupRows rows), each group sweeping column tiles of kTileCols with a
// kRows × kLanes register micro-tile, whose loop is compiled for AVX-512, AVX2 and baseline
// x86-64, chosen at load time (TSCD_ISA_CLONES).
#include "scd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kRows = 4;       // rows of X in a micro-tile (register blocking)
constexpr int64_t kLanes = 16;     // columns of Y in a micro-tile (the vectorised dimension)
constexpr int64_t kTileCols = 512; // columns of Y kept hot in cache while a group of rows sweeps them
constexpr int64_t kGroupRows = 64; // rows of X that share one sweep over a column tile

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

struct Batch {
  const float* xs;  // (Nx_pad, K) rows of X, row-major
  const float* xt;  // (Nx_pad, C)
  const float* ys;  // (Ny_pad / kLanes, K, kLanes) columns of Y in panels of kLanes
  const float* yt;  // (Ny_pad / kLanes, C, kLanes)
  const float* yrows;  // (Ny_pad, nk · kLanes) rows of ys, channels zero-padded
  const float* ar;     // (Nx_pad)
  const float* ac;     // (Ny_pad)
  int64_t K, C, nk;    // nk: channel chunks of kLanes in yrows
};

// kLanes floats as one GCC/Clang vector: each clone lowers it to its widest registers. Only
// float alignment is assumed, so std::vector storage and tensor data need no over-alignment.
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float)), aligned(alignof(float))));
typedef uint32_t Bits __attribute__((vector_size(kLanes * sizeof(float)), aligned(alignof(float))));

inline void load(Lanes& v, const float* p) { std::memcpy(&v, p, sizeof v); }

// Rows [r0, r0 + kRows) against columns [j0, j1) (multiples of kLanes). psum (kRows) holds
// per-lane partial row sums, reduced by the caller; pgrad (kRows, nk) the gradient sums of
// channels [c·kLanes, (c+1)·kLanes).
TSCD_ISA_CLONES void micro_tiles(const Batch& d, int64_t r0, int64_t j0, int64_t j1, bool with_grad,
                                 Lanes* __restrict psum, Lanes* __restrict pgrad) {
  const int64_t K = d.K, C = d.C, nk = d.nk;
  const float* __restrict xs = d.xs + r0 * K;
  const float* __restrict xt = d.xt + r0 * C;
  float w[kRows][kTileCols];  // 1[s > 0] f of the tile
  for (int64_t j = j0; j < j1; j += kLanes) {
    Lanes s[kRows] = {}, t[kRows] = {};
    for (int64_t k = 0; k < K; ++k) {
      Lanes y;
      load(y, d.ys + j * K + k * kLanes);
      for (int64_t r = 0; r < kRows; ++r) s[r] += xs[r * K + k] * y;
    }
    for (int64_t c = 0; c < C; ++c) {
      Lanes y;
      load(y, d.yt + j * C + c * kLanes);
      for (int64_t r = 0; r < kRows; ++r) t[r] += xt[r * C + c] * y;
    }
    Lanes ac;
    load(ac, d.ac + j);
    for (int64_t r = 0; r < kRows; ++r) {
      const Lanes f = t[r] + d.ar[r0 + r] + ac;
      // 1[s > 0] f via the bits b of s: (b − 1) | b has its top bit set exactly for +0 and
      // negative s (GCC scalarises a vector float comparison here).
      const Bits b = (Bits)s[r];
      const Lanes wr = (Lanes)((Bits)f & ((((b - 1u) | b) >> 31) - 1u));
      psum[r] += wr * s[r];
      std::memcpy(&w[r][j - j0], &wr, sizeof wr);
    }
  }
  if (!with_grad) return;
  // Σ_j w[r][j] · ys_j with lanes over channels, once the whole tile's w is stored (reading
  // single floats of a vector just stored would stall on store forwarding).
  for (int64_t c = 0; c < nk; ++c) {
    Lanes g[kRows] = {};
    for (int64_t j = j0; j < j1; ++j) {
      Lanes y;
      load(y, d.yrows + (j * nk + c) * kLanes);
      for (int64_t r = 0; r < kRows; ++r) g[r] += w[r][j - j0] * y;
    }
    for (int64_t r = 0; r < kRows; ++r) pgrad[r * nk + c] += g[r];
  }
}

float lane_sum(const Lanes& v) {
  float total = 0.f;
  for (int64_t l = 0; l < kLanes; ++l) total += v[l];
  return total;
}

// x (C, N) → out (n_pad, c_pad), rows of channels; out is zero-initialised.
void pack_rows(const float* x, int64_t C, int64_t N, int64_t c_pad, float* out) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t n = 0; n < N; ++n) out[n * c_pad + c] = x[c * N + n];
}

// x (C, N) → out (n_pad / kLanes, C, kLanes): the kLanes-column vectors of all channels that a
// micro-tile reads lie next to each other (with a power-of-two N, (C, N) rows would map every
// channel's vector to the same cache set). out is zero-initialised.
void pack_panels(const float* x, int64_t C, int64_t N, float* out) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t n = 0; n < N; ++n) out[(n / kLanes * C + c) * kLanes + n % kLanes] = x[c * N + n];
}

// The inputs in the layouts the micro-tiles read, zero-padded to nx_pad rows and ny_pad
// columns (zero rows and columns have s = 0 and add nothing). Packed by plain serial loops:
// the work is O(N·C), and each extra parallel region would cost a wake-up of the pool.
struct Packed {
  int64_t K, C, nx_pad, ny_pad, nk;
  std::vector<float> xs, xt, ys, yt, yrows, ar, ac;

  Packed(const at::Tensor& xs_in, const at::Tensor& ys_in, const at::Tensor& xt_in, const at::Tensor& yt_in,
         const at::Tensor& ar_in, const at::Tensor& ac_in, bool with_grad)
      : K(xs_in.size(1)), C(xt_in.size(1)), nx_pad(round_up(xs_in.size(2), kRows)),
        ny_pad(round_up(ys_in.size(2), kLanes)), nk((K + kLanes - 1) / kLanes) {
    const int64_t B = xs_in.size(0), nx = xs_in.size(2), ny = ys_in.size(2);
    xs.assign(B * nx_pad * K, 0.f);
    xt.assign(B * nx_pad * C, 0.f);
    ys.assign(B * ny_pad * K, 0.f);
    yt.assign(B * ny_pad * C, 0.f);
    yrows.assign(with_grad ? B * ny_pad * nk * kLanes : 0, 0.f);
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
        pack_rows(ys_c.data_ptr<float>() + b * K * ny, K, ny, nk * kLanes, yrows.data() + b * ny_pad * nk * kLanes);
      std::copy_n(ar_c.data_ptr<float>() + b * nx, nx, ar.data() + b * nx_pad);
      std::copy_n(ac_c.data_ptr<float>() + b * ny, ny, ac.data() + b * ny_pad);
    }
  }

  Batch batch(int64_t b) const {
    const float* yr = yrows.empty() ? nullptr : yrows.data() + b * ny_pad * nk * kLanes;
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
    std::vector<float> psum_buf(kGroupRows * kLanes), pgrad_buf(kGroupRows * nk * kLanes);
    Lanes* psum = reinterpret_cast<Lanes*>(psum_buf.data());
    Lanes* pgrad = reinterpret_cast<Lanes*>(pgrad_buf.data());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / groups, g0 = (task % groups) * kGroupRows;
      const int64_t g1 = std::min(g0 + kGroupRows, packed.nx_pad);
      const Batch d = packed.batch(b);
      std::fill(psum_buf.begin(), psum_buf.end(), 0.f);
      std::fill(pgrad_buf.begin(), pgrad_buf.end(), 0.f);
      for (int64_t j0 = 0; j0 < ny_pad; j0 += kTileCols) {
        const int64_t j1 = std::min(j0 + kTileCols, ny_pad);
        for (int64_t r0 = g0; r0 < g1; r0 += kRows)
          micro_tiles(d, r0, j0, j1, with_grad, psum + (r0 - g0), pgrad + (r0 - g0) * nk);
      }
      for (int64_t r = g0; r < std::min(g1, nx); ++r) {
        out_sum[b * nx + r] = lane_sum(psum[r - g0]);
        if (!with_grad) continue;
        for (int64_t k = 0; k < K; ++k) out_grad[(b * K + k) * nx + r] = pgrad_buf[(r - g0) * nk * kLanes + k];
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
