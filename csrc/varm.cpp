// Variation-aware refinement (VARM) and PAR (contract in varm.h): schemas and CPU kernels.
//
// Both kernels read neighbours through a RowRing: edge-padded copies of the rows within reach of
// the rows being computed, so that every neighbour's row is one contiguous, branch-free slice and
// each source row is copied once per pass. Their inner loops run on GCC vectors of the CPU's
// native width (tscd::cpu::run_native); the work is split over tasks claimed by one worker per
// thread (tscd::cpu::run_workers).
//
// - varm_affinity: tasks of (image, band of rows); per vector of columns, the N neighbours of
//   each colour channel, their deviation, the two logit sets and their softmax (a vectorised
//   exp) in registers and an L1 buffer.
// - varm_refine_ (CPU only): the weights in a blocked layout, (B, H, W / kBlock, N, kBlock), so
//   that the N weights of a block of columns are contiguous, then every iteration in place on
//   the masks: tasks of (image, chunk of channels) sweep the rows in order with a ring of the
//   rows within reach, so a computed row can be written back at once (the rows it was computed
//   from are in the ring), without a copy of the whole masks.
// - varm_propagate_: one such step from src into out (its planar weights are first blocked).
#include "varm.h"

#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// The vector helpers are always inlined into the per-ISA kernels, so no vector crosses an ABI
// boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

using tscd::varm::kRing;

constexpr int64_t kMaxLanes = 16;
constexpr int64_t kBlock = 32;  // columns per block of the blocked weights: a multiple of two vectors of any width
constexpr int64_t kBandRows = 8;  // rows per affinity task

inline int64_t clamp_index(int64_t i, int64_t n) { return std::min(std::max(i, int64_t{0}), n - 1); }
inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Neighbour displacements (d·dy, d·dx) of checked dilations, dilation-major; the column shifts
// clamped to ±W (a shift of W or more clamps every column to the same edge as W does).
struct Offsets {
  std::vector<int64_t> dy, dx;
  int64_t reach = 0, pad = 0;  // the largest |dy| (at most H − 1) and |dx|
  Offsets(const at::Tensor& dilations, int64_t H, int64_t W) {
    auto d = dilations.contiguous();
    for (int64_t l = 0; l < d.numel(); ++l) {
      for (int o = 0; o < kRing; ++o) {
        dy.push_back(int64_t{d.data_ptr<int>()[l]} * tscd::varm::ring_dy(o));
        dx.push_back(std::clamp(int64_t{d.data_ptr<int>()[l]} * tscd::varm::ring_dx(o), -W, W));
        reach = std::max(reach, std::min(std::abs(dy.back()), H - 1));
        pad = std::max(pad, std::abs(dx.back()));
      }
    }
  }
  int64_t size() const { return static_cast<int64_t>(dy.size()); }
};

// Edge-padded copies of rows of `channels` planes (H, W), row r in slot r mod rows: rows r and
// r + rows never coexist. A row's copy holds column clamp(x) at x ∈ [−pad, W + pad + slack),
// where the slack makes a whole last vector readable.
struct RowRing {
  int64_t channels, H, W, pad, rows, width;
  std::vector<float> data;

  RowRing(int64_t channels_, int64_t H_, int64_t W_, int64_t pad_, int64_t span)
      : channels(channels_), H(H_), W(W_), pad(pad_), rows(std::min(span, H_)),
        width(round_up(W_, kMaxLanes) + 2 * pad_), data(channels_ * rows * width) {}

  // Copies row r of the planes (channel c at planes + c · plane_stride).
  void load(const float* planes, int64_t plane_stride, int64_t r) {
    for (int64_t c = 0; c < channels; ++c) {
      const float* src = planes + c * plane_stride + r * W;
      float* dst = data.data() + (c * rows + r % rows) * width;
      std::fill_n(dst, pad, src[0]);
      std::copy_n(src, W, dst + pad);
      std::fill(dst + pad + W, dst + width, src[W - 1]);
    }
  }
  // Column 0 of row r (clamped by the caller) of channel c.
  const float* row(int64_t c, int64_t r) const { return data.data() + (c * rows + r % rows) * width + pad; }
  int64_t plane() const { return rows * width; }
};

