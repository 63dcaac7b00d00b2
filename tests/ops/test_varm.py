"""VARM / PAR refinement (method §4): every fused backend against the torch reference, and the
reference against a per-pixel transcription of the method (docs/method.md)."""
import math

import pytest
import torch

from tests.utils import ALL, DEVICE, FUSED, assert_within_reference_error, require
from tscd.ops import varm_affinity, varm_refine
from tscd.ops.backends import primitives
from tscd.ops.reference import varm as ref

MODES = ("varm", "par")


def _images(b, h, w, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g, dtype=torch.float64).to(device=DEVICE, dtype=dtype)


def _masks(b, k, h, w, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, k, h, w, generator=g, dtype=torch.float64).softmax(1).to(device=DEVICE, dtype=dtype)


# ---------------------------------------------------------------- the reference itself


def _method_affinity_at(img, y, x, dilations, mode):
    """w_n at one pixel of one image (3, H, W), float64, transcribed from method §4 with loops."""
    _, h, w = img.shape

    def at(yy, xx):
        return img[:, min(max(yy, 0), h - 1), min(max(xx, 0), w - 1)]

    offs = [(d * dy, d * dx) for d in dilations for dy, dx in ref.OFFSETS]
    nb = torch.stack([at(y + oy, x + ox) for oy, ox in offs], dim=1)  # (3, N)
    std = nb.std(dim=1, keepdim=True)
    diff = (nb - img[:, y, x, None]).abs()
    if mode == "varm":
        a = (-((4 * diff / (std + 1e-8)) ** 2)).mean(0)
        yd, xr = min(y + 1, h - 1), min(x + 1, w - 1)
        down = torch.stack([at(yd + oy, x + ox) for oy, ox in offs], dim=1)
        right = torch.stack([at(y + oy, xr + ox) for oy, ox in offs], dim=1)
        v = ((nb - down) ** 2 + (nb - right) ** 2).mean(0)
        return a.softmax(0) - 0.01 * v.softmax(0)
    a = (-((diff / (std + 1e-8) / 0.3) ** 2)).mean(0)
    rho = torch.tensor([math.hypot(oy, ox) for oy, ox in offs], dtype=torch.float64)
    return a.softmax(0) + 0.01 * (-((rho / (rho.std() + 1e-8) / 0.3) ** 2)).softmax(0)


@pytest.mark.parametrize("mode", MODES)
def test_reference_affinity_matches_method_per_pixel(mode):
    img = _images(1, 5, 7, dtype=torch.float64).cpu()
    dilations = (1, 2, 4)
    w = ref.varm_affinity(img, dilations, mode)
    for y in range(5):
        for x in range(7):
            torch.testing.assert_close(w[0, :, y, x], _method_affinity_at(img[0], y, x, dilations, mode))


def test_reference_propagation_is_replicate_padded_dilated_sum():
    img, masks = _images(1, 6, 5).cpu().double(), _masks(1, 2, 6, 5).cpu().double()
    w = ref.varm_affinity(img, (1, 2), "varm")
    out = ref.varm_refine(img, masks, (1, 2), 1)
    expect = torch.zeros_like(masks)
    for n, (oy, ox) in enumerate(ref.neighbour_offsets((1, 2))):
        padded = torch.nn.functional.pad(masks, (2, 2, 2, 2), mode="replicate")
        expect += w[:, n : n + 1] * padded[..., 2 + oy : 8 + oy, 2 + ox : 7 + ox]
    torch.testing.assert_close(out, expect)


@pytest.mark.parametrize("mode,total", [("varm", 0.99), ("par", 1.01)])
def test_weights_sum_to_one_minus_or_plus_w2(mode, total):
    w = ref.varm_affinity(_images(2, 6, 9, dtype=torch.float64), (1, 2, 4, 8, 12, 24), mode)
    assert w.shape == (2, 48, 6, 9)
    torch.testing.assert_close(w.sum(1), torch.full_like(w[:, 0], total))


# ---------------------------------------------------------------- fused backends vs reference

