// The neighbour ring of VARM / PAR (contract in varm.h) that the CPU kernels and the torch-free
// CUDA device code (varm_cuda_kernels.cuh) share.
#pragma once
#include "host_device.h"

namespace tscd::varm {

constexpr int kRing = 8;  // neighbours per dilation: the 3×3 ring without its centre

// Offset o ∈ [0, 8) of the ring, row-major: (-1,-1) (-1,0) (-1,1) (0,-1) (0,1) (1,-1) (1,0) (1,1).
TSCD_HOST_DEVICE constexpr int ring_dy(int o) { return (o + (o >= 4)) / 3 - 1; }
TSCD_HOST_DEVICE constexpr int ring_dx(int o) { return (o + (o >= 4)) % 3 - 1; }
static_assert(ring_dy(0) == -1 && ring_dx(0) == -1 && ring_dy(3) == 0 && ring_dx(3) == -1 && ring_dy(4) == 0 &&
                  ring_dx(4) == 1 && ring_dy(7) == 1 && ring_dx(7) == 1,
              "ring offsets must be row-major without the centre");

}  // namespace tscd::varm
