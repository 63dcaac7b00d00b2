// Shared helpers of the tscd extension.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>

#define TSCD_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define TSCD_CHECK_FLOAT(x) \
  TORCH_CHECK((x).scalar_type() == at::kFloat, #x " must be float32 (the Python layer upcasts)")
