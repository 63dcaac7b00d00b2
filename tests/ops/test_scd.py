"""scd_loss: every fused backend against the naive reference (method §6)."""
import pytest
import torch

from tests.utils import ALL, FUSED, assert_within_reference_error, require
from tscd.ops import scd_loss
from tscd.ops.reference import scd as reference
from tscd.selftest.checks import clustered_scd_maps

# (B, C, K, N1, N2); the first is a 40×40 sampling of the released code.
SHAPES = [(2, 20, 21, 1600, 1600), (3, 5, 7, 117, 66), (1, 20, 21, 1, 37), (2, 4, 1, 13, 1)]
# Wide channels (COCO: 81) on few positions: chunked reductions, several gradient blocks.
WIDE_SHAPES = [(2, 1, 81, 17, 23), (1, 81, 1, 23, 17), (1, 200, 256, 17, 23), (2, 256, 200, 23, 17)]
MARGIN = 0.05  # every |s_ij| of the test data exceeds this (see _assert_margin)


def make_inputs(B, C, K, N1, N2, seed=0):
    """Clustered SCD inputs (:func:`tscd.selftest.checks.clustered_scd_maps`) from ``seed``."""
    return clustered_scd_maps(B, C, K, N1, N2, torch.Generator().manual_seed(seed))


def _assert_margin(s1, s2):
    s = torch.bmm(reference.normalise(s1.double()).transpose(1, 2), reference.normalise(s2.double()))
    assert s.abs().min() > MARGIN


def _value_and_grads(t1, t2, s1, s2, backend):
    s1, s2 = s1.detach().requires_grad_(), s2.detach().requires_grad_()
    loss = scd_loss(t1, t2, s1, s2, backend=backend)
    g1, g2 = torch.autograd.grad(loss, (s1, s2))
    B, N1, N2 = s1.shape[0], s1[0, 0].numel(), s2[0, 0].numel()
    # the gradient of view v scales like 1/(B·Nv): rescale both to O(1) before comparing
    return loss.detach(), g1.double() * (B * N1), g2.double() * (B * N2)


def _compare(inputs, backend, dtype):
    cast = [x.to(dtype) for x in inputs]
    out = _value_and_grads(*cast, backend)
    ref = _value_and_grads(*cast, "torch")
    ref64 = _value_and_grads(*[x.double() for x in inputs], "torch")
    for name, o, r, r64 in zip(("loss", "grad s1", "grad s2"), out, ref, ref64):
        assert o.dtype == r.dtype and o.shape == r.shape, name
        assert_within_reference_error(o, r, r64, dtype, what=f"{backend} {name}")


