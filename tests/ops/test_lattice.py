"""The permutohedral-lattice backend (CPU): its scale and shape against the exact product on
photographs, pydensecrf2's own lattice through the dense CRF, odd shapes, the transposed product
against the transpose of L, and the dense energy loss's gradient against the lattice loss's own
(explicit matrix, finite differences)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.utils import require
from tscd.ops import dense_crf, dense_energy_loss, gaussian_product
from tscd.ops.gaussian import bilateral_features, gaussian_product_unchecked, position_features


@pytest.fixture(autouse=True)
def _lattice():
    require("lattice", "cpu")


def photograph(name: str, height: int, width: int) -> torch.Tensor:
    """scikit-image's photograph ``name`` resized to (1, 3, height, width), 0–255 float."""
    from skimage import data

    img = torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).permute(2, 0, 1)[None].float()
    return F.interpolate(img, size=(height, width), mode="bilinear", align_corners=False).round()


def coarse_probs(K: int, H: int, W: int, seed: int = 0, noise: float = 0.0) -> torch.Tensor:
    """Blurred random class probabilities (1, K, H, W): a coarse segmentation."""
    g = torch.Generator().manual_seed(seed)
    logits = F.interpolate(torch.randn(1, K, max(1, H // 8), max(1, W // 8), generator=g) * 3, size=(H, W),
                           mode="bilinear", align_corners=False)
    return torch.softmax(logits + noise * torch.randn(1, K, H, W, generator=g), dim=1)


# Measured (64×80 photographs, K = 4 coarse probabilities): ratio 0.54–0.59, RMS shape error
# 4.8–7.9 % at (σ_xy, σ_rgb) = (50, 15) and 5.9–11.7 % at (80, 13).
@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket"])
@pytest.mark.parametrize("sigmas,max_shape_error", [((50.0, 15.0), 0.10), ((80.0, 13.0), 0.13)])
def test_scale_and_shape_against_exact(name, sigmas, max_shape_error):
    require("cpp", "cpu")
    img = photograph(name, 64, 80)
    feats = bilateral_features(img, *sigmas)
    s = coarse_probs(4, 64, 80).reshape(1, 4, -1)
    lattice = gaussian_product(feats, s, backend="lattice").double()
    exact = gaussian_product(feats, s, backend="cpp").double()
    ratio = ((s * lattice).sum() / (s * exact).sum()).item()  # W·S as the loss weighs it
    assert 0.5 <= ratio <= 0.65, ratio
    shape_error = ((lattice / ratio - exact).norm() / exact.norm()).item()
    assert shape_error <= max_shape_error, shape_error


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_dense_crf_matches_pydensecrf(name):
    # The same algorithm with the same scaling as pydensecrf2: equal up to float rounding.
    require("pydensecrf", "cpu")
    img = photograph(name, 60, 80)
    probs = coarse_probs(5, 60, 80, noise=0.5)
    ours = dense_crf(img, probs, backend="lattice")
    theirs = dense_crf(img, probs, backend="pydensecrf")
    assert (ours.argmax(1) == theirs.argmax(1)).double().mean().item() >= 0.99
    assert (ours - theirs).abs().max().item() < 1e-3


def _mean_field_on_the_product(images, probs, num_iter, smooth, appearance):
    """The lattice CRF as a loop of torch ops over the lattice product (the fused op's definition)."""
    B, K, H, W = probs.shape
    (s_xy, s_w), (a_xy, a_rgb, a_w) = smooth, appearance
    terms = [(s_w, position_features(B, H, W, s_xy)), (a_w, bilateral_features(images, a_xy, a_rgb))]
    norms = [gaussian_product_unchecked("lattice", f, torch.ones(B, 1, H * W)).rsqrt() for _, f in terms]
    unary = torch.log(torch.clamp(probs.reshape(B, K, H * W), min=1e-5))
    q = unary.softmax(1)
    for _ in range(num_iter):
        logits = unary.clone()
        for (weight, feats), norm in zip(terms, norms):
            logits += weight * norm * gaussian_product_unchecked("lattice", feats, norm * q)
        q = logits.softmax(1)
    return q.reshape(B, K, H, W)


@pytest.mark.parametrize("K", [1, 5, 21, 37])
@pytest.mark.parametrize("num_iter", [0, 1, 3])
def test_fused_mean_field_is_the_loop_over_the_product(K, num_iter):
    """The fused C++ mean field (csrc/dense_crf.cpp): the loop over the lattice product, whatever the
    channel groups (K = 37: five groups of 8) or the threads (the same bits on one and two; large
    enough for two from K = 21 and 3 iterations)."""
    images = torch.cat([photograph(name, 96, 128) for name in ("astronaut", "coffee")])
    probs = torch.cat([coarse_probs(K, 96, 128, seed=s, noise=0.5) for s in (0, 1)])
    params = dict(smooth=(3.0, 3.0), appearance=(20.0, 13.0, 4.0))
    expected = _mean_field_on_the_product(images, probs, num_iter, **params)
    previous = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(dense_crf(images, probs, num_iter=num_iter, backend="lattice", **params))
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0], expected, rtol=0, atol=2e-5)


