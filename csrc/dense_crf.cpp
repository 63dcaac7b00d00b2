// Dense CRF mean-field inference on the permutohedral lattice (lattice.h), fused into one operator:
//
//   tscd_lattice::dense_crf_mean_field(probs (B,K,N), smooth_feats (B,Ds,N), appearance_feats (B,Da,N),
//                                      smooth_weight, appearance_weight, num_iter) -> Q (B,K,N)
//
// float32, the features as tscd.ops.gaussian's position_features / bilateral_features make them
// (coordinates and colours divided by their σ, 1 ≤ D ≤ 8). With U = log(max(probs, 1e-5)), L_s,
// L_a the lattice filters of the two feature sets (pydensecrf's, lattice.h) and n = (L·1)^(−1/2)
// their symmetric normalisers:
//   Q ← softmax_k(U + w_s n_s ⊙ L_s(n_s ⊙ Q) + w_a n_a ⊙ L_a(n_a ⊙ Q)),
// num_iter times from Q = softmax_k(U): pydensecrf's DenseCRF2D mean field with Potts
// compatibility (tscd/ops/dense_crf.py).
//
// One image at a time, in one parallel region (OpenMP, torch's thread count; one thread for small
// images) whose phases (tscd::cpu::Phases) hand out tasks one at a time: the two lattices are built
// and their normalisers filtered one per thread while the others compute U; then each iteration
// is two phases:
//   1. tasks of (lattice, group of kGroup channels), claimed one at a time: splat n ⊙ Q, blur;
//   2. chunks of pixels: slice both lattices into U, softmax over the channels → Q.
// U is pixel-major (N, Kp), Kp = K rounded up to kGroup, so that a pixel's channels are one row;
// Q is group-major (Kp / kGroup, N, kGroup), so that a splat task reads its group's channels only;
// each (lattice, group) has its own (M + 1, kGroup) values, so groups never share a cache line.
#include "common.h"
#include "lattice.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

// The vector helpers are always inlined into the ISA clones, so no vector crosses an ABI boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

using tscd::cpu::load_unaligned;
using tscd::cpu::store_unaligned;
using tscd::lattice::Lattice;

constexpr int64_t kGroup = 8;             // channels per splat/blur task, one 8-float vector
constexpr int64_t kPixelChunk = 2048;     // pixels per slice task
typedef float v8 __attribute__((vector_size(kGroup * sizeof(float))));

Lattice build_lattice(const float* feats, int64_t dims, int64_t n) {
  switch (dims) {
    case 1: return tscd::lattice::build<1>(feats, n, 1.0f);
    case 2: return tscd::lattice::build<2>(feats, n, 1.0f);
    case 3: return tscd::lattice::build<3>(feats, n, 1.0f);
    case 4: return tscd::lattice::build<4>(feats, n, 1.0f);
    case 5: return tscd::lattice::build<5>(feats, n, 1.0f);
    case 6: return tscd::lattice::build<6>(feats, n, 1.0f);
    case 7: return tscd::lattice::build<7>(feats, n, 1.0f);
    default: return tscd::lattice::build<8>(feats, n, 1.0f);
  }
}

// One lattice of one image: its geometry, normalisers, weight and per-group value buffers.
struct Kernel {
  Lattice lat;
  std::vector<float> norm;  // (N): (L·1)^(−1/2)
  float weight = 0.f, alpha = 0.f;  // alpha: the lattice's slice scale
  // (groups, 2, (M + 1) · kGroup): the splat/blur ping-pong of each group, slot 0 always zero
  std::vector<float> values;
  std::vector<const float*> result;  // per group: where its blurred values ended up

  void build(const float* feats, int64_t dims, int64_t n, int64_t groups) {
    lat = build_lattice(feats, dims, n);
    const int64_t m = lat.vertices + 1;
    const int verts = lat.dims + 1;
    // n = (L·1)^(−1/2): the filter of a constant channel.
    std::vector<float> a(m, 0.f), b(m, 0.f);
    for (int64_t i = 0; i < n * verts; ++i) a[lat.slot[i]] += lat.weight[i];
    for (int dir = 0; dir <= lat.dims; ++dir) {
      const int32_t* nb = lat.neighbours.data() + dir * lat.vertices * 2;
      for (int64_t v = 1; v < m; ++v) b[v] = a[v] + 0.5f * (a[nb[2 * v - 2]] + a[nb[2 * v - 1]]);
      std::swap(a, b);
    }
    alpha = tscd::lattice::slice_scale(lat.dims);
    norm.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      float sum = 0.f;
      for (int r = 0; r < verts; ++r) sum += lat.weight[i * verts + r] * a[lat.slot[i * verts + r]];
      norm[i] = 1.f / std::sqrt(alpha * sum);
    }
    values.assign(groups * 2 * m * kGroup, 0.f);
    result.assign(groups, nullptr);
  }
};

