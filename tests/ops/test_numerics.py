"""One numerical contract for every op on every backend: non-finite images and features are refused
(a ValueError naming the argument), every σ, weight, cut-off and count is checked against the range in
which every backend computes correctly (and the exact backends match the float64 reference at its
ends), empty batches give empty outputs (per-pixel ops) or a clear error (the losses), and scalars
may be any real number: Python, numpy or 0-dim tensors."""
import math
import re

import numpy as np
import pytest
import torch

from tests.utils import ALL, assert_within_reference_error, backend_param, require
from tscd.ops import dense_crf, dense_energy_loss, gaussian_product, scd_loss, varm_affinity, varm_refine
from tscd.ops.checks import SIGMA_RANGE, WEIGHT_RANGE
from tscd.ops.dense_crf import PYDENSECRF_MAX_FEATURE
from tscd.ops.reference.dense_crf import dense_crf as crf_reference
from tscd.ops.reference.dense_energy import dense_energy_loss as energy_reference
from tscd.ops.varm import MAX_DILATION

LATTICE = backend_param("lattice", "cpu")
PYDENSECRF = backend_param("pydensecrf", "cpu")
GAUSSIAN = ALL + [LATTICE]  # the backends of gaussian_product and dense_energy_loss
CRF = GAUSSIAN + [PYDENSECRF]
APPROXIMATE = ("lattice", "pydensecrf")  # CPU only
LOW, HIGH = SIGMA_RANGE
RANGE_TEXT = re.escape(f"[{LOW:g}, {HIGH:g}]")


def on(backend, device):
    """The device of the tensors for ``backend`` (the approximations run on the CPU only)."""
    return "cpu" if backend in APPROXIMATE else device


def images_and_probs(B, K, H, W, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 3, H, W, generator=g) * 255
    probs = torch.softmax(torch.randn(B, K, H, W, generator=g) * 2, dim=1)
    return images.to(device), probs.to(device)


def energy_inputs(device, B=2, K=3, H=4, W=5, seed=0):
    images, probs = images_and_probs(B, K, H, W, device, seed)
    roi = torch.ones(B, H, W, device=device)
    ignore = torch.zeros(B, H, W, dtype=torch.bool, device=device)
    ignore[:1, :1] = True
    return images, probs, roi, ignore


def value_and_grad(fn, images, probs, roi, ignore, **kw):
    probs = probs.detach().requires_grad_()
    loss = fn(images, probs, roi, ignore, **kw)
    (grad,) = torch.autograd.grad(loss, probs)
    return loss.detach(), grad


def with_pixel(images, value, index=(0, 1, 2, 3)):
    images = images.clone()
    images[index] = value
    return images


NON_FINITE = [math.nan, math.inf, -math.inf]


# ------------------------------------------------------------------ non-finite images and features


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("backend", GAUSSIAN)
def test_non_finite_features_are_refused(backend, device, value):
    device = on(backend, device)
    feats = torch.randn(1, 5, 12, generator=torch.Generator().manual_seed(0)).to(device)
    feats[0, 3, 7] = value
    x = torch.rand(1, 2, 12, device=device)
    with pytest.raises(ValueError, match="feats must hold finite values"):
        gaussian_product(feats, x, backend=backend)


@pytest.mark.parametrize("backend", GAUSSIAN)
def test_features_beyond_float32_are_refused(backend, device):
    # Finite in float64, infinite once the kernels (float32) read them: refused on every backend.
    device = on(backend, device)
    feats = torch.zeros(1, 2, 6, dtype=torch.float64, device=device)
    feats[0, 1, 2] = 1e300
    with pytest.raises(ValueError, match="feats must hold finite values.*float32"):
        gaussian_product(feats, torch.ones(1, 1, 6, dtype=torch.float64, device=device), backend=backend)


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("backend", GAUSSIAN)
def test_dense_energy_refuses_non_finite_images(backend, device, value):
    images, probs, roi, ignore = energy_inputs(on(backend, device))
    with pytest.raises(ValueError, match="images must hold finite values"):
        dense_energy_loss(with_pixel(images, value), probs, roi, ignore, backend=backend)


