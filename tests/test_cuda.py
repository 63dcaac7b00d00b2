"""What only a GPU can show (marker ``cuda``; skipped, saying "needs a CUDA device", without one):
launches on a device that is not the current one, bfloat16 and K = 200 on the triton and
cpp-CUDA backends, the GPU-size checks of ``python -m tscd.selftest``, and large N without the
N×N memory of the reference. Run alone with ``python -m pytest -m cuda tests/test_cuda.py``."""
import pytest
import torch

from tests.utils import backend_param
from tscd.ops import dense_energy_loss, scd_loss
from tscd.selftest import checks
from tscd.selftest.timing import peak_memory_mib

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
