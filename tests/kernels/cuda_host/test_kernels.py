"""Every CUDA ``__global__`` of the native library, run on the CPU against a float64 reference.

The kernels are the very source nvcc compiles (``csrc/*_cuda_kernels.cuh``); ``cuda_host.h``
emulates the CUDA execution model (a block's threads as fibres with real ``__syncthreads``
barriers, per-block shared memory) and ``harness.cpp`` launches them with the grids and template
instantiations that the launchers of ``csrc/*_cuda.cu`` pick, through the same functions. Each
output must stay within the project's accuracy rule (:mod:`tscd.selftest.tolerance`: twice the
float32 torch reference's own error against float64, plus a floor growing with the number of
summed terms), the kernels must write every output element and nothing outside the outputs, and
each kernel's injected off-by-one (``TSCD_FAULT``) must be caught.

Shapes: N = 1, primes and multi-block sizes; K = 1, 21, 81, 200; every template instantiation
(feature dimensions × channel block) of the Gaussian product, with and without a row window;
every block size of the SCD pass, with and without the gradient; VARM with 1, 2 and 6 dilations,
some longer than the image. The SCD and Gaussian inputs lie on a dyadic grid, so the dot
products s_ij and the squared distances are exact in float32 and the indicator 1[s_ij > 0] and
the cut-off test cannot differ from float64 by rounding.

Not covered: the device build's fast-math arithmetic and FMA contraction (the emulation computes
in IEEE float32; the GPU tests cover those), and warp-level intrinsics, atomics and cooperative
groups, which the kernels do not use (checked below) and the emulation does not provide.
"""
from __future__ import annotations

import math
import re
import sys

import pytest
import torch

from tests.kernels.cuda_host import harness as host
from tscd.kernels.extension import source_dir
from tscd.ops.reference import varm as varm_reference
from tscd.selftest.tolerance import error_and_bound

pytestmark = pytest.mark.cuda_host

#: Each __global__ kernel -> the name of its TSCD_FAULT mark.
KERNELS = {
    "gaussian_product_register_tiled_kernel": "gaussian_product",
    "scd_pass_row_tile_kernel": "scd_pass",
    "varm_affinity_kernel": "varm_affinity",
    "varm_propagate_channel_block_kernel": "varm_propagate",
}
WARP_LEVEL = re.compile(r"\b(__shfl\w*|__syncwarp|__ballot\w*|__any\w*|__all\w*|__activemask|__match\w*|"
                        r"__reduce\w*|atomic\w+|warpSize|cooperative_groups)\b")


@pytest.fixture(scope="module")
def harness():
    if not sys.platform.startswith("linux"):
        pytest.skip("the emulation's fibres use Linux's ucontext")
    if host.compiler() is None:
        pytest.skip("no host C++ compiler ($CXX or c++)")
    return host.Harness(host.build())


def _references(reference, inputs):
    """``reference`` (a function of ``inputs``) run in float32 and in float64."""
    return tuple(reference(*(t.to(dtype) if t.is_floating_point() else t for t in inputs))
                 for dtype in (torch.float32, torch.float64))


def _check(out, references, terms, what):
    """``out`` within the accuracy rule of ``references`` = (float32, float64) for sums of ``terms`` terms."""
    err, bound = error_and_bound(out, *references, torch.float32, terms=terms)
    assert err <= bound, f"{what}: error {err:.3e} against float64 exceeds the bound {bound:.3e}"


def _dyadic(generator, shape, steps, scale):
    """Integers in [-steps, steps] times ``scale`` (a power of two): exact in float32."""
    return torch.randint(-steps, steps + 1, shape, generator=generator).float() * scale


# ---------------------------------------------------------------- the kernels and their marks


