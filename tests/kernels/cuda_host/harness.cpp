// C entry points (for ctypes) that run each CUDA __global__ of csrc/*_cuda_kernels.cuh on the CPU
// through cuda_host.h, with the grids and instantiations the launchers of csrc/*_cuda.cu pick
// (the same functions of the kernel headers), on caller-owned contiguous float32 / int32 arrays.
// The run functions return nullptr on success, else the error (valid until this thread's next
// call).
#include "cuda_host.h"

#include "gaussian_cuda_kernels.cuh"
#include "scd_cuda_kernels.cuh"
#include "varm_cuda_kernels.cuh"

#include <cstdint>
#include <exception>
#include <iterator>
#include <string>

// The storage of scd_pass_row_tile_kernel's `extern __shared__ float smem[]`, as large as the
// opt-in limit of the largest GPU the compile check targets (sm_90: 227 KiB).
namespace tscd::scd::device {
alignas(16) thread_local float smem[232448 / sizeof(float)];
}  // namespace tscd::scd::device

namespace {

thread_local std::string last_error;

template <typename F>
const char* guarded(F&& run) {
  try {
    run();
    return nullptr;
  } catch (const std::exception& error) {
    last_error = error.what();
    return last_error.c_str();
  }
}

constexpr cuda_host::DynamicShared kNoShared{};

}  // namespace

extern "C" {

// Injects the off-by-one marked TSCD_FAULT(kernel) into `kernel` ("" or nullptr: none).
void cuda_host_inject_fault(const char* kernel) {
  thread_local std::string name;
  name = kernel == nullptr ? "" : kernel;
  cuda_host::injected_fault = name;
}

// ---- gaussian_product: the channel blocks and dimensions the launcher instantiates.

const int* gaussian_channel_blocks(int* count) {
  *count = static_cast<int>(std::size(tscd::gaussian::device::kChannelBlocks));
  return tscd::gaussian::device::kChannelBlocks;
}

const int* gaussian_dim_choices(int* count) {
  *count = static_cast<int>(std::size(tscd::gaussian::device::kDimChoices));
  return tscd::gaussian::device::kDimChoices;
}

// The launcher's instantiation for K channels and D feature dimensions.
void gaussian_choose_config(int64_t K, int64_t D, int* dims, int* channels) {
  const auto config = tscd::gaussian::device::choose_config(K, D);
  *dims = config.dims;
  *channels = config.channels;
}

// y (B, K, N) = W·x for feats (B, D, N), as gaussian_product_cuda launches instantiation
// (dims, channels).
const char* gaussian_product(const float* feats, const float* x, float* y, int64_t B, int64_t K, int64_t N,
                             int64_t D, double cut2, int64_t width, int64_t radius, int dims, int channels) {
  return guarded([&] {
    namespace device = tscd::gaussian::device;
    const device::Config config{dims, channels};
    const device::Launch launch = device::plan(config, B, K, N, width, radius);
    const bool launched = device::with_instance(config, [&]<int kDims, int kChannels>() {
      cuda_host::launch(device::gaussian_product_register_tiled_kernel<kDims, kChannels>, launch.grid,
                        device::kThreads, kNoShared, feats, x, y, static_cast<int>(N), static_cast<int>(K),
                        static_cast<int>(D), static_cast<float>(cut2), launch.width, launch.radius);
    });
    if (!launched)
      throw std::invalid_argument("no instantiation for " + std::to_string(dims) + " dimensions and " +
                                  std::to_string(channels) + " channels");
  });
}

// ---- scd_pass: the block sizes the launcher tries, and its pick for a shared-memory limit.

const int* scd_block_sizes(int* count) {
  *count = static_cast<int>(std::size(tscd::scd::device::kBlockThreads));
  return tscd::scd::device::kBlockThreads;
}

int scd_block_threads(int64_t K, int64_t C, bool with_grad, int64_t limit) {
  return tscd::scd::device::block_threads(K, C, with_grad, limit);
}

// rowsum (B, nx) and, with_grad, grad (B, K, nx) as scd_pass_cuda launches them with blocks of
// `threads`.
const char* scd_pass(const float* xs, const float* ys, const float* xt, const float* yt, const float* ar,
                     const float* ac, float* rowsum, float* grad, int64_t B, int64_t K, int64_t C, int64_t nx,
                     int64_t ny, bool with_grad, int threads) {
  return guarded([&] {
    namespace device = tscd::scd::device;
    const device::Launch launch = device::plan(threads, B, K, C, nx, with_grad);
    const cuda_host::DynamicShared shared{std::as_writable_bytes(std::span(device::smem)),
                                          static_cast<std::size_t>(launch.shared_bytes)};
    cuda_host::launch(device::scd_pass_row_tile_kernel, launch.grid, threads, shared, xs, ys, xt, yt, ar, ac,
                      rowsum, with_grad ? grad : nullptr, static_cast<int>(K), static_cast<int>(C),
                      static_cast<int>(nx), static_cast<int>(ny), with_grad);
  });
}

// ---- varm: L dilations, N = 8·L neighbours.

const char* varm_affinity(const float* images, const int* dilations, const float* position_term, float* out,
                          int64_t B, int64_t L, int64_t H, int64_t W, double intensity_scale,
                          double variation_weight) {
  return guarded([&] {
    namespace device = tscd::varm::device;
    cuda_host::launch(device::varm_affinity_kernel, device::affinity_blocks(B, H, W), device::kThreads, kNoShared,
                      images, dilations, position_term, out, static_cast<int>(B),
                      static_cast<int>(tscd::varm::kRing * L), static_cast<int>(H), static_cast<int>(W),
                      static_cast<float>(intensity_scale), static_cast<float>(variation_weight));
  });
}

const char* varm_propagate(const float* src, const float* weights, const int* dilations, float* out, int64_t B,
                           int64_t K, int64_t L, int64_t H, int64_t W) {
  return guarded([&] {
    namespace device = tscd::varm::device;
    cuda_host::launch(device::varm_propagate_channel_block_kernel, device::propagate_blocks(B, K, H, W),
                      device::kThreads, kNoShared, src, weights, dilations, out, static_cast<int>(B),
                      static_cast<int>(K), static_cast<int>(tscd::varm::kRing * L), static_cast<int>(H),
                      static_cast<int>(W));
  });
}

}  // extern "C"
