// Pairwise pass of the self-correspondence distillation loss (contract in scd.h): the CUDA
// launcher of the operator declared in scd.cpp; the kernel and its launch choices are in
// scd_cuda_kernels.cuh.
#include "scd.h"
#include "scd_cuda_kernels.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

namespace {

namespace device = tscd::scd::device;

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
  const int threads = device::block_threads(K, C, with_grad, limit);
  const device::Launch launch = device::plan(threads, B, K, C, nx, with_grad);
  TORCH_CHECK(launch.shared_bytes <= limit, "scd_pass: ", K, " + ", C, " channels exceed the GPU's shared memory");
  if (launch.shared_bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(device::scd_pass_row_tile_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)launch.shared_bytes));
  device::scd_pass_row_tile_kernel<<<launch.grid, threads, launch.shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(
      xs.data_ptr<float>(), ys.data_ptr<float>(), xt.data_ptr<float>(), yt.data_ptr<float>(), ar.data_ptr<float>(),
      ac.data_ptr<float>(), rowsum.data_ptr<float>(), with_grad ? grad.data_ptr<float>() : nullptr, (int)K, (int)C,
      (int)nx, (int)ny, with_grad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rowsum, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(tscd, CUDA, m) { m.impl("scd_pass", &scd_pass_cuda); }
