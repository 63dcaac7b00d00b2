"""tscd.compat against naive computations written from the family's released code."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tscd.compat
from tests.utils import require
from tscd.compat import LATTICE_SCALE, PAR, VARM, DenseEnergyLoss, bilateralfilter
from tscd.ops import dense_energy_loss, gaussian_product
from tscd.ops.gaussian import bilateral_features
from tscd.ops.reference import varm as ref_varm


def naive_filter(image: np.ndarray, values: np.ndarray, H: int, W: int, sigma_rgb: float, sigma_xy: float):
    """Σ_j W_ij v_j, exactly, from the SWIG layout: image (3·H·W) channel-major, values (K·H·W)."""
    img = image.reshape(3, H * W).astype(np.float64)
    rows, cols = np.divmod(np.arange(H * W), W)
    d_xy = (cols[:, None] - cols[None]) ** 2 + (rows[:, None] - rows[None]) ** 2
    d_rgb = ((img[:, :, None] - img[:, None, :]) ** 2).sum(0)
    w = np.exp(-d_xy / (2 * sigma_xy**2) - d_rgb / (2 * sigma_rgb**2))
    return (values.reshape(-1, H * W).astype(np.float64) @ w.T).reshape(-1)


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    N, K, H, W = 2, 3, 5, 7
    images = rng.uniform(0, 255, N * 3 * H * W).astype(np.float32)
    ins = rng.uniform(0, 1, N * K * H * W).astype(np.float32)
    return N, K, H, W, images, ins


@pytest.fixture
def exact_filter():
    previous = bilateralfilter.use_exact_sum(True)
    yield
    bilateralfilter.use_exact_sum(previous)


def test_bilateralfilter_defaults_to_the_lattice(arrays):
    require("lattice", "cpu")
    N, K, H, W, images, ins = arrays
    outs = np.zeros(N * K * H * W, np.float32)
    bilateralfilter.bilateralfilter_batch(images, ins, outs, N, K, H, W, 15.0, 4.0)
    feats = bilateral_features(torch.from_numpy(images).reshape(N, 3, H, W), 4.0, 15.0)
    expected = gaussian_product(feats, torch.from_numpy(ins).reshape(N, K, H * W), backend="lattice")
    np.testing.assert_array_equal(outs, expected.reshape(-1).numpy())


def test_bilateralfilter_on_a_lattice_of_many_vertices():
    """Random colours at a small σ_rgb: more than 65535 vertices, beyond the 16-bit slots."""
    require("lattice", "cpu")
    rng = np.random.default_rng(1)
    N, K, H, W = 1, 3, 120, 150
    images = rng.uniform(0, 255, N * 3 * H * W).astype(np.float32)
    ins = rng.uniform(0, 1, N * K * H * W).astype(np.float32)
    outs = np.zeros(N * K * H * W, np.float32)
    bilateralfilter.bilateralfilter_batch(images, ins, outs, N, K, H, W, 2.0, 4.0)
    feats = bilateral_features(torch.from_numpy(images).reshape(N, 3, H, W), 4.0, 2.0)
    expected = gaussian_product(feats, torch.from_numpy(ins).reshape(N, K, H * W), backend="lattice")
    np.testing.assert_array_equal(outs, expected.reshape(-1).numpy())


def test_use_exact_sum_gives_the_exact_sum_at_lattice_scale(arrays, exact_filter):
    N, K, H, W, images, ins = arrays
    out = np.zeros(K * H * W, np.float32)
    bilateralfilter.bilateralfilter(images[: 3 * H * W], ins[: K * H * W], out, H, W, 15.0, 4.0)
    expected = LATTICE_SCALE * naive_filter(images[: 3 * H * W], ins[: K * H * W], H, W, 15.0, 4.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_use_exact_sum_returns_the_previous_setting():
    assert bilateralfilter.use_exact_sum(True) is False
    assert bilateralfilter.use_exact_sum(False) is True
    with pytest.raises(TypeError, match="flag must be a bool"):
        bilateralfilter.use_exact_sum(1)


@pytest.mark.parametrize("exact", [False, True], ids=["lattice", "exact"])
def test_batch_equals_per_image(arrays, exact):
    require("lattice", "cpu")
    N, K, H, W, images, ins = arrays
    previous = bilateralfilter.use_exact_sum(exact)
    try:
        outs = np.zeros(N * K * H * W, np.float32)
        bilateralfilter.bilateralfilter_batch(images, ins, outs, N, K, H, W, 15.0, 50.0)
        for n in range(N):
            single = np.zeros(K * H * W, np.float32)
            bilateralfilter.bilateralfilter(images[n * 3 * H * W:(n + 1) * 3 * H * W],
                                            ins[n * K * H * W:(n + 1) * K * H * W], single, H, W, 15.0, 50.0)
            np.testing.assert_allclose(outs[n * K * H * W:(n + 1) * K * H * W], single, rtol=1e-6, atol=1e-7)
    finally:
        bilateralfilter.use_exact_sum(previous)


def test_bilateralfilter_bad_arrays_raise(arrays):
    N, K, H, W, images, ins = arrays
    outs = np.zeros(N * K * H * W, np.float32)
    with pytest.raises(ValueError, match="images must hold"):
        bilateralfilter.bilateralfilter_batch(images[:-1], ins, outs, N, K, H, W, 15.0, 50.0)
    with pytest.raises(TypeError, match="ins must have dtype float32"):
        bilateralfilter.bilateralfilter_batch(images, ins.astype(np.float64), outs, N, K, H, W, 15.0, 50.0)
    with pytest.raises(ValueError, match="outs must hold"):
        bilateralfilter.bilateralfilter_batch(images, ins, outs[:5], N, K, H, W, 15.0, 50.0)
    with pytest.raises(ValueError, match="writable"):
        bilateralfilter.bilateralfilter_batch(images, ins, outs[::1].reshape(N, -1).T, N, K, H, W, 15.0, 50.0)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        bilateralfilter.bilateralfilter_batch(list(images), ins, outs, N, K, H, W, 15.0, 50.0)
    with pytest.raises(ValueError, match="sigma_xy"):
        bilateralfilter.bilateralfilter_batch(images, ins, outs, N, K, H, W, 15.0, 0.0)
    with pytest.raises(ValueError, match="H must be a positive int"):
        bilateralfilter.bilateralfilter(images, ins, outs, 0, W, 15.0, 50.0)


def test_sys_modules_substitution(monkeypatch):
    monkeypatch.setitem(sys.modules, "bilateralfilter", tscd.compat.bilateralfilter)
    from bilateralfilter import bilateralfilter_batch  # the family's import line

    assert bilateralfilter_batch is tscd.compat.bilateralfilter.bilateralfilter_batch


# ---- DenseEnergyLoss -----------------------------------------------------------------------
def loss_inputs(seed=0, B=2, K=4, H=13, W=11):
    """The family's call: images 0–255, softmax probabilities, crop box, uint8 label (B, 1, H, W)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 3, H, W, generator=g) * 255
    logits = torch.randn(B, K, H, W, generator=g, dtype=torch.float64).requires_grad_()
    rois = torch.zeros(B, H, W)
    rois[:, 2:12, 1:9] = 1
    label = torch.randint(0, K, (B, 1, H, W), generator=g).to(torch.uint8)
    label[:, :, :4] = 255
    return images, logits, rois, label