@pytest.mark.parametrize("shape", SHAPES + WIDE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", FUSED)
def test_matches_reference(backend, shape):
    inputs = make_inputs(*shape)
    _assert_margin(*inputs[2:])
    _compare(inputs, backend, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", FUSED)
def test_half_inputs(backend, dtype):
    t1, t2, s1, s2 = make_inputs(2, 6, 5, 35, 12, seed=1)
    _assert_margin(s1, s2)
    as_maps = (t1.unflatten(2, (5, 7)), t2.unflatten(2, (3, 4)), s1.unflatten(2, (5, 7)), s2.unflatten(2, (3, 4)))
    _compare(as_maps, backend, dtype)


@pytest.mark.parametrize("backend", ALL)
def test_maps_equal_flattened(backend):
    t1, t2, s1, s2 = make_inputs(2, 3, 4, 12, 20, seed=2)
    maps = scd_loss(t1.unflatten(2, (3, 4)), t2.unflatten(2, (4, 5)), s1.unflatten(2, (3, 4)),
                    s2.unflatten(2, (4, 5)), backend=backend)
    torch.testing.assert_close(maps, scd_loss(t1, t2, s1, s2, backend=backend))


@pytest.mark.parametrize("backend", ALL)
def test_zero_vectors_stay_finite(backend):
    t1, t2, s1, s2 = make_inputs(2, 5, 6, 30, 17, seed=3)
    for x, positions in ((t1, [0, 7]), (t2, [3]), (s1, [1, 7, 20]), (s2, [0, 16])):
        x[:, :, positions] = 0
    value, g1, g2 = _value_and_grads(t1, t2, s1, s2, backend)
    assert torch.isfinite(value) and torch.isfinite(g1).all() and torch.isfinite(g2).all()
    ref = _value_and_grads(t1, t2, s1, s2, "torch")
    for o, r in zip((value, g1, g2), ref):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
    assert (g1[:, :, [1, 7, 20]] == 0).all()


@pytest.mark.parametrize("backend", ALL)
def test_teacher_gets_no_gradient(backend):
    t1, t2, s1, s2 = make_inputs(1, 3, 4, 9, 8, seed=4)
    t1.requires_grad_()
    t2.requires_grad_()
    s1.requires_grad_()
    scd_loss(t1, t2, s1, s2, backend=backend).backward()
    assert t1.grad is None and t2.grad is None and s1.grad is not None


@pytest.mark.parametrize("shape", [(2, 5, 7, 40, 33)] + WIDE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", FUSED)
def test_value_without_grad(backend, shape, monkeypatch):
    """Under no_grad the fused op makes one value-only pass."""
    import tscd.ops.scd as op_module

    flags = []
    primitives = op_module.primitives

    class Recording:  # the with_grad flag of each sweep (scd_pass, or scd_fused of cpp on the CPU)
        def __init__(self, name):
            self.scd_pass = lambda *args: flags.append(args[-1]) or primitives(name).scd_pass(*args)
            self.scd_fused = lambda *args: flags.append(args[-1]) or primitives(name).scd_fused(*args)

    monkeypatch.setattr(op_module, "primitives", Recording)
    t1, t2, s1, s2 = make_inputs(*shape, seed=5)
    s1.requires_grad_()
    with torch.no_grad():
        value = scd_loss(t1, t2, s1, s2, backend=backend)
    assert flags == [False]
    torch.testing.assert_close(value, scd_loss(t1, t2, s1, s2, backend="torch").detach(), rtol=1e-5, atol=1e-7)


def test_compile_variants_cover_launches(monkeypatch):
    """Each launch of the Triton wrapper, under each GPU autotune config, is a compile variant."""
    require("triton")
    from tscd.kernels import scd as kernels

    kernel = kernels._scd_pass_kernel.fn
    variants = kernels.compile_variants()
    for v in variants:
        assert list(v.signature) == kernel.arg_names
        assert [n for n, t in v.signature.items() if t == "constexpr"] == list(v.constexprs)
    compiled = {(tuple(v.constexprs.items()), tuple(v.options.items())) for v in variants}
    launches = []

    class Recorder:  # kernel[grid](*args, **constexprs) records the launch instead of running it
        def __getitem__(self, grid):
            return lambda *args, **constexprs: launches.append((grid, constexprs))

    monkeypatch.setattr(kernels, "_scd_pass_kernel", Recorder())
    # The boundaries of 1..256, a stride through it, and beyond (which must reuse its variants).
    channels = sorted({1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 81, 127, 128, 129, 255, 256, 300, 1000}
                      | set(range(1, 257, 11)))
    for K in channels:
        for C in channels:
            for with_grad in (False, True):
                x = torch.zeros(1, K + C, 3)
                kernels.scd_pass(x[:, :K], x[:, :K, :2], x[:, K:], x[:, K:, :2], x[:, 0], x[:, 0, :2], with_grad)
                grid, constexprs = launches.pop()
                for config in kernels.GPU_CONFIGS:
                    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
                    assert (tuple({**constexprs, **config.kwargs}.items()), tuple(options.items())) in compiled
                    if with_grad:  # the gradient blocks cover every channel
                        assert grid(config.kwargs)[1] * constexprs["GRAD_CHUNK"] >= K


def test_reference_gradcheck():
    t1, t2, s1, s2 = (x.double() for x in make_inputs(2, 3, 4, 5, 6, seed=6))
    _assert_margin(s1, s2)
    s1.requires_grad_()
    s2.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: reference.scd_loss(t1, t2, a, b), (s1, s2))


def test_reference_matches_definition():
    """The batch-mean offset and row centring of §6, written out with loops."""
    t1, t2, s1, s2 = (x.double() for x in make_inputs(2, 3, 4, 5, 6, seed=7))
    B, N1, N2 = 2, 5, 6
    nt1, nt2 = reference.normalise(t1), reference.normalise(t2)
    ns1, ns2 = reference.normalise(s1), reference.normalise(s2)
    t = torch.tensor([[[nt1[b, :, i] @ nt2[b, :, j] for j in range(N2)] for i in range(N1)] for b in range(B)])
    offset = t.sum() / (B * N1 * N2)
    total = 0.0
    for b in range(B):
        for i in range(N1):
            for j in range(N2):
                f = t[b, i, j] - t[b, i].mean() + offset
                total += max(ns1[b, :, i] @ ns2[b, :, j], 0.0) * f
    torch.testing.assert_close(reference.scd_loss(t1, t2, s1, s2), -total / (B * N1 * N2))


def _ok():
    return [torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6), torch.randn(2, 7, 4, 5), torch.randn(2, 7, 6)]


@pytest.mark.parametrize(
    "index, bad, error, match",
    [
        (1, torch.randn(3, 3, 6), ValueError, "batch sizes"),
        (1, torch.randn(2, 4, 6), ValueError, "teacher channels"),
        (3, torch.randn(2, 8, 6), ValueError, "student channels"),
        (2, torch.randn(2, 7, 5, 4), ValueError, "same positions"),
        (0, torch.randn(2, 3), ValueError, r"t1 must have shape"),
        (3, torch.randn(2, 7, 6, 1, 1), ValueError, r"s2 must have shape"),
        (2, torch.ones(2, 7, 4, 5, dtype=torch.int64), TypeError, "s1 must be a floating-point"),
        (0, [[1.0]], TypeError, "t1 must be a torch.Tensor"),
        (3, torch.randn(2, 7, 6, device="meta"), ValueError, "same device"),
    ],
)
def test_bad_inputs(index, bad, error, match):
    args = _ok()
    args[index] = bad
    with pytest.raises(error, match=match):
        scd_loss(*args)


def test_empty_positions_rejected():
    t1, t2, s1, s2 = _ok()
    with pytest.raises(ValueError, match="N1 and N2 >= 1"):
        scd_loss(t1, t2[:, :, :0], s1, s2[:, :, :0])


def test_mixed_dtypes_rejected():
    t1, t2, s1, s2 = _ok()
    with pytest.raises(TypeError, match="s1, s2 must have the same dtype"):
        scd_loss(t1, t2, s1, s2.double())


def test_invalid_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        scd_loss(*_ok(), backend="cuda")


@pytest.mark.parametrize("batch", [1, 2])
def test_cpu_gradients_do_not_depend_on_the_threads_timing(batch):
    """Two threads split the rows into stripes whose Σ_i w x sums reach the second view's gradient in
    a fixed order: repeated calls give the same bits, and the same values as one thread within the
    rule."""
    require("cpp", "cpu")
    g = torch.Generator().manual_seed(0)
    t1, t2 = (torch.randn(batch, 20, 900, generator=g) for _ in range(2))
    s1, s2 = (torch.randn(batch, 21, 900, generator=g) for _ in range(2))

    def gradients(threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            leaves = [s1.clone().requires_grad_(), s2.clone().requires_grad_()]
            scd_loss(t1, t2, *leaves, backend="cpp").backward()
            return [leaf.grad for leaf in leaves]
        finally:
            torch.set_num_threads(previous)

    first = gradients(2)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, gradients(2)))
    for a, b in zip(first, gradients(1)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
