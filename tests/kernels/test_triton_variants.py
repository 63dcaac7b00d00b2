"""Every Triton compile variant executed, at the GPU's own tile shapes, under the interpreter.

``compile_variants()`` of each kernel module lists every configuration its wrapper can launch on a
GPU (what ``python -m tscd.kernels.compile_check`` compiles for sm_80/sm_90). Here each of them runs
once under ``TRITON_INTERPRET=1`` with exactly its constexprs, blocks and launch options, through the
module's own ``launch`` (the wrapper's launch code), on inputs chosen through the wrapper's own
configuration function so that they reach that variant and leave a partial tile in every blocked
dimension (B = 2, N not a multiple of any block, channels not a multiple of the channel block, and
more channels than one program holds where the variant splits them). Each result is compared with
the float64 reference under the 2× rule. A variant for which no input is found fails the test, so
the executed list cannot fall behind the compiled one.

The SCD pass is autotuned on a GPU: it also runs through an autotuner over ``GPU_CONFIGS`` whose
benchmark callback (the interpreter has no GPU timer) runs each config once on the same inputs,
with the outputs poisoned with NaN before every trial; each trial and the chosen config's result
are checked. The kernels write every output element exactly once (no accumulation into the
outputs), so the autotuner needs no ``reset_to_zero``; the poisoning shows it.
"""
import math

import pytest
import torch

from tests.utils import require
from tscd.ops.gaussian import _EXP2_SCALE
from tscd.ops.reference import varm as varm_reference
from tscd.ops.varm import affinity_arguments
from tscd.selftest.tolerance import error_and_bound

pytestmark = pytest.mark.triton_variants

B = 2


@pytest.fixture(autouse=True, scope="module")
def _triton():
    require("triton", "cpu")


def _check(out, ref32, ref64, what, terms=1):
    err, bound = error_and_bound(out, ref32, ref64, torch.float32, terms=terms)
    assert err <= bound, f"{what}: error {err:.3e} > bound {bound:.3e}"


def _label(variant) -> str:
    return f"{variant.kernel.fn.__name__} {variant.label}"


def _config(variant) -> dict:
    return {**variant.constexprs, **variant.options}


# ------------------------------------------------------------------------------- Gaussian product


def _gaussian_naive(feats, x, cutoff):
    d2 = ((feats[:, :, :, None] - feats[:, :, None, :]) ** 2).sum(1)
    w = torch.exp(-0.5 * d2) * (d2 <= cutoff**2)
    return torch.einsum("bij,bkj->bki", w, x)


def _gaussian_cases():
    from tscd.kernels import gaussian

    cases = []
    for variant in gaussian.compile_variants():
        D, block_k = variant.constexprs["D"], variant.constexprs["BLOCK_K"]
        K = next((k for k in (81, 21, 13) if gaussian._launch_config(k, D) == _config(variant)), None)
        cases.append(pytest.param(variant, D, K, id=_label(variant)))
        assert K is None or K % block_k or K < block_k
    return cases


