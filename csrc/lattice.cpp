// The permutohedral-lattice Gaussian-kernel product (geometry in lattice.h) as the operator
// tscd_lattice::gaussian_product, y = L x, and its exact transpose
// tscd_lattice::gaussian_product_transposed, y = Lᵀ x (the same lattice, blurred along the
// directions in reverse order), both with the schema of the exact tscd::gaussian_product
// (gaussian.h): feats (B, D, N) pre-scaled so that 2^(−‖Δfeats‖²) = exp(−½‖Δf‖²), x (B, K, N)
// → y (B, K, N) float32. The lattice undoes that pre-scaling and filters with its own
// approximation of exp(−½‖Δf‖²) (short of the exact sums by the lattice scale, method §8);
// cut2, width and radius are speed hints of the exact kernel and are ignored (the lattice is
// O(N) without them, and its blur reaches only a few σ).
//
// Work split: at::parallel_for over the batch, one image per task: get its lattice (from the
// cache below or built), then splat, blur and slice its K channels in a per-thread work buffer
// of 2 (M+1) K floats, kept for the next call.
//
// Cache: the dense CRF filters the same two feature sets 2 + 2·iterations times, and building
// the lattice costs about as much as a filter pass of its channels (docs/ops.md, "The lattice").
// The lattices of the last feature arrays seen are kept (at most kCacheEntries and kCacheBytes),
// keyed by a copy of the features compared byte for byte, so a hit returns exactly the lattice a
// build would.
#include "gaussian.h"
#include "lattice.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

// The vector helpers are always inlined into the ISA clones, so no vector crosses an ABI boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

void tscd::lattice::check_feature_range(float largest) {
  TORCH_CHECK_VALUE(largest <= kMaxFeature,
                    "the permutohedral lattice takes features f (coordinates / sigma_xy, colours / sigma_rgb) within "
                    "±", kMaxFeature, ", got |f| = ", largest, ": use larger sigmas, or an exact backend");
}

namespace {

using tscd::lattice::Lattice;

constexpr size_t kCacheEntries = 16;
constexpr int64_t kCacheBytes = int64_t{128} << 20;

std::shared_ptr<const Lattice> build_lattice(const float* feats, int64_t dims, int64_t n, float feature_scale) {
  switch (dims) {
    case 1: return std::make_shared<Lattice>(tscd::lattice::build<1>(feats, n, feature_scale));
    case 2: return std::make_shared<Lattice>(tscd::lattice::build<2>(feats, n, feature_scale));
    case 3: return std::make_shared<Lattice>(tscd::lattice::build<3>(feats, n, feature_scale));
    case 4: return std::make_shared<Lattice>(tscd::lattice::build<4>(feats, n, feature_scale));
    case 5: return std::make_shared<Lattice>(tscd::lattice::build<5>(feats, n, feature_scale));
    case 6: return std::make_shared<Lattice>(tscd::lattice::build<6>(feats, n, feature_scale));
    case 7: return std::make_shared<Lattice>(tscd::lattice::build<7>(feats, n, feature_scale));
    case 8: return std::make_shared<Lattice>(tscd::lattice::build<8>(feats, n, feature_scale));
    default: TORCH_CHECK(false, "feats (B, D, N): 1 to ", tscd::lattice::kMaxDims, " feature dimensions, got ", dims);
  }
}

// The lattices of recently seen feature arrays (D, N), most recent first.
class LatticeCache {
 public:
  std::shared_ptr<const Lattice> get(const float* feats, int64_t dims, int64_t n, float feature_scale) {
    const size_t count = static_cast<size_t>(dims * n);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->dims == dims && it->feats.size() == count && std::memcmp(it->feats.data(), feats, count * 4) == 0) {
          entries_.splice(entries_.begin(), entries_, it);
          return it->lattice;
        }
      }
    }
    auto lattice = build_lattice(feats, dims, n, feature_scale);  // outside the lock: images build in parallel
    Entry entry{dims, std::vector<float>(feats, feats + count), lattice};
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.push_front(std::move(entry));
    int64_t total = 0;
    size_t kept = 0;
    for (auto it = entries_.begin(); it != entries_.end(); ++it, ++kept) {
      total += it->bytes();
      if (kept == kCacheEntries || total > kCacheBytes) {
        entries_.erase(it, entries_.end());
        break;
      }
    }
    return lattice;
  }

 private:
  struct Entry {
    int64_t dims;
    std::vector<float> feats;
    std::shared_ptr<const Lattice> lattice;
    int64_t bytes() const { return lattice->bytes() + static_cast<int64_t>(feats.size()) * sizeof(float); }
  };
  std::mutex mutex_;
  std::list<Entry> entries_;
};

