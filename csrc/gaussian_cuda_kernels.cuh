// Tiled Gaussian-kernel product Y = W·X (contract in gaussian.h): the CUDA kernel of
// gaussian_cuda.cu and its launch choices, free of torch so that tests/kernels/cuda_host also
// runs them on the CPU.
//
// A block owns kThreads · kRows rows and kChannels channels of one image and sweeps the
// columns in tiles of kTileCols, staging the tile's features and channel values in shared
// memory (dimension-/channel-major). Register tiling: each thread keeps kRows rows × kChannels
// channel sums in registers and walks the tile kGroup columns at a time, so one float4 load
// fetches a feature or a channel value of kGroup columns, each weight is computed once per
// (row, column, channel block) and reused for kChannels FMAs, and each channel value loaded
// serves kRows rows. kDims (features, zero-padded) and kChannels (channels, zero-padded) are
// template parameters picked on the host by choose_config.
#pragma once
#include "gaussian_limits.h"
#include "host_device.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <utility>

namespace tscd::gaussian::device {

constexpr int kThreads = 128;   // threads per block
constexpr int kTileCols = 128;  // columns per shared-memory tile
constexpr int kGroup = 4;       // columns per float4 shared-memory load
static_assert(kTileCols == kThreads, "the staging loop loads one column per thread");
static_assert(kTileCols % kGroup == 0, "column groups must not cross a tile's end");

// Rows per thread for a channel block of `channels`: at most 32 accumulators per thread.
__host__ __device__ constexpr int rows_per_thread(int channels) { return channels <= 16 ? 2 : 1; }

// y[b, k0 + k, i] for the block's rows i and channels k < kChannels (those below K).
// feats (B, D, N) with D <= kDims, x and y (B, K, N); columns [j_begin, j_end) of row i's
// window as in gaussian.cpp (width: row length, N without a window).
template <int kDims, int kChannels>
__global__ void __launch_bounds__(kThreads, 4)
    gaussian_product_register_tiled_kernel(const float* __restrict__ feats, const float* __restrict__ x,
                                           float* __restrict__ y, int N, int K, int D, float cut2, int width,
                                           int radius) {
  constexpr int kRows = rows_per_thread(kChannels);
  __shared__ __align__(16) float fj[kDims][kTileCols];
  __shared__ __align__(16) float xj[kChannels][kTileCols];
  const int b = blockIdx.z, k0 = blockIdx.y * kChannels;
  const int kn = min(kChannels, K - k0);
  const int i0 = blockIdx.x * (kThreads * kRows);
  const float* fb = feats + (long long)b * D * N;
  const float* xb = x + ((long long)b * K + k0) * N;

  // Row r of this thread is i0 + r * kThreads + threadIdx.x; rows past N compute on zero
  // features and are not stored.
  const float neg_cut2 = -cut2;  // d2 <= cut2 exactly when -d2 >= -cut2
  float fi[kRows][kDims];
  float acc[kRows][kChannels];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = i0 + r * kThreads + threadIdx.x;
#pragma unroll
    for (int d = 0; d < kDims; ++d) fi[r][d] = (d < D && i < N) ? fb[(long long)d * N + i] : 0.f;
#pragma unroll
    for (int k = 0; k < kChannels; ++k) acc[r][k] = 0.f;
  }

