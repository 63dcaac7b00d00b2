// The permutohedral lattice (Adams, Baek & Davis 2010), as Krähenbühl & Koltun's dense CRF
// (pydensecrf) uses it: an O(N·(d+1)·K) approximation of the Gaussian-kernel product
//   y_i ≈ Σ_j exp(−½‖f_i − f_j‖²) x_j
// over d-dimensional per-pixel features f. Plain C++ (no ATen), one image at a time, so that a
// CUDA version can share the geometry; csrc/lattice.cpp registers the operator.
//
// 1. Build (depends on the features only): each feature vector, scaled by √(2/3)·(d+1), is
//    elevated onto the hyperplane Σ = 0 of R^(d+1) and lies in one simplex of the permutohedral
//    lattice A*_d; its d+1 vertices get barycentric weights (Σ = 1). Vertices are keyed by their
//    first d integer coordinates (the last is minus their sum) in a hash table with open
//    addressing, sized from N; each vertex also gets its two neighbours along each of the d+1
//    lattice directions (index 0 = "absent", a slot that always holds zeros).
// 2. Filter (the CPU loops are in lattice.cpp), K channels at a time, stored as K contiguous
//    floats per vertex: splat (each pixel adds w·x to its vertices), blur with [½ 1 ½] along
//    directions 0, 1, …, d, slice (each pixel reads back Σ w·value), times α = 1 / (1 + 2^−d).
//    The scaling and α are those of the published implementation, so this matches pydensecrf's
//    filter up to float rounding, and its sums fall short of the exact ones by the family's
//    lattice scale (its bilateralfilter module's; method §8).
//
// Slicing is the transpose of splatting and each directional blur is symmetric, but the blurs
// are restricted to the vertices that exist and do not commute there, so L = Sᵀ B_d⋯B_0 S is
// not exactly symmetric (by how much: docs/ops.md, "The lattice"). Its exact transpose
// Lᵀ = Sᵀ B_0⋯B_d S blurs in the reverse order (as pydensecrf's transposed filter does) on the
// same lattice; the dense energy loss needs it for its gradient −(1/B)(g·LS + Lᵀ(g·S)), which
// the released code's −(1/B)(g·LS + L(g·S)) misses. L itself stays pydensecrf's
// (averaging both blur orders would make it symmetric but no longer match; tests/ops/test_lattice.py).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace tscd::lattice {

constexpr int kMaxDims = 8;
// The largest feature magnitude |f| the lattice takes (f as in exp(−½‖f_i − f_j‖²): coordinates / σ_xy,
// colours / σ_rgb). Elevation multiplies features by at most ≈ 16.3 (d = 8), so the elevated
// coordinates stay below 2^18, where float32 still places a point in its simplex to within 1/64 of a
// lattice step; far beyond, they would overflow the int32 keys (undefined behaviour: crashes).
constexpr float kMaxFeature = 16384.0f;

// The largest |v[i]| of n floats, at least `floor`; NaN once one is NaN (NaN compares false).
inline float largest_magnitude(const float* v, int64_t n, float floor = 0.0f) {
  float peak = floor;
  for (int64_t i = 0; i < n && !std::isnan(peak); ++i)
    if (!(std::fabs(v[i]) <= peak)) peak = std::fabs(v[i]);
  return peak;
}

// Refuses (ValueError) features whose largest magnitude |f| is beyond ±kMaxFeature, or NaN.
// Defined in lattice.cpp, where ATen is.
void check_feature_range(float largest);

// Open-addressing (linear probing) table from d integer coordinates to a dense vertex index.
template <int D>
class VertexTable {
 public:
  explicit VertexTable(int64_t expected) {
    uint64_t capacity = 64;
    while (capacity < 2 * static_cast<uint64_t>(expected)) capacity *= 2;
    resize(capacity);
    keys_.reserve(expected * D);
  }

  int32_t size() const { return static_cast<int32_t>(keys_.size() / D); }
  const int32_t* key(int32_t vertex) const { return keys_.data() + static_cast<int64_t>(vertex) * D; }

