"""dense_energy_loss (method §8): every fused backend against the naive reference."""
import pytest
import torch

from tests.utils import ALL, FUSED, assert_within_reference_error
from tscd.ops import dense_energy_loss
from tscd.ops.reference.dense_energy import dense_energy_loss as reference


def make_inputs(B, K, H, W, device, seed=0, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 3, H, W, generator=g) * 255
    probs = torch.softmax(torch.randn(B, K, H, W, generator=g) * 2, dim=1)
    roi = torch.rand(B, H, W, generator=g) > 0.2
    ignore = torch.rand(B, H, W, generator=g) < ignore_frac
    return images.to(device), probs.to(device), roi.to(device), ignore.to(device)


def value_and_grad(fn, probs, *args, **kw):
    probs = probs.detach().requires_grad_()
    loss = fn(args[0], probs, *args[1:], **kw)
    (grad,) = torch.autograd.grad(loss, probs)
    return loss.detach(), grad


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("B,K,H,W", [(2, 3, 7, 9), (1, 1, 1, 1), (1, 4, 1, 23), (2, 2, 13, 1), (1, 21, 11, 13)])
def test_matches_reference(backend, device, B, K, H, W):
    images, probs, roi, ignore = make_inputs(B, K, H, W, device, seed=H * W + K)
    kw = dict(sigma_rgb=15.0, sigma_xy=5.0)
    ref_loss, ref_grad = value_and_grad(reference, probs.double(), images, roi, ignore, **kw)
    loss, grad = value_and_grad(dense_energy_loss, probs, images, roi, ignore, backend=backend, **kw)
    ref32_loss, ref32_grad = value_and_grad(reference, probs, images, roi, ignore, **kw)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    assert_within_reference_error(loss, ref32_loss, ref_loss, torch.float32, what="loss")
    assert_within_reference_error(grad, ref32_grad, ref_grad, torch.float32, what="grad")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_probs(backend, device, dtype):
    images, probs, roi, ignore = make_inputs(2, 3, 6, 7, device, seed=5)
    probs = probs.to(dtype)
    kw = dict(sigma_rgb=15.0, sigma_xy=5.0)
    ref_loss, ref_grad = value_and_grad(reference, probs.double(), images, roi, ignore, **kw)
    ref_h_loss, ref_h_grad = value_and_grad(reference, probs, images, roi, ignore, **kw)
    loss, grad = value_and_grad(dense_energy_loss, probs, images, roi, ignore, backend=backend, **kw)
    assert grad.dtype == dtype
    assert_within_reference_error(loss, ref_h_loss, ref_loss, dtype, what="loss")
    assert_within_reference_error(grad, ref_h_grad, ref_grad, dtype, what="grad")


@pytest.mark.parametrize("backend", ALL)
def test_float_roi_equals_bool_roi(backend, device):
    images, probs, roi, ignore = make_inputs(1, 3, 5, 6, device, seed=6)
    a = dense_energy_loss(images, probs, roi, ignore, backend=backend)
    b = dense_energy_loss(images, probs, roi.float(), ignore, backend=backend)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ALL)
def test_all_ignored_and_empty_roi(backend, device):
    images, probs, roi, ignore = make_inputs(2, 3, 5, 4, device, seed=7)
    probs = probs.detach().requires_grad_()
    # All ignored: the gate is 1 everywhere, so L = -(1/B) Σ S·WS.
    loss = dense_energy_loss(images, probs, roi, torch.ones_like(ignore), backend=backend)
    expected = reference(images, probs.double(), roi, torch.ones_like(ignore))
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    # No pixel in the crop box: S = 0, loss 0, gradient 0.
    loss = dense_energy_loss(images, probs, torch.zeros_like(roi), ignore, backend=backend)
    (grad,) = torch.autograd.grad(loss, probs)
    assert loss.item() == 0.0 and grad.abs().max().item() == 0.0


