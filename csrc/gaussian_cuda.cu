// Tiled Gaussian-kernel product Y = W·X (contract in gaussian.h): the CUDA launcher of the
// operator declared in gaussian.cpp; the kernel and its launch choices are in
// gaussian_cuda_kernels.cuh.
#include "gaussian.h"
#include "gaussian_cuda_kernels.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

namespace {

namespace device = tscd::gaussian::device;

at::Tensor gaussian_product_cuda(const at::Tensor& feats, const at::Tensor& x, double cut2, int64_t width,
                                 int64_t radius) {
  tscd::gaussian::check_args(feats, x);
  tscd::check_cuda(x, "x");
  tscd::check_same_device(feats, "feats", x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), K = x.size(1), N = x.size(2), D = feats.size(1);
  // Row indices (up to N plus a block) and K fit in int; B is the grid's z extent.
  TORCH_CHECK(N < (int64_t{1} << 30) && K <= std::numeric_limits<int>::max() && B <= 65535,
              "gaussian_product: at most 2^30 pixels, 2^31 - 1 channels and 65535 batch elements on CUDA, got x ",
              x.sizes());
  auto y = at::empty_like(x);
  if (y.numel() == 0) return y;
  const device::Config config = device::choose_config(K, D);
  const device::Launch launch = device::plan(config, B, K, N, width, radius);
  TORCH_CHECK(launch.grid.y <= 65535, "gaussian_product: at most 65535 blocks of ", config.channels,
              " channels on CUDA, got x ", x.sizes());
  const bool launched = device::with_instance(config, [&]<int kDims, int kChannels>() {
    device::gaussian_product_register_tiled_kernel<kDims, kChannels>
        <<<launch.grid, device::kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            feats.data_ptr<float>(), x.data_ptr<float>(), y.data_ptr<float>(), static_cast<int>(N),
            static_cast<int>(K), static_cast<int>(D), static_cast<float>(cut2), launch.width, launch.radius);
  });
  TORCH_CHECK(launched, "gaussian_product: no kernel for ", config.dims, " dimensions and a block of ",
              config.channels, " channels");
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(tscd, CUDA, m) { m.impl("gaussian_product", &gaussian_product_cuda); }