def released_loss_and_gradient(images, logits, rois, label, weight, sigma_rgb, sigma_xy, scale_factor):
    """Value and ∂/∂logits of the released DenseEnergyLoss (its forward and backward), in float64,
    with its lattice replaced by the exact sum × LATTICE_SCALE."""
    resize = {"scale_factor": scale_factor, "recompute_scale_factor": True}
    img = F.interpolate(images.double(), **resize)
    seg = F.interpolate(logits.softmax(1), mode="bilinear", align_corners=False, **resize)
    roi = F.interpolate(rois[:, None].double(), **resize)[:, 0]
    unlabelled = (F.interpolate(label.double(), mode="nearest", **resize).long() == 255)[:, 0]
    B, K, H, W = seg.shape
    gate = (roi - seg.detach().max(1)[0]).clamp(min=0).masked_fill(unlabelled, 1)
    s = (seg * roi[:, None]).reshape(B, K, H * W)
    ws = torch.stack([torch.from_numpy(naive_filter(
        img[b].reshape(-1).numpy(), s[b].detach().reshape(-1).numpy(), H, W, sigma_rgb, sigma_xy * scale_factor,
    )).reshape(K, H * W) for b in range(B)]) * LATTICE_SCALE
    gated_ws = gate.reshape(B, 1, H * W) * ws
    value = -(s.detach() * gated_ws).sum() / B
    (grad,) = torch.autograd.grad(-2 * (s * gated_ws).sum() / B, logits)  # the released backward: −2·g·WS·roi/B
    return weight * value, weight * grad


def test_dense_energy_loss_is_the_released_loss_and_gradient():
    images, logits, rois, label = loss_inputs()
    loss_fn = DenseEnergyLoss(1e-3, 15.0, 100.0, 0.5, exact_sum=True)
    loss = loss_fn(images, logits.float().softmax(1), rois, label)
    (grad,) = torch.autograd.grad(loss, logits)
    value, expected_grad = released_loss_and_gradient(images, logits, rois, label, 1e-3, 15.0, 100.0, 0.5)
    assert loss.shape == () and loss.dtype == torch.float32 and loss_fn.weight == 1e-3
    torch.testing.assert_close(loss.double(), value, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-10)


