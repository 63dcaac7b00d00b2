// What host and device code share without torch: the *_cuda_kernels.cuh device code includes
// this instead of common.h, so that the CPU emulation of the CUDA kernels (tests/kernels/cuda_host)
// compiles it with a plain C++ compiler.
#pragma once

#ifdef __CUDACC__
#define TSCD_HOST_DEVICE __host__ __device__
#else
#define TSCD_HOST_DEVICE
#endif

// TSCD_FAULT(kernel) marks one index or bound per CUDA kernel as `+ TSCD_FAULT(kernel)` (or `-`):
// the constant 0 here. The CPU emulation defines it first, as 1 while a test injects that
// kernel's off-by-one, to show that the emulated kernel's comparison with its reference fails.
#ifndef TSCD_FAULT
#define TSCD_FAULT(kernel) 0
#endif
