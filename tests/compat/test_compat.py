"""tscd.compat against naive computations written from the family's documented semantics."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tscd.compat
from tscd.compat import LATTICE_SCALE, PAR, VARM, DenseEnergyLoss, bilateralfilter
from tscd.ops.reference import dense_energy as ref_dense
from tscd.ops.reference import varm as ref_varm


def naive_filter(image: np.ndarray, values: np.ndarray, H: int, W: int, sigma_rgb: float, sigma_xy: float):
    """0.58 · Σ_j W_ij v_j from the SWIG layout: image (3·H·W) channel-major, values (K·H·W)."""
    img = image.reshape(3, H * W).astype(np.float64)
    rows, cols = np.divmod(np.arange(H * W), W)
    d_xy = (cols[:, None] - cols[None]) ** 2 + (rows[:, None] - rows[None]) ** 2
    d_rgb = ((img[:, :, None] - img[:, None, :]) ** 2).sum(0)
    w = np.exp(-d_xy / (2 * sigma_xy**2) - d_rgb / (2 * sigma_rgb**2))
    return LATTICE_SCALE * (values.reshape(-1, H * W).astype(np.float64) @ w.T).reshape(-1)


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    N, K, H, W = 2, 3, 5, 7
    images = rng.uniform(0, 255, N * 3 * H * W).astype(np.float32)
    ins = rng.uniform(0, 1, N * K * H * W).astype(np.float32)
    return N, K, H, W, images, ins


def test_bilateralfilter_is_exact_sum_at_lattice_scale(arrays):
    N, K, H, W, images, ins = arrays
    out = np.zeros(K * H * W, np.float32)
    bilateralfilter.bilateralfilter(images[: 3 * H * W], ins[: K * H * W], out, H, W, 15.0, 4.0)
    expected = naive_filter(images[: 3 * H * W], ins[: K * H * W], H, W, 15.0, 4.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_batch_equals_per_image(arrays):
    N, K, H, W, images, ins = arrays
    outs = np.zeros(N * K * H * W, np.float32)
    bilateralfilter.bilateralfilter_batch(images, ins, outs, N, K, H, W, 15.0, 50.0)
    for n in range(N):
        single = np.zeros(K * H * W, np.float32)
        bilateralfilter.bilateralfilter(images[n * 3 * H * W:(n + 1) * 3 * H * W],
                                        ins[n * K * H * W:(n + 1) * K * H * W], single, H, W, 15.0, 50.0)
        np.testing.assert_allclose(outs[n * K * H * W:(n + 1) * K * H * W], single, rtol=1e-6, atol=1e-7)


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


def test_dense_energy_loss_matches_naive_exact_loss():
    torch.manual_seed(0)
    B, K, H, W = 2, 4, 12, 10
    images = torch.rand(B, 3, H, W) * 255
    logits = torch.randn(B, K, H, W, requires_grad=True)
    rois = torch.zeros(B, H, W)
    rois[:, 2:11, 1:9] = 1
    seg_label = torch.randint(0, K, (B, 1, H, W))
    seg_label[:, :, :3] = 255
    loss = DenseEnergyLoss(1e-3, 15.0, 100.0, 0.5)(images, logits.softmax(1), rois, seg_label)
    (grad,) = torch.autograd.grad(loss, logits)

    logits64 = logits.detach().double().requires_grad_()
    probs = F.interpolate(logits64.softmax(1), scale_factor=0.5, mode="bilinear", align_corners=False)
    img = F.interpolate(images.double(), scale_factor=0.5, mode="nearest")
    roi = F.interpolate(rois[:, None].double(), scale_factor=0.5, mode="nearest")[:, 0]
    ignore = F.interpolate(seg_label.double(), scale_factor=0.5, mode="nearest")[:, 0] == 255
    expected = 1e-3 * LATTICE_SCALE * ref_dense.dense_energy_loss(img, probs, roi, ignore, 15.0, 50.0)
    (expected_grad,) = torch.autograd.grad(expected, logits64)
    assert loss.dim() == 0
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("module, mode", [(PAR, "par"), (VARM, "varm")])
def test_refiners_match_reference(module, mode):
    torch.manual_seed(1)
    imgs = torch.rand(2, 3, 17, 13)
    masks = torch.rand(2, 3, 9, 7).softmax(1)
    refined = module([1, 2, 4], 5)(imgs, masks)
    resized = F.interpolate(masks.double(), size=(17, 13), mode="bilinear", align_corners=True)
    expected = ref_varm.varm_refine(imgs.double(), resized, (1, 2, 4), 5, mode)
    torch.testing.assert_close(refined.double(), expected, rtol=1e-4, atol=1e-5)