// Splat n ⊙ q of group g of kernel k (q group-major, (groups, N, kGroup)) and blur it along
// directions 0..d.
TSCD_ISA_CLONES
void splat_blur(Kernel& k, const float* q, int64_t g) {
  const int64_t m = k.lat.vertices + 1, n = k.lat.pixels;
  const int verts = k.lat.dims + 1;
  float* a = k.values.data() + g * 2 * m * kGroup;
  float* b = a + m * kGroup;
  std::fill(a, a + m * kGroup, 0.f);
  const int32_t* slot = k.lat.slot.data();
  const float* weight = k.lat.weight.data();
  for (int64_t i = 0; i < n; ++i) {
    const v8 qi = load_unaligned<v8>(q + (g * n + i) * kGroup);
    const float ni = k.norm[i];
    for (int r = 0; r < verts; ++r) {
      float* dst = a + static_cast<int64_t>(slot[i * verts + r]) * kGroup;
      store_unaligned(dst, load_unaligned<v8>(dst) + (ni * weight[i * verts + r]) * qi);
    }
  }
  for (int dir = 0; dir <= k.lat.dims; ++dir) {
    const int32_t* nb = k.lat.neighbours.data() + dir * k.lat.vertices * 2;
    for (int64_t v = 1; v < m; ++v) {
      const v8 left = load_unaligned<v8>(a + static_cast<int64_t>(nb[2 * v - 2]) * kGroup);
      const v8 right = load_unaligned<v8>(a + static_cast<int64_t>(nb[2 * v - 1]) * kGroup);
      store_unaligned(b + v * kGroup, load_unaligned<v8>(a + v * kGroup) + 0.5f * (left + right));
    }
    std::swap(a, b);
  }
  k.result[g] = a;
}

// Adds w · n_i · α Σ_r weight · (blurred values at pixel i's vertices) to the groups
// [g0, g0 + G) of row, held in registers meanwhile.
template <int G>
TSCD_INLINE void slice_into(const Kernel* kernels, int64_t kernel_count, int64_t i, int64_t g0, float* row) {
  v8 acc[G];
  for (int g = 0; g < G; ++g) acc[g] = load_unaligned<v8>(row + g * kGroup);
  for (int64_t l = 0; l < kernel_count; ++l) {
    const Kernel& k = kernels[l];
    const int verts = k.lat.dims + 1;
    const float c = k.weight * k.norm[i] * k.alpha;
    for (int r = 0; r < verts; ++r) {
      const float s = c * k.lat.weight[i * verts + r];
      const int64_t offset = static_cast<int64_t>(k.lat.slot[i * verts + r]) * kGroup;
      for (int g = 0; g < G; ++g) acc[g] += s * load_unaligned<v8>(k.result[g0 + g] + offset);
    }
  }
  for (int g = 0; g < G; ++g) store_unaligned(row + g * kGroup, acc[g]);
}

constexpr int64_t kTilePixels = 256;

// Pixel i's row (groups · kGroup floats) into q, group-major (groups, N, kGroup).
TSCD_INLINE void store_q(const float* row, int64_t groups, int64_t n, int64_t i, float* q) {
  for (int64_t g = 0; g < groups; ++g) store_unaligned(q + (g * n + i) * kGroup, load_unaligned<v8>(row + g * kGroup));
}  // pixels transposed at a time between (K, N) planes and pixel-major rows