LatticeCache& cache() {
  static LatticeCache instance;
  return instance;
}

// The per-vertex values are stored with a channel stride padded to a multiple of kLanes (when
// K > kNarrow), so that every inner loop is whole vectors; the padding channels stay zero. The
// width is 8 in every ISA clone (one register under AVX2 and AVX-512, two on the baseline) rather
// than the native width of run_native: 16 lanes would pad K = 21 to 32 channels instead of 24, a
// third more memory traffic in the splat, blur and slice, which are bound by it.
constexpr int64_t kLanes = 8;
constexpr int64_t kNarrow = 4;  // up to this many channels: unpadded scalar loops
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));

int64_t channel_stride(int64_t channels) {
  return channels <= kNarrow ? channels : (channels + kLanes - 1) / kLanes * kLanes;
}

// Vec = vf: stride a multiple of kLanes; Vec = float: any stride.
using tscd::cpu::load_unaligned;
using tscd::cpu::store_unaligned;

template <typename Vec>
constexpr int64_t kStep = sizeof(Vec) / sizeof(float);

// Pixels per block of splat and slice: x and y are channel-major (K, N), the lattice pixel-major,
// so each block is transposed through a (kPixelBlock, stride) tile that stays in L1.
constexpr int64_t kPixelBlock = 16;

// values (M+1, stride) += Σ over the pixels of w · x[:, i] at each of their d+1 vertices; x (K, N).
// slot: lat.slot, or the same slots in 16 bits (bilateral_filter_cpu).
template <typename Vec, typename Slot>
TSCD_INLINE void splat(const Lattice& lat, const Slot* slot, const float* x, int64_t channels, int64_t stride,
                       float* values) {
  const int verts = lat.dims + 1;
  const int64_t n = lat.pixels;
  std::vector<float> tile(kPixelBlock * stride, 0.0f);
  for (int64_t i0 = 0; i0 < n; i0 += kPixelBlock) {
    const int64_t count = std::min(kPixelBlock, n - i0);
    for (int64_t k = 0; k < channels; ++k)
      for (int64_t p = 0; p < count; ++p) tile[p * stride + k] = x[k * n + i0 + p];
    for (int64_t p = 0; p < count; ++p) {
      const int64_t i = i0 + p;
      const float* xi = tile.data() + p * stride;
      for (int r = 0; r < verts; ++r) {
        float* dst = values + static_cast<int64_t>(slot[i * verts + r]) * stride;
        const float w = lat.weight[i * verts + r];
        for (int64_t k = 0; k < stride; k += kStep<Vec>)
          store_unaligned(dst + k, load_unaligned<Vec>(dst + k) + w * load_unaligned<Vec>(xi + k));
      }
    }
  }
}

// One [½ 1 ½] pass along direction dir: dst = src + ½ (left + right) at every vertex.
template <typename Vec>
TSCD_INLINE void blur(const Lattice& lat, int dir, int64_t stride, const float* src, float* dst) {
  const int64_t m = lat.vertices;
  const int32_t* nb = lat.neighbours.data() + dir * m * 2;
  for (int64_t v = 0; v < m; ++v) {
    const float* c = src + (v + 1) * stride;
    const float* a = src + static_cast<int64_t>(nb[2 * v]) * stride;
    const float* b = src + static_cast<int64_t>(nb[2 * v + 1]) * stride;
    float* o = dst + (v + 1) * stride;
    for (int64_t k = 0; k < stride; k += kStep<Vec>)
      store_unaligned(o + k,
                      load_unaligned<Vec>(c + k) + 0.5f * (load_unaligned<Vec>(a + k) + load_unaligned<Vec>(b + k)));
  }
}

// y[:, i] (K, N) = α Σ w · values at pixel i's d+1 vertices.
template <typename Vec, typename Slot>
TSCD_INLINE void slice(const Lattice& lat, const Slot* slot, const float* values, int64_t channels, int64_t stride,
                       float* y) {
  const int verts = lat.dims + 1;
  const int64_t n = lat.pixels;
  const float alpha = tscd::lattice::slice_scale(lat.dims);
  std::vector<float> tile(kPixelBlock * stride);
  for (int64_t i0 = 0; i0 < n; i0 += kPixelBlock) {
    const int64_t count = std::min(kPixelBlock, n - i0);
    for (int64_t p = 0; p < count; ++p) {
      const int64_t i = i0 + p;
      float* yi = tile.data() + p * stride;
      for (int64_t k = 0; k < stride; k += kStep<Vec>) store_unaligned(yi + k, Vec{});
      for (int r = 0; r < verts; ++r) {
        const float* src = values + static_cast<int64_t>(slot[i * verts + r]) * stride;
        const float w = alpha * lat.weight[i * verts + r];
        for (int64_t k = 0; k < stride; k += kStep<Vec>)
          store_unaligned(yi + k, load_unaligned<Vec>(yi + k) + w * load_unaligned<Vec>(src + k));
      }
    }
    for (int64_t k = 0; k < channels; ++k)
      for (int64_t p = 0; p < count; ++p) y[k * n + i0 + p] = tile[p * stride + k];
  }
}

