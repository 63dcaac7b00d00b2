// Pairwise pass of the self-correspondence distillation loss (contract in scd.h): CUDA kernel
// of the operator declared in scd.cpp.
//
// One thread owns one row i; a block stages kTileY columns of Y in shared memory at a time,
// so no Nx×Ny matrix exists.
#include "scd.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace {

constexpr int kTileY = 32;  // columns of Y staged in shared memory per step

// Shared memory (floats): own rows (K+C, T) channel-major so that a warp reads consecutive
// banks, gradient accumulators (K, T), the Y tile (K+C, kTileY) and its offsets ac (kTileY).
int64_t shared_floats(int64_t K, int64_t C, int64_t threads, bool with_grad) {
  return (K + C) * (threads + kTileY) + (with_grad ? K * threads : 0) + kTileY;
}

__global__ void scd_pass_kernel(const float* __restrict__ xs, const float* __restrict__ ys,
                                const float* __restrict__ xt, const float* __restrict__ yt,
                                const float* __restrict__ ar, const float* __restrict__ ac,
                                float* __restrict__ rowsum, float* __restrict__ grad, int K, int C, int nx,
                                int ny, bool with_grad) {
  extern __shared__ float smem[];
  const int T = blockDim.x, tid = threadIdx.x, b = blockIdx.y;
  const int i = blockIdx.x * T + tid;
  const bool valid = i < nx;
  float* own = smem;
  float* acc = own + (K + C) * T;
  float* tile = acc + (with_grad ? K * T : 0);
  float* tile_ac = tile + (K + C) * kTileY;
  xs += (int64_t)b * K * nx;
  xt += (int64_t)b * C * nx;
  ys += (int64_t)b * K * ny;
  yt += (int64_t)b * C * ny;
  ac += (int64_t)b * ny;

  for (int k = 0; k < K; ++k) own[k * T + tid] = valid ? xs[(int64_t)k * nx + i] : 0.f;
  for (int c = 0; c < C; ++c) own[(K + c) * T + tid] = valid ? xt[(int64_t)c * nx + i] : 0.f;
  if (with_grad)
    for (int k = 0; k < K; ++k) acc[k * T + tid] = 0.f;
  const float a = valid ? ar[(int64_t)b * nx + i] : 0.f;
  float sum = 0.f;

  for (int j0 = 0; j0 < ny; j0 += kTileY) {
    __syncthreads();  // the previous tile is no longer read
    for (int e = tid; e < (K + C) * kTileY; e += T) {
      const int ch = e / kTileY, j = j0 + e % kTileY;
      tile[e] = j < ny ? (ch < K ? ys[(int64_t)ch * ny + j] : yt[(int64_t)(ch - K) * ny + j]) : 0.f;
    }
    for (int e = tid; e < kTileY; e += T) tile_ac[e] = j0 + e < ny ? ac[j0 + e] : 0.f;
    __syncthreads();
    const int jn = min(kTileY, ny - j0);
    for (int jj = 0; jj < jn; ++jj) {
      float s = 0.f, t = 0.f;
      for (int k = 0; k < K; ++k) s += own[k * T + tid] * tile[k * kTileY + jj];
      for (int c = 0; c < C; ++c) t += own[(K + c) * T + tid] * tile[(K + c) * kTileY + jj];
      if (s > 0.f) {
        const float f = t + a + tile_ac[jj];
        sum += s * f;
        if (with_grad)
          for (int k = 0; k < K; ++k) acc[k * T + tid] += f * tile[k * kTileY + jj];
      }
    }
  }
  if (!valid) return;
  rowsum[(int64_t)b * nx + i] = sum;
  if (with_grad)
    for (int k = 0; k < K; ++k) grad[((int64_t)b * K + k) * nx + i] = acc[k * T + tid];
}

std::tuple<at::Tensor, at::Tensor> scd_pass_cuda(const at::Tensor& xs_in, const at::Tensor& ys_in,
                                                 const at::Tensor& xt_in, const at::Tensor& yt_in,
                                                 const at::Tensor& ar_in, const at::Tensor& ac_in, bool with_grad) {
  tscd::scd::check_args(xs_in, ys_in, xt_in, yt_in, ar_in, ac_in);
  const c10::cuda::CUDAGuard guard(xs_in.device());
  const auto xs = xs_in.contiguous(), ys = ys_in.contiguous(), xt = xt_in.contiguous(), yt = yt_in.contiguous();
  const auto ar = ar_in.contiguous(), ac = ac_in.contiguous();
  const int64_t B = xs.size(0), K = xs.size(1), C = xt.size(1), nx = xs.size(2), ny = ys.size(2);
  auto rowsum = at::empty({B, nx}, xs.options());
  auto grad = at::empty({B, K, with_grad ? nx : 0}, xs.options());
  if (B == 0 || nx == 0) return {rowsum.zero_(), grad.zero_()};

  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, xs.get_device()));
  int threads = 128;
  while (threads > 32 && shared_floats(K, C, threads, with_grad) * 4 > limit) threads /= 2;
  const int64_t bytes = shared_floats(K, C, threads, with_grad) * 4;
  TORCH_CHECK(bytes <= limit, "scd_pass: ", K, " + ", C, " channels exceed the GPU's shared memory");
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(scd_pass_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  const dim3 blocks((nx + threads - 1) / threads, B);
  scd_pass_kernel<<<blocks, threads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
      xs.data_ptr<float>(), ys.data_ptr<float>(), xt.data_ptr<float>(), yt.data_ptr<float>(), ar.data_ptr<float>(),
      ac.data_ptr<float>(), rowsum.data_ptr<float>(), with_grad ? grad.data_ptr<float>() : nullptr, (int)K, (int)C,
      (int)nx, (int)ny, with_grad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rowsum, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(tscd, CUDA, m) { m.impl("scd_pass", &scd_pass_cuda); }
