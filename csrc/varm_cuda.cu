// Variation-aware refinement (VARM) and PAR (contract in varm.h): CUDA kernels of the two
// primitives declared in varm.cpp.
#include "varm.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

namespace {

using tscd::varm::kRing;
using tscd::varm::ring_dx;
using tscd::varm::ring_dy;

constexpr int kThreads = 256;

__device__ __forceinline__ int clampi(int i, int n) { return min(max(i, 0), n - 1); }

// Dilation l from dil, bounded by ±reach = max(H, W): a longer step clamps to the same image
// edge, and the bound keeps y + dilation · dy inside int.
__device__ __forceinline__ int dilation(const int* dil, int l, int reach) { return min(max(dil[l], -reach), reach); }

// Logits of neighbour n at pixel (y, x): intensity a_n and (if wanted) variation v_n, each
// averaged over the 3 channels. inv[c] = intensity_scale / (σ_c + 1e-8).
__device__ __forceinline__ void neighbour_logits(const float* img, const int* dil, int n, int y, int x, int H,
                                                 int W, const float inv[3], bool variation, float& a, float& v) {
  const int d = dilation(dil, n >> 3, max(H, W)), dy = d * ring_dy(n & 7), dx = d * ring_dx(n & 7);
  const int ys = clampi(y + dy, H), xs = clampi(x + dx, W);
  // One row down / one column right in the neighbour image J_n, both clamped.
  const int yd = clampi(min(y + 1, H - 1) + dy, H), xr = clampi(min(x + 1, W - 1) + dx, W);
  const int HW = H * W;
  a = 0.f;
  v = 0.f;
  for (int c = 0; c < 3; ++c) {
    const float* plane = img + c * HW;
    const float j = plane[ys * W + xs];
    const float t = fabsf(j - plane[y * W + x]) * inv[c];
    a -= t * t;
    if (variation) {
      const float dd = j - plane[yd * W + xs], dr = j - plane[ys * W + xr];
      v += dd * dd + dr * dr;
    }
  }
  a /= 3.f;
  v /= 3.f;
}

// One thread per pixel; four passes over the N neighbours (mean, variance, softmax
// statistics, weights), so nothing per neighbour is kept in registers.
__global__ void varm_affinity_kernel(const float* __restrict__ images, const int* __restrict__ dil,
                                     const float* __restrict__ pos, float* __restrict__ out, int B, int N, int H,
                                     int W, float scale, float vw) {
  const int HW = H * W;
  const long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (idx >= (long long)B * HW) return;
  const int b = idx / HW, p = idx % HW, y = p / W, x = p % W;
  const float* img = images + (long long)b * 3 * HW;
  const bool variation = vw != 0.f;

  float mean[3] = {0.f, 0.f, 0.f}, inv[3] = {0.f, 0.f, 0.f};
  for (int n = 0; n < N; ++n) {
    const int d = dilation(dil, n >> 3, max(H, W));
    const int q = clampi(y + d * ring_dy(n & 7), H) * W + clampi(x + d * ring_dx(n & 7), W);
    for (int c = 0; c < 3; ++c) mean[c] += img[c * HW + q];
  }
  for (int c = 0; c < 3; ++c) mean[c] /= N;
  for (int n = 0; n < N; ++n) {
    const int d = dilation(dil, n >> 3, max(H, W));
    const int q = clampi(y + d * ring_dy(n & 7), H) * W + clampi(x + d * ring_dx(n & 7), W);
    for (int c = 0; c < 3; ++c) {
      const float dev = img[c * HW + q] - mean[c];
      inv[c] += dev * dev;
    }
  }
  for (int c = 0; c < 3; ++c) inv[c] = scale / (sqrtf(inv[c] / (N - 1)) + 1e-8f);

  // Online softmax statistics: running maxima and rescaled sums.
  float a_max = -INFINITY, a_sum = 0.f, v_max = -INFINITY, v_sum = 0.f;
  for (int n = 0; n < N; ++n) {
    float a, v;
    neighbour_logits(img, dil, n, y, x, H, W, inv, variation, a, v);
    if (a > a_max) {
      a_sum = a_sum * expf(a_max - a) + 1.f;
      a_max = a;
    } else {
      a_sum += expf(a - a_max);
    }
    if (v > v_max) {
      v_sum = v_sum * expf(v_max - v) + 1.f;
      v_max = v;
    } else {
      v_sum += expf(v - v_max);
    }
  }
  float* o = out + (long long)b * N * HW + p;
  for (int n = 0; n < N; ++n) {
    float a, v;
    neighbour_logits(img, dil, n, y, x, H, W, inv, variation, a, v);
    o[(long long)n * HW] = expf(a - a_max) / a_sum - vw * expf(v - v_max) / v_sum + pos[n];
  }
}

// One thread per (batch, block of kPropagateChannels channels, pixel): each of the pixel's N
// weights and neighbour indices is loaded / computed once and applied to every channel of the
// block (channels past K are skipped), summing over n in order as the CPU kernel does.
constexpr int kPropagateChannels = 8;

__global__ void __launch_bounds__(kThreads)
    varm_propagate_channel_block_kernel(const float* __restrict__ src, const float* __restrict__ weights,
                                        const int* __restrict__ dil, float* __restrict__ out, int B, int K, int N,
                                        int H, int W) {
  const int HW = H * W, channel_blocks = (K + kPropagateChannels - 1) / kPropagateChannels;
  const long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (idx >= (long long)B * channel_blocks * HW) return;
  const int p = idx % HW, y = p / W, x = p % W;
  const long long block = idx / HW;
  const int b = block / channel_blocks, k0 = (block % channel_blocks) * kPropagateChannels;
  const int kn = min(kPropagateChannels, K - k0);
  const float* s = src + ((long long)b * K + k0) * HW;
  const float* w = weights + (long long)b * N * HW + p;
  const int reach = max(H, W);
  float acc[kPropagateChannels];
#pragma unroll
  for (int k = 0; k < kPropagateChannels; ++k) acc[k] = 0.f;
  for (int n = 0; n < N; ++n) {
    const int d = dilation(dil, n >> 3, reach);
    const int q = clampi(y + d * ring_dy(n & 7), H) * W + clampi(x + d * ring_dx(n & 7), W);
    const float wn = w[(long long)n * HW];
#pragma unroll
    for (int k = 0; k < kPropagateChannels; ++k)
      if (k < kn) acc[k] += wn * s[(long long)k * HW + q];
  }
  float* o = out + ((long long)b * K + k0) * HW + p;
#pragma unroll
  for (int k = 0; k < kPropagateChannels; ++k)
    if (k < kn) o[(long long)k * HW] = acc[k];
}

// What the CUDA kernels need beyond the shared checks: dilations (and position_term) contiguous
// on the images' device.
void check_on_device(const at::Tensor& t, const char* name, const at::Tensor& images, const char* images_name) {
  tscd::check_contiguous(t, name);
  tscd::check_same_device(t, name, images, images_name);
}

// The kernels index a plane in int, with neighbour rows / columns up to max(H, W) outside it.
void check_plane_size(int64_t H, int64_t W, const char* name) {
  TORCH_CHECK(H * W <= std::numeric_limits<int>::max() && std::max(H, W) < (int64_t{1} << 30), name,
              ": at most 2^31 - 1 pixels and 2^30 rows or columns on CUDA, got ", H, " x ", W);
}

inline unsigned blocks_for(long long count) { return static_cast<unsigned>((count + kThreads - 1) / kThreads); }

at::Tensor affinity_cuda(const at::Tensor& images, const at::Tensor& dilations, double intensity_scale,
                         double variation_weight, const at::Tensor& position_term) {
  tscd::check_cuda(images, "images");
  tscd::varm::check_affinity_args(images, dilations, position_term);
  check_on_device(dilations, "dilations", images, "images");
  check_on_device(position_term, "position_term", images, "images");
  const int64_t N = kRing * dilations.numel(), B = images.size(0), H = images.size(2), W = images.size(3);
  check_plane_size(H, W, "images");
  const c10::cuda::CUDAGuard guard(images.device());
  auto out = at::empty({B, N, H, W}, images.options());
  if (out.numel() == 0) return out;
  varm_affinity_kernel<<<blocks_for(B * H * W), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      images.data_ptr<float>(), dilations.data_ptr<int>(), position_term.data_ptr<float>(), out.data_ptr<float>(),
      B, N, H, W, static_cast<float>(intensity_scale), static_cast<float>(variation_weight));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void propagate_cuda(const at::Tensor& src, const at::Tensor& weights, const at::Tensor& dilations, at::Tensor out) {
  tscd::check_cuda(src, "src");
  tscd::check_cuda(weights, "weights");
  tscd::check_cuda(out, "out");
  tscd::varm::check_propagate_args(src, weights, dilations, out);
  check_on_device(dilations, "dilations", src, "src");
  tscd::check_same_device(weights, "weights", src, "src");
  tscd::check_same_device(out, "out", src, "src");
  const int64_t N = kRing * dilations.numel(), B = src.size(0), K = src.size(1), H = src.size(2), W = src.size(3);
  check_plane_size(H, W, "src");
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(src.device());
  const int64_t channel_blocks = (K + kPropagateChannels - 1) / kPropagateChannels;
  varm_propagate_channel_block_kernel<<<blocks_for(B * channel_blocks * H * W), kThreads, 0,
                                        c10::cuda::getCurrentCUDAStream()>>>(
      src.data_ptr<float>(), weights.data_ptr<float>(), dilations.data_ptr<int>(), out.data_ptr<float>(), B, K, N,
      H, W);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(tscd, CUDA, m) {
  m.impl("varm_affinity", &affinity_cuda);
  m.impl("varm_propagate_", &propagate_cuda);
}
