"""dense_crf (method §10): the exact backends against the naive float64 reference, and against
the permutohedral approximations (the lattice backend, pydensecrf2 when it is installed)."""
import warnings

import numpy as np
import pytest
import torch

from tests.utils import ALL, FUSED, backend_param, require
from tscd.ops import backends
from tscd.ops.dense_crf import dense_crf
from tscd.ops.reference.dense_crf import dense_crf as reference

# The smoothness window of radius ⌈5σ⌉ leaves out weights below 4e-6.
TOL = dict(rtol=0, atol=5e-5)


def make_inputs(B, K, H, W, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 3, H, W, generator=g) * 255
    probs = torch.softmax(torch.randn(B, K, H, W, generator=g) * 2, dim=1)
    return images.to(device), probs.to(device)


# Small σ so that the window and the image borders both matter at these sizes.
PARAMS = dict(smooth=(1.5, 3.0), appearance=(6.0, 20.0, 4.0))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("B,K,H,W,iters", [(2, 3, 7, 9, 3), (1, 1, 5, 4, 2), (1, 4, 1, 13, 2), (1, 21, 6, 5, 1)])
def test_matches_reference(backend, device, B, K, H, W, iters):
    images, probs = make_inputs(B, K, H, W, device, seed=H * W + K)
    expected = reference(images, probs.double(), iters, **PARAMS)
    out = dense_crf(images, probs, num_iter=iters, backend=backend, **PARAMS)
    assert out.shape == (B, K, H, W) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, **TOL)


def test_cpp_window_on_a_larger_image(device):
    # Wide enough that the smoothness window skips whole tiles in the cpp kernel.
    require("cpp")
    images, probs = make_inputs(1, 3, 40, 37, device, seed=1)
    expected = reference(images, probs.double(), 2, **PARAMS)
    torch.testing.assert_close(dense_crf(images, probs, num_iter=2, backend="cpp", **PARAMS).double(), expected, **TOL)


@pytest.mark.parametrize("backend", ALL)
def test_one_class_and_flat_image(backend, device):
    images, probs = make_inputs(1, 1, 4, 5, device)
    assert torch.all(dense_crf(images, probs, num_iter=2, backend=backend) == 1)
    # A flat image and uniform unaries: every pixel keeps the uniform distribution.
    flat = torch.full((1, 3, 4, 5), 100.0, device=device)
    out = dense_crf(flat, torch.full((1, 3, 4, 5), 1 / 3, device=device), num_iter=2, backend=backend)
    torch.testing.assert_close(out.double(), torch.full((1, 3, 4, 5), 1 / 3, dtype=torch.float64), **TOL)


def test_zero_iterations_is_the_clamped_softmax(device):
    images, probs = make_inputs(1, 3, 4, 5, device)
    probs[0, 0, 0, 0] = 0.0
    probs = probs / probs.sum(1, keepdim=True)
    out = dense_crf(images, probs, num_iter=0, backend="torch")
    expected = torch.softmax(torch.log(torch.clamp(probs, min=1e-5)), dim=1)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backend", [backend_param("lattice", "cpu"), backend_param("pydensecrf", "cpu")])
def test_approximations_agree_with_exact_on_photographs(backend):
    import torch.nn.functional as F
    from skimage import data

    agreements = []
    for name in ("astronaut", "chelsea", "coffee"):
        img = torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).permute(2, 0, 1)[None].float()
        img = F.interpolate(img, size=(48, 64), mode="bilinear", align_corners=False).round()
        # Blurred noisy unaries: a coarse, uncertain segmentation for the CRF to sharpen.
        g = torch.Generator().manual_seed(0)
        logits = F.interpolate(torch.randn(1, 5, 6, 8, generator=g) * 3, size=(48, 64), mode="bilinear")
        probs = torch.softmax(logits + 0.5 * torch.randn(1, 5, 48, 64, generator=g), dim=1)
        exact = dense_crf(img, probs, backend="exact")
        approximate = dense_crf(img, probs, backend=backend)
        agreements.append((exact.argmax(1) == approximate.argmax(1)).double().mean().item())
    assert min(agreements) >= 0.97, agreements


def test_bad_inputs(device):
    images, probs = make_inputs(1, 2, 4, 5, device)
    with pytest.raises(ValueError, match="images must have shape"):
        dense_crf(images[:, :1], probs)
    with pytest.raises(TypeError, match="probs"):
        dense_crf(images, probs.long())
    with pytest.raises(ValueError, match="num_iter"):
        dense_crf(images, probs, num_iter=-1)
    with pytest.raises(ValueError, match="smooth"):
        dense_crf(images, probs, smooth=(3.0,))
    with pytest.raises(ValueError, match="appearance"):
        dense_crf(images, probs, appearance=(0.0, 5.0, 4.0))
    with pytest.raises(ValueError, match="backend must be one of"):
        dense_crf(images, probs, backend="fast")


def _without(monkeypatch, *missing):
    """This process as if the backends ``missing`` could not run; the warnings not yet given."""
    usable = backends.why_unusable
    monkeypatch.setattr(backends, "why_unusable",
                        lambda b, d: f"{b} is not installed" if b in missing else usable(b, d))
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.delenv("TSCD_BACKEND", raising=False)


def test_pydensecrf_is_an_ordinary_backend(monkeypatch):
    images, probs = make_inputs(1, 2, 4, 5, "cpu")
    if backends.can_run("pydensecrf", "cpu"):
        out = dense_crf(images, probs, num_iter=2, backend="pydensecrf")
        assert out.shape == probs.shape and torch.allclose(out.sum(1), torch.ones(1, 4, 5), atol=1e-5)
    # "exact" never picks it; without it, a request falls back to an exact backend with one warning
    assert backends.resolve("dense_crf", "exact", "cpu", 10**6) not in ("pydensecrf", "lattice")
    _without(monkeypatch, "pydensecrf")
    with pytest.warns(RuntimeWarning, match="backend 'pydensecrf' cannot run on cpu tensors .*pydensecrf"):
        out = dense_crf(images, probs, num_iter=2, backend="pydensecrf")
    torch.testing.assert_close(out.double(), reference(images, probs.double(), 2), **TOL)


def test_auto_on_cpu_picks_by_size(monkeypatch):
    require("lattice", "cpu")
    require("cpp", "cpu")
    monkeypatch.delenv("TSCD_BACKEND", raising=False)
    large = backends.CPU_CRF_LATTICE_PIXELS
    assert backends.resolve("dense_crf", "auto", "cpu", large - 1) == "cpp"
    assert backends.resolve("dense_crf", "auto", "cpu", large) == "lattice"
    assert backends.resolve("dense_crf", "auto", "cuda", large) != "lattice"
    _without(monkeypatch, "lattice")  # then pydensecrf, when installed
    assert backends.resolve("dense_crf", "auto", "cpu", large) == (
        "pydensecrf" if backends.can_run("pydensecrf", "cpu") else "cpp")


def test_auto_on_cpu_warns_once_when_exact_on_a_large_image(monkeypatch):
    _without(monkeypatch, "lattice", "pydensecrf")  # auto must pick an exact backend
    side = int(backends.CPU_CRF_LATTICE_PIXELS**0.5) + 1
    images, probs = make_inputs(1, 2, side, side, "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dense_crf(images[..., :3, :3], probs[..., :3, :3], num_iter=1)  # small: exact is the right choice
        dense_crf(images, probs, num_iter=1)
        dense_crf(images, probs, num_iter=1)
    assert sum("O(N²)" in str(w.message) for w in caught) == 1