@pytest.mark.parametrize("backend", GAUSSIAN)
def test_dense_energy_refuses_colours_beyond_float32(backend, device):
    # Finite pixels whose colour features images/σ_rgb overflow float32.
    images, probs, roi, ignore = energy_inputs(on(backend, device))
    with pytest.raises(ValueError, match="images / sigma_rgb"):
        dense_energy_loss(with_pixel(images, 1e30), probs, roi, ignore, sigma_rgb=1e-10, backend=backend)


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("backend", CRF)
def test_dense_crf_refuses_non_finite_images(backend, device, value):
    images, probs = images_and_probs(1, 2, 4, 5, on(backend, device))
    with pytest.raises(ValueError, match="images must hold finite values"):
        dense_crf(with_pixel(images, value), probs, num_iter=1, backend=backend)


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("backend", ALL)
def test_varm_refuses_non_finite_images(backend, device, value):
    images, probs = images_and_probs(1, 2, 4, 5, device)
    images = with_pixel(images / 255, value)
    with pytest.raises(ValueError, match="images must hold finite values"):
        varm_affinity(images, backend=backend)
    with pytest.raises(ValueError, match="images must hold finite values"):
        varm_refine(images, probs, num_iter=1, backend=backend)


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e6])
def test_lattice_kernel_refuses_features_outside_its_domain(value):
    # The extension's own check (it also holds under torch.compile, where the ops skip theirs):
    # a ValueError instead of a crash or garbage.
    require("lattice", "cpu")
    feats = torch.zeros(2, 5, 9)
    feats[1, 2, 4] = value
    with pytest.raises(ValueError, match=r"lattice.*16384"):
        torch.ops.tscd_lattice.gaussian_product(feats, torch.ones(2, 1, 9), math.inf, 0, 0)


# ------------------------------------------------------------------ σ, weights: range and its ends


@pytest.mark.parametrize("sigma", SIGMA_RANGE)
@pytest.mark.parametrize("name", ["sigma_rgb", "sigma_xy"])
@pytest.mark.parametrize("backend", GAUSSIAN)
def test_dense_energy_at_the_ends_of_the_sigma_range(backend, device, name, sigma):
    device = on(backend, device)
    images, probs, roi, ignore = energy_inputs(device, seed=1)
    kw = dict(sigma_rgb=15.0, sigma_xy=2.0)
    kw[name] = sigma
    if backend == "lattice":
        if sigma == LOW:  # features of ~1e20: outside the lattice's domain, said clearly
            with pytest.raises(ValueError, match="lattice"):
                dense_energy_loss(images, probs, roi, ignore, backend=backend, **kw)
        else:
            assert torch.isfinite(dense_energy_loss(images, probs, roi, ignore, backend=backend, **kw))
        return
    ref_loss, ref_grad = value_and_grad(energy_reference, images, probs.double(), roi, ignore, **kw)
    ref32_loss, ref32_grad = value_and_grad(energy_reference, images, probs, roi, ignore, **kw)
    loss, grad = value_and_grad(dense_energy_loss, images, probs, roi, ignore, backend=backend, **kw)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert_within_reference_error(loss, ref32_loss, ref_loss, torch.float32, what="loss")
    assert_within_reference_error(grad, ref32_grad, ref_grad, torch.float32, what="grad")


def test_dense_energy_torch_backend_computes_half_probs_in_float32(device):
    # The reference in float16 would divide by 2σ² = 2e-36 → 0 (NaN); the op computes in float32.
    images, probs, roi, ignore = energy_inputs(device, seed=2)
    loss = dense_energy_loss(images, probs.half(), roi, ignore, sigma_xy=LOW, backend="torch")
    expected = energy_reference(images, probs.half().double(), roi, ignore, sigma_xy=LOW)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)


CRF_PARAMS = dict(smooth=(1.5, 3.0), appearance=(6.0, 20.0, 4.0))
CRF_LIMITS = [("smooth", 0, LOW), ("smooth", 0, HIGH), ("appearance", 0, LOW), ("appearance", 0, HIGH),
              ("appearance", 1, LOW), ("appearance", 1, HIGH), ("smooth", 1, WEIGHT_RANGE[0]),
              ("appearance", 2, WEIGHT_RANGE[1])]


@pytest.mark.parametrize("kernel,index,value", CRF_LIMITS)
@pytest.mark.parametrize("backend", CRF)
def test_dense_crf_at_the_ends_of_the_ranges(backend, device, kernel, index, value):
    device = on(backend, device)
    images, probs = images_and_probs(1, 3, 5, 6, device, seed=3)
    params = {k: list(v) for k, v in CRF_PARAMS.items()}
    params[kernel][index] = value
    run = lambda: dense_crf(images, probs, num_iter=2, backend=backend, **params)  # noqa: E731
    if backend in APPROXIMATE and value == LOW:
        with pytest.raises(ValueError, match="lattice|pydensecrf"):
            run()
        return
    out = run()
    assert out.shape == probs.shape and torch.isfinite(out).all()
    if backend not in APPROXIMATE:
        expected = crf_reference(images, probs.double(), 2, *params.values())
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=5e-5)


