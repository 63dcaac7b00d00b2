"""The dense CRF of the optional ``pydensecrf2`` package as ``torch.ops.tscd_pydensecrf.dense_crf``.

pydensecrf's ``DenseCRF2D`` evaluates the mean-field updates of method §10 with the
permutohedral lattice (O(N), approximate) on the CPU: images go to uint8 HWC numpy arrays,
probabilities to −log unaries, one image at a time; the result comes back to the inputs'
device. Wrapped as a ``torch.library`` op (with a fake kernel) so that it is an ordinary
backend of :func:`tscd.ops.dense_crf`, traceable by ``torch.compile``.
"""
from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
import torch


@torch.library.custom_op("tscd_pydensecrf::dense_crf", mutates_args=())
def dense_crf(images: torch.Tensor, probs: torch.Tensor, num_iter: int, smooth_xy: float, smooth_weight: float,
              appearance_xy: float, appearance_rgb: float, appearance_weight: float) -> torch.Tensor:
    """Q (B, K, H, W) float32 from images (B, 3, H, W) in 0–255 and probabilities (B, K, H, W)."""
    B, K, H, W = probs.shape
    out = np.empty((B, K, H * W), dtype=np.float32)
    imgs = np.ascontiguousarray(images.detach().cpu().round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    unary = -np.log(np.maximum(probs.detach().cpu().to(torch.float32).numpy(), 1e-5)).reshape(B, K, H * W)
    for b in range(B):
        crf = dcrf.DenseCRF2D(W, H, K)
        crf.setUnaryEnergy(np.ascontiguousarray(unary[b]))
        crf.addPairwiseGaussian(sxy=smooth_xy, compat=smooth_weight)
        crf.addPairwiseBilateral(sxy=appearance_xy, srgb=appearance_rgb, rgbim=imgs[b], compat=appearance_weight)
        out[b] = np.asarray(crf.inference(num_iter), dtype=np.float32)
    return torch.from_numpy(out).reshape(B, K, H, W).to(probs.device)


@dense_crf.register_fake
def _(images, probs, num_iter, smooth_xy, smooth_weight, appearance_xy, appearance_rgb, appearance_weight):
    return probs.new_empty(probs.shape, dtype=torch.float32)
