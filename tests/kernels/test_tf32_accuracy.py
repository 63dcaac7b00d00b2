"""What ``input_precision="tf32x3"`` buys, shown by emulation on the kernels' own operand ranges.

The Triton kernels' products (the Gaussian product's ``W·X``, SCD's ``s = xsᵀ·ys``, its teacher
product and its gradient ``w·ysᵀ``) are ``tl.dot`` in 3×TF32: each float32 operand a is split into
``hi = tf32(a)`` and ``lo = tf32(a − hi)`` (TF32: 10 stored mantissa bits, round to nearest even)
and ``a·b ≈ hi·hi′ + hi·lo′ + lo·hi′`` (``lo·lo′`` dropped), the products exact and accumulated in
float32. Emulated here on the CPU beside a plain float32 FMA loop and plain TF32 (one product of
the rounded operands), each against float64, on:

- Gaussian-kernel sums ``Σ_j w_ij x_j``: weights in [0, 1] (``exp(−½d²)`` of random features),
  x class probabilities (a softmax over 21 classes), N = 1024 and 16384 terms;
- SCD's channel dots of L2-normalised maps (``ŝ_i·ŝ_j``), K = 21, 81 and 256 channels.

``python -m pytest tests/kernels/test_tf32_accuracy.py -s`` prints the table of ``docs/gpu.md``.
"""
import pytest
import torch

pytestmark = pytest.mark.triton_variants


def tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` rounded to TF32 (10 mantissa bits), to nearest, ties to even."""
    bits = x.contiguous().view(torch.int32)
    rounded = (bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF
    return rounded.view(torch.float32)


def _accumulate(products: torch.Tensor) -> torch.Tensor:
    """Σ over the last axis of exact products (float64), accumulated in float32 term by term."""
    acc = torch.zeros(products.shape[:-1], dtype=torch.float32)
    for j in range(products.shape[-1]):
        acc = (acc.double() + products[..., j]).float()
    return acc


def dot(a: torch.Tensor, b: torch.Tensor, scheme: str) -> torch.Tensor:
    """Σ_j a[..., j]·b[..., j] of float32 operands, as ``scheme`` computes it."""
    if scheme == "fp32 FMA":
        return _accumulate(a.double() * b.double())
    if scheme == "TF32":
        return _accumulate(tf32(a).double() * tf32(b).double())
    if scheme == "3xTF32":
        a_hi, b_hi = tf32(a), tf32(b)
        a_lo, b_lo = tf32(a - a_hi), tf32(b - b_hi)
        terms = a_hi.double() * b_hi.double() + a_hi.double() * b_lo.double() + a_lo.double() * b_hi.double()
        return _accumulate(terms)
    raise ValueError(scheme)


SCHEMES = ("fp32 FMA", "3xTF32", "TF32")


def _gaussian_operands(n: int, rows: int = 64):
    g = torch.Generator().manual_seed(n)
    f = torch.randn(rows + n, 5, generator=g) * 1.5
    w = torch.exp(-0.5 * ((f[:rows, None] - f[None, rows:]) ** 2).sum(-1))  # (rows, n) in [0, 1]
    x = torch.softmax(torch.randn(n, 21, generator=g) * 2, dim=1)[:, 0]  # one class's probabilities
    return w.float(), x.float().expand(rows, n)


def _scd_operands(k: int, pairs: int = 2048):
    g = torch.Generator().manual_seed(k)
    a, b = torch.randn(pairs, k, generator=g).relu(), torch.randn(pairs, k, generator=g).relu()
    return (torch.nn.functional.normalize(a, dim=1).float(), torch.nn.functional.normalize(b, dim=1).float())


def accuracy_table() -> list[tuple[str, dict[str, float]]]:
    """(case, {scheme: max relative error against float64}) per case."""
    rows = []
    for n in (1024, 16384):
        a, b = _gaussian_operands(n)
        rows.append((f"W·x, N = {n}", a, b))
    for k in (21, 81, 256):
        a, b = _scd_operands(k)
        rows.append((f"ŝ·ŝ′, K = {k}", a, b))
    table = []
    for case, a, b in rows:
        exact = (a.double() * b.double()).sum(-1)
        scale = exact.abs().clamp_min(1e-30)
        table.append((case, {s: ((dot(a, b, s).double() - exact).abs() / scale).max().item() for s in SCHEMES}))
    return table


def test_3xtf32_is_as_accurate_as_float32_and_tf32_is_not():
    """3×TF32 within 2× of a float32 FMA loop everywhere; plain TF32 10²–10³× worse on short sums and
    still several times worse on 16384-term sums, where float32 accumulation dominates both."""
    table = accuracy_table()
    print("\n| sum | " + " | ".join(SCHEMES) + " |\n|---|" + "---|" * len(SCHEMES))
    for case, errors in table:
        print(f"| {case} | " + " | ".join(f"{errors[s]:.1e}" for s in SCHEMES) + " |")
    for case, errors in table:
        assert errors["3xTF32"] <= 2 * errors["fp32 FMA"] + 1e-7, (case, errors)
        assert errors["TF32"] >= 3 * errors["3xTF32"], (case, errors)


def test_tf32_rounding():
    x = torch.tensor([1.0, 1 + 2**-10, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-12, -1 - 2**-11], dtype=torch.float32)
    expected = torch.tensor([1.0, 1 + 2**-10, 1.0, 1 + 2**-9, 1.0, -1.0], dtype=torch.float32)  # ties to even
    assert torch.equal(tf32(x), expected)
