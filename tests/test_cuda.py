"""What only a GPU can show (marker ``cuda``; skipped, saying "needs a CUDA device", without one):
launches on a device that is not the current one, bfloat16 and K = 200 on the triton and
cpp-CUDA backends, the GPU-size checks of ``python -m tscd.selftest``, large N without the N×N
memory of the reference, and the autotuned kernels at the training sizes (SCD dense 16384 and VARM
2×21×256² against the reference; dense energy 2×21×256² and the CRF at 375×500, where it fits
nowhere, triton against cpp). Run alone with ``python -m pytest -m cuda tests/test_cuda.py``."""
import pytest
import torch

from tests.utils import assert_within_reference_error, backend_param, require
from tscd.ops import dense_crf, dense_energy_loss, scd_loss, varm_refine
from tscd.selftest import checks
from tscd.selftest.cases import coarse_probs, photographs
from tscd.selftest.timing import peak_memory_mib
from tscd.selftest.tolerance import FLOOR

pytestmark = pytest.mark.cuda

GPU_BACKENDS = [backend_param(b, "cuda") for b in ("triton", "cpp")]
OPS = sorted({c.op for c in checks.cases("quick")})


def _assert_passed(results):
    failed = [r for r in results if r.status != "ok"]
    assert results and not failed, "\n".join(f"{r.op} {r.backend} {r.check}: {r.status} {r.error} > {r.bound} "
                                             f"{r.detail}" for r in failed)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_gpu_size_checks(op, backend):
    """The self-test's GPU tier of ``op``, float32 and bfloat16."""
    _assert_passed([r for c in checks.cases("cuda") if c.op == op for r in checks.run_case(c, "cuda", checks.DTYPES,
                                                                                          [backend])])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_many_channels_in_bfloat16(op, backend):
    """K = 81 and K = 200 (COCO's classes and beyond a single channel tile) with bfloat16 inputs."""
    chosen = [c for c in checks.cases("quick") if c.op == op and ("K=200" in c.label or "K=81" in c.label)]
    if not chosen:
        pytest.skip(f"{op} has no channel dimension K")
    _assert_passed([r for c in chosen for r in checks.run_case(c, "cuda", (torch.bfloat16,), [backend])])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_launch_on_a_device_that_is_not_current(op, backend):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    case = next(c for c in checks.cases("quick") if c.op == op)
    with torch.cuda.device(0):
        _assert_passed(checks.run_case(case, "cuda:1", (torch.float32,), [backend]))
        assert torch.cuda.current_device() == 0


def _peak_extra_mib(fn) -> float:
    """Peak extra GPU memory of the second call of ``fn`` (the first compiles and autotunes, and
    Triton's autotuner allocates a 256 MiB cache-flush buffer)."""
    fn()
    return peak_memory_mib(fn, "cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_dense_scd_at_16384_pixels_needs_no_pairwise_memory(backend):
    # The reference's five (B, N, N) float32 temporaries would take 10 GiB here.
    g = torch.Generator().manual_seed(0)
    t1, t2, s1, s2 = (torch.randn(2, c, 16384, generator=g).cuda() for c in (20, 20, 21, 21))

    def step():
        a, b = s1.clone().requires_grad_(), s2.clone().requires_grad_()
        loss = scd_loss(t1, t2, a, b, backend=backend)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()

    assert _peak_extra_mib(step) < 64


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_dense_energy_at_256_squared_needs_no_pairwise_memory(backend):
    # 2×21×256²: the reference's N×N kernel matrix alone would take 32 GiB per image.
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(2, 3, 256, 256, generator=g) * 255).cuda()
    probs = torch.softmax(torch.randn(2, 21, 256, 256, generator=g), dim=1).cuda()
    roi = torch.ones(2, 256, 256, dtype=torch.bool, device="cuda")
    ignore = torch.zeros_like(roi)

    def step():
        p = probs.clone().requires_grad_()
        loss = dense_energy_loss(images, p, roi, ignore, backend=backend)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(p.grad).all()

    assert _peak_extra_mib(step) < 256


# ---- the training sizes, through the GPU's own launch configurations and autotuning


def _two_exact_backends_agree(run, terms: int):
    """triton against cpp where the reference cannot fit: within the float32 floor of a sum of
    ``terms`` terms, twice (each backend's own error)."""
    a, b = run("triton"), run("cpp")
    scale = max(1.0, a.abs().max().item())
    assert (a - b).abs().max().item() <= 2 * FLOOR[torch.float32] * scale * terms**0.5


def test_dense_scd_at_16384_pixels_against_the_reference():
    """SCD dense at 128² (N = 16384), B = 2, C = 20, K = 21: each GPU backend, autotuned, against the
    float64 reference (its (B, N, N) temporaries: ~21 GiB in float64, which an H100 holds)."""
    g = torch.Generator().manual_seed(1)
    t1, t2, s1, s2 = (torch.randn(2, c, 16384, generator=g).cuda() for c in (20, 20, 21, 21))
    ref32 = scd_loss(t1, t2, s1, s2, backend="torch")
    ref64 = scd_loss(*(t.double() for t in (t1, t2, s1, s2)), backend="torch")
    for backend in ("triton", "cpp"):
        require(backend, "cuda")
        assert_within_reference_error(scd_loss(t1, t2, s1, s2, backend=backend), ref32, ref64, torch.float32)


def test_varm_at_256_squared_against_the_reference():
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 256, 256, generator=g).cuda()
    masks = torch.rand(2, 21, 256, 256, generator=g).softmax(1).cuda()
    for mode in ("varm", "par"):
        ref32 = varm_refine(images, masks, mode=mode, backend="torch")
        ref64 = varm_refine(images.double(), masks.double(), mode=mode, backend="torch")
        for backend in ("triton", "cpp"):
            require(backend, "cuda")
            assert_within_reference_error(varm_refine(images, masks, mode=mode, backend=backend), ref32, ref64,
                                          torch.float32, what=f"{backend} {mode}")


def test_dense_energy_at_256_squared_the_exact_backends_agree():
    """2×21×256²: the reference's N×N matrices (~275 GB) fit nowhere; the two exact GPU backends must
    agree on the loss and its gradient."""
    g = torch.Generator().manual_seed(3)
    images = (torch.rand(2, 3, 256, 256, generator=g) * 255).cuda()
    probs = torch.softmax(torch.randn(2, 21, 256, 256, generator=g), dim=1).cuda()
    roi = torch.ones(2, 256, 256, dtype=torch.bool, device="cuda")
    ignore = torch.rand(2, 256, 256, generator=g).cuda() < 0.2

    def gradient(backend):
        p = probs.clone().requires_grad_()
        dense_energy_loss(images, p, roi, ignore, backend=backend).backward()
        return p.grad

    for backend in ("triton", "cpp"):
        require(backend, "cuda")
    _two_exact_backends_agree(lambda b: dense_energy_loss(images, probs, roi, ignore, backend=b)[None], 256 * 256)
    _two_exact_backends_agree(gradient, 256 * 256)


def test_dense_crf_at_375x500_the_exact_backends_agree():
    for backend in ("triton", "cpp"):
        require(backend, "cuda")
    images, probs = photographs(375, 500).cuda(), coarse_probs(1, 21, 375, 500, 0.5).cuda()
    q = {b: dense_crf(images, probs, backend=b) for b in ("triton", "cpp")}
    assert (q["triton"] - q["cpp"]).abs().max().item() < 1e-4
    assert (q["triton"].argmax(1) == q["cpp"].argmax(1)).double().mean().item() > 0.9999
