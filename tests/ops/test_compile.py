"""torch.compile and torch.library: every public op traces without a graph break on every CPU
backend and equals eager (value and gradient); every primitive passes ``opcheck``; the model's
forward passes trace whole. ``aot_eager`` checks the tracing (fake kernels, functionalisation,
autograd) without spending minutes in Inductor's C++ compiler."""
import pytest
import torch

import tscd.ops as ops
from tests.utils import ALL, DEVICE, FUSED, backend_param, require
from tscd.models import TSCD
from tscd.ops.backends import primitives, resolve
from tscd.ops.gaussian import bilateral_features


def _compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(2, 3, 9, 7, generator=g) * 255).to(DEVICE)
    probs = torch.randn(2, 4, 9, 7, generator=g).softmax(1).to(DEVICE)
    return images, probs


def _assert_same(compiled, eager):
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ALL)
def test_scd_loss(backend):
    g = torch.Generator().manual_seed(1)
    t1, t2, s1, s2 = (torch.randn(2, 3, n, generator=g).to(DEVICE) for n in (11, 7, 11, 7))
    values, grads = [], []
    for fn in (_compiled(lambda a, b, c, d: ops.scd_loss(a, b, c, d, backend=backend)), ops.scd_loss):
        x1, x2 = s1.clone().requires_grad_(), s2.clone().requires_grad_()
        loss = fn(t1, t2, x1, x2) if fn is not ops.scd_loss else fn(t1, t2, x1, x2, backend=backend)
        loss.backward()
        values.append(loss)
        grads.append((x1.grad, x2.grad))
    _assert_same(values[0], values[1])
    _assert_same(grads[0], grads[1])


@pytest.mark.parametrize("backend", ALL + [backend_param("lattice")])
def test_dense_energy_loss(backend):
    images, probs = _inputs()
    roi = torch.ones(2, 9, 7, device=DEVICE)
    ignore = torch.zeros(2, 9, 7, dtype=torch.bool, device=DEVICE)
    ignore[1, :3] = True
    run = lambda i, p: ops.dense_energy_loss(i, p, roi, ignore, sigma_rgb=20.0, sigma_xy=3.0,  # noqa: E731
                                             backend=backend)
    results = []
    for fn in (_compiled(run), run):
        p = probs.clone().requires_grad_()
        loss = fn(images, p)
        loss.backward()
        results.append((loss, p.grad))
    _assert_same(results[0], results[1])


@pytest.mark.parametrize("backend", ALL + [backend_param("lattice")])
def test_gaussian_product(backend):
    g = torch.Generator().manual_seed(2)
    feats, x = torch.randn(2, 5, 30, generator=g).to(DEVICE), torch.randn(2, 3, 30, generator=g).to(DEVICE)
    run = lambda f, v: ops.gaussian_product(f, v, cutoff=2.0, backend=backend)  # noqa: E731
    _assert_same(_compiled(run)(feats, x), run(feats, x))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("mode", ["varm", "par"])
def test_varm(backend, mode):
    images, probs = _inputs(3)
    refine = lambda i, m: ops.varm_refine(i, m, dilations=(1, 2), num_iter=3, mode=mode, backend=backend)  # noqa: E731
    _assert_same(_compiled(refine)(images / 255, probs), refine(images / 255, probs))
    affinity = lambda i: ops.varm_affinity(i, dilations=(1, 3), mode=mode, backend=backend)  # noqa: E731
    _assert_same(_compiled(affinity)(images / 255), affinity(images / 255))


@pytest.mark.parametrize("backend", ALL + [backend_param("lattice"), backend_param("pydensecrf", "cpu")])
def test_dense_crf(backend):
    images, probs = _inputs(4)
    run = lambda i, p: ops.dense_crf(i, p, num_iter=2, smooth=(1.5, 3.0), appearance=(4.0, 20.0, 4.0),  # noqa: E731
                                     backend=backend)
    _assert_same(_compiled(run)(images, probs), run(images, probs))