// y (K, N) = L x (blurs along directions 0, 1, …, d) or, transposed, Lᵀ x (d, …, 1, 0): slicing
// is the transpose of splatting and each blur a symmetric matrix on the vertices (slot 0, the
// absent neighbour, stays zero), so reversing their order transposes the product exactly.
// values and scratch: (M+1)·stride floats of work space.
template <typename Vec, typename Slot>
TSCD_INLINE void filter(const Lattice& lat, const Slot* slot, bool transposed, const float* x, int64_t channels,
                        int64_t stride, float* values, float* scratch, float* y) {
  splat<Vec>(lat, slot, x, channels, stride, values);
  for (int step = 0; step <= lat.dims; ++step) {
    blur<Vec>(lat, transposed ? lat.dims - step : step, stride, values, scratch);
    std::swap(values, scratch);
  }
  slice<Vec>(lat, slot, values, channels, stride, y);
}

template <typename Slot>
TSCD_INLINE void filter_channels(const Lattice& lat, const Slot* slot, bool transposed, const float* x,
                                 int64_t channels, float* y, std::vector<float>& work) {
  const int64_t stride = channel_stride(channels);
  const int64_t size = (static_cast<int64_t>(lat.vertices) + 1) * stride;  // slot 0 stays zero
  work.assign(2 * size, 0.0f);
  if (stride % kLanes == 0)
    filter<vf>(lat, slot, transposed, x, channels, stride, work.data(), work.data() + size, y);
  else
    filter<float>(lat, slot, transposed, x, channels, stride, work.data(), work.data() + size, y);
}

TSCD_ISA_CLONES
void filter_image(const Lattice& lat, bool transposed, const float* x, int64_t channels, float* y,
                  std::vector<float>& work) {
  filter_channels(lat, lat.slot.data(), transposed, x, channels, y, work);
}

// filter_image (not transposed) with the slots in 16 bits.
TSCD_ISA_CLONES
void filter_image16(const Lattice& lat, const uint16_t* slot, const float* x, int64_t channels, float* y,
                    std::vector<float>& work) {
  filter_channels(lat, slot, false, x, channels, y, work);
}

at::Tensor lattice_filter(const at::Tensor& feats, const at::Tensor& x, bool transposed) {
  tscd::gaussian::check_args(feats, x);
  const int64_t B = x.size(0), K = x.size(1), N = x.size(2), D = feats.size(1);
  TORCH_CHECK(D >= 1, "feats (B, D, N): at least one feature dimension, got ", feats.sizes());
  auto y = at::empty_like(x);
  if (y.numel() == 0) return y;
  // feats = f · √(log2(e) / 2); the lattice works on f.
  const float feature_scale = static_cast<float>(1.0 / std::sqrt(0.5 * std::log2(std::exp(1.0))));
  const float* fp = feats.data_ptr<float>();
  tscd::lattice::check_feature_range(tscd::lattice::largest_magnitude(fp, feats.numel()) * feature_scale);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    // Kept by each thread between calls: a fresh buffer of this size would be fresh pages to
    // fault in on every call (the CRF makes 22 calls per image).
    thread_local std::vector<float> work;
    for (int64_t b = begin; b < end; ++b) {
      const auto lat = cache().get(fp + b * D * N, D, N, feature_scale);
      filter_image(*lat, transposed, xp + b * K * N, K, yp + b * K * N, work);
    }
  });
  return y;
}

// The features of tscd.ops.gaussian's bilateral_features as fused_product scales them for the
// lattice, (x / σ_xy, y / σ_xy, colour / σ_rgb) · √(log2(e) / 2), computed from an image (3, H, W)
// on the fly with the same float32 operations as those tensors, hence the same lattice.
struct BilateralFeatures {
  const float* image;
  int64_t height, width;
  float sigma_xy, sigma_rgb, exp2_scale;

  float operator()(int k, int64_t i) const {
    const float raw = k == 0   ? static_cast<float>(i % width) / sigma_xy
                      : k == 1 ? static_cast<float>(i / width) / sigma_xy
                               : image[(k - 2) * height * width + i] / sigma_rgb;
    return raw * exp2_scale;
  }
};