// The softmax over the channels of row (kp floats, the padding channels −inf), in place.
TSCD_INLINE void softmax_row(float* row, int64_t groups) {
  v8 top = load_unaligned<v8>(row);
  for (int64_t j = 1; j < groups; ++j) {
    const v8 x = load_unaligned<v8>(row + j * kGroup);
    top = x > top ? x : top;
  }
  float peak = top[0];
  for (int l = 1; l < kGroup; ++l) peak = std::max(peak, top[l]);
  v8 sum{};
  for (int64_t j = 0; j < groups; ++j) {
    const v8 e = tscd::cpu::exp_nonpositive<kGroup>(load_unaligned<v8>(row + j * kGroup) - peak);
    store_unaligned(row + j * kGroup, e);
    sum += e;
  }
  float total = 0.f;
  for (int l = 0; l < kGroup; ++l) total += sum[l];
  const float inv = 1.f / total;
  for (int64_t j = 0; j < groups; ++j) store_unaligned(row + j * kGroup, load_unaligned<v8>(row + j * kGroup) * inv);
}

// Pixels [i0, i1) of probs (K, N): the unary log(max(p, 1e-5)) into rows of unary (pixel-major,
// padding channels −inf), its softmax into q, or into out (K, N) when out is given. The planes are
// read through a tile of kTilePixels rows, a contiguous run of each plane at a time.
TSCD_ISA_CLONES
void unary_pixels(const float* probs, int64_t K, int64_t n, int64_t groups, int64_t i0, int64_t i1, float* unary,
                  float* q, float* out) {
  const int64_t kp = groups * kGroup;
  std::vector<float> tile(kTilePixels * kp);
  for (int64_t p0 = i0; p0 < i1; p0 += kTilePixels) {
    const int64_t count = std::min(kTilePixels, i1 - p0);
    for (int64_t k = 0; k < kp; ++k)
      for (int64_t p = 0; p < count; ++p) tile[p * kp + k] = k < K ? probs[k * n + p0 + p] : 1.f;
    for (int64_t p = 0; p < count; ++p) {
      float* row = tile.data() + p * kp;
      for (int64_t j = 0; j < groups; ++j) {
        const v8 x = load_unaligned<v8>(row + j * kGroup);
        store_unaligned(row + j * kGroup, tscd::cpu::log_positive<kGroup>(x < 1e-5f ? v8{} + 1e-5f : x));
      }
      std::fill(row + K, row + kp, -std::numeric_limits<float>::infinity());
      if (unary != nullptr) std::memcpy(unary + (p0 + p) * kp, row, kp * sizeof(float));
      softmax_row(row, groups);
      if (out == nullptr) store_q(row, groups, n, p0 + p, q);
    }
    if (out != nullptr)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t p = 0; p < count; ++p) out[k * n + p0 + p] = tile[p * kp + k];
  }
}

// Pixels [i0, i1): the unary plus both lattices' messages, softmax over the channels, into q or,
// on the last pass, into out (K, N) through a tile.
TSCD_ISA_CLONES
void message_pixels(const float* unary, int64_t K, int64_t n, const Kernel* kernels, int64_t groups, int64_t i0,
                    int64_t i1, float* q, float* out) {
  const int64_t kp = groups * kGroup;
  std::vector<float> tile(kTilePixels * kp);
  for (int64_t p0 = i0; p0 < i1; p0 += kTilePixels) {
    const int64_t count = std::min(kTilePixels, i1 - p0);
    for (int64_t p = 0; p < count; ++p) {
      float* row = tile.data() + p * kp;
      std::memcpy(row, unary + (p0 + p) * kp, kp * sizeof(float));
      int64_t g = 0;
      for (; g + 4 <= groups; g += 4) slice_into<4>(kernels, 2, p0 + p, g, row + g * kGroup);
      switch (groups - g) {
        case 1: slice_into<1>(kernels, 2, p0 + p, g, row + g * kGroup); break;
        case 2: slice_into<2>(kernels, 2, p0 + p, g, row + g * kGroup); break;
        case 3: slice_into<3>(kernels, 2, p0 + p, g, row + g * kGroup); break;
        default: break;
      }
      softmax_row(row, groups);
      if (out == nullptr) store_q(row, groups, n, p0 + p, q);
    }
    if (out != nullptr)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t p = 0; p < count; ++p) out[k * n + p0 + p] = tile[p * kp + k];
  }
}

