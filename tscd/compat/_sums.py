"""The pairwise sum ``W·x`` at the AFA family's magnitude: the one sum behind tscd.compat.

The family's SWIG module computes ``W·x`` with a permutohedral lattice on the CPU, whose
output is ≈ :data:`~tscd.ops.LATTICE_SCALE` × the exact sum on
photographs (method §8). tscd.compat reproduces it either with tscd's own lattice (the
``lattice`` backend of :func:`tscd.ops.gaussian_product`: the family's values, O(N)) or with
the exact sum multiplied by ``LATTICE_SCALE`` (O(N²), the fused kernels; the only choice on CUDA, where
there is no lattice).
"""
from __future__ import annotations

import torch

from tscd.ops import LATTICE_SCALE, gaussian_product
from tscd.ops.backends import why_unusable


def uses_exact_sum(exact_sum: bool | None, device: torch.device) -> bool:
    """Whether ``W·x`` is summed exactly on ``device`` for the request ``exact_sum``.

    ``None``: the lattice where it can run (CPU tensors, the extension built), else the exact
    sum (× ``LATTICE_SCALE``, never the lattice's fall-back, which would lose that factor); ``True``: the
    exact sum; ``False``: the lattice, which must be able to run there (else ``ValueError``).
    """
    if exact_sum is None:
        return why_unusable("lattice", device.type) is not None
    if not isinstance(exact_sum, bool):
        raise TypeError(f"exact_sum must be True, False or None, got {exact_sum!r}")
    if not exact_sum:
        reason = why_unusable("lattice", device.type)
        if reason is not None:
            raise ValueError(f"the permutohedral lattice cannot run on {device.type} tensors ({reason}); ask for "
                             f"the exact sum (exact_sum=True, bilateralfilter.use_exact_sum(True))")
    return exact_sum


def family_product(feats: torch.Tensor, x: torch.Tensor, exact_sum: bool | None = None) -> torch.Tensor:
    """``W·x`` (B, K, N) float32 as the family's lattice gives it.

    feats (B, 5, N): :func:`~tscd.ops.gaussian.bilateral_features` of the images; x (B, K, N).
    ``exact_sum`` as in :func:`uses_exact_sum`; the exact sum is multiplied by ``LATTICE_SCALE``.
    """
    if uses_exact_sum(exact_sum, feats.device):
        return gaussian_product(feats, x, backend="exact") * LATTICE_SCALE
    return gaussian_product(feats, x, backend="lattice")
