// The CUDA execution model on the CPU, for running tscd's CUDA kernels (csrc/*_cuda_kernels.cuh,
// the very source nvcc compiles) in tests. Include it before the kernels.
//
// A launch runs its blocks one after another on the calling thread (x fastest, then y, then z).
// The threads of a block are fibres (ucontext) on that thread: each runs until it reaches
// __syncthreads() or returns, in ascending thread order, and a barrier is released once every
// thread of the block waits at it, so a thread never runs ahead of a barrier and the other
// threads' writes before the barrier are visible after it. Every thread must reach each barrier:
// a block in which some threads return while others wait at a barrier is an error (CUDA leaves
// it undefined).
//
// Memory: `__shared__` variables are thread_local statics, one per kernel instantiation, which
// every fibre of the block sees and the blocks reuse (CUDA leaves them uninitialised; here they
// hold the previous block's values). `extern __shared__` (dynamic) memory is the storage the
// caller passes to launch(), filled with NaN bytes before each block. Global memory is the
// caller's.
//
// Arithmetic is the host's IEEE float32: the device build's --use_fast_math approximations
// (exp2f, expf, division, square root, denormals flushed to zero) and its FMA contraction are
// not reproduced. Warp-level intrinsics (shuffles, votes, __syncwarp), atomics and
// cooperative groups are not provided: device code that uses them does not compile here.
#pragma once

#include <math.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <deque>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// At block scope thread_local implies static: one variable per kernel instantiation and host
// thread, shared by the block's fibres. `extern __shared__ T name[]` becomes a block-scope
// extern thread_local declaration, which the harness defines in the kernel's namespace.
#define __shared__ thread_local

namespace cuda_host {
// The kernel whose TSCD_FAULT(kernel) marks are 1 (host_device.h); empty: none.
inline thread_local std::string_view injected_fault;
}  // namespace cuda_host
#define TSCD_FAULT(kernel) int(::cuda_host::injected_fault == #kernel)

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 {
  float x, y, z, w;
};

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

// CUDA's min / max: one type for both arguments (CUDA's mixed-type overloads are not provided),
// fminf / fmaxf for floats.
template <typename T>
constexpr T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
constexpr T max(T a, T b) {
  return a < b ? b : a;
}
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

namespace cuda_host {

// The fibres of one block at a time on this host thread; stacks are reused across blocks and
// launches.
class Block {
 public:
  static constexpr std::size_t kStackBytes = 256 * 1024;

  // Runs body on every thread of a block of `threads` (threadIdx from the current blockDim).
  void run(unsigned threads, const std::function<void()>& body) {
    while (fibres_.size() < threads) fibres_.emplace_back();
    body_ = &body;
    for (unsigned t = 0; t < threads; ++t) {
      Fibre& f = fibres_[t];
      f.state = State::kRunnable;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStackBytes;
      f.context.uc_link = &scheduler_;
      makecontext(&f.context, &Block::entry, 0);
    }
    for (;;) {
      unsigned exited = 0;
      for (unsigned t = 0; t < threads; ++t) {
        if (fibres_[t].state == State::kRunnable) {
          current_ = t;
          threadIdx = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
          swapcontext(&scheduler_, &fibres_[t].context);
        }
        exited += fibres_[t].state == State::kExited;
      }
      if (exited == threads) return;
      if (exited > 0)
        throw std::logic_error("__syncthreads() not reached by every thread of block (" +
                               std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
                               std::to_string(blockIdx.z) + "): " + std::to_string(exited) + " of " +
                               std::to_string(threads) + " threads returned");
      for (unsigned t = 0; t < threads; ++t) fibres_[t].state = State::kRunnable;
    }
  }

  // __syncthreads() of the running fibre: back to the scheduler until the barrier is released.
  void sync() {
    Fibre& f = fibres_[current_];
    f.state = State::kWaiting;
    swapcontext(&f.context, &scheduler_);
  }

 private:
  enum class State { kRunnable, kWaiting, kExited };

  // kStackBytes above an inaccessible guard page, so that an overflow faults.
  struct Stack {
    std::size_t guard = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    void* mapping = mmap(nullptr, guard + kStackBytes, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    Stack() {
      if (mapping == MAP_FAILED || mprotect(mapping, guard, PROT_NONE) != 0)
        throw std::runtime_error("cuda_host: cannot map a fibre stack");
    }
    Stack(const Stack&) = delete;
    ~Stack() { munmap(mapping, guard + kStackBytes); }
    void* get() const { return static_cast<char*>(mapping) + guard; }
  };

  struct Fibre {
    ucontext_t context;
    Stack stack;
    State state = State::kExited;
  };

  static void entry();

  std::deque<Fibre> fibres_;
  ucontext_t scheduler_;
  unsigned current_ = 0;
  const std::function<void()>* body_ = nullptr;
};

inline thread_local Block fibres;
inline thread_local Block* running_block = nullptr;  // &fibres during a launch

inline void Block::entry() {
  Block* block = running_block;
  (*block->body_)();
  block->fibres_[block->current_].state = State::kExited;
}  // uc_link: back to the scheduler

// The `extern __shared__` storage of a launch and the bytes the launch asks for.
struct DynamicShared {
  std::span<std::byte> storage;
  std::size_t bytes = 0;
};

// kernel<<<grid, block, shared.bytes>>>(args...), run to completion on this thread. Throws
// std::invalid_argument for a launch CUDA would refuse (empty or oversized grid or block, more
// dynamic shared memory than its storage).
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, DynamicShared shared, Args... args) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu)
    throw std::invalid_argument("cuda_host: invalid grid (" + std::to_string(grid.x) + ", " +
                                std::to_string(grid.y) + ", " + std::to_string(grid.z) + ")");
  if (threads == 0 || threads > 1024 || block.z > 64)
    throw std::invalid_argument("cuda_host: invalid block of " + std::to_string(threads) + " threads");
  if (shared.bytes > shared.storage.size())
    throw std::invalid_argument("cuda_host: " + std::to_string(shared.bytes) + " bytes of dynamic shared memory, " +
                                std::to_string(shared.storage.size()) + " available");
  gridDim = grid;
  blockDim = block;
  const std::function<void()> body = [&] { kernel(args...); };
  struct Running {
    Running() { running_block = &fibres; }
    ~Running() { running_block = nullptr; }
  } running;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        std::memset(shared.storage.data(), 0xff, shared.storage.size());
        fibres.run(static_cast<unsigned>(threads), body);
      }
}

}  // namespace cuda_host

inline void __syncthreads() {
  if (cuda_host::running_block == nullptr) throw std::logic_error("__syncthreads() outside a kernel launch");
  cuda_host::running_block->sync();
}