// Where the weights go: weight n of pixel (y, x) of image b at b · image_stride + y · row_stride +
// (x / kBlock) · block_stride + n · n_stride + x % kBlock. Planar (B, N, H, W): image N·H·W, row
// W, block kBlock, n H·W; blocked (B, H, ⌈W / kBlock⌉, N, kBlock): image H·row, row
// ⌈W / kBlock⌉·N·kBlock, block N·kBlock, n kBlock.
struct Layout {
  int64_t image_stride, row_stride, block_stride, n_stride;
  bool planar;

  static Layout make_planar(int64_t N, int64_t H, int64_t W) { return {N * H * W, W, kBlock, H * W, true}; }
  static Layout make_blocked(int64_t N, int64_t H, int64_t W) {
    const int64_t row = (W + kBlock - 1) / kBlock * N * kBlock;
    return {H * row, row, N * kBlock, kBlock, false};
  }
};

struct Affinity {
  const Offsets* off;
  const float* pos;
  float scale, variation_weight;
  bool variation;
  int64_t N, H, W;
  Layout layout;
};

// One row of weights, in vectors of L columns.
template <int L>
struct AffinityRow {
  typedef float V __attribute__((vector_size(L * sizeof(float)), aligned(alignof(float))));
  typedef int32_t I __attribute__((vector_size(L * sizeof(float)), aligned(alignof(float))));

  static TSCD_INLINE V load(const float* p) { return tscd::cpu::load_lanes<L>(p); }
  static TSCD_INLINE void store(float* p, const V& v) { tscd::cpu::store_lanes<L>(p, v); }
  static TSCD_INLINE V abs(const V& v) { return (V)((I)v & 0x7fffffff); }
  static TSCD_INLINE V max(const V& a, const V& b) { return (V)(((I)a & (I)(a >= b)) | ((I)b & ~(I)(a >= b))); }

  // In place over rows[n] (n < N): softmax over n.
  static TSCD_INLINE void softmax(V* rows, int64_t N) {
    V top = rows[0];
    for (int64_t n = 1; n < N; ++n) top = max(top, rows[n]);
    V sum{};
    for (int64_t n = 0; n < N; ++n) {
      rows[n] = tscd::cpu::exp_nonpositive<L>(rows[n] - top);
      sum += rows[n];
    }
    const V inv = 1.f / sum;
    for (int64_t n = 0; n < N; ++n) rows[n] *= inv;
  }

  // Row y of weights into out (the row's start in the layout). ring: image rows within reach
  // of y and y + 1; buffer: 5 · N · kMaxLanes floats.
  static TSCD_INLINE void run(const Affinity* ap, const RowRing* ring, int64_t y, float* out, float* buffer) {
    const Affinity& a = *ap;
    const int64_t N = a.N, W = a.W, y_down = std::min(y + 1, a.H - 1);
    V* J = reinterpret_cast<V*>(buffer);  // (3, N): the neighbours of each channel
    V* logits = J + 3 * N;                // a_n
    V* variations = logits + N;           // v_n
    int32_t lanes[L];
    for (int l = 0; l < L; ++l) lanes[l] = l;
    I lane;
    std::memcpy(&lane, lanes, sizeof lane);
    for (int64_t x0 = 0; x0 < W; x0 += L) {
      for (int64_t n = 0; n < N; ++n) logits[n] = variations[n] = V{};
      const I at_end = (lane + static_cast<int32_t>(x0)) == static_cast<int32_t>(W - 1);
      for (int64_t c = 0; c < 3; ++c) {
        V* Jc = J + c * N;
        V mean{};
        for (int64_t n = 0; n < N; ++n) {
          Jc[n] = load(ring->row(c, clamp_index(y + a.off->dy[n], a.H)) + a.off->dx[n] + x0);
          mean += Jc[n];
        }
        mean /= static_cast<float>(N);
        V var{};
        for (int64_t n = 0; n < N; ++n) {
          const V dev = Jc[n] - mean;
          var += dev * dev;
        }
        float deviation[L];
        std::memcpy(deviation, &var, sizeof var);
        for (int l = 0; l < L; ++l) deviation[l] = a.scale / (std::sqrt(deviation[l] / static_cast<float>(N - 1)) + 1e-8f);
        const V inv = load(deviation);
        const V centre = load(ring->row(c, y) + x0);
        for (int64_t n = 0; n < N; ++n) {
          const V t = abs(Jc[n] - centre) * inv;
          logits[n] -= t * t;
        }
        if (!a.variation) continue;
        for (int64_t n = 0; n < N; ++n) {
          const float* row = ring->row(c, clamp_index(y + a.off->dy[n], a.H)) + a.off->dx[n] + x0;
          const V down = load(ring->row(c, clamp_index(y_down + a.off->dy[n], a.H)) + a.off->dx[n] + x0);
          // the right neighbour of the shifted row, clamped at its last column (x = W − 1)
          const V right = (V)(((I)Jc[n] & at_end) | ((I)load(row + 1) & ~at_end));
          const V dd = Jc[n] - down, dr = Jc[n] - right;
          variations[n] += dd * dd + dr * dr;
        }
      }
      for (int64_t n = 0; n < N; ++n) logits[n] /= 3.f;
      softmax(logits, N);
      if (a.variation) {
        for (int64_t n = 0; n < N; ++n) variations[n] /= 3.f;
        softmax(variations, N);
      }
      // Planar rows end at W; a block has room for a whole vector.
      const int64_t count = a.layout.planar ? std::min<int64_t>(L, W - x0) : L;
      float* dst = out + x0 / kBlock * a.layout.block_stride + x0 % kBlock;
      for (int64_t n = 0; n < N; ++n) {
        V w = logits[n] + a.pos[n];
        if (a.variation) w -= a.variation_weight * variations[n];
        if (count == L)
          store(dst + n * a.layout.n_stride, w);
        else
          std::memcpy(dst + n * a.layout.n_stride, &w, count * sizeof(float));
      }
    }
  }
};

