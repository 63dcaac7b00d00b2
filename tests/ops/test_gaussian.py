"""The tiled Gaussian-kernel product against a naive W·X built in float64."""
import math

import pytest
import torch

from tests.utils import ALL, FUSED, backend_param
from tscd.ops.gaussian import bilateral_features, gaussian_product, gaussian_product_unchecked, position_features


def naive(feats, x, cutoff=None):
    f = feats.double()
    d2 = ((f[:, :, :, None] - f[:, :, None, :]) ** 2).sum(1)
    w = torch.exp(-0.5 * d2)
    if cutoff is not None:
        w = w * (d2 <= cutoff**2)
    return w @ x.double().transpose(1, 2)


def check(y, ref):
    scale = max(1.0, ref.abs().max().item())
    err = (y.double() - ref.transpose(1, 2)).abs().max().item() if y.numel() else 0.0
    assert err <= 2e-6 * scale * math.sqrt(ref.shape[1] + 1), err


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("B,D,N,K", [(1, 5, 1, 1), (2, 5, 131, 3), (1, 2, 257, 1), (3, 8, 17, 5), (1, 1, 300, 70)])
def test_product_matches_naive(backend, device, B, D, N, K):
    g = torch.Generator().manual_seed(N + K)
    feats = (torch.randn(B, D, N, generator=g) * 1.5).to(device)
    x = torch.randn(B, K, N, generator=g).to(device)
    y = gaussian_product(feats, x, backend=backend)
    assert y.shape == (B, K, N) and y.dtype == torch.float32
    check(y, naive(feats, x))


@pytest.mark.parametrize("backend", FUSED)
def test_second_input_in_the_same_sweep(backend, device):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 97, generator=g).to(device)
    x, x2 = torch.randn(2, 4, 97, generator=g).to(device), torch.randn(2, 1, 97, generator=g).to(device)
    y, y2 = gaussian_product(feats, x, x2, backend=backend)
    check(y, naive(feats, x))
    check(y2, naive(feats, x2))


@pytest.mark.parametrize("backend", ALL)
def test_cutoff(backend, device):
    # Positions spread wider than the cut-off, so the C++ backend also skips whole tiles; the
    # cut-off lies between attainable distances (no rounding ties).
    feats = position_features(1, 23, 31, 2.0, device)
    x = torch.randn(1, 3, 23 * 31, generator=torch.Generator().manual_seed(1)).to(device)
    y = gaussian_product(feats, x, cutoff=3.1, backend=backend)
    check(y, naive(feats, x, cutoff=3.1))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("H,W,sigma", [(97, 3, 1.0), (40, 7, 0.6), (5, 60, 1.0)])
def test_row_window_equals_cutoff_alone(backend, device, H, W, sigma):
    # Positions p/σ with cut-off ⌈5σ⌉/σ: the row window skips only tiles of zero weights.
    radius = math.ceil(5 * sigma)
    feats = position_features(2, H, W, sigma, device)
    x = torch.randn(2, 2, H * W, generator=torch.Generator().manual_seed(H)).to(device)
    y = gaussian_product(feats, x, cutoff=radius / sigma + 1e-3, row_window=(W, radius), backend=backend)
    check(y, naive(feats, x, cutoff=radius / sigma + 1e-3))


@pytest.mark.parametrize("backend", FUSED)
def test_half_inputs_and_features(backend, device):
    images = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(2)).to(device) * 255
    feats = bilateral_features(images, 3.0, 20.0)
    assert feats.shape == (1, 5, 35)
    x = torch.rand(1, 2, 35, generator=torch.Generator().manual_seed(3)).to(device)
    y = gaussian_product(feats, x.half(), backend=backend)
    check(y, naive(feats, x.half().float()))


@pytest.mark.parametrize("backend", ALL + [backend_param("lattice", "cpu")])
@pytest.mark.parametrize("with_x2,cutoff,dtype", [(False, None, torch.float32), (True, 2.5, torch.float32),
                                                  (False, None, torch.float16)])
def test_gradient_in_x_on_every_backend(backend, device, with_x2, cutoff, dtype):
    """The product's own gradient: ``Wᵀ·g`` for each input, of the input's dtype, on every backend (the
    lattice's against its own transposed product, as its W is only approximately the exact one)."""
    if backend == "lattice" and device != "cpu":
        pytest.skip("the lattice runs on CPU tensors only")
    g = torch.Generator().manual_seed(7)
    feats = (torch.randn(2, 3, 53, generator=g) * 1.5).to(device)
    x = torch.randn(2, 4, 53, generator=g).to(device).to(dtype).requires_grad_()
    x2 = torch.randn(2, 2, 53, generator=g).to(device).to(dtype).requires_grad_() if with_x2 else None
    weights = [torch.randn(2, 4, 53, generator=g).to(device)] + ([torch.randn(2, 2, 53, generator=g).to(device)]
                                                                  if with_x2 else [])
    out = gaussian_product(feats, x, x2, cutoff=cutoff, backend=backend)
    outs = out if with_x2 else (out,)
    sum(((y.float() * w).sum() for y, w in zip(outs, weights))).backward()
    for inp, w in zip((x, x2) if with_x2 else (x,), weights):
        assert inp.grad is not None and inp.grad.dtype == dtype
        if backend == "lattice":
            expected = gaussian_product_unchecked("lattice", feats, w, transposed=True)
            torch.testing.assert_close(inp.grad.float(), expected, rtol=1e-3 if dtype == torch.float16 else 1e-6,
                                       atol=1e-2 if dtype == torch.float16 else 1e-6)
        else:
            ref = naive(feats, w, cutoff).transpose(1, 2)  # W is symmetric: Wᵀ·w = W·w
            tol = 2e-3 if dtype == torch.float16 else 2e-6
            assert (inp.grad.double() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item()) * 3


@pytest.mark.parametrize("backend", FUSED + [backend_param("lattice", "cpu")])
def test_a_gradient_in_the_features_is_refused_where_it_would_be_dropped(backend, device):
    if backend == "lattice" and device != "cpu":
        pytest.skip("the lattice runs on CPU tensors only")
    feats = torch.randn(1, 2, 10, device=device, requires_grad=True)
    with pytest.raises(ValueError, match="feats requires a gradient"):
        gaussian_product(feats, torch.randn(1, 1, 10, device=device), backend=backend)
    with torch.no_grad():
        gaussian_product(feats, torch.randn(1, 1, 10, device=device), backend=backend)
    gaussian_product(feats.detach(), torch.randn(1, 1, 10, device=device), backend=backend)


def test_bad_inputs(device):
    feats, x = torch.zeros(2, 5, 10), torch.zeros(2, 3, 10)
    with pytest.raises(TypeError, match="feats"):
        gaussian_product(feats.long(), x)
    with pytest.raises(ValueError, match="x must have shape"):
        gaussian_product(feats, x[0])
    with pytest.raises(ValueError, match="pixel count N"):
        gaussian_product(feats, x[:, :, :9])
    with pytest.raises(ValueError, match="batch size B"):
        gaussian_product(feats, x, torch.zeros(1, 1, 10))
    with pytest.raises(ValueError, match="feature dimensions"):
        gaussian_product(torch.zeros(2, 9, 10), x)
    with pytest.raises(ValueError, match="cutoff"):
        gaussian_product(feats, x, cutoff=0.0)
    with pytest.raises(ValueError, match="row_window"):
        gaussian_product(feats, x, row_window=(3, 1))