def _adjoint_errors(feats: torch.Tensor, channels: int = 3) -> tuple[float, float]:
    """For positive random G, X (B, channels, N): |⟨G, LX⟩ − ⟨LG, X⟩| (L's asymmetry) and
    |⟨G, LX⟩ − ⟨LᵀG, X⟩| (the transposed product's error), both relative to ⟨G, LX⟩."""
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(feats.shape[0], channels, feats.shape[2], generator=g) for _ in range(2))
    lx, ly = (_product(feats, v).double() for v in (x, y))
    lty = _transposed_product(feats, y).double()
    forward = (y.double() * lx).sum()
    return tuple(abs(((other * x.double()).sum() - forward) / forward).item() for other in (ly, lty))


def _product(feats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return gaussian_product(feats, x, backend="lattice")


def _transposed_product(feats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return gaussian_product_unchecked("lattice", feats, x, transposed=True)


def _matrices(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L and Lᵀ (B, N, N) float64, built column by column from both products of the identity."""
    B, _, N = feats.shape
    eye = torch.eye(N).expand(B, N, N).contiguous()
    return tuple(product(feats, eye).transpose(1, 2).double() for product in (_product, _transposed_product))


# Slicing is the transpose of splatting and each directional blur is symmetric, but the d+1 blurs,
# restricted to the vertices that exist, do not commute: L = Sᵀ B_d⋯B_0 S is not symmetric and
# its transpose blurs in the reverse order. Measured for positive G, X: L's asymmetry
# 5e-5–4.3e-4 relative on photographs, up to 4.9e-3 on scattered random 5-D points; the
# transposed product's error 1e-9–6.3e-8 (float32 rounding).
@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
@pytest.mark.parametrize("sigmas", [(50.0, 15.0), (10.0, 10.0)])
def test_transposed_product_on_photographs(name, sigmas):
    asymmetry, transposition = _adjoint_errors(bilateral_features(photograph(name, 64, 80), *sigmas))
    assert 1e-5 < asymmetry < 1e-3
    assert transposition < 1e-6


@pytest.mark.parametrize("dims", [2, 3, 5])
def test_transposed_product_on_scattered_features(dims):
    g = torch.Generator().manual_seed(2)
    asymmetry, transposition = _adjoint_errors(torch.randn(2, dims, 200, generator=g))
    assert asymmetry < 1e-2
    assert transposition < 1e-6


def test_transposed_product_is_the_transposed_matrix():
    g = torch.Generator().manual_seed(8)
    feats = torch.cat((bilateral_features(photograph("astronaut", 8, 10), 3.0, 10.0),
                       torch.randn(1, 5, 80, generator=g) * 1.5))
    matrix, transposed = _matrices(feats)
    torch.testing.assert_close(transposed, matrix.transpose(1, 2), rtol=1e-6, atol=1e-7)
    assert (matrix - matrix.transpose(1, 2)).abs().max() > 1e-3  # L itself is not symmetric


def _gradient_inputs(H: int, W: int):
    img = torch.cat((photograph("astronaut", H, W), photograph("chelsea", H, W)))
    probs = torch.cat((coarse_probs(3, H, W, seed=1), coarse_probs(3, H, W, seed=2)))
    roi = torch.ones(2, H, W, dtype=torch.bool)
    roi[:, :2] = False
    return img, probs, roi


@pytest.mark.parametrize("ignore_rows", [12, 5])  # every pixel ignored (gate 1), or the gate of the probabilities
def test_gradient_of_the_lattice_loss(ignore_rows):
    # The gradient of −(1/B) Σ g·S·(L S), gate held constant, is −(1/B) roi (g·LS + Lᵀ(g·S)); the
    # lattice as a matrix (its columns are L·e_j) gives it in float64. The exact backends' formula
    # with L for Lᵀ, −(1/B) roi (g·LS + L(g·S)), is L's asymmetry off it (measured: 3.6 % and 4.3 % RMS).
    H, W = 12, 16
    img, probs, roi = _gradient_inputs(H, W)
    ignore = torch.zeros(2, H, W, dtype=torch.bool)
    ignore[:, :ignore_rows] = True
    feats = bilateral_features(img, 5.0, 10.0)
    p = probs.clone().requires_grad_()
    loss = dense_energy_loss(img, p, roi, ignore, sigma_rgb=10.0, sigma_xy=5.0, backend="lattice")
    (grad,) = torch.autograd.grad(loss, p)
    grad = grad.reshape(2, 3, H * W).double()

    matrix, _ = _matrices(feats)
    r = roi.reshape(2, 1, H * W).double()
    s = probs.reshape(2, 3, H * W).double() * r
    gate = torch.where(ignore.reshape(2, 1, H * W), 1.0, (r - s.amax(1, keepdim=True)).clamp(min=0))
    ls, lgs, ltgs = s @ matrix.transpose(1, 2), (gate * s) @ matrix.transpose(1, 2), (gate * s) @ matrix
    true = -(gate * ls + ltgs) * r / 2
    symmetric_formula = -(gate * ls + lgs) * r / 2
    torch.testing.assert_close(grad, true, rtol=1e-5, atol=1e-6 * true.abs().max().item())
    assert 0.01 < ((symmetric_formula - true).norm() / true.norm()).item() < 0.06


def test_gradient_against_finite_differences():
    # With every pixel ignored the gate is 1 and the loss −(1/B) Σ S·LS is quadratic in the
    # probabilities, so central differences give its gradient exactly up to the float32 rounding
    # of the two losses, ≈ eps·|loss| / step (measured: 4e-7–3e-6 relative). The released
    # gradient −(1/B) roi·2LS misses by far more.
    H, W = 12, 16
    img, probs, roi = _gradient_inputs(H, W)
    ignore = torch.ones(2, H, W, dtype=torch.bool)

    def loss(p):
        return dense_energy_loss(img, p, roi, ignore, sigma_rgb=10.0, sigma_xy=5.0, backend="lattice")

    p = probs.clone().requires_grad_()
    value = loss(p)
    (grad,) = torch.autograd.grad(value, p)
    r = roi.reshape(2, 1, H * W).float()
    s = probs.reshape(2, 3, H * W) * r
    released = (-gaussian_product(bilateral_features(img, 5.0, 10.0), s, backend="lattice") * r).reshape(probs.shape)
    step = 1.0
    tolerance = 8 * torch.finfo(torch.float32).eps * abs(value.item()) / step
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(probs.shape, generator=g)
        with torch.no_grad():
            numeric = (loss(probs + step * v).double() - loss(probs - step * v).double()) / (2 * step)
        assert abs(numeric - (grad.double() * v).sum()) <= tolerance
        assert abs(numeric - (released.double() * v).sum()) > 10 * tolerance


def test_dense_energy_loss_scale():
    # The released lattice loss is ≈ 0.58 × the exact one (method §8).
    require("cpp", "cpu")
    img = photograph("coffee", 48, 64)
    probs = coarse_probs(4, 48, 64)
    roi = torch.ones(1, 48, 64)
    ignore = torch.zeros(1, 48, 64, dtype=torch.bool)
    lattice, exact = (dense_energy_loss(img, probs, roi, ignore, backend=b) for b in ("lattice", "cpp"))
    assert 0.5 <= (lattice / exact).item() <= 0.65


@pytest.mark.parametrize("D", range(1, 9))
def test_feature_dimensions(D):
    # Points on a line along the first feature, spread over the others: W·1 ≈ 0.5–1 of the exact.
    require("cpp", "cpu")
    n = 150
    g = torch.Generator().manual_seed(D)
    feats = torch.cat((torch.linspace(0, 30, n)[None, None], 0.3 * torch.randn(1, D - 1, n, generator=g)), dim=1)
    ones = torch.ones(1, 1, n)
    lattice, exact = (gaussian_product(feats, ones, backend=b) for b in ("lattice", "cpp"))
    assert torch.isfinite(lattice).all() and (lattice > 0).all()
    ratio = lattice / exact
    assert 0.3 <= ratio.median().item() <= 1.0, (D, ratio.median().item())


@pytest.mark.parametrize("B,K,N", [(1, 1, 1), (1, 4, 1), (1, 1, 97), (3, 7, 53), (2, 21, 101), (1, 9, 2)])
def test_odd_shapes(B, K, N):
    g = torch.Generator().manual_seed(N + K)
    feats, x = torch.randn(B, 5, N, generator=g) * 2, torch.rand(B, K, N, generator=g)
    y = gaussian_product(feats, x, backend="lattice")
    assert y.shape == (B, K, N) and y.dtype == torch.float32 and torch.isfinite(y).all() and (y > 0).all()
    # Linear in x, one channel independent of the others.
    torch.testing.assert_close(gaussian_product(feats, 2 * x, backend="lattice"), 2 * y)
    torch.testing.assert_close(gaussian_product(feats, x[:, -1:], backend="lattice"), y[:, -1:])


def test_single_pixel_keeps_a_fraction_of_itself():
    # One point: only its own weight, a fraction (which depends on where the point falls in its
    # simplex) equal for every channel.
    x = torch.tensor([[[2.0], [5.0]]])
    for value in (0.0, 3.7, -120.0):
        ratio = gaussian_product(torch.full((1, 5, 1), value), x, backend="lattice") / x
        torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
        assert 0.0 < ratio[0, 0, 0].item() <= 1.0


def test_images_of_a_batch_are_independent():
    g = torch.Generator().manual_seed(4)
    feats, x = torch.randn(3, 4, 60, generator=g) * 2, torch.rand(3, 5, 60, generator=g)
    batched = gaussian_product(feats, x, backend="lattice")
    for b in range(3):
        torch.testing.assert_close(batched[b: b + 1], gaussian_product(feats[b: b + 1], x[b: b + 1], backend="lattice"))


def test_constant_image_spreads_the_mean():
    # All features equal: every pixel sits on the same simplex and receives the same sum.
    feats = torch.full((1, 5, 40), 3.0)
    x = torch.rand(1, 2, 40, generator=torch.Generator().manual_seed(5))
    y = gaussian_product(feats, x, backend="lattice")
    torch.testing.assert_close(y, y[:, :, :1].expand_as(y))
    ratio = y[:, :, 0] / x.sum(2)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))


def test_new_features_build_a_new_lattice():
    # Lattices are cached by the exact feature values: changing them in place must not reuse one.
    g = torch.Generator().manual_seed(6)
    feats, x = torch.randn(1, 3, 80, generator=g), torch.rand(1, 2, 80, generator=g)
    first = gaussian_product(feats, x, backend="lattice")
    torch.testing.assert_close(gaussian_product(feats.clone(), x, backend="lattice"), first, rtol=0, atol=0)
    moved = feats.clone()
    moved[0, :, 7] += 5.0
    fresh = gaussian_product(moved, x, backend="lattice")
    feats[0, :, 7] += 5.0  # the cached array's storage now holds other values
    torch.testing.assert_close(gaussian_product(feats, x, backend="lattice"), fresh, rtol=0, atol=0)
    assert not torch.equal(fresh, first)


def test_speed_hints_are_ignored():
    g = torch.Generator().manual_seed(7)
    feats, x = torch.randn(1, 2, 48, generator=g) * 3, torch.rand(1, 3, 48, generator=g)
    plain = gaussian_product(feats, x, backend="lattice")
    hinted = gaussian_product(feats, x, cutoff=1.0, row_window=(8, 1), backend="lattice")
    torch.testing.assert_close(hinted, plain, rtol=0, atol=0)
