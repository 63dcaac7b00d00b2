// Pairwise pass of the self-correspondence distillation loss (contract in scd.h): the CUDA
// kernel of scd_cuda.cu and its launch choices, free of torch so that tests/kernels/cuda_host
// also runs them on the CPU.
//
// One thread owns one row i; a block stages kTileY columns of Y in shared memory at a time,
// so no Nx×Ny matrix exists. Each thread keeps kGroup dot products s_ij and t_ij of its row
// in registers: each of its own values (read from global memory, coalesced over the block's
// rows) is loaded once per group and used for kGroup FMAs, with the tile read by float4
// broadcasts. Only the tile and the gradient accumulators live in shared memory.
#pragma once
#include "host_device.h"

#include <cstdint>
#include <iterator>

namespace tscd::scd::device {

constexpr int kTileY = 32;  // columns of Y staged in shared memory per step
constexpr int kGroup = 16;  // columns whose s_ij, t_ij a thread holds in registers at a time
static_assert(kTileY % kGroup == 0 && kGroup % 4 == 0, "groups of whole float4s that tile a step");
// The block sizes the launcher tries, largest first: multiples of kTileY (the staging loop).
constexpr int kBlockThreads[] = {128, 64, 32};
constexpr int kMaxThreads = kBlockThreads[0];
static_assert([] {
  for (const int threads : kBlockThreads)
    if (threads % kTileY != 0) return false;
  return true;
}(), "block sizes must be multiples of kTileY");

// Shared memory (floats): gradient accumulators (K, T) channel-major so that a warp reads
// consecutive banks, the Y tile (K+C, kTileY) and its offsets ac (kTileY).
inline int64_t shared_floats(int64_t K, int64_t C, int64_t threads, bool with_grad) {
  return (with_grad ? K * threads : 0) + (K + C) * kTileY + kTileY;
}

// The largest of kBlockThreads whose shared memory fits `limit` bytes (the smallest if none
// does: the caller checks its bytes).
inline int block_threads(int64_t K, int64_t C, bool with_grad, int64_t limit) {
  for (const int threads : kBlockThreads)
    if (shared_floats(K, C, threads, with_grad) * 4 <= limit) return threads;
  return kBlockThreads[std::size(kBlockThreads) - 1];
}

// A launch for B images of nx rows with blocks of `threads`: its grid and dynamic shared memory.
struct Launch {
  dim3 grid;
  int64_t shared_bytes;
};

inline Launch plan(int threads, int64_t B, int64_t K, int64_t C, int64_t nx, bool with_grad) {
  return {dim3(static_cast<unsigned>((nx + threads - 1) / threads), static_cast<unsigned>(B)),
          shared_floats(K, C, threads, with_grad) * 4};
}

// v[q] += o · row[q] for q < kGroup; row is 16-byte aligned (float4 broadcast loads).
__device__ __forceinline__ void fma_row(float o, const float* row, float (&v)[kGroup]) {
#pragma unroll
  for (int q = 0; q < kGroup; q += 4) {
    const float4 y4 = *reinterpret_cast<const float4*>(row + q);
    v[q] += o * y4.x;
    v[q + 1] += o * y4.y;
    v[q + 2] += o * y4.z;
    v[q + 3] += o * y4.w;
  }
}

__global__ void __launch_bounds__(kMaxThreads, 4)
    scd_pass_row_tile_kernel(const float* __restrict__ xs, const float* __restrict__ ys,
                             const float* __restrict__ xt, const float* __restrict__ yt,
                             const float* __restrict__ ar, const float* __restrict__ ac,
                             float* __restrict__ rowsum, float* __restrict__ grad, int K, int C, int nx, int ny,
                             bool with_grad) {
  extern __shared__ __align__(16) float smem[];
  const int T = blockDim.x, tid = threadIdx.x, b = blockIdx.y;
  const int i = blockIdx.x * T + tid;
  const bool valid = i < nx;
  // Rows past nx work on a copy of row nx - 1 (so every load is in bounds) and store nothing.
  const int row = min(i, nx - 1);
  float* acc = smem;
  // T and kTileY are multiples of 4, so the tile and each of its rows are 16-byte aligned.
  float* tile = acc + (with_grad ? K * T : 0);
  float* tile_ac = tile + (K + C) * kTileY;
  xs += (int64_t)b * K * nx + row;
  xt += (int64_t)b * C * nx + row;
  ys += (int64_t)b * K * ny;
  yt += (int64_t)b * C * ny;
  ac += (int64_t)b * ny;

  if (with_grad)
    for (int k = 0; k < K; ++k) acc[k * T + tid] = 0.f;
  const float a = ar[(int64_t)b * nx + row];
  float sum = 0.f;

  for (int j0 = 0; j0 < ny; j0 += kTileY) {
    __syncthreads();  // the previous tile is no longer read
    // Thread tid stages column col = tid % kTileY of channels tid / kTileY, + T / kTileY, ...
    // (T is a multiple of kTileY), so a warp reads kTileY consecutive columns.
    const int col = tid % kTileY, j = j0 + col;
    const bool in = j < ny + TSCD_FAULT(scd_pass);
    for (int ch = tid / kTileY; ch < K; ch += T / kTileY)
      tile[ch * kTileY + col] = in ? ys[(int64_t)ch * ny + j] : 0.f;
    for (int ch = tid / kTileY; ch < C; ch += T / kTileY)
      tile[(K + ch) * kTileY + col] = in ? yt[(int64_t)ch * ny + j] : 0.f;
    if (tid < kTileY) tile_ac[col] = in ? ac[j] : 0.f;
    __syncthreads();
    // Columns j >= ny hold zeros: s = 0 there, so they add nothing.
    for (int g = 0; g < min(kTileY, ny - j0); g += kGroup) {
      float s[kGroup], t[kGroup];
#pragma unroll
      for (int q = 0; q < kGroup; ++q) s[q] = t[q] = 0.f;
      const float* y_col = &tile[g];  // column g of channel k (then of teacher channel c)
      const float* own = xs;          // xs[k, row]
#pragma unroll 4
      for (int k = 0; k < K; ++k, own += nx, y_col += kTileY) fma_row(*own, y_col, s);
      own = xt;  // xt[c, row]
#pragma unroll 4
      for (int c = 0; c < C; ++c, own += nx, y_col += kTileY) fma_row(*own, y_col, t);
      // From here s[q] holds 1[s > 0] f, the gradient's column weight.
#pragma unroll
      for (int q = 0; q < kGroup; ++q) {
        const float f = t[q] + a + tile_ac[g + q];
        const bool positive = s[q] > 0.f;
        if (positive) sum += s[q] * f;
        s[q] = positive ? f : 0.f;
      }
      if (with_grad)
        for (int k = 0; k < K; ++k) {
          const float* y_row = &tile[k * kTileY + g];
          float acc_k = acc[k * T + tid];
#pragma unroll
          for (int q = 0; q < kGroup; q += 4) {
            const float4 y4 = *reinterpret_cast<const float4*>(y_row + q);
            acc_k += s[q] * y4.x;
            acc_k += s[q + 1] * y4.y;
            acc_k += s[q + 2] * y4.z;
            acc_k += s[q + 3] * y4.w;
          }
          acc[k * T + tid] = acc_k;
        }
    }
  }
  if (!valid) return;
  rowsum[(int64_t)b * nx + i] = sum;
  if (with_grad)
    for (int k = 0; k < K; ++k) grad[((int64_t)b * K + k) * nx + i] = acc[k * T + tid];
}

}  // namespace tscd::scd::device
