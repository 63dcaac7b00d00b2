// Shared helpers of the tscd extension: argument checks used by every kernel, and the
// attributes of the CPU hot loops.
//
// Layout: <op>.h holds an operator's contract and the checks its CPU and CUDA kernels share,
// <op>.cpp its schema and CPU kernel, <op>_cuda.cu its CUDA kernel (a distinct file stem, so
// that the two object files do not collide).
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>

#ifdef __CUDACC__
#define TSCD_HOST_DEVICE __host__ __device__
#else
#define TSCD_HOST_DEVICE
#endif

// CPU only: inner loops compiled for AVX-512, AVX2 and baseline x86-64, one picked at load time
// (x86-64 GCC only), and always-inlined helpers that such clones call.
#if !defined(__CUDACC__)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
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

}  // namespace tscd