SHAPES = [  # (B, K, H, W, mask h, mask w)
    (2, 5, 9, 13, 5, 7),  # non-square, masks resized
    (1, 1, 1, 30, 1, 30),  # H = 1 < largest dilation, one class
    (1, 3, 17, 1, 17, 1),  # W = 1
    (2, 21, 12, 10, 12, 10),  # VOC class count
]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_affinity_matches_reference(backend, mode, shape):
    b, _, h, w, _, _ = shape
    img = _images(b, h, w)
    out = varm_affinity(img, mode=mode, backend=backend)
    assert out.shape == (b, 48, h, w) and out.dtype == torch.float32
    assert_within_reference_error(
        out, varm_affinity(img, mode=mode, backend="torch"), varm_affinity(img.double(), mode=mode, backend="torch"),
        torch.float32,
    )


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("count", [65, 100])
def test_affinity_beyond_the_resident_dilations(backend, mode, count):
    """More than 64 dilations (over 512 neighbours): the Triton kernel sweeps them in chunks."""
    img = _images(2, 9, 11)
    dilations = tuple(1 + (3 * i) % 17 for i in range(count))
    out = varm_affinity(img, dilations=dilations, mode=mode, backend=backend)
    assert out.shape == (2, 8 * count, 9, 11)
    assert_within_reference_error(
        out, varm_affinity(img, dilations=dilations, mode=mode, backend="torch"),
        varm_affinity(img.double(), dilations=dilations, mode=mode, backend="torch"), torch.float32,
    )


def _check_refine(backend, shape, mode, num_iter):
    b, k, h, w, mh, mw = shape
    img, masks = _images(b, h, w), _masks(b, k, mh, mw)
    out = varm_refine(img, masks, num_iter=num_iter, mode=mode, backend=backend)
    assert out.shape == (b, k, h, w) and out.dtype == torch.float32
    assert_within_reference_error(
        out,
        varm_refine(img, masks, num_iter=num_iter, mode=mode, backend="torch"),
        varm_refine(img.double(), masks.double(), num_iter=num_iter, mode=mode, backend="torch"),
        torch.float32,
    )


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_refine_matches_reference(backend, mode, shape):
    _check_refine(backend, shape, mode, num_iter=2)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_iter", [0, 1, 10])