def test_true_gradient_is_the_gradient_of_the_same_loss():
    images, logits, rois, label = loss_inputs(1)
    family = DenseEnergyLoss(1e-3, 15.0, 60.0, 0.5, exact_sum=True)
    true = DenseEnergyLoss(1e-3, 15.0, 60.0, 0.5, gradient="true", exact_sum=True)
    family_loss = family(images, logits.float().softmax(1), rois, label)
    true_loss = true(images, logits.double().softmax(1), rois, label)
    (grad,) = torch.autograd.grad(true_loss, logits)
    torch.testing.assert_close(true_loss.double(), family_loss.double(), rtol=1e-5, atol=1e-12)

    resize = {"scale_factor": 0.5, "recompute_scale_factor": True}
    probs = F.interpolate(logits.softmax(1), mode="bilinear", align_corners=False, **resize)
    unlabelled = F.interpolate(label.double(), **resize)[:, 0] == 255
    expected = 1e-3 * LATTICE_SCALE * dense_energy_loss(
        F.interpolate(images, **resize), probs, F.interpolate(rois[:, None], **resize)[:, 0], unlabelled,
        sigma_rgb=15.0, sigma_xy=30.0, backend="torch")
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("gradient", ["family", "true"])
def test_cpu_default_is_the_lattice(gradient):
    require("lattice", "cpu")
    from skimage import data

    photo = torch.from_numpy(data.astronaut()[::8, ::8].copy()).permute(2, 0, 1)[None].float()  # (1, 3, 64, 64)
    _, logits, rois, label = loss_inputs(2, B=1, K=3, H=64, W=64)
    probs = logits.float().softmax(1)
    lattice = DenseEnergyLoss(1.0, 15.0, 100.0, 1.0, gradient=gradient)(photo, probs, rois, label)
    exact = DenseEnergyLoss(1.0, 15.0, 100.0, 1.0, gradient=gradient, exact_sum=True)(photo, probs, rois, label)
    assert 0.8 < lattice.item() / exact.item() < 1.25  # the lattice's sums are ≈ LATTICE_SCALE × the exact ones
    forced = DenseEnergyLoss(1.0, 15.0, 100.0, 1.0, gradient=gradient, exact_sum=False)(photo, probs, rois, label)
    assert forced.item() == lattice.item()


def test_dense_energy_loss_bad_arguments():
    images, logits, rois, label = loss_inputs()
    with pytest.raises(ValueError, match="gradient must be one of"):
        DenseEnergyLoss(1e-7, 15, 100, 0.5, gradient="released")
    with pytest.raises(TypeError, match="exact_sum must be True, False or None"):
        DenseEnergyLoss(1e-7, 15, 100, 0.5, exact_sum="yes")
    with pytest.raises(ValueError, match="scale_factor must be positive"):
        DenseEnergyLoss(1e-7, 15, 100, 0)
    loss_fn = DenseEnergyLoss(1e-7, 15, 100, 0.5, exact_sum=True)
    probs = logits.float().softmax(1)
    with pytest.raises(ValueError, match=r"ROIs must have shape \(2, 13, 11\)"):
        loss_fn(images, probs, rois[:, :-1], label)
    with pytest.raises(ValueError, match=r"seg_label must have shape \(2, 1, 13, 11\)"):
        loss_fn(images, probs, rois, label[:1])
    with pytest.raises(ValueError, match=r"segmentations must have shape \(B, K, H, W\)"):
        loss_fn(images, probs[0], rois, label)
    assert "gradient='family'" in repr(loss_fn) and "weight=1e-07" in repr(loss_fn)


@pytest.mark.parametrize("module, mode", [(PAR, "par"), (VARM, "varm")])
def test_refiners_match_reference(module, mode):
    torch.manual_seed(1)
    imgs = torch.rand(2, 3, 17, 13)
    masks = torch.rand(2, 3, 9, 7).softmax(1)
    refined = module([1, 2, 4], 5)(imgs, masks)
    resized = F.interpolate(masks.double(), size=(17, 13), mode="bilinear", align_corners=True)
    expected = ref_varm.varm_refine(imgs.double(), resized, (1, 2, 4), 5, mode)
    torch.testing.assert_close(refined.double(), expected, rtol=1e-4, atol=1e-5)


def test_dense_energy_loss_input_that_vanishes_at_the_loss_scale():
    loss_fn = DenseEnergyLoss(1e-7, 15.0, 100.0, 0.5)
    args = (torch.rand(1, 3, 1, 1) * 255, torch.ones(1, 3, 1, 1) / 3, torch.ones(1, 1, 1), torch.zeros(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"1×1 pixels vanish at the loss's scale_factor 0.5.*at least 2 pixels"):
        loss_fn(*args)
