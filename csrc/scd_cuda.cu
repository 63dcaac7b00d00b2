// Pairwise pass of the self-correspondence distillation loss (contract in scd.h): CUDA kernel
// of the operator declared in scd.cpp.
//
// One thread owns one row i; a block stages kTileY columns of Y in shared memory at a time,
// so no Nx×Ny matrix exists. Each thread keeps kGroup dot products s_ij and t_ij of its row
// in registers: each of its own values (read from global memory, coalesced over the block's
// rows) is loaded once per group and used for kGroup FMAs, with the tile read by float4
// broadcasts. Only the tile and the gradient accumulators live in shared memory.
#include "scd.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

namespace {

constexpr int kTileY = 32;  // columns of Y staged in shared memory per step
constexpr int kGroup = 16;  // columns whose s_ij, t_ij a thread holds in registers at a time
static_assert(kTileY % kGroup == 0 && kGroup % 4 == 0, "groups of whole float4s that tile a step");
constexpr int kMaxThreads = 128;

// Shared memory (floats): gradient accumulators (K, T) channel-major so that a warp reads
// consecutive banks, the Y tile (K+C, kTileY) and its offsets ac (kTileY).
int64_t shared_floats(int64_t K, int64_t C, int64_t threads, bool with_grad) {
  return (with_grad ? K * threads : 0) + (K + C) * kTileY + kTileY;
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
    const bool in = j < ny;
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

std::tuple<at::Tensor, at::Tensor> scd_pass_cuda(const at::Tensor& xs_in, const at::Tensor& ys_in,
                                                 const at::Tensor& xt_in, const at::Tensor& yt_in,
                                                 const at::Tensor& ar_in, const at::Tensor& ac_in, bool with_grad) {
  tscd::scd::check_args(xs_in, ys_in, xt_in, yt_in, ar_in, ac_in);
  tscd::check_cuda(xs_in, "xs");
  tscd::check_same_device(ys_in, "ys", xs_in, "xs");
  tscd::check_same_device(xt_in, "xt", xs_in, "xs");
  tscd::check_same_device(yt_in, "yt", xs_in, "xs");
  tscd::check_same_device(ar_in, "ar", xs_in, "xs");
  tscd::check_same_device(ac_in, "ac", xs_in, "xs");
  const c10::cuda::CUDAGuard guard(xs_in.device());
  const auto xs = xs_in.contiguous(), ys = ys_in.contiguous(), xt = xt_in.contiguous(), yt = yt_in.contiguous();
  const auto ar = ar_in.contiguous(), ac = ac_in.contiguous();
  const int64_t B = xs.size(0), K = xs.size(1), C = xt.size(1), nx = xs.size(2), ny = ys.size(2);
  auto rowsum = at::empty({B, nx}, xs.options());
  auto grad = at::empty({B, K, with_grad ? nx : 0}, xs.options());
  if (B == 0 || nx == 0) return {rowsum.zero_(), grad.zero_()};
  TORCH_CHECK(B <= 65535 && nx <= std::numeric_limits<int>::max() && ny <= std::numeric_limits<int>::max(),
              "scd_pass: at most 65535 batch elements and 2^31 - 1 rows / columns on CUDA, got xs ", xs.sizes(),
              " and ys ", ys.sizes());

  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, xs.get_device()));
  int threads = kMaxThreads;  // a power of two from kMaxThreads down to kTileY
  while (threads > kTileY && shared_floats(K, C, threads, with_grad) * 4 > limit) threads /= 2;
  const int64_t bytes = shared_floats(K, C, threads, with_grad) * 4;
  TORCH_CHECK(bytes <= limit, "scd_pass: ", K, " + ", C, " channels exceed the GPU's shared memory");
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(
        cudaFuncSetAttribute(scd_pass_row_tile_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  const dim3 blocks((nx + threads - 1) / threads, B);
  scd_pass_row_tile_kernel<<<blocks, threads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
      xs.data_ptr<float>(), ys.data_ptr<float>(), xt.data_ptr<float>(), yt.data_ptr<float>(), ar.data_ptr<float>(),
      ac.data_ptr<float>(), rowsum.data_ptr<float>(), with_grad ? grad.data_ptr<float>() : nullptr, (int)K, (int)C,
      (int)nx, (int)ny, with_grad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rowsum, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(tscd, CUDA, m) { m.impl("scd_pass", &scd_pass_cuda); }
