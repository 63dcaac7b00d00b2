// Shared helpers of the tscd extension: argument checks used by every kernel, and the
// attributes of the CPU hot loops.
//
// Layout: <op>.h holds an operator's contract and the checks its CPU and CUDA kernels share,
// <op>.cpp its schema and CPU kernel, <op>_cuda.cu its CUDA launcher (a distinct file stem, so
// that the two object files do not collide) and <op>_cuda_kernels.cuh the launcher's device code
// and launch choices, free of torch (host_device.h) so that tests/kernels/cuda_host runs it on the CPU.
#pragma once
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "host_device.h"

#if !defined(__CUDACC__)
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#endif

// CPU only. TSCD_ISA_CLONES: a function compiled for AVX-512, AVX2 and baseline x86-64, one
// picked at load time (x86-64 GCC only); TSCD_INLINE: always-inlined helpers that such clones
// (and the per-ISA kernels of run_native below) call.
#if !defined(__CUDACC__)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TSCD_X86_DISPATCH 1
#define TSCD_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TSCD_ISA_CLONES
#endif
#define TSCD_INLINE inline __attribute__((always_inline))
#endif

namespace tscd {

inline void check_float32(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32 (the Python layer upcasts), got ",
              t.scalar_type());
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// shape: the expected layout for the message, e.g. "(B, K, H, W)".
inline void check_dim(const at::Tensor& t, const char* name, int64_t dim, const char* shape) {
  TORCH_CHECK(t.dim() == dim, name, " must be ", dim, "-D ", shape, ", got shape ", t.sizes());
}

// The usual input: float32, contiguous, dim-D.
inline void check_float32_contiguous(const at::Tensor& t, const char* name, int64_t dim, const char* shape) {
  check_dim(t, name, dim, shape);
  check_float32(t, name);
  check_contiguous(t, name);
}

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK(t.device() == like.device(), name, " must be on the device of ", like_name, " (", like.device(),
              "), got ", t.device());
}

#if !defined(__CUDACC__)
// Native-width CPU kernels. Kernel<kLanes>::run(args...) is written with GCC vector types of
// kLanes floats (always inlined); run_native calls the instance whose vectors fill the
// registers of the CPU found at load time: 16 lanes under AVX-512, 8 under AVX2 + FMA, 4 (SSE,
// or any other target) otherwise. Vectors wider than the registers would be split through the
// stack, which is why a single vector width compiled for several ISAs is slow on all but one.
namespace cpu {

#ifdef TSCD_X86_DISPATCH
enum class Isa { kBaseline, kAvx2, kAvx512 };

// The x86-64-v4 / v3 features that float kernels can use (their other ones: movbe, lzcnt and f16c,
// which GCC < 12 cannot query, are not emitted for them).
inline Isa detect_isa() {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512cd");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  return avx512 && avx2 ? Isa::kAvx512 : avx2 ? Isa::kAvx2 : Isa::kBaseline;
}

inline Isa isa() {
  static const Isa found = detect_isa();
  return found;
}

template <template <int> class Kernel, typename... Args>
__attribute__((target("arch=x86-64-v4"))) void run_avx512(Args... args) {
  Kernel<16>::run(args...);
}

template <template <int> class Kernel, typename... Args>
__attribute__((target("arch=x86-64-v3"))) void run_avx2(Args... args) {
  Kernel<8>::run(args...);
}

template <template <int> class Kernel, typename... Args>
void run_native(Args... args) {
  switch (isa()) {
    case Isa::kAvx512: return run_avx512<Kernel>(args...);
    case Isa::kAvx2: return run_avx2<Kernel>(args...);
    case Isa::kBaseline: return Kernel<4>::run(args...);
  }
}
#else
template <template <int> class Kernel, typename... Args>
void run_native(Args... args) {
  Kernel<4>::run(args...);
}
#endif

// Work (multiply-adds, roughly) that a thread must get before a kernel goes parallel: waking
// the pool costs more than smaller work saves, and far more when another process holds a core.
constexpr int64_t kMinParallelWork = int64_t{1} << 21;

// The threads for `work` split into `tasks`: one per kMinParallelWork, at most torch's threads.
inline int64_t worker_count(int64_t work, int64_t tasks) {
  return std::max<int64_t>(1, std::min({work / kMinParallelWork, tasks, static_cast<int64_t>(at::get_num_threads())}));
}

// One parallel region of `workers` threads, each running worker(claim) where claim() returns the
// next unclaimed task of [0, tasks), or −1 when none is left. Tasks are handed out one at a time,
// so a thread that the OS deschedules delays the region by one task, not by a static share.
template <typename Worker>
void run_workers(int64_t workers, int64_t tasks, const Worker& worker) {
  std::atomic<int64_t> next{0};
  const auto claim = [&]() -> int64_t {
    const int64_t task = next.fetch_add(1, std::memory_order_relaxed);
    return task < tasks ? task : -1;
  };
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) { worker(claim); });
}

}  // namespace cpu
#endif

}  // namespace tscd