// The weights of every image (B, 3, H, W) into out, in a.layout.
void affinity(const Affinity& a, const at::Tensor& images, float* out) {
  const int64_t B = images.size(0), H = a.H, W = a.W, hw = H * W;
  const float* img = images.data_ptr<float>();
  const int64_t bands = (H + kBandRows - 1) / kBandRows, tasks = B * bands;
  const int64_t work = B * hw * a.N * (a.variation ? 40 : 20);
  tscd::cpu::run_workers(tscd::cpu::worker_count(work, tasks), tasks, [&](const auto& claim) {
    RowRing ring(3, H, W, a.off->pad, 2 * a.off->reach + 2);
    std::vector<float> buffer(5 * a.N * kMaxLanes);
    for (int64_t t = claim(); t >= 0; t = claim()) {
      const int64_t b = t / bands, y0 = (t % bands) * kBandRows, y1 = std::min(H, y0 + kBandRows);
      const float* planes = img + b * 3 * hw;
      // the ring holds rows [y − reach, y + 1 + reach] for y in [y0, y1)
      for (int64_t r = std::max<int64_t>(0, y0 - a.off->reach); r < std::min(H, y0 + a.off->reach + 1); ++r)
        ring.load(planes, hw, r);
      for (int64_t y = y0; y < y1; ++y) {
        if (y + 1 + a.off->reach < H) ring.load(planes, hw, y + 1 + a.off->reach);
        float* row = out + b * a.layout.image_stride + y * a.layout.row_stride;
        tscd::cpu::run_native<AffinityRow>(&a, static_cast<const RowRing*>(&ring), y, row, buffer.data());
      }
    }
  });
}

Affinity make_affinity(const Offsets& off, const at::Tensor& images, double intensity_scale, double variation_weight,
                       const at::Tensor& position_term, Layout layout) {
  return {&off,
          position_term.data_ptr<float>(),
          static_cast<float>(intensity_scale),
          static_cast<float>(variation_weight),
          variation_weight != 0.0,
          off.size(),
          images.size(2),
          images.size(3),
          layout};
}

at::Tensor affinity_cpu(const at::Tensor& images, const at::Tensor& dilations, double intensity_scale,
                        double variation_weight, const at::Tensor& position_term) {
  tscd::varm::check_affinity_args(images, dilations, position_term);
  const int64_t B = images.size(0), H = images.size(2), W = images.size(3);
  const Offsets off(dilations, H, W);
  auto out = at::empty({B, off.size(), H, W}, images.options());
  if (out.numel() == 0) return out;
  const auto pos = position_term.contiguous();
  const Affinity a = make_affinity(off, images, intensity_scale, variation_weight, pos,
                                   Layout::make_planar(off.size(), H, W));
  affinity(a, images, out.data_ptr<float>());
  return out;
}

struct Propagation {
  const float* weights;  // blocked: (B, H, blocks, N, kBlock)
  const Offsets* off;
  int64_t B, K, H, W, N, blocks;
};