BAD_REALS = [0.0, -1.0, LOW / 2, HIGH * 2, 1e-30, 1e200, math.nan, math.inf, -math.inf, True, "15", None,
             torch.tensor([15.0, 15.0]), np.array([15.0])]


@pytest.mark.parametrize("value", BAD_REALS, ids=repr)
@pytest.mark.parametrize("name", ["sigma_rgb", "sigma_xy"])
def test_dense_energy_refuses_sigmas_outside_the_range(name, value):
    images, probs, roi, ignore = energy_inputs("cpu")
    with pytest.raises(ValueError, match=rf"{name} must be a real number in {RANGE_TEXT}"):
        dense_energy_loss(images, probs, roi, ignore, **{name: value})


@pytest.mark.parametrize("value", BAD_REALS, ids=repr)
@pytest.mark.parametrize("kernel,index,label", [("smooth", 0, "sigma_xy"), ("appearance", 0, "sigma_xy"),
                                                ("appearance", 1, "sigma_rgb")])
def test_dense_crf_refuses_sigmas_outside_the_range(kernel, index, label, value):
    images, probs = images_and_probs(1, 2, 3, 4, "cpu")
    params = {k: list(v) for k, v in CRF_PARAMS.items()}
    params[kernel][index] = value
    with pytest.raises(ValueError, match=rf"{kernel}\[{index}\] \({label}\) must be a real number in {RANGE_TEXT}"):
        dense_crf(images, probs, **params)


@pytest.mark.parametrize("value", [WEIGHT_RANGE[1] * 2, -WEIGHT_RANGE[1] * 2, 1e200, math.nan, math.inf, True, "4"],
                         ids=repr)
@pytest.mark.parametrize("kernel,index", [("smooth", 1), ("appearance", 2)])
def test_dense_crf_refuses_weights_outside_the_range(kernel, index, value):
    images, probs = images_and_probs(1, 2, 3, 4, "cpu")
    params = {k: list(v) for k, v in CRF_PARAMS.items()}
    params[kernel][index] = value
    text = re.escape(f"[{WEIGHT_RANGE[0]:g}, {WEIGHT_RANGE[1]:g}]")
    with pytest.raises(ValueError, match=rf"{kernel}\[{index}\] \(weight\) must be a real number in {text}"):
        dense_crf(images, probs, **params)


def test_pydensecrf_refuses_features_beyond_its_int16_lattice():
    # pydensecrf keys its lattice vertices by int16 coordinates: refused before it wraps them
    # (or, far beyond, crashes the process).
    require("pydensecrf", "cpu")
    images, probs = images_and_probs(1, 2, 3, 4, "cpu")
    sigma = 3 / (PYDENSECRF_MAX_FEATURE * 1.01)  # coordinates up to 3 / σ
    with pytest.raises(ValueError, match=r"pydensecrf.*smooth\[0\] \(sigma_xy\)"):
        dense_crf(images, probs, smooth=(sigma, 3.0), backend="pydensecrf")
    with pytest.raises(ValueError, match=r"pydensecrf.*appearance\[1\] \(sigma_rgb\)"):
        dense_crf(images, probs, appearance=(64.0, 255 / (PYDENSECRF_MAX_FEATURE * 1.01), 4.0), backend="pydensecrf")
    inside = dense_crf(images, probs, smooth=(3 / (PYDENSECRF_MAX_FEATURE * 0.99), 3.0), backend="pydensecrf")
    assert inside.isfinite().all()


@pytest.mark.parametrize("cutoff", [0.0, -1.0, LOW / 2, math.nan, True, "2", torch.ones(2)], ids=repr)
def test_gaussian_product_refuses_bad_cutoffs(cutoff):
    with pytest.raises(ValueError, match="cutoff must be a real number in"):
        gaussian_product(torch.zeros(1, 2, 4), torch.zeros(1, 1, 4), cutoff=cutoff)


@pytest.mark.parametrize("backend", GAUSSIAN)
def test_gaussian_product_with_a_row_window_wider_than_the_image(backend, device):
    # Radii beyond the image (up to the int64 limit) visit every row, on every backend.
    device = on(backend, device)
    feats = torch.randn(1, 2, 20, generator=torch.Generator().manual_seed(4)).to(device)
    x = torch.rand(1, 2, 20, generator=torch.Generator().manual_seed(5)).to(device)
    expected = gaussian_product(feats, x, backend=backend)
    for radius in (4, 2**31, 2**62):
        torch.testing.assert_close(gaussian_product(feats, x, row_window=(5, radius), backend=backend), expected)


