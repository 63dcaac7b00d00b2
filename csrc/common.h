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
#include <cstring>
#include <exception>
#include <thread>
#include <vector>
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

// A GCC vector V of floats loaded from p, or stored to it, assuming only float alignment: tensor
// data and std::vector storage are not over-aligned.
template <typename V>
TSCD_INLINE V load_unaligned(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V>
TSCD_INLINE void store_unaligned(float* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

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

// exp(x) for x ≤ 0 on a GCC vector of floats (0 below −87.3, where e^x is below the smallest
// normal float; NaN stays NaN): x = n ln2 + r with |r| ≤ ln2/2 (ln2 split in two so that n ln2
// is exact), e^r from Cephes' expf polynomial (about 1 ulp), 2^n added to the exponent bits.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // always inlined: no vector crosses an ABI boundary
template <int L>
struct Lanes {
  typedef float V __attribute__((vector_size(L * sizeof(float))));
  typedef int32_t I __attribute__((vector_size(L * sizeof(float))));
};

// load_unaligned / store_unaligned of L floats by their count: a kernel templated on L passes L,
// since GCC drops the vector attribute of a typedef that depends on L when it is given as a
// template argument (the float it was made from arrives instead).
template <int L>
TSCD_INLINE typename Lanes<L>::V load_lanes(const float* p) {
  return load_unaligned<typename Lanes<L>::V>(p);
}

template <int L>
TSCD_INLINE void store_lanes(float* p, const typename Lanes<L>::V& v) {
  store_unaligned<typename Lanes<L>::V>(p, v);
}

template <int L>
TSCD_INLINE typename Lanes<L>::V exp_nonpositive(const typename Lanes<L>::V& x) {
  typedef typename Lanes<L>::V V;
  typedef typename Lanes<L>::I I;
  constexpr float kRound = 12582912.0f;  // 1.5 · 2^23: adding it rounds to an integer
  const V t = x * 1.44269504088896341f + kRound;
  const V n = t - kRound;
  V r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const V z = r * r;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  const V e = (V)((I)p + ((I)t - (I)(V{} + kRound)) * (1 << 23));
  return (V)((I)e & ~(I)(x < -87.3f));
}

// log(x) for normal x > 0 on a GCC vector of floats (+inf and NaN kept): x = m · 2^e with
// m ∈ [√½, √2), log m from Cephes' logf polynomial (about 1 ulp), e · ln2 in two parts.
template <int L>
TSCD_INLINE typename Lanes<L>::V log_positive(const typename Lanes<L>::V& x) {
  typedef typename Lanes<L>::V V;
  typedef typename Lanes<L>::I I;
  const I bits = (I)x;
  V e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, V);
  V m = (V)((bits & 0x807fffff) | 0x3f000000);  // in [½, 1)
  const I small = (I)(m < 0.707106781186547524f);
  e -= (V)((I)(V{} + 1.0f) & small);
  m = m + (V)((I)m & small) - 1.0f;  // 2m − 1 below √½, m − 1 above
  const V z = m * m;
  V p = V{} + 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  V y = m * z * p;
  y += e * -2.12194440e-4f;
  y -= 0.5f * z;
  const V result = m + y + e * 0.693359375f;
  const I keep = (I)(x != x) | (I)(x == __builtin_inff());  // NaN, +inf: x itself
  return (V)(((I)x & keep) | ((I)result & ~keep));
}
#pragma GCC diagnostic pop

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

// The phases of one parallel region (OpenMP): tasks are claimed one at a time from a counter
// per phase, and the barrier between phases spins briefly, then yields the core. libgomp's
// barrier spins far longer (300k turns unless the environment says otherwise): with another
// process on the other core, a waiting thread would spin through the time slice that the
// thread it waits for needs. An exception thrown by a task (run) ends the claiming: the other
// threads still pass every barrier, and rethrow() raises it after the region.
class Phases {
 public:
  explicit Phases(int64_t phases) : claimed_(phases) {}

  // Each thread of the region, first: how many threads meet at the barriers.
  void join(int threads) { threads_.store(threads, std::memory_order_relaxed); }

  // The next task of phase p, or −1 when its `tasks` are all claimed (or a task has failed).
  int64_t claim(int64_t p, int64_t tasks) {
    if (failed_.load(std::memory_order_relaxed)) return -1;
    const int64_t task = claimed_[p].fetch_add(1, std::memory_order_relaxed);
    return task < tasks ? task : -1;
  }

  template <typename Task>
  void run(const Task& task) {
    try {
      task();
    } catch (...) {
      if (!failed_.exchange(true)) error_ = std::current_exception();
    }
  }

  // Waits until every thread of the region has called next_phase as often as this one.
  void next_phase() {
    const int64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == threads_.load(std::memory_order_relaxed)) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spin = 0; generation_.load(std::memory_order_acquire) == generation; ++spin) {
      if (spin >= kSpins) {
        std::this_thread::yield();
      } else {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      }
    }
  }

  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static constexpr int kSpins = 2000;
  std::vector<std::atomic<int64_t>> claimed_;
  std::atomic<int64_t> arrived_{0}, generation_{0};
  std::atomic<int> threads_{1};
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
};

}  // namespace cpu
#endif

}  // namespace tscd