// One row of output for a chunk of channels from the ring, in vectors of L columns.
template <int L>
struct PropagateRow {
  static constexpr int kVecs = 2;         // vectors of columns per micro-tile
  static constexpr int kMaxChannels = 4;  // channels per micro-tile
  typedef float V __attribute__((vector_size(L * sizeof(float)), aligned(alignof(float))));

  static TSCD_INLINE V load(const float* p) { return tscd::cpu::load_lanes<L>(p); }

  // Columns [x0, x0 + XV·L) (the first `count` of them stored) of KC channels, the first one
  // `offset` floats into the ring rows: Σ_n w_n · (neighbour n's shifted row).
  template <int KC, int XV>
  static TSCD_INLINE void tile(const Propagation& p, const float* const* rows, int64_t offset, int64_t plane,
                               const float* w, int64_t x0, int64_t count, float* out) {
    const int64_t hw = p.H * p.W;
    V acc[KC][XV] = {};
    for (int64_t n = 0; n < p.N; ++n) {
      V wv[XV];
      for (int v = 0; v < XV; ++v) wv[v] = load(w + n * kBlock + v * L);
      const float* src = rows[n] + offset + x0;
      for (int c = 0; c < KC; ++c)
        for (int v = 0; v < XV; ++v) acc[c][v] += wv[v] * load(src + c * plane + v * L);
    }
    for (int c = 0; c < KC; ++c) std::memcpy(out + c * hw + x0, acc[c], count * sizeof(float));
  }

  // Columns [0, W) of KC channels, the first `offset` floats into the ring rows: the neighbours'
  // rows stream left to right through L1, each read by XV·L-column steps that overlap.
  template <int KC>
  static TSCD_INLINE void channels(const Propagation& p, const float* const* rows, int64_t offset, int64_t plane,
                                   const float* w, float* out) {
    const auto block = [&](int64_t x0) { return w + x0 / kBlock * p.N * kBlock + x0 % kBlock; };
    int64_t x0 = 0;
    for (; x0 + kVecs * L <= p.W; x0 += kVecs * L) tile<KC, kVecs>(p, rows, offset, plane, block(x0), x0, kVecs * L, out);
    for (; x0 < p.W; x0 += L) tile<KC, 1>(p, rows, offset, plane, block(x0), x0, std::min<int64_t>(L, p.W - x0), out);
  }

  // rows[n]: neighbour n's shifted ring row of the chunk's first channel (channel c at + c · plane);
  // w: the row's blocked weights; out: the output row of the chunk's first channel (channel c at
  // + c · H · W). A last partial vector reads the ring's slack and the block's spare columns.
  static TSCD_INLINE void run(const Propagation* pp, const float* const* rows, int64_t plane, const float* w,
                              int64_t kc, float* out) {
    const Propagation& p = *pp;
    const int64_t hw = p.H * p.W;
    for (int64_t c = 0; c < kc; c += kMaxChannels) {
      switch (std::min<int64_t>(kMaxChannels, kc - c)) {
        case 1: channels<1>(p, rows, c * plane, plane, w, out + c * hw); break;
        case 2: channels<2>(p, rows, c * plane, plane, w, out + c * hw); break;
        case 3: channels<3>(p, rows, c * plane, plane, w, out + c * hw); break;
        default: channels<4>(p, rows, c * plane, plane, w, out + c * hw); break;
      }
    }
  }
};

// `iterations` steps of channels [k0, k0 + kc) of image b from src into dst (src == dst: in place;
// otherwise the first step reads src and the later ones dst).
void propagate_chunk(const Propagation& p, const float* src, float* dst, int64_t b, int64_t k0, int64_t kc,
                     int64_t iterations, RowRing& ring, std::vector<const float*>& rows) {
  const int64_t hw = p.H * p.W, reach = p.off->reach;
  for (int64_t it = 0; it < iterations; ++it) {
    const float* from = (it == 0 ? src : dst) + (b * p.K + k0) * hw;
    float* to = dst + (b * p.K + k0) * hw;
    for (int64_t r = 0; r < reach; ++r) ring.load(from, hw, r);
    for (int64_t y = 0; y < p.H; ++y) {
      if (y + reach < p.H) ring.load(from, hw, y + reach);
      for (int64_t n = 0; n < p.N; ++n) rows[n] = ring.row(0, clamp_index(y + p.off->dy[n], p.H)) + p.off->dx[n];
      const float* w = p.weights + (b * p.H + y) * p.blocks * p.N * kBlock;
      tscd::cpu::run_native<PropagateRow>(&p, static_cast<const float* const*>(rows.data()), ring.plane(), w, kc,
                                          to + y * p.W);
    }
  }
}