  // The window of rows i0 .. i_last, clamped to [0, N] (empty when j_end <= j_begin). The host
  // bounds N < 2^30, 1 <= width <= N and |radius| <= N, so the row numbers fit in int (32-bit
  // divisions) and only the products need 64 bits.
  const int i_last = min(N, i0 + kThreads * kRows) - 1;
  const int j_begin = static_cast<int>(min((long long)N, (long long)max(0, i0 / width - radius) * width));
  const int j_end = static_cast<int>(max(0LL, min((long long)N, (long long)(i_last / width + radius + 1) * width)));
  for (int j0 = j_begin; j0 < j_end; j0 += kTileCols) {
    const int nj = min(kTileCols, j_end - j0);
    __syncthreads();  // the previous tile is no longer read
    {
      const int c = threadIdx.x, j = j0 + c;
      const bool in = c < nj + TSCD_FAULT(gaussian_product);
#pragma unroll
      for (int d = 0; d < kDims; ++d) fj[d][c] = (in && d < D) ? fb[(long long)d * N + j] : 0.f;
#pragma unroll
      for (int k = 0; k < kChannels; ++k) xj[k][c] = (in && k < kn) ? xb[(long long)k * N + j] : 0.f;
    }
    __syncthreads();
    // Columns [nj, round_up(nj, kGroup)) stay inside the tile and hold x = 0: they add nothing.
    for (int c0 = 0; c0 < nj; c0 += kGroup) {
      float4 f4[kDims];
#pragma unroll
      for (int d = 0; d < kDims; ++d) f4[d] = *reinterpret_cast<const float4*>(&fj[d][c0]);
      float w[kRows][kGroup];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        // -|f_i - f_j|^2, accumulated negated (fma(-a, a, -s) = -fma(a, a, s) exactly) so that
        // exp2 takes it as is.
        float neg_d2[kGroup] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int d = 0; d < kDims; ++d) {
          const float dx = fi[r][d] - f4[d].x, dy = fi[r][d] - f4[d].y;
          const float dz = fi[r][d] - f4[d].z, dw = fi[r][d] - f4[d].w;
          neg_d2[0] = fmaf(-dx, dx, neg_d2[0]);
          neg_d2[1] = fmaf(-dy, dy, neg_d2[1]);
          neg_d2[2] = fmaf(-dz, dz, neg_d2[2]);
          neg_d2[3] = fmaf(-dw, dw, neg_d2[3]);
        }
#pragma unroll
        for (int q = 0; q < kGroup; ++q) w[r][q] = neg_d2[q] >= neg_cut2 ? exp2f(neg_d2[q]) : 0.f;
      }
#pragma unroll
      for (int k = 0; k < kChannels; ++k) {
        const float4 x4 = *reinterpret_cast<const float4*>(&xj[k][c0]);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          float s = acc[r][k];  // columns in ascending order, as the CPU kernel sums them
          s += w[r][0] * x4.x;
          s += w[r][1] * x4.y;
          s += w[r][2] * x4.z;
          s += w[r][3] * x4.w;
          acc[r][k] = s;
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = i0 + r * kThreads + threadIdx.x;
    if (i >= N) continue;
#pragma unroll
    for (int k = 0; k < kChannels; ++k)
      if (k < kn) y[((long long)b * K + k0 + k) * N + i] = acc[r][k];
  }
}

// The kernel instantiation for D feature dimensions and K channels.
struct Config {
  int dims;      // D rounded up to one of kDimChoices
  int channels;  // channels per block, one of kChannelBlocks
};
constexpr int kDimChoices[] = {2, 5, kMaxDims};  // position; position + RGB; any
constexpr int kChannelBlocks[] = {1, 2, 4, 8, 16, 24, 32};

// Picks the channel block that minimises the work per (row, column) pair over all ceil(K / c)
// blocks: each block computes the weight again (2·dims + 3 instructions: differences, FMAs,
// compare, select, exp2) and spends one FMA per channel, padding included. Ties go to the
// smaller block (more blocks in flight).
inline Config choose_config(int64_t K, int64_t D) {
  const int dims = D <= 2 ? 2 : D <= 5 ? 5 : kMaxDims;
  int best = kChannelBlocks[0];
  int64_t best_cost = -1;
  for (const int c : kChannelBlocks) {
    const int64_t cost = (K + c - 1) / c * (2 * dims + 3 + c);
    if (best_cost < 0 || cost < best_cost) {
      best = c;
      best_cost = cost;
    }
  }
  return {dims, best};
}

template <int kDims, typename F, std::size_t... c>
bool with_channel_block(int channels, F& f, std::index_sequence<c...>) {
  return (... || (channels == kChannelBlocks[c] && (f.template operator()<kDims, kChannelBlocks[c]>(), true)));
}

template <typename F, std::size_t... d>
bool with_dims(const Config& config, F& f, std::index_sequence<d...>) {
  constexpr auto blocks = std::make_index_sequence<std::size(kChannelBlocks)>();
  return (... || (config.dims == kDimChoices[d] && with_channel_block<kDimChoices[d]>(config.channels, f, blocks)));
}

// Calls f.template operator()<kDims, kChannels>() with config's instantiation; false (nothing
// called) when config is not one of kDimChoices × kChannelBlocks.
template <typename F>
bool with_instance(const Config& config, F&& f) {
  return with_dims(config, f, std::make_index_sequence<std::size(kDimChoices)>());
}

// A launch of instantiation `config` for x (B, K, N) and the operator's width and radius: the
// grid, and the row length and radius in rows that the kernel takes. Without a window (width
// <= 0) one "row" of N pixels (every column block is visited); rows longer than N and radii
// beyond ±N rows give the same column ranges as N, and fit the kernel's int arithmetic.
struct Launch {
  dim3 grid;
  int width;
  int radius;
};

inline Launch plan(const Config& config, int64_t B, int64_t K, int64_t N, int64_t width, int64_t radius) {
  const int64_t rows_per_block = kThreads * rows_per_thread(config.channels);
  const dim3 grid(static_cast<unsigned>((N + rows_per_block - 1) / rows_per_block),
                  static_cast<unsigned>((K + config.channels - 1) / config.channels), static_cast<unsigned>(B));
  return {grid, static_cast<int>(width > 0 ? std::min<int64_t>(width, N) : N),
          static_cast<int>(width > 0 ? std::clamp<int64_t>(radius, -N, N) : 0)};
}

}  // namespace tscd::gaussian::device
