// Variation-aware refinement (VARM) and PAR (contract in varm.h): the CUDA launchers of the two
// primitives declared in varm.cpp; the kernels and their grids are in varm_cuda_kernels.cuh.
#include "varm.h"
#include "varm_cuda_kernels.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

namespace {

namespace device = tscd::varm::device;
using tscd::varm::kRing;

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
  device::varm_affinity_kernel<<<device::affinity_blocks(B, H, W), device::kThreads, 0,
                                 c10::cuda::getCurrentCUDAStream()>>>(
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
  device::varm_propagate_channel_block_kernel<<<device::propagate_blocks(B, K, H, W), device::kThreads, 0,
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
