// The limits of the Gaussian-kernel product that its argument checks (gaussian.h) and its CUDA
// device code (gaussian_cuda_kernels.cuh, torch-free) share.
#pragma once

namespace tscd::gaussian {

constexpr int kMaxDims = 8;  // feature dimensions per pixel (x, y and up to 6 colour channels)

}  // namespace tscd::gaussian