// All channels of all images, `iterations` steps from src into dst (possibly the same buffer).
void propagate(const Propagation& p, const float* src, float* dst, int64_t iterations) {
  const int64_t work = iterations * p.B * p.K * p.H * p.W * p.N;
  const int64_t workers = tscd::cpu::worker_count(work, p.B * p.K);
  // Each chunk streams its image's weights once per step: as few chunks as keep the workers busy.
  const int64_t chunks = std::min(p.K, (workers + p.B - 1) / p.B);
  const int64_t per_chunk = (p.K + chunks - 1) / chunks;
  tscd::cpu::run_workers(workers, p.B * chunks, [&](const auto& claim) {
    RowRing ring(per_chunk, p.H, p.W, p.off->pad, 2 * p.off->reach + 1);
    std::vector<const float*> rows(p.N);
    for (int64_t t = claim(); t >= 0; t = claim()) {
      const int64_t b = t / chunks, k0 = (t % chunks) * per_chunk;
      if (k0 >= p.K) continue;
      ring.channels = std::min(per_chunk, p.K - k0);
      propagate_chunk(p, src, dst, b, k0, ring.channels, iterations, ring, rows);
    }
  });
}

// Planar weights (B, N, H, W) in the blocked layout.
at::Tensor blocked_weights(const at::Tensor& weights) {
  const int64_t B = weights.size(0), N = weights.size(1), H = weights.size(2), W = weights.size(3);
  const Layout layout = Layout::make_blocked(N, H, W);
  auto out = at::zeros({B * layout.image_stride}, weights.options());
  const float* src = weights.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x)
          dst[b * layout.image_stride + y * layout.row_stride + x / kBlock * layout.block_stride + n * layout.n_stride +
              x % kBlock] = src[((b * N + n) * H + y) * W + x];
  return out;
}

void propagate_cpu(const at::Tensor& src, const at::Tensor& weights, const at::Tensor& dilations, at::Tensor out) {
  tscd::varm::check_propagate_args(src, weights, dilations, out);
  if (out.numel() == 0) return;
  const int64_t H = src.size(2), W = src.size(3);
  const Offsets off(dilations, H, W);
  const auto blocked = blocked_weights(weights);
  const Propagation p{blocked.data_ptr<float>(), &off, src.size(0), src.size(1), H, W, off.size(),
                      (W + kBlock - 1) / kBlock};
  propagate(p, src.data_ptr<float>(), out.data_ptr<float>(), 1);
}

void refine_cpu(at::Tensor masks, const at::Tensor& images, const at::Tensor& dilations, double intensity_scale,
                double variation_weight, const at::Tensor& position_term, int64_t num_iter) {
  tscd::varm::check_refine_args(masks, images, dilations, position_term);
  TORCH_CHECK(num_iter >= 0, "num_iter must be non-negative, got ", num_iter);
  if (masks.numel() == 0 || num_iter == 0) return;
  const int64_t B = images.size(0), H = images.size(2), W = images.size(3);
  const Offsets off(dilations, H, W);
  const auto pos = position_term.contiguous();
  const Layout layout = Layout::make_blocked(off.size(), H, W);
  const Affinity a = make_affinity(off, images, intensity_scale, variation_weight, pos, layout);
  auto weights = at::empty({B * layout.image_stride}, images.options());
  affinity(a, images, weights.data_ptr<float>());
  const Propagation p{weights.data_ptr<float>(), &off, B, masks.size(1), H, W, off.size(), (W + kBlock - 1) / kBlock};
  float* x = masks.data_ptr<float>();
  propagate(p, x, x, num_iter);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tscd, m) {
  m.def(
      "varm_affinity(Tensor images, Tensor dilations, float intensity_scale, float variation_weight, "
      "Tensor position_term) -> Tensor");
  m.def("varm_propagate_(Tensor src, Tensor weights, Tensor dilations, Tensor(a!) out) -> ()");
  m.def(
      "varm_refine_(Tensor(a!) masks, Tensor images, Tensor dilations, float intensity_scale, "
      "float variation_weight, Tensor position_term, int num_iter) -> ()");
}

TORCH_LIBRARY_IMPL(tscd, CPU, m) {
  m.impl("varm_affinity", &affinity_cpu);
  m.impl("varm_propagate_", &propagate_cpu);
  m.impl("varm_refine_", &refine_cpu);
}