// tscd.compat's bilateralfilter_batch: out (B, K, N) = L x per image (B, 3, H, W), as
// lattice_product_cpu on bilateral_features computes it (the same features, lattice and sums),
// in the memory of the family's module: no feature tensors, no lattice cache, the images'
// lattices one per thread with 16-bit slots when they have fewer than 65535 vertices, and the
// channels filtered kGroupChannels at a time straight into out.
constexpr int64_t kGroupChannels = 8;

void bilateral_filter_cpu(const at::Tensor& images, const at::Tensor& x, double sigma_rgb, double sigma_xy,
                          at::Tensor out) {
  tscd::check_float32_contiguous(images, "images", 4, "(B, 3, H, W)");
  tscd::check_float32_contiguous(x, "x", 3, "(B, K, N)");
  tscd::check_float32_contiguous(out, "out", 3, "(B, K, N)");
  const int64_t B = images.size(0), H = images.size(2), W = images.size(3), K = x.size(1), N = H * W;
  TORCH_CHECK(images.size(1) == 3 && x.size(0) == B && x.size(2) == N && out.sizes() == x.sizes(),
              "bilateral_filter_: images (B, 3, H, W), x and out (B, K, H·W), got ", images.sizes(), ", ", x.sizes(),
              " and ", out.sizes());
  if (out.numel() == 0) return;
  const float exp2_scale = static_cast<float>(std::sqrt(0.5 * std::log2(std::exp(1.0))));
  const float feature_scale = static_cast<float>(1.0 / std::sqrt(0.5 * std::log2(std::exp(1.0))));
  const float s_xy = static_cast<float>(sigma_xy), s_rgb = static_cast<float>(sigma_rgb);
  const float* img = images.data_ptr<float>();
  float peak = static_cast<float>(std::max(H, W) - 1) / s_xy * exp2_scale;  // NaN once a colour is NaN
  for (int64_t i = 0; i < images.numel() && !std::isnan(peak); ++i) {
    const float f = std::fabs(img[i] / s_rgb * exp2_scale);
    if (!(f <= peak)) peak = f;
  }
  tscd::lattice::check_feature_range(peak * feature_scale);
  const float* xp = x.data_ptr<float>();
  float* yp = out.data_ptr<float>();
  const int64_t work = B * N * K * 24;
  tscd::cpu::run_workers(tscd::cpu::worker_count(work, B), B, [&](const auto& claim) {
    for (int64_t b = claim(); b >= 0; b = claim()) {
      const BilateralFeatures feature{img + b * 3 * N, H, W, s_xy, s_rgb, exp2_scale};
      Lattice lat = tscd::lattice::build<5>(N, feature, feature_scale);
      std::vector<uint16_t> slot16;
      if (lat.vertices < 65535) {  // slots up to M in half the memory
        slot16.assign(lat.slot.begin(), lat.slot.end());
        std::vector<int32_t>().swap(lat.slot);
      }
      std::vector<float> values;  // freed with the image's lattice, before the next one is built
      for (int64_t k0 = 0; k0 < K; k0 += kGroupChannels) {
        const float* xk = xp + (b * K + k0) * N;
        float* yk = yp + (b * K + k0) * N;
        const int64_t channels = std::min(kGroupChannels, K - k0);
        if (slot16.empty())
          filter_image(lat, false, xk, channels, yk, values);
        else
          filter_image16(lat, slot16.data(), xk, channels, yk, values);
      }
    }
  });
}

at::Tensor lattice_product_cpu(const at::Tensor& feats, const at::Tensor& x, double, int64_t, int64_t) {
  return lattice_filter(feats, x, false);
}

at::Tensor lattice_product_transposed_cpu(const at::Tensor& feats, const at::Tensor& x, double, int64_t, int64_t) {
  return lattice_filter(feats, x, true);
}

}  // namespace

TORCH_LIBRARY(tscd_lattice, m) {
  m.def("gaussian_product(Tensor feats, Tensor x, float cut2, int width, int radius) -> Tensor");
  m.def("gaussian_product_transposed(Tensor feats, Tensor x, float cut2, int width, int radius) -> Tensor");
  m.def("bilateral_filter_(Tensor images, Tensor x, float sigma_rgb, float sigma_xy, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(tscd_lattice, CPU, m) {
  m.impl("gaussian_product", &lattice_product_cpu);
  m.impl("gaussian_product_transposed", &lattice_product_transposed_cpu);
  m.impl("bilateral_filter_", &bilateral_filter_cpu);
}
