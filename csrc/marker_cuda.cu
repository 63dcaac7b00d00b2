#include "common.h"

static at::Tensor cuda_marker(const at::Tensor& x) { return x; }

TORCH_LIBRARY_IMPL(tscd, CUDA, m) { m.impl("__cuda_marker", &cuda_marker); }