def _globals():
    """{kernel name: (file name, source text from its __global__ to the next one)} of the native sources."""
    found = {}
    for path in sorted(source_dir().iterdir()):
        if path.suffix not in (".cu", ".cuh"):
            continue
        text = path.read_text()
        starts = list(re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", text))
        for m, end in zip(starts, [s.start() for s in starts[1:]] + [len(text)]):
            found[m[1]] = (path.name, text[m.start():end])
    return found


def test_every_global_kernel_is_emulated_and_marked():
    kernels = _globals()
    assert set(kernels) == set(KERNELS), "a __global__ kernel without a CPU emulation test (or a stale entry)"
    for name, (file, body) in kernels.items():
        assert file.endswith("_cuda_kernels.cuh"), f"{name} is defined in {file}, which the emulation cannot include"
        assert re.findall(r"TSCD_FAULT\((\w+)\)", body) == [KERNELS[name]], f"{name}: one TSCD_FAULT mark"


def test_kernels_use_no_warp_level_intrinsics():
    for path in sorted(source_dir().glob("*.cuh")):
        used = sorted(set(WARP_LEVEL.findall(path.read_text())))
        assert not used, f"{path.name} uses {used}, which the CPU emulation does not provide"


# ---------------------------------------------------------------- gaussian_product


def gaussian_contract(feats, x, cut2):
    """y[b, k, i] = Σ_j 2^(−‖f_i − f_j‖²) x[b, k, j] over the pairs with ‖f_i − f_j‖² ≤ cut2, in the inputs' dtype."""
    d2 = ((feats[:, :, :, None] - feats[:, :, None, :]) ** 2).sum(1)
    w = torch.where(d2 <= cut2, torch.exp2(-d2), torch.zeros_like(d2))
    return x @ w.transpose(1, 2)


def check_gaussian(harness, B, D, N, K, configs=(None,), width=0, radius=0):
    """The kernel with each instantiation of ``configs`` (None: the launcher's) on dyadic features;
    with a window, feature 0 is the pixel's row i // width and the cut-off drops exactly the pairs
    more than ``radius`` rows apart, which the window skips (its contract)."""
    g = torch.Generator().manual_seed(B * 1000 + N * 10 + K + D)
    feats = _dyadic(g, (B, D, N), 8, 1 / 8)
    x = torch.randn(B, K, N, generator=g)
    cut2 = math.inf
    if width > 0:
        feats[:, 1:] = feats[:, 1:].abs() / 4  # in [0, 1/4]: squared differences at most 1/16 per dimension
        feats[:, 0] = (torch.arange(N) // width).float()
        cut2 = min(radius, N) ** 2 + 0.75
    references = _references(lambda f, v: gaussian_contract(f, v, cut2), (feats, x))
    for config in configs:
        config = config or harness.gaussian_choose_config(K, D)
        y = harness.gaussian_product(feats, x, cut2, width, radius, config)
        _check(y, references, N,
               f"gaussian_product B={B} D={D} N={N} K={K} config={config} width={width} radius={radius}")


def test_gaussian_dimension_choices_cover_every_instantiation(harness):
    assert {harness.gaussian_choose_config(21, D)[0] for D in range(1, 9)} == set(harness.gaussian_dim_choices())
    assert max(harness.gaussian_dim_choices()) == 8  # D <= 8 (kernels/primitives.py)


@pytest.mark.parametrize("D", range(1, 9))
def test_gaussian_every_channel_block(harness, D):
    """Each channel block the launcher can instantiate, with the dimensions it picks for D; K = 21
    leaves a partial last block for every block size but 1, N = 131 a partial second tile."""
    dims = harness.gaussian_choose_config(21, D)[0]
    check_gaussian(harness, 2, D, 131, 21, configs=[(dims, channels) for channels in harness.gaussian_channel_blocks()])


@pytest.mark.parametrize("B,D,N,K", [(1, 1, 1, 1), (1, 3, 2, 200), (2, 5, 13, 81), (1, 2, 127, 1), (2, 4, 257, 21),
                                     (1, 8, 263, 200), (3, 6, 37, 81)])
def test_gaussian_launcher_choice(harness, B, D, N, K):
    check_gaussian(harness, B, D, N, K)


@pytest.mark.parametrize("N,width,radius", [(131, 1, 0), (131, 7, 1), (263, 13, 2), (263, 263, 3), (131, 140, 1),
                                            (97, 5, 101), (263, 2, 0), (1, 1, 0)])
@pytest.mark.parametrize("D", [1, 3])
def test_gaussian_row_window(harness, N, width, radius, D):
    check_gaussian(harness, 2, D, N, 5, width=width, radius=radius)


# ---------------------------------------------------------------- scd_pass


def scd_contract(xs, ys, xt, yt, ar, ac):
    """(rowsum, grad) of kernels/primitives.py: s = xsᵀys, f = xtᵀyt + ar + ac."""
    s = xs.transpose(1, 2) @ ys
    f = xt.transpose(1, 2) @ yt + ar[:, :, None] + ac[:, None, :]
    return (s.clamp_min(0) * f).sum(2), (((s > 0) * f) @ ys.transpose(1, 2)).transpose(1, 2)


def check_scd(harness, B, K, C, nx, ny, with_grad, block_sizes):
    g = torch.Generator().manual_seed(B + K + C + nx + ny)
    inputs = (_dyadic(g, (B, K, nx), 2, 1 / 4), _dyadic(g, (B, K, ny), 2, 1 / 4), _dyadic(g, (B, C, nx), 2, 1 / 4),
              _dyadic(g, (B, C, ny), 2, 1 / 4), _dyadic(g, (B, nx), 4, 1 / 8), _dyadic(g, (B, ny), 4, 1 / 8))
    (rowsum32, grad32), (rowsum64, grad64) = _references(scd_contract, inputs)
    for threads in block_sizes:
        rowsum, grad = harness.scd_pass(*inputs, with_grad, threads)
        what = f"scd_pass B={B} K={K} C={C} nx={nx} ny={ny} threads={threads}"
        _check(rowsum, (rowsum32, rowsum64), ny, what + " rowsum")
        if with_grad:
            _check(grad, (grad32, grad64), ny, what + " grad")


@pytest.mark.parametrize("B,K,C,nx,ny", [(1, 1, 1, 1, 1), (2, 21, 7, 37, 131), (1, 81, 21, 131, 33),
                                         (1, 200, 200, 67, 64), (3, 5, 1, 2, 97)])
@pytest.mark.parametrize("with_grad", [False, True])
def test_scd_every_block_size(harness, B, K, C, nx, ny, with_grad):
    check_scd(harness, B, K, C, nx, ny, with_grad, harness.scd_block_sizes())


def test_scd_block_sizes_are_the_launchers_choices(harness):
    """The launcher's pick for growing shared-memory limits runs through every block size."""
    picks = {harness.scd_block_threads(200, 200, True, limit) for limit in range(0, 256 * 1024, 1024)}
    assert picks == set(harness.scd_block_sizes())


# ---------------------------------------------------------------- varm_affinity, varm_propagate_

VARM_SHAPES = [(1, 1, 1), (2, 9, 13), (1, 1, 30), (1, 17, 1), (1, 23, 29)]  # (B, H, W); 667 pixels: 3 blocks
DILATIONS = [(1,), (3, 40), (1, 2, 4, 8, 12, 24)]  # 40 and 24: longer than some images


def affinity_contract(images, dilations, scale, variation_weight, position):
    """w_n = softmax_n(a_n) − variation_weight·softmax_n(v_n) + position[n] (csrc/varm.h), in the inputs' dtype."""
    nb = varm_reference.gather_neighbours(images, dilations)  # J_n, (B, 3, N, H, W)
    std = nb.std(dim=2, keepdim=True)
    a = (-(((nb - images.unsqueeze(2)).abs() * scale / (std + 1e-8)) ** 2)).mean(1)
    down = torch.cat([nb[..., 1:, :], nb[..., -1:, :]], dim=-2)
    right = torch.cat([nb[..., 1:], nb[..., -1:]], dim=-1)
    v = ((nb - down) ** 2 + (nb - right) ** 2).mean(1)
    return a.softmax(1) - variation_weight * v.softmax(1) + position[None, :, None, None]


def _affinity_arguments(mode, dilations):
    """(intensity scale, variation weight, position term (N,) float64): VARM, PAR and arbitrary ones."""
    n = 8 * len(dilations)
    if mode == "varm":
        return 4.0, 0.01, torch.zeros(n, dtype=torch.float64)
    if mode == "par":
        return 1 / 0.3, 0.0, 0.01 * varm_reference.position_logits(dilations).softmax(0)
    return 2.5, 0.3, torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)


@pytest.mark.parametrize("mode", ["varm", "par"])
def test_affinity_contract_is_the_reference(mode):
    images = torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dilations = (1, 2, 4)
    torch.testing.assert_close(affinity_contract(images, dilations, *_affinity_arguments(mode, dilations)),
                               varm_reference.varm_affinity(images, dilations, mode))


def check_affinity(harness, B, H, W, dilations, mode):
    images = torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(B * H * W))
    scale, variation_weight, position = _affinity_arguments(mode, dilations)
    dil = torch.tensor(dilations, dtype=torch.int32)
    out = harness.varm_affinity(images, dil, scale, variation_weight, position.float())
    references = _references(lambda i, p: affinity_contract(i, dilations, scale, variation_weight, p),
                             (images, position))
    _check(out, references, 8 * len(dilations), f"varm_affinity B={B} H={H} W={W} dilations={dilations} {mode}")


