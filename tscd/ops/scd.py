"""Self-correspondence distillation loss (method §6) with backend dispatch.

The fused backends never build the N1×N2 correspondence matrices. With unit-normalised
columns T̂, T̂′, Ŝ, Ŝ′ the centred teacher correspondence is, by the closed forms of §6,
``f_ij = T̂_i·T̂′_j + a_i`` with ``a_i = mean_b(m_b·m′_b) − T̂_i·m′_b`` (O(N) work here);
only the pairwise relu term goes through the backend's ``scd_pass`` primitive
(:mod:`tscd.kernels.primitives`), which
sweeps tiles of (i, j) pairs and returns per-row sums and, on request, the per-row
gradient sums ``Σ_j 1[s_ij>0] f_ij Ŝ′_j``. Because the loss is a scalar, its gradient is
fixed up to the incoming scale, so the forward computes both student gradients in the
same call (two sweeps: rows of view 1, then rows of view 2) and the backward only scales
them and applies the normalisation's Jacobian.

On the CPU the ``cpp`` backend runs ``scd_fused`` instead (``csrc/scd.h``): one sweep over the
raw maps that normalises the columns and centres the correspondence itself and returns the
value's row sums and both gradients through the normalisation, so that no normalised copy of
the maps is made and each pair's similarity and correspondence are computed once.
"""
from __future__ import annotations

import torch

from . import checks
from .backends import check_reference_fallback, primitives, resolve
from .reference import scd as reference

EPS = reference.EPS


def _normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``(x̂, ‖x‖)`` of x (B, C, N): x̂ (B, C, N) contiguous, ‖x‖ (B, 1, N)."""
    x = x.float()
    norm = x.norm(dim=1, keepdim=True)
    return (x / norm.clamp_min(EPS)).contiguous(), norm


def _normalise_backward(x_hat: torch.Tensor, norm: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. x of ``x / max(‖x‖, eps)`` given the gradient w.r.t. x̂ (all (B, C, N))."""
    radial = x_hat * (x_hat * grad).sum(dim=1, keepdim=True)
    return torch.where(norm >= EPS, grad - radial, grad) / norm.clamp_min(EPS)


