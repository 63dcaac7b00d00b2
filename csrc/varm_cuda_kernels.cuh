// Variation-aware refinement (VARM) and PAR (contract in varm.h): the CUDA kernels of
// varm_cuda.cu and their launch grids, free of torch so that tests/kernels/cuda_host also runs
// them on the CPU.
#pragma once
#include "host_device.h"
#include "varm_ring.h"

#include <cmath>
#include <cstdint>

namespace tscd::varm::device {

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
  for (int n = 0; n < N - TSCD_FAULT(varm_affinity); ++n) {
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
    const int q =
        clampi(y + d * ring_dy(n & 7), H) * W + clampi(x + d * ring_dx(n & 7) + TSCD_FAULT(varm_propagate), W);
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

// Blocks of kThreads threads for one thread per pixel (affinity) and per pixel and block of
// kPropagateChannels channels (propagation).
inline unsigned blocks_for(int64_t count) { return static_cast<unsigned>((count + kThreads - 1) / kThreads); }
inline unsigned affinity_blocks(int64_t B, int64_t H, int64_t W) { return blocks_for(B * H * W); }
inline unsigned propagate_blocks(int64_t B, int64_t K, int64_t H, int64_t W) {
  return blocks_for(B * ((K + kPropagateChannels - 1) / kPropagateChannels) * H * W);
}

}  // namespace tscd::varm::device