@pytest.mark.parametrize("backend", ALL)
def test_varm_refuses_dilations_beyond_int32_offsets(backend, device):
    images, probs = images_and_probs(1, 2, 4, 5, device)
    with pytest.raises(ValueError, match=f"dilations must be positive ints up to {MAX_DILATION}"):
        varm_refine(images / 255, probs, dilations=(1, MAX_DILATION + 1), backend=backend)
    # The largest allowed dilation reaches past every border: like any dilation of at least the image size.
    far = varm_refine(images / 255, probs, dilations=(1, MAX_DILATION), num_iter=1, mode="varm", backend=backend)
    near = varm_refine(images / 255, probs, dilations=(1, 8), num_iter=1, mode="varm", backend=backend)
    torch.testing.assert_close(far, near, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ empty batches


@pytest.mark.parametrize("backend", GAUSSIAN)
def test_empty_batch_gaussian_product(backend, device):
    device = on(backend, device)
    y = gaussian_product(torch.zeros(0, 5, 7, device=device), torch.zeros(0, 2, 7, device=device), backend=backend)
    assert y.shape == (0, 2, 7)


@pytest.mark.parametrize("backend", CRF)
def test_empty_batch_dense_crf(backend, device):
    images, probs = images_and_probs(0, 2, 3, 4, on(backend, device))
    assert dense_crf(images, probs, num_iter=1, backend=backend).shape == (0, 2, 3, 4)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("B,H,W", [(0, 4, 5), (1, 0, 5), (2, 4, 0)])
def test_empty_batch_or_image_varm(backend, device, B, H, W):
    images, probs = images_and_probs(B, 2, H, W, device)
    assert varm_affinity(images / 255, dilations=(1, 2), backend=backend).shape == (B, 16, H, W)
    out = varm_refine(images / 255, probs, dilations=(1, 2), num_iter=2, backend=backend)
    assert out.shape == (B, 2, H, W)


@pytest.mark.parametrize("backend", GAUSSIAN)
def test_empty_batch_dense_energy_is_an_error(backend, device):
    images, probs, roi, ignore = energy_inputs(on(backend, device), B=0)
    with pytest.raises(ValueError, match=r"dense_energy_loss needs a batch size B >= 1.*\(0, 3, 4, 5\)"):
        dense_energy_loss(images, probs, roi, ignore, backend=backend)


@pytest.mark.parametrize("backend", GAUSSIAN)
def test_empty_image_dense_energy_is_zero(backend, device):
    images, probs, roi, ignore = energy_inputs(on(backend, device), B=2, H=0)
    loss, grad = value_and_grad(dense_energy_loss, images, probs, roi, ignore, backend=backend)
    assert loss.item() == 0 and grad.shape == probs.shape


@pytest.mark.parametrize("backend", ALL)
def test_empty_batch_scd_is_an_error(backend, device):
    t, s = torch.zeros(0, 4, 3, 3, device=device), torch.zeros(0, 2, 3, 3, device=device)
    with pytest.raises(ValueError, match="B, N1 and N2 >= 1"):
        scd_loss(t, t, s, s, backend=backend)


# ------------------------------------------------------------------ scalar types


REALS = [np.float32(15.0), np.float64(15.0), np.int64(15), torch.tensor(15.0), torch.tensor(15), 15]


@pytest.mark.parametrize("sigma", REALS, ids=repr)
@pytest.mark.parametrize("backend", GAUSSIAN)
def test_dense_energy_accepts_any_real_sigma(backend, device, sigma):
    images, probs, roi, ignore = energy_inputs(on(backend, device))
    expected = dense_energy_loss(images, probs, roi, ignore, sigma_rgb=15.0, sigma_xy=15.0, backend=backend)
    loss = dense_energy_loss(images, probs, roi, ignore, sigma_rgb=sigma, sigma_xy=sigma, backend=backend)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("backend", CRF)
def test_dense_crf_accepts_numpy_and_tensor_scalars(backend, device):
    images, probs = images_and_probs(1, 2, 4, 5, on(backend, device))
    expected = dense_crf(images, probs, num_iter=2, smooth=(3.0, 3.0), appearance=(64.0, 5.0, 4.0), backend=backend)
    out = dense_crf(images, probs, num_iter=np.int64(2), smooth=np.array([3.0, 3.0], dtype=np.float32),
                    appearance=(torch.tensor(64.0), np.float32(5), torch.tensor(4)), backend=backend)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(dense_crf(images, probs, num_iter=torch.tensor(2), backend=backend),
                               dense_crf(images, probs, num_iter=2, backend=backend))


@pytest.mark.parametrize("num_iter", [2.0, 2.5, np.float64(2), True, "2", torch.tensor(2.0), torch.tensor([2]), -1])
def test_iteration_counts_must_be_ints(num_iter):
    images, probs = images_and_probs(1, 2, 4, 5, "cpu")
    with pytest.raises(ValueError, match="num_iter must be a non-negative int"):
        dense_crf(images, probs, num_iter=num_iter)
    with pytest.raises(ValueError, match="num_iter must be a non-negative int"):
        varm_refine(images / 255, probs, num_iter=num_iter)


@pytest.mark.parametrize("backend", ALL)
def test_varm_accepts_numpy_ints(backend, device):
    images, probs = images_and_probs(1, 2, 4, 5, device)
    expected = varm_refine(images / 255, probs, dilations=(1, 2), num_iter=2, backend=backend)
    out = varm_refine(images / 255, probs, dilations=np.array([1, 2]), num_iter=np.int32(2), backend=backend)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(varm_affinity(images / 255, dilations=[np.int64(1), torch.tensor(2)], backend=backend),
                               varm_affinity(images / 255, dilations=(1, 2), backend=backend))


@pytest.mark.parametrize("backend", GAUSSIAN)
def test_gaussian_product_accepts_numpy_scalars(backend, device):
    device = on(backend, device)
    feats = torch.randn(1, 2, 12, generator=torch.Generator().manual_seed(6)).to(device)
    x = torch.rand(1, 1, 12, device=device)
    expected = gaussian_product(feats, x, cutoff=2.0, row_window=(4, 2), backend=backend)
    out = gaussian_product(feats, x, cutoff=np.float32(2.0), row_window=(np.int64(4), torch.tensor(2)),
                           backend=backend)
    torch.testing.assert_close(out, expected)


# ------------------------------------------------------------------ inputs outside the ops' contract


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("op", ["varm_refine", "varm_affinity"])
@pytest.mark.parametrize("scale,shift", [(255.0, 0.0), (1.0, -0.5)])
def test_varm_refuses_images_outside_0_1(backend, device, op, scale, shift):
    """0–255 images (or ImageNet-normalised ones) would run and refine with the wrong colour
    distances: refused, naming the argument and what was found."""
    images = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(0)).to(device) * scale + shift
    masks = torch.rand(1, 2, 6, 7, device=device)
    call = (lambda: varm_refine(images, masks, num_iter=1, backend=backend)) if op == "varm_refine" else (
        lambda: varm_affinity(images, backend=backend))
    with pytest.raises(ValueError, match=r"images must hold values in \[.*\], got values in .*divide 0–255"):
        call()
    images = images.clamp(0, 1)
    call = (lambda: varm_refine(images, masks, num_iter=1, backend=backend)) if op == "varm_refine" else (
        lambda: varm_affinity(images, backend=backend))
    assert torch.isfinite(call()).all()