void check_features(const at::Tensor& feats, const char* name, const at::Tensor& probs) {
  tscd::check_float32_contiguous(feats, name, 3, "(B, D, N)");
  TORCH_CHECK(feats.size(0) == probs.size(0) && feats.size(2) == probs.size(2), name,
              " must be (B, D, N) with probs (B, K, N), got ", feats.sizes(), " and ", probs.sizes());
  TORCH_CHECK(feats.size(1) >= 1 && feats.size(1) <= tscd::lattice::kMaxDims, name, " (B, D, N): 1 to ",
              tscd::lattice::kMaxDims, " feature dimensions, got ", feats.sizes());
  tscd::lattice::check_feature_range(tscd::lattice::largest_magnitude(feats.data_ptr<float>(), feats.numel()));
}

at::Tensor dense_crf_mean_field_cpu(const at::Tensor& probs, const at::Tensor& smooth_feats,
                                    const at::Tensor& appearance_feats, double smooth_weight, double appearance_weight,
                                    int64_t num_iter) {
  tscd::check_float32_contiguous(probs, "probs", 3, "(B, K, N)");
  check_features(smooth_feats, "smooth_feats", probs);
  check_features(appearance_feats, "appearance_feats", probs);
  TORCH_CHECK(num_iter >= 0, "num_iter must be non-negative, got ", num_iter);
  const int64_t B = probs.size(0), K = probs.size(1), N = probs.size(2);
  auto out = at::empty_like(probs);
  if (out.numel() == 0) return out;
  const int64_t groups = (K + kGroup - 1) / kGroup, kp = groups * kGroup;
  const int64_t chunks = (N + kPixelChunk - 1) / kPixelChunk;
  const at::Tensor* feats[2] = {&appearance_feats, &smooth_feats};  // the larger lattice first
  const float weights[2] = {static_cast<float>(appearance_weight), static_cast<float>(smooth_weight)};
  const int64_t dims = appearance_feats.size(1) + smooth_feats.size(1) + 2;
  const int workers = static_cast<int>(tscd::cpu::worker_count((num_iter + 1) * N * dims * kp, chunks));
  std::vector<float> unary(num_iter > 0 ? N * kp : 0), q(num_iter > 0 ? N * kp : 0);
  for (int64_t b = 0; b < B; ++b) {
    const float* pb = probs.data_ptr<float>() + b * K * N;
    float* ob = out.data_ptr<float>() + b * K * N;
    Kernel kernels[2];
    tscd::cpu::Phases phases(1 + 2 * num_iter);
#pragma omp parallel num_threads(workers)
    {
      phases.join(omp_get_num_threads());
      // Phase 0: the two lattices (when iterating) and the unary of every chunk of pixels.
      const int64_t builds = num_iter > 0 ? 2 : 0;
      for (int64_t t = phases.claim(0, builds + chunks); t >= 0; t = phases.claim(0, builds + chunks)) {
        phases.run([&] {
          if (t < builds) {
            kernels[t].build(feats[t]->data_ptr<float>() + b * feats[t]->size(1) * N, feats[t]->size(1), N, groups);
            kernels[t].weight = weights[t];
          } else {
            const int64_t c = t - builds;
            unary_pixels(pb, K, N, groups, c * kPixelChunk, std::min(N, (c + 1) * kPixelChunk), unary.data(),
                         q.data(), num_iter == 0 ? ob : nullptr);
          }
        });
      }
      phases.next_phase();
      for (int64_t it = 0; it < num_iter; ++it) {
        const int64_t splat = 1 + 2 * it, slice = splat + 1;
        for (int64_t t = phases.claim(splat, 2 * groups); t >= 0; t = phases.claim(splat, 2 * groups))
          phases.run([&] { splat_blur(kernels[t / groups], q.data(), t % groups); });
        phases.next_phase();
        for (int64_t c = phases.claim(slice, chunks); c >= 0; c = phases.claim(slice, chunks))
          phases.run([&] {
            message_pixels(unary.data(), K, N, kernels, groups, c * kPixelChunk, std::min(N, (c + 1) * kPixelChunk),
                           q.data(), it + 1 == num_iter ? ob : nullptr);
          });
        phases.next_phase();
      }
    }
    phases.rethrow();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tscd_lattice, m) {
  m.def(
      "dense_crf_mean_field(Tensor probs, Tensor smooth_feats, Tensor appearance_feats, float smooth_weight, "
      "float appearance_weight, int num_iter) -> Tensor");
}

TORCH_LIBRARY_IMPL(tscd_lattice, CPU, m) { m.impl("dense_crf_mean_field", &dense_crf_mean_field_cpu); }