class _ScdLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, backend, with_grad, t1, t2, s1, s2):
        (B, _, n1), n2 = s1.shape, s2.shape[2]
        ctx.dtypes = (s1.dtype, s2.dtype)
        out_dtype = torch.promote_types(s1.dtype, t1.dtype)
        ctx.fused = backend == "cpp" and s1.device.type == "cpu"
        if ctx.fused:
            scd_fused = primitives(backend).scd_fused
            rowsum, g1, g2 = scd_fused(s1.float(), s2.float(), t1.float(), t2.float(), with_grad)
            if with_grad:
                ctx.save_for_backward(g1, g2)
            return (-(rowsum.double().sum() / (B * n1 * n2))).to(out_dtype)
        t_hat1, _ = _normalise(t1)
        t_hat2, _ = _normalise(t2)
        s_hat1, norm1 = _normalise(s1)
        s_hat2, norm2 = _normalise(s2)
        m1, m2 = t_hat1.mean(dim=2), t_hat2.mean(dim=2)  # (B, C)
        batch_mean = (m1 * m2).sum(dim=1).mean()
        a = (batch_mean - torch.einsum("bci,bc->bi", t_hat1, m2)).contiguous()  # (B, N1)
        zeros = t_hat2.new_zeros(B, n2)
        scd_pass = primitives(backend).scd_pass
        rowsum, grad1 = scd_pass(s_hat1, s_hat2, t_hat1, t_hat2, a, zeros, with_grad)
        if with_grad:
            _, grad2 = scd_pass(s_hat2, s_hat1, t_hat2, t_hat1, zeros, a, True)
            ctx.save_for_backward(s_hat1, norm1, grad1, s_hat2, norm2, grad2)
        total = rowsum.double().sum() / (B * n1 * n2)
        return (-total).to(out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.fused:
            g1, g2 = ctx.saved_tensors
            scale = grad_out.float() * (-1.0 / (g1.shape[0] * g1.shape[2] * g2.shape[2]))
            return None, None, None, None, (g1 * scale).to(ctx.dtypes[0]), (g2 * scale).to(ctx.dtypes[1])
        s_hat1, norm1, grad1, s_hat2, norm2, grad2 = ctx.saved_tensors
        B, _, n1 = s_hat1.shape
        scale = grad_out.float() * (-1.0 / (B * n1 * s_hat2.shape[2]))
        g1 = _normalise_backward(s_hat1, norm1, grad1 * scale).to(ctx.dtypes[0])
        g2 = _normalise_backward(s_hat2, norm2, grad2 * scale).to(ctx.dtypes[1])
        return None, None, None, None, g1, g2


def check_maps(t1, t2, s1, s2, flattened: bool = True) -> None:
    """The four maps of [`scd_loss`][tscd.ops.scd_loss] (or of a module that samples them first):
    floating-point tensors on one device with one batch size, the two teachers with one channel
    count C and one dtype, the two students likewise with K, each teacher at the positions of its
    view's student.

    Args:
        t1: teacher map of view 1.
        t2: teacher map of view 2.
        s1: student map of view 1.
        s2: student map of view 2.
        flattened: the maps may also be flattened to (B, C|K, N); False: (B, C|K, H, W) only.

    Raises:
        TypeError: a map is not a floating-point tensor, or the teachers (or students) differ in dtype.
        ValueError: the shapes or devices do not match.
    """
    names = ("t1", "t2", "s1", "s2")
    shapes = ("(B, C, H1, W1)", "(B, C, H2, W2)", "(B, K, H1, W1)", "(B, K, H2, W2)")
    for name, x, shape in zip(names, (t1, t2, s1, s2), shapes):
        if flattened:
            checks.check_tensor(name, x, f"{shape} or flattened (B, C|K, N)", (3, 4))
        else:
            checks.check_tensor(name, x, shape, (4,))
    checks.check_same_device(t1=t1, t2=t2, s1=s1, s2=s2)
    checks.check_dim_equal("the batch sizes", t1=t1.shape[0], t2=t2.shape[0], s1=s1.shape[0], s2=s2.shape[0])
    checks.check_dim_equal("the teacher channels C", t1=t1.shape[1], t2=t2.shape[1])
    checks.check_dim_equal("the student channels K", s1=s1.shape[1], s2=s2.shape[1])
    for t, s, view in ((t1, s1, "1"), (t2, s2, "2")):
        if t.shape[2:] != s.shape[2:]:
            raise ValueError(
                f"t{view} and s{view} must have the same positions (H{view}, W{view}) or N{view}, "
                f"got t{view} {tuple(t.shape)} and s{view} {tuple(s.shape)}"
            )
    for name, a, b in (("t1, t2", t1, t2), ("s1, s2", s1, s2)):
        if a.dtype != b.dtype:
            raise TypeError(f"{name} must have the same dtype, got {a.dtype} and {b.dtype}")


def _flatten_checked(t1, t2, s1, s2) -> tuple[torch.Tensor, ...]:
    check_maps(t1, t2, s1, s2)
    flat = tuple(x.flatten(2) for x in (t1, t2, s1, s2))
    if flat[0].shape[0] == 0 or flat[0].shape[2] == 0 or flat[1].shape[2] == 0:
        raise ValueError(f"scd_loss needs B, N1 and N2 >= 1, got t1 {tuple(t1.shape)} and t2 {tuple(t2.shape)}")
    return flat


def scd_loss(t1, t2, s1, s2, *, backend: str = "auto") -> torch.Tensor:
    """Self-correspondence distillation loss of method §6.

    ``−1/(B·N1·N2) Σ relu(Ŝ_i·Ŝ′_j)·f_ij``, with Ŝ, Ŝ′ the unit-normalised student columns of the
    two views and f the row-centred, batch-offset teacher correspondence. The fused backends never
    build the N1×N2 matrices and compute in float32.

    Args:
        t1: teacher map of view 1 (e.g. its CAM); receives no gradient.
        t2: teacher map of view 2; receives no gradient.
        s1: student map of view 1 (e.g. its segmentation logits).
        s2: student map of view 2.
        backend: ``"auto" | "exact" | "torch" | "triton" | "cpp"`` (see ``tscd.ops.backends``).

    Shapes:
        - ``t1``: (B, C, H1, W1), or flattened (B, C, N1).
        - ``t2``: (B, C, H2, W2), or (B, C, N2).
        - ``s1``: (B, K, H1, W1), or (B, K, N1).
        - ``s2``: (B, K, H2, W2), or (B, K, N2).
        - returns: () — a 0-dim tensor.

    Returns:
        The loss in the promoted dtype of the inputs, with gradients to ``s1`` and ``s2``.

    Raises:
        TypeError: an argument is not a floating-point tensor, or the two teachers (or students)
            differ in dtype.
        ValueError: the shapes or devices do not match, or B, N1 or N2 is 0.
    """
    t1, t2, s1, s2 = _flatten_checked(t1, t2, s1, s2)
    chosen = resolve("scd_loss", backend, s1.device.type)
    if chosen == "torch":
        # the reference's (B, N1, N2) similarity, correspondence and relu tensors, and their gradients
        nbytes = 6 * s1.shape[0] * s1.shape[2] * s2.shape[2] * torch.promote_types(s1.dtype, s2.dtype).itemsize
        check_reference_fallback("scd_loss", backend, s1.device.type, nbytes)
        return reference.scd_loss(t1, t2, s1, s2)
    # Inside forward grad mode is off and needs_input_grad ignores no_grad, so decide here.
    with_grad = torch.is_grad_enabled() and (s1.requires_grad or s2.requires_grad)
    return _ScdLoss.apply(chosen, with_grad, t1.detach(), t2.detach(), s1, s2)