  // The index of key, inserted when absent (insert) or −1 when absent (!insert).
  int32_t find(const int32_t* key, bool insert) {
    if (insert && 2 * (size() + 1) > static_cast<int64_t>(slots_.size())) grow();
    for (uint64_t h = home(key);; h = (h + 1) & mask_) {
      const int32_t v = slots_[h];
      if (v < 0) {
        if (!insert) return -1;
        slots_[h] = size();
        keys_.insert(keys_.end(), key, key + D);
        return slots_[h];
      }
      if (std::equal(key, key + D, keys_.data() + static_cast<int64_t>(v) * D)) return v;
    }
  }

 private:
  // Multiplicative hashing: the top bits of the product mix every coordinate (the low bits of
  // lattice keys are too regular to index by).
  uint64_t home(const int32_t* key) const {
    uint64_t h = 0;
    for (int i = 0; i < D; ++i) h = (h + static_cast<uint32_t>(key[i])) * 0x9E3779B97F4A7C15ull;
    return h >> shift_;
  }

  void resize(uint64_t capacity) {  // a power of 2
    slots_.assign(capacity, -1);
    mask_ = capacity - 1;
    shift_ = 64 - __builtin_ctzll(capacity);
  }

  void grow() {
    resize(2 * slots_.size());
    for (int32_t v = 0; v < size(); ++v) {
      uint64_t h = home(key(v));
      while (slots_[h] >= 0) h = (h + 1) & mask_;
      slots_[h] = v;
    }
  }

  std::vector<int32_t> slots_;
  std::vector<int32_t> keys_;  // D coordinates per vertex, in insertion order
  uint64_t mask_ = 0;
  int shift_ = 64;
};

// The lattice of one image. Vertex slots are 1-based: slot 0 is the absent neighbour.
struct Lattice {
  int dims = 0;
  int64_t pixels = 0;
  int32_t vertices = 0;
  std::vector<int32_t> slot;        // (N, d+1): the slot of each pixel's simplex vertices
  std::vector<float> weight;        // (N, d+1): their barycentric weights
  std::vector<int32_t> neighbours;  // (d+1, M, 2): slots of the two neighbours along each direction

  int64_t bytes() const {
    return static_cast<int64_t>(slot.size() + neighbours.size()) * sizeof(int32_t) +
           static_cast<int64_t>(weight.size()) * sizeof(float);
  }
};