@pytest.mark.parametrize("backend", CRF)
@pytest.mark.parametrize("damage,match", [
    ("negative", "probabilities.*got a value of -"),
    ("logits", "probabilities"),
    ("unnormalised", "summing to 1.*away from 1"),
    ("images_0_1000", r"images must hold values in \[0, 255\]"),
])
def test_dense_crf_refuses_inputs_that_are_not_its_contract(backend, device, damage, match):
    images, probs = images_and_probs(1, 3, 5, 6, on(backend, device))
    if damage == "negative":
        probs = probs.clone()
        probs[0, 0, 0, 0] = -0.2
        probs[0, 1, 0, 0] += 0.2
    elif damage == "logits":
        probs = torch.randn_like(probs)
    elif damage == "unnormalised":
        probs = probs * 0.9
    else:
        images = images * 4
    with pytest.raises(ValueError, match=match):
        dense_crf(images, probs, num_iter=1, backend=backend)


@pytest.mark.parametrize("backend", CRF)
def test_dense_crf_accepts_half_precision_softmax(backend, device):
    images, probs = images_and_probs(1, 21, 5, 6, on(backend, device))
    assert torch.isfinite(dense_crf(images, probs.half(), num_iter=1, backend=backend)).all()


def test_dense_crf_needs_a_class():
    with pytest.raises(ValueError, match="at least one class K"):
        dense_crf(torch.zeros(1, 3, 4, 4), torch.zeros(1, 0, 4, 4))