def _primitive_args(with_grad: bool):
    g = torch.Generator().manual_seed(5)
    r = lambda *shape: torch.randn(*shape, generator=g).to(DEVICE)  # noqa: E731
    images = torch.rand(2, 3, 6, 5, generator=g).to(DEVICE)
    dilations = torch.tensor([1, 2], dtype=torch.int32, device=DEVICE)
    position = torch.full((16,), 0.01, device=DEVICE)
    return {
        "gaussian_product": [(r(2, 5, 37), r(2, 3, 37), float("inf"), 0, 0), (r(1, 2, 30), r(1, 1, 30), 4.0, 6, 2)],
        "scd_pass": [(r(2, 4, 9), r(2, 4, 7), r(2, 3, 9), r(2, 3, 7), r(2, 9), r(2, 7), with_grad)],
        "varm_affinity": [(images, dilations, 4.0, 0.01, position)],
        "varm_propagate_": [(r(2, 3, 6, 5), r(2, 16, 6, 5), dilations, torch.empty(2, 3, 6, 5, device=DEVICE))],
    }


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("with_grad", [True, False])
def test_primitives_pass_opcheck(backend, with_grad):
    resolve("scd_loss", backend, torch.device(DEVICE).type)  # registers the backend's primitives
    namespace = primitives(backend)
    for name, calls in _primitive_args(with_grad).items():
        for args in calls:
            torch.library.opcheck(getattr(namespace, name).default, args)


@pytest.mark.parametrize("with_grad", [True, False])
def test_cpu_only_primitives_pass_opcheck(with_grad):
    require("cpp", "cpu")
    resolve("scd_loss", "cpp", "cpu")
    g = torch.Generator().manual_seed(7)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    torch.library.opcheck(primitives("cpp").scd_fused.default,
                          (r(2, 4, 9), r(2, 4, 7), r(2, 3, 9), r(2, 3, 7), with_grad))
    images = torch.rand(2, 3, 6, 5, generator=g)
    dilations, position = torch.tensor([1, 2], dtype=torch.int32), torch.full((16,), 0.01)
    for variation_weight in (0.01, 0.0):
        torch.library.opcheck(primitives("cpp").varm_refine_.default,
                              (r(2, 3, 6, 5), images, dilations, 4.0, variation_weight, position, 2))


@pytest.mark.parametrize("name", ["gaussian_product", "gaussian_product_transposed"])
def test_lattice_primitive_passes_opcheck(name):
    require("lattice", "cpu")
    resolve("gaussian_product", "lattice", "cpu")
    for args in _primitive_args(with_grad=False)["gaussian_product"]:
        args = tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(getattr(primitives("lattice"), name).default, args)


def test_lattice_mean_field_passes_opcheck():
    require("lattice", "cpu")
    resolve("dense_crf", "lattice", "cpu")
    images, probs = (t.cpu() for t in _inputs(7))
    feats = bilateral_features(images, 4.0, 20.0)
    for num_iter in (0, 2):
        torch.library.opcheck(primitives("lattice").dense_crf_mean_field.default,
                              (probs.reshape(2, 4, -1).contiguous(), feats[:, :2].contiguous(), feats, 3.0, 4.0,
                               num_iter))


def test_lattice_bilateral_filter_passes_opcheck():
    require("lattice", "cpu")
    resolve("gaussian_product", "lattice", "cpu")
    images, probs = (t.cpu() for t in _inputs(8))
    x = probs.reshape(2, 4, -1).contiguous()
    torch.library.opcheck(primitives("lattice").bilateral_filter_.default, (images, x, 20.0, 4.0, torch.empty_like(x)))


def test_pydensecrf_op_passes_opcheck():
    require("pydensecrf", "cpu")
    resolve("dense_crf", "pydensecrf", "cpu")
    images, probs = _inputs(6)
    torch.library.opcheck(primitives("pydensecrf").dense_crf.default,
                          (images.cpu(), probs.cpu(), 2, 3.0, 3.0, 8.0, 13.0, 4.0))


@pytest.mark.parametrize("backbone,stride", [("mit_b0", (4, 2, 2, 1)), ("hybrid_b0", (4, 2, 1, 1))])
def test_model_forward_traces_whole(backbone, stride):
    torch.manual_seed(0)
    model = TSCD(backbone, num_classes=4, stride=stride, drop_path_rate=0.0, pooling="topk").to(DEVICE).eval()
    x, small = torch.randn(2, 3, 64, 48, device=DEVICE), torch.randn(2, 3, 48, 32, device=DEVICE)
    with torch.no_grad():
        _assert_same(tuple(_compiled(model)(x, small)), tuple(model(x, small)))
        _assert_same(tuple(_compiled(model.forward_cam)(x)), tuple(model.forward_cam(x)))
