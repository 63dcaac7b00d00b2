// Tiled Gaussian-kernel product Y = W·X (contract in gaussian.h): CUDA kernel of the
// operator declared in gaussian.cpp.
//
// One thread per row i and a chunk of kChunk channels held in registers; the block sweeps the
// columns in tiles of kThreads, staging the tile's features and channel values in shared
// memory, so every weight is computed once per channel chunk and never stored.
#include "gaussian.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

constexpr int kThreads = 128;  // rows per block = columns per tile
constexpr int kChunk = 32;     // channels per block
using tscd::gaussian::kMaxDims;

__global__ void gaussian_product_kernel(const float* __restrict__ feats, const float* __restrict__ x,
                                        float* __restrict__ y, int N, int K, int D, float cut2, int width,
                                        int radius) {
  __shared__ float fj[kMaxDims][kThreads];
  __shared__ float xj[kChunk][kThreads];
  const int b = blockIdx.z, k0 = blockIdx.y * kChunk;
  const int i = blockIdx.x * kThreads + threadIdx.x;
  const int kn = min(kChunk, K - k0);
  const float* fb = feats + (long long)b * D * N;
  const float* xb = x + ((long long)b * K + k0) * N;

  float fi[kMaxDims];
  for (int d = 0; d < kMaxDims; ++d) fi[d] = (d < D && i < N) ? fb[(long long)d * N + i] : 0.f;
  float acc[kChunk];
  for (int k = 0; k < kChunk; ++k) acc[k] = 0.f;

  const int i0 = blockIdx.x * kThreads, i1 = min(N, i0 + kThreads) - 1;
  const int j_begin = max(0, i0 / width - radius) * width;
  const int j_end = min((long long)N, (long long)(i1 / width + radius + 1) * width);
  for (int j0 = j_begin; j0 < j_end; j0 += kThreads) {
    const int j = j0 + threadIdx.x;
    for (int d = 0; d < D; ++d) fj[d][threadIdx.x] = j < j_end ? fb[(long long)d * N + j] : 0.f;
    for (int k = 0; k < kChunk; ++k) xj[k][threadIdx.x] = (j < j_end && k < kn) ? xb[(long long)k * N + j] : 0.f;
    __syncthreads();
    const int nj = min(kThreads, j_end - j0);
    for (int c = 0; c < nj; ++c) {
      float d2 = 0.f;
      for (int d = 0; d < D; ++d) {
        const float diff = fi[d] - fj[d][c];
        d2 += diff * diff;
      }
      const float w = d2 <= cut2 ? exp2f(-d2) : 0.f;
#pragma unroll
      for (int k = 0; k < kChunk; ++k) acc[k] += w * xj[k][c];
    }
    __syncthreads();
  }
  if (i < N)
    for (int k = 0; k < kn; ++k) y[((long long)b * K + k0 + k) * N + i] = acc[k];
}

at::Tensor gaussian_product_cuda(const at::Tensor& feats, const at::Tensor& x, double cut2, int64_t width,
                                 int64_t radius) {
  tscd::gaussian::check_args(feats, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int B = x.size(0), K = x.size(1), N = x.size(2), D = feats.size(1);
  auto y = at::empty_like(x);
  if (y.numel() == 0) return y;
  // No window: one "row" of N pixels (every column block is visited).
  const int row = width > 0 ? static_cast<int>(width) : N, rows = width > 0 ? static_cast<int>(radius) : 0;
  const dim3 grid((N + kThreads - 1) / kThreads, (K + kChunk - 1) / kChunk, B);
  gaussian_product_kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      feats.data_ptr<float>(), x.data_ptr<float>(), y.data_ptr<float>(), N, K, D,
      static_cast<float>(cut2), row, rows);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(tscd, CUDA, m) { m.impl("gaussian_product", &gaussian_product_cuda); }