// Build the lattice of N points with D features each, point i's feature k feature(k, i),
// multiplied by feature_scale (the caller's features may carry a constant factor).
template <int D, typename Feature>
Lattice build(int64_t n, const Feature& feature, float feature_scale) {
  constexpr int kVerts = D + 1;
  Lattice lat;
  lat.dims = D;
  lat.pixels = n;
  lat.slot.resize(n * kVerts);
  lat.weight.resize(n * kVerts);
  VertexTable<D> table(n);

  // Elevation E (Adams et al. 2010, §3.1) with the filter's expected standard deviation folded in:
  // the spacing √(2/3)·(d+1) makes the blur approximate a Gaussian of unit σ in feature space.
  float scale[D];
  const float inv_std = std::sqrt(2.0f / 3.0f) * kVerts;
  for (int k = 0; k < D; ++k) scale[k] = feature_scale * inv_std / std::sqrt(static_cast<float>((k + 1) * (k + 2)));

  float elevated[kVerts], delta[kVerts], bary[kVerts + 1];
  int32_t nearest[kVerts], rank[kVerts], key[D], previous_nearest[D], previous_rank[D];
  for (int64_t i = 0; i < n; ++i) {
    float suffix = 0.0f;  // Σ_{k ≥ j} scaled feature k
    for (int j = D; j > 0; --j) {
      const float c = feature(j - 1, i) * scale[j - 1];
      elevated[j] = suffix - j * c;
      suffix += c;
    }
    elevated[0] = suffix;

    // The nearest point of (d+1)·Z^(d+1) coordinate-wise; coord_sum / (d+1) says how far it is
    // off the plane, which the rank-based correction below brings back.
    int32_t coord_sum = 0;
    for (int j = 0; j < kVerts; ++j) {
      const float q = std::nearbyint(elevated[j] / kVerts);
      nearest[j] = static_cast<int32_t>(q) * kVerts;
      coord_sum += static_cast<int32_t>(q);
      delta[j] = elevated[j] - nearest[j];
      rank[j] = 0;
    }
    for (int a = 0; a < D; ++a)
      for (int b = a + 1; b < kVerts; ++b) (delta[a] < delta[b] ? rank[a] : rank[b])++;
    for (int j = 0; j < kVerts; ++j) {
      rank[j] += coord_sum;
      if (rank[j] < 0) {
        rank[j] += kVerts;
        nearest[j] += kVerts;
      } else if (rank[j] > D) {
        rank[j] -= kVerts;
        nearest[j] -= kVerts;
      }
    }

    // Barycentric weights from the sorted offsets (Adams et al. 2010, §3.1).
    std::fill(bary, bary + kVerts + 1, 0.0f);
    for (int j = 0; j < kVerts; ++j) {
      const float v = (elevated[j] - nearest[j]) / kVerts;
      bary[D - rank[j]] += v;
      bary[D + 1 - rank[j]] -= v;
    }
    bary[0] += 1.0f + bary[kVerts];

    // Vertex r of the simplex: the nearest 0-remainder point plus the canonical offset r,
    // coordinate j getting r or r − (d+1) by its rank. Neighbouring pixels often share their
    // simplex (same nearest point and ranks): then its vertices are not looked up again.
    const bool same_simplex = i > 0 && std::equal(nearest, nearest + D, previous_nearest) &&
                              std::equal(rank, rank + D, previous_rank);
    for (int r = 0; r < kVerts; ++r) {
      if (same_simplex) {
        lat.slot[i * kVerts + r] = lat.slot[(i - 1) * kVerts + r];
      } else {
        for (int j = 0; j < D; ++j) key[j] = nearest[j] + (rank[j] <= D - r ? r : r - kVerts);
        lat.slot[i * kVerts + r] = table.find(key, true) + 1;
      }
      lat.weight[i * kVerts + r] = bary[r];
    }
    std::copy(nearest, nearest + D, previous_nearest);
    std::copy(rank, rank + D, previous_rank);
  }

  const int32_t m = table.size();
  lat.vertices = m;
  lat.neighbours.resize(static_cast<int64_t>(kVerts) * m * 2);
  int32_t lo[D], hi[D];
  for (int dir = 0; dir < kVerts; ++dir) {
    for (int32_t v = 0; v < m; ++v) {
      // Direction dir < d moves coordinate dir by ∓d and the others by ±1 (the implicit last
      // coordinate by ±1 too, keeping the sum 0); direction d moves every stored one by ±1.
      const int32_t* k = table.key(v);
      for (int j = 0; j < D; ++j) {
        lo[j] = k[j] - 1;
        hi[j] = k[j] + 1;
      }
      if (dir < D) {
        lo[dir] = k[dir] + D;
        hi[dir] = k[dir] - D;
      }
      int32_t* out = lat.neighbours.data() + (static_cast<int64_t>(dir) * m + v) * 2;
      out[0] = table.find(lo, false) + 1;
      out[1] = table.find(hi, false) + 1;
    }
  }
  return lat;
}

// The same with point i's feature k at feats[k * N + i].
template <int D>
Lattice build(const float* feats, int64_t n, float feature_scale) {
  return build<D>(n, [feats, n](int k, int64_t i) { return feats[k * n + i]; }, feature_scale);
}

// α = 1 / (1 + 2^−d), the published implementation's constant factor of the sliced values.
inline float slice_scale(int dims) { return 1.0f / (1.0f + std::ldexp(1.0f, -dims)); }

}  // namespace tscd::lattice