@pytest.mark.parametrize("variant,D,K", _gaussian_cases())
def test_gaussian_product_variant(variant, D, K):
    from tscd.kernels import gaussian

    assert K is not None, f"no input reaches {_label(variant)}"
    height, width = 10, 15  # N = 150: partial 128-row and 16-column tiles
    g = torch.Generator().manual_seed(D * 100 + K)
    x = torch.randn(B, K, height * width, generator=g)
    positions = torch.stack(torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")).reshape(2, -1)
    windowed = torch.cat((positions.float() / 1.0, torch.randn(D - 2, height * width, generator=g)))[None] if D >= 2 \
        else None
    for feats, cutoff, window in ((torch.randn(B, D, height * width, generator=g) * 1.5, math.inf, (0, 0)),
                                  (None if windowed is None else windowed.expand(B, -1, -1).contiguous(), 3 + 1e-3,
                                   (width, 3))):
        if feats is None:
            continue
        out = gaussian.launch(variant.kernel, _config(variant), (feats * _EXP2_SCALE).contiguous(), x,
                              cutoff * cutoff * _EXP2_SCALE**2, *window)
        _check(out, _gaussian_naive(feats, x, cutoff), _gaussian_naive(feats.double(), x.double(), cutoff),
               f"{_label(variant)} window {window}", terms=height * width)


# ---------------------------------------------------------------------------------------- SCD pass


def _scd_inputs(K, C, nx=150, ny=37, seed=0):
    """Student maps of small integers (their dot products, and so the sign tests, are exact in every
    precision) and float teachers and offsets."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randint(-3, 4, (B, K, nx), generator=g).float()
    ys = torch.randint(-3, 4, (B, K, ny), generator=g).float()
    xt, yt = torch.randn(B, C, nx, generator=g), torch.randn(B, C, ny, generator=g)
    ar, ac = torch.randn(B, nx, generator=g), torch.randn(B, ny, generator=g)
    return xs, ys, xt, yt, ar, ac


def _scd_reference(xs, ys, xt, yt, ar, ac):
    s = torch.einsum("bki,bkj->bij", xs, ys)
    f = torch.einsum("bci,bcj->bij", xt, yt) + ar[:, :, None] + ac[:, None, :]
    w = torch.where(s > 0, f, torch.zeros_like(f))
    return (w * s).sum(2), torch.einsum("bij,bkj->bki", w, ys)


def _scd_check(out, inputs, what):
    rowsum, grad = out
    (ref32, grad32), (ref64, grad64) = _scd_reference(*inputs), _scd_reference(*(t.double() for t in inputs))
    ny = inputs[1].shape[2]
    _check(rowsum, ref32, ref64, f"{what} rowsum", terms=ny)
    if grad.shape[2]:
        _check(grad, grad32, grad64, f"{what} grad", terms=ny)


#: Channel counts tried, in order of preference (partial chunks, several gradient programs).
_SCD_CHANNELS = (81, 37, 29, 27, 21, 13, 11, 5)


def _scd_cases():
    from tscd.kernels import scd

    cases = []
    for variant in scd.compile_variants():
        wanted = {k: variant.constexprs[k] for k in ("WITH_GRAD", "RESIDENT", "K_CHUNK", "C_CHUNK", "GRAD_CHUNK")}
        found = next(((K, C) for K in _SCD_CHANNELS for C in _SCD_CHANNELS
                      if scd._launch_constexprs(K, C, wanted["WITH_GRAD"]) == wanted), None)
        cases.append(pytest.param(variant, found, id=_label(variant)))
    return cases


@pytest.mark.parametrize("variant,channels", _scd_cases())
def test_scd_pass_variant(variant, channels):
    from tscd.kernels import scd

    assert channels is not None, f"no input reaches {_label(variant)}"
    inputs = _scd_inputs(*channels, seed=sum(channels))
    out = scd.launch(variant.kernel, _config(variant), *inputs, variant.constexprs["WITH_GRAD"])
    _scd_check(out, inputs, _label(variant))


@pytest.mark.parametrize("with_grad", [False, True])
@pytest.mark.parametrize("channels", [(21, 20), (81, 37)])
def test_scd_pass_through_the_gpu_autotuner(channels, with_grad):
    import triton

    from tscd.kernels import scd

    inputs = _scd_inputs(*channels, seed=3)
    tried = []

    def poison(nargs, reset_only=False):
        nargs["rowsum"].fill_(math.nan)
        nargs["grad"].fill_(math.nan)

    def bench(kernel_call, quantiles):
        kernel_call()
        tried.append(None)
        return [float(len(tried))] * len(quantiles)  # the first config tried "wins"

    def record(nargs, exception):
        assert exception is None
        _scd_check((nargs["rowsum"], nargs["grad"]), inputs, f"autotune trial {len(tried) + 1}")

    tuned = triton.autotune(configs=scd.GPU_CONFIGS, key=["ROWS_BUCKET", "COLS_BUCKET", "WITH_GRAD"],
                            pre_hook=poison, post_hook=record, do_bench=bench)(scd._scd_pass_kernel.fn)
    out = scd.launch(tuned, scd._launch_constexprs(*channels, with_grad), *inputs, with_grad)
    assert len(tried) == len(scd.GPU_CONFIGS)
    assert tuned.best_config.kwargs == scd.GPU_CONFIGS[0].kwargs
    _scd_check(out, inputs, "the autotuner's choice")


# -------------------------------------------------------------------------------------------- VARM


def _affinity_cases():
    from tscd.kernels import varm

    cases = []
    for variant in varm.compile_variants():
        if variant.kernel.fn.__name__ == "_propagate_kernel":
            continue
        counts = (65, 33, 17, 9, 5, 3, 2, 1)  # 8·L below BLOCK_N where it can be; 65: beyond one tile
        found = next((L for L in counts if varm._affinity_launch(L, variant.constexprs["VARIATION"])
                      == (variant.kernel, _config(variant))), None)
        cases.append(pytest.param(variant, found, id=_label(variant)))
    return cases


@pytest.mark.parametrize("variant,L", _affinity_cases())
def test_varm_affinity_variant(variant, L):
    from tscd.kernels import varm

    assert L is not None, f"no input reaches {_label(variant)}"
    images = torch.rand(B, 3, 7, 9, generator=torch.Generator().manual_seed(L))  # 63 pixels: partial blocks
    dilations = tuple(1 + (3 * i) % 17 for i in range(L))
    mode = "varm" if variant.constexprs["VARIATION"] else "par"
    out = varm.launch_affinity(variant.kernel, _config(variant), images, *affinity_arguments(dilations, mode, "cpu"))
    _check(out, varm_reference.varm_affinity(images, dilations, mode),
           varm_reference.varm_affinity(images.double(), dilations, mode), _label(variant))


def _propagate_cases():
    from tscd.kernels import varm

    cases = []
    for variant in varm.compile_variants():
        if variant.kernel.fn.__name__ != "_propagate_kernel":
            continue
        found = next((K for K in (81, 21, 13, 5, 3, 2, 1) if varm._propagate_config(K) == _config(variant)), None)
        cases.append(pytest.param(variant, found, id=_label(variant)))
    return cases


def _propagated(src, weights, dilations):
    return (varm_reference.gather_neighbours(src, dilations) * weights[:, None]).sum(2)


@pytest.mark.parametrize("variant,K", _propagate_cases())
def test_varm_propagate_variant(variant, K):
    from tscd.kernels import varm

    assert K is not None, f"no input reaches {_label(variant)}"
    g = torch.Generator().manual_seed(K)
    dilations = (1, 2, 4, 8, 12, 24)
    src = torch.rand(B, K, 11, 13, generator=g)
    weights = torch.rand(B, 8 * len(dilations), 11, 13, generator=g) / 24
    out = torch.empty_like(src)
    varm.launch_propagate(variant.kernel, _config(variant), src, weights,
                          torch.tensor(dilations, dtype=torch.int32), out)
    _check(out, _propagated(src, weights, dilations), _propagated(src.double(), weights.double(), dilations),
           _label(variant), terms=8 * len(dilations))


def test_every_compile_variant_has_an_executed_case():
    """The count CI reports: N executed of N compiled (one case per distinct compile variant)."""
    from tscd.kernels import gaussian, scd, varm

    compiled = {_label(v) for module in (gaussian, scd, varm) for v in module.compile_variants()}
    executed = {case.id for cases in (_gaussian_cases(), _scd_cases(), _affinity_cases(), _propagate_cases())
                for case in cases if case.values[1] is not None}
    print(f"\n{len(executed)} executed / {len(compiled)} compiled Triton variants")
    assert executed == compiled
