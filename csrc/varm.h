// Variation-aware refinement (VARM) and PAR (method §4): the contract of the two primitives
// and the argument checks that the CPU (varm.cpp) and CUDA (varm_cuda.cu) kernels share (the
// neighbour offsets: varm_ring.h). The Triton backend has the same contract (tscd/ops/varm.py
// drives them all).
//
//   varm_affinity(images (B,3,H,W), dilations (L,) int32, intensity_scale, variation_weight,
//                 position_term (N,)) -> weights (B,N,H,W),  N = 8·L
//     w_n = softmax_n(a_n) − variation_weight·softmax_n(v_n) + position_term[n]
//   varm_propagate_(src (B,K,H,W), weights (B,N,H,W), dilations, out (B,K,H,W)) -> ()
//     out(p) = Σ_n w_n(p)·src(clamp(p + n))        (one iteration)
// Neighbour n = 8·l + o of pixel p is p + dilations[l]·(ring_dy(o), ring_dx(o)), clamped to the
// image; J_n is the image there. With σ_c the unbiased standard deviation of channel c of J_n
// over the N neighbours, and each logit averaged over the 3 channels c:
//   a_n = −(|J_n,c(p) − I_c(p)| · intensity_scale / (σ_c(p) + 1e-8))²
//   v_n = (J_n,c(p) − J_n,c(p↓))² + (J_n,c(p) − J_n,c(p→))²   (p↓, p→: one row down / column
//         right, clamped)
// Float tensors are float32 (the Python layer upcasts); images, src, weights and out are
// contiguous, and on CUDA so are dilations and position_term, on the images' device.
#pragma once
#include "common.h"
#include "varm_ring.h"

namespace tscd::varm {

// dilations: non-empty 1-D int32 (a CUDA kernel also needs it contiguous on the images' device).
inline void check_dilations(const at::Tensor& dilations) {
  check_dim(dilations, "dilations", 1, "(L,)");
  TORCH_CHECK(dilations.numel() > 0 && dilations.scalar_type() == at::kInt,
              "dilations must be a non-empty int32 tensor, got ", dilations.numel(), " values of ",
              dilations.scalar_type());
}

// images (B, 3, H, W), dilations (L,), position_term float32 with one value per neighbour.
inline void check_affinity_args(const at::Tensor& images, const at::Tensor& dilations,
                                const at::Tensor& position_term) {
  check_float32_contiguous(images, "images", 4, "(B, 3, H, W)");
  TORCH_CHECK(images.size(1) == 3, "images (B, 3, H, W) must have 3 channels, got shape ", images.sizes());
  check_dilations(dilations);
  check_float32(position_term, "position_term");
  TORCH_CHECK(position_term.numel() == kRing * dilations.numel(), "position_term (N,) must have one value per ",
              "neighbour, N = 8 · ", dilations.numel(), " dilations, got ", position_term.numel());
}

// src (B, K, H, W), weights (B, N, H, W), out (B, K, H, W), dilations (L,) with N = 8·L.
inline void check_propagate_args(const at::Tensor& src, const at::Tensor& weights, const at::Tensor& dilations,
                                 const at::Tensor& out) {
  check_float32_contiguous(src, "src", 4, "(B, K, H, W)");
  check_float32_contiguous(weights, "weights", 4, "(B, N, H, W)");
  check_float32_contiguous(out, "out", 4, "(B, K, H, W)");
  check_dilations(dilations);
  const int64_t N = kRing * dilations.numel();
  TORCH_CHECK(weights.sizes() == at::IntArrayRef({src.size(0), N, src.size(2), src.size(3)}),
              "weights must be (B, N, H, W) with src (B, K, H, W) and N = ", N, ", got ", weights.sizes(),
              " and src ", src.sizes());
  TORCH_CHECK(out.sizes() == src.sizes(), "out must have the shape of src ", src.sizes(), ", got ", out.sizes());
}

// varm_refine_ (CPU only): masks (B, K, H, W) refined in place by num_iter steps with the weights
// of varm_affinity(images (B, 3, H, W), ...), the masks float32 contiguous at the images' size.
inline void check_refine_args(const at::Tensor& masks, const at::Tensor& images, const at::Tensor& dilations,
                              const at::Tensor& position_term) {
  check_affinity_args(images, dilations, position_term);
  check_float32_contiguous(masks, "masks", 4, "(B, K, H, W)");
  TORCH_CHECK(masks.size(0) == images.size(0) && masks.size(2) == images.size(2) && masks.size(3) == images.size(3),
              "masks must be (B, K, H, W) with images (B, 3, H, W), got ", masks.sizes(), " and images ",
              images.sizes());
}

}  // namespace tscd::varm