@pytest.mark.parametrize("backend", FUSED)
def test_pixel_swap_invariance(backend, device):
    # W is symmetric and depends on positions only through differences: transposing the image
    # (swapping x and y) and flipping it leave the loss unchanged.
    images, probs, roi, ignore = make_inputs(1, 3, 6, 9, device, seed=8)
    kw = dict(backend=backend, sigma_xy=4.0)
    base = dense_energy_loss(images, probs, roi, ignore, **kw)
    t = lambda x: x.transpose(-1, -2)  # noqa: E731
    swapped = dense_energy_loss(t(images), t(probs), t(roi), t(ignore), **kw)
    f = lambda x: x.flip(-1)  # noqa: E731
    flipped = dense_energy_loss(f(images), f(probs), f(roi), f(ignore), **kw)
    torch.testing.assert_close(swapped, base, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flipped, base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", FUSED)
def test_no_grad_and_float64(backend, device):
    images, probs, roi, ignore = make_inputs(1, 2, 4, 5, device, seed=9)
    with torch.no_grad():
        a = dense_energy_loss(images, probs, roi, ignore, backend=backend)
    b = dense_energy_loss(images, probs.double(), roi, ignore, backend=backend)
    assert b.dtype == torch.float64
    torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", FUSED)
def test_no_grad_sweeps_only_the_value(backend, device, monkeypatch):
    """Under no_grad (a probs tensor that requires grad) the sweep carries the K value channels
    only, not the 2K the backward needs."""
    import tscd.ops.dense_energy as module

    channels, product = [], module.gaussian_product_unchecked
    monkeypatch.setattr(module, "gaussian_product_unchecked",
                        lambda b, f, x: channels.append(x.shape[1]) or product(b, f, x))
    images, probs, roi, ignore = make_inputs(1, 3, 4, 5, device, seed=2)
    probs.requires_grad_(True)
    with torch.no_grad():
        dense_energy_loss(images, probs, roi, ignore, backend=backend)
    dense_energy_loss(images, probs, roi, ignore, backend=backend).backward()
    assert channels == [3, 6]


def test_reference_gradcheck():
    # Finite differences would move the gate, which has no gradient: gate fixed at 1 (all ignored).
    images, probs, roi, ignore = make_inputs(2, 3, 3, 4, "cpu", seed=10)
    probs = probs.double().requires_grad_()
    ignore = torch.ones_like(ignore)
    assert torch.autograd.gradcheck(lambda p: reference(images, p, roi, ignore, 15.0, 3.0), (probs,))


def test_reference_gradient_is_method_formula():
    # ∂L/∂P = roi · (−1/B)(g·WS + W(g·S)) with the gate held constant (method §8).
    B, K, H, W = 2, 3, 4, 5
    images, probs, roi, ignore = make_inputs(B, K, H, W, "cpu", seed=11, ignore_frac=0.3)
    probs = probs.double()
    _, grad = value_and_grad(reference, probs, images, roi, ignore, sigma_rgb=15.0, sigma_xy=3.0)
    ys, xs = torch.meshgrid(torch.arange(float(H)), torch.arange(float(W)), indexing="ij")
    feats = torch.cat((torch.stack((xs, ys)).reshape(1, 2, -1).expand(B, 2, -1).double() / 3.0,
                       images.double().reshape(B, 3, -1) / 15.0), dim=1)
    w = torch.exp(-0.5 * ((feats[:, :, :, None] - feats[:, :, None, :]) ** 2).sum(1))
    r = roi.double().reshape(B, 1, -1)
    p = probs.reshape(B, K, -1)
    s = p * r
    gate = torch.where(ignore.reshape(B, 1, -1), 1.0, torch.clamp(r - p.amax(1, keepdim=True), min=0))
    expected = r * -(gate * (s @ w.transpose(1, 2)) + (gate * s) @ w.transpose(1, 2)) / B
    torch.testing.assert_close(grad.reshape(B, K, -1), expected)


def test_bad_inputs(device):
    images, probs, roi, ignore = make_inputs(1, 2, 4, 5, device)
    with pytest.raises(TypeError, match="probs"):
        dense_energy_loss(images, probs.long(), roi, ignore)
    with pytest.raises(ValueError, match="probs must have shape"):
        dense_energy_loss(images, probs[0], roi, ignore)
    with pytest.raises(ValueError, match="images must have shape"):
        dense_energy_loss(images[:, :2], probs, roi, ignore)
    with pytest.raises(TypeError, match="images"):
        dense_energy_loss(images.long(), probs, roi, ignore)
    with pytest.raises(ValueError, match="roi must have shape"):
        dense_energy_loss(images, probs, roi[:, :3], ignore)
    with pytest.raises(TypeError, match="ignore must be a bool"):
        dense_energy_loss(images, probs, roi, ignore.float())
    with pytest.raises(TypeError, match="roi must be a bool or float"):
        dense_energy_loss(images, probs, roi.long(), ignore)
    with pytest.raises(ValueError, match="sigma_xy"):
        dense_energy_loss(images, probs, roi, ignore, sigma_xy=0.0)
    with pytest.raises(ValueError, match="backend"):
        dense_energy_loss(images, probs, roi, ignore, backend="cuda")