@pytest.mark.parametrize("B,H,W", VARM_SHAPES)
@pytest.mark.parametrize("dilations", DILATIONS, ids=str)
@pytest.mark.parametrize("mode", ["varm", "par", "other"])
def test_varm_affinity(harness, B, H, W, dilations, mode):
    check_affinity(harness, B, H, W, dilations, mode)


def propagate_contract(src, weights, dilations):
    """out(p) = Σ_n w_n(p)·src(clamp(p + n)), in the inputs' dtype."""
    return (varm_reference.gather_neighbours(src, dilations) * weights.unsqueeze(1)).sum(2)


def check_propagate(harness, B, K, H, W, dilations):
    g = torch.Generator().manual_seed(B + K + H + W)
    src = torch.rand(B, K, H, W, generator=g)
    weights = torch.rand(B, 8 * len(dilations), H, W, generator=g) / len(dilations) - 0.02
    out = harness.varm_propagate(src, weights, torch.tensor(dilations, dtype=torch.int32))
    references = _references(lambda s, w: propagate_contract(s, w, dilations), (src, weights))
    _check(out, references, 8 * len(dilations), f"varm_propagate B={B} K={K} H={H} W={W} dilations={dilations}")


@pytest.mark.parametrize("B,K,H,W", [(1, 1, 1, 1), (2, 21, 9, 13), (1, 8, 1, 30), (1, 9, 17, 1), (1, 200, 11, 7),
                                     (2, 81, 13, 10)])
@pytest.mark.parametrize("dilations", DILATIONS, ids=str)
def test_varm_propagate(harness, B, K, H, W, dilations):
    check_propagate(harness, B, K, H, W, dilations)


# ---------------------------------------------------------------- injected faults

#: A case of each kernel's tests that its off-by-one must fail.
FAULT_CASES = {
    "gaussian_product": lambda h: check_gaussian(h, 2, 3, 131, 21),
    "scd_pass": lambda h: check_scd(h, 2, 21, 7, 37, 131, True, [64]),
    "varm_affinity": lambda h: check_affinity(h, 2, 9, 13, (1, 2), "varm"),
    "varm_propagate": lambda h: check_propagate(h, 2, 21, 9, 13, (1, 2)),
}


def test_every_mark_has_a_fault_case():
    assert set(FAULT_CASES) == set(KERNELS.values())


@pytest.mark.parametrize("kernel", sorted(FAULT_CASES))
def test_injected_fault_is_caught(harness, kernel):
    FAULT_CASES[kernel](harness)  # passes without the fault
    harness.inject_fault(kernel)
    try:
        with pytest.raises(AssertionError):
            FAULT_CASES[kernel](harness)
    finally:
        harness.inject_fault(None)