def test_refine_iteration_counts(backend, mode, num_iter):
    _check_refine(backend, (1, 21, 7, 9, 4, 5), mode, num_iter)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 9, 64, 71, 64, 71), (2, 21, 30, 96, 8, 24), (3, 2, 26, 17, 26, 17)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cpp_refine_rows_of_several_vectors(shape, threads):
    """The CPU kernels' whole and partial vectors, channel chunks and row rings (rows and columns
    beyond the largest dilation), on one thread and split over two."""
    require("cpp", "cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for mode in MODES:
            _check_refine("cpp", shape, mode, num_iter=3)
    finally:
        torch.set_num_threads(previous)


def test_cpp_propagate_primitive_is_one_step():
    require("cpp", "cpu")
    img, masks = _images(2, 29, 37).cpu(), _masks(2, 5, 29, 37).cpu()
    dilations = (1, 2, 4, 8, 12, 24)
    weights = varm_affinity(img, dilations=dilations, backend="cpp")
    out = torch.empty_like(masks)
    ops = primitives("cpp")
    ops.varm_propagate_(masks, weights, torch.tensor(dilations, dtype=torch.int32), out)
    expect = torch.zeros_like(masks, dtype=torch.float64)
    padded = torch.nn.functional.pad(masks.double(), (24, 24, 24, 24), mode="replicate")
    for n, (oy, ox) in enumerate(ref.neighbour_offsets(dilations)):
        expect += weights[:, n : n + 1].double() * padded[..., 24 + oy : 53 + oy, 24 + ox : 61 + ox]
    torch.testing.assert_close(out.double(), expect, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", MODES)
def test_flat_region_has_no_nan(backend, mode):
    # Constant image on the left half, constant per row on the bottom rows: zero local std.
    img = _images(1, 14, 16)
    img[..., :, :9] = 0.25
    img[..., 10:, :] = torch.linspace(0, 1, 16, device=img.device)
    masks = _masks(1, 4, 14, 16)
    ref64 = varm_refine(img.double(), masks.double(), num_iter=3, mode=mode, backend="torch")
    assert torch.isfinite(ref64).all()
    out = varm_refine(img, masks, num_iter=3, mode=mode, backend=backend)
    assert torch.isfinite(out).all()
    assert_within_reference_error(out, varm_refine(img, masks, num_iter=3, mode=mode, backend="torch"), ref64,
                                  torch.float32)
    flat = torch.full((1, 3, 4, 5), 0.5, device=img.device)
    assert torch.isfinite(varm_affinity(flat, mode=mode, backend=backend)).all()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(backend, dtype):
    img, masks = _images(2, 7, 11, dtype=dtype), _masks(2, 3, 4, 6, dtype=dtype)
    out = varm_refine(img, masks, num_iter=2, backend=backend)
    assert out.dtype == dtype
    assert_within_reference_error(
        out, varm_refine(img, masks, num_iter=2, backend="torch"),
        varm_refine(img.double(), masks.double(), num_iter=2, backend="torch"), dtype,
    )


@pytest.mark.parametrize("backend", FUSED)
def test_custom_dilations_and_mixed_dtypes(backend):
    img, masks = _images(1, 8, 6, dtype=torch.float64), _masks(1, 2, 8, 6)
    out = varm_refine(img, masks, dilations=(3, 1), num_iter=2, mode="par", backend=backend)
    assert out.dtype == torch.float64
    expect = varm_refine(img, masks.double(), dilations=(3, 1), num_iter=2, mode="par", backend="torch")
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=0)
    assert varm_affinity(img, dilations=(3, 1), backend=backend).shape == (1, 16, 8, 6)


@pytest.mark.parametrize("backend", ALL)
def test_no_gradient_and_inputs_untouched(backend):
    img = _images(1, 5, 6).requires_grad_()
    masks = _masks(1, 2, 5, 6).requires_grad_()
    before = masks.detach().clone()
    out = varm_refine(img, masks, num_iter=0, backend=backend)
    assert not out.requires_grad and out.data_ptr() != masks.data_ptr()
    assert not varm_refine(img, masks, num_iter=2, backend=backend).requires_grad
    torch.testing.assert_close(masks.detach(), before)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(images=torch.rand(1, 4, 5, 5)), ValueError, r"images must have shape \(B, 3, H, W\)"),
        (dict(images=torch.rand(3, 5, 5)), ValueError, r"images must have shape \(B, 3, H, W\)"),
        (dict(masks=torch.rand(2, 2, 5, 5)), ValueError, "batch sizes of images and masks"),
        (dict(masks=torch.rand(2, 5, 5)), ValueError, r"masks must have shape \(B, K, h, w\)"),
        (dict(masks=torch.ones(1, 2, 5, 5, dtype=torch.long)), TypeError, "masks must be a floating-point"),
        (dict(images=[[0.5]]), TypeError, "images must be a torch.Tensor"),
        (dict(dilations=()), ValueError, "dilations must be a non-empty"),
        (dict(dilations=(1, 0)), ValueError, "dilations must be positive ints"),
        (dict(dilations=3), TypeError, "dilations must be a sequence"),
        (dict(num_iter=-1), ValueError, "num_iter must be a non-negative int"),
        (dict(num_iter=2.0), ValueError, "num_iter must be a non-negative int"),
        (dict(mode="crf"), ValueError, "mode must be one of"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, error, match):
    args = dict(images=torch.rand(1, 3, 5, 5), masks=torch.rand(1, 2, 5, 5))
    args.update(kwargs)
    images, masks = args.pop("images"), args.pop("masks")
    with pytest.raises(error, match=match):
        varm_refine(images, masks, **args)


def test_affinity_bad_inputs():
    with pytest.raises(ValueError, match="3 colour channels"):
        varm_affinity(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="non-empty"):
        varm_affinity(torch.rand(1, 3, 4, 4), dilations=[])
