"""tscd.losses.DenseEnergyLoss: the recipe's rescaling and weight around the exact op (method §8)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.utils import ALL
from tscd.losses import DenseEnergyLoss
from tscd.ops import LATTICE_SCALE
from tscd.ops.reference.dense_energy import dense_energy_loss as reference


def make_batch(B=2, K=4, H=10, W=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (B, 3, H, W), generator=g).float()
    probs = torch.softmax(torch.randn(B, K, H, W, generator=g), dim=1)
    roi = (torch.rand(B, H, W, generator=g) > 0.1).float()
    label = torch.randint(0, K, (B, H, W), generator=g)
    label[torch.rand(B, H, W, generator=g) < 0.3] = 255
    return images, probs, roi, label


def manual(images, probs, roi, label, weight, sigma_rgb, sigma_xy, scale):
    """The recipe written out with the naive reference."""
    images = F.interpolate(images, scale_factor=scale, mode="nearest")
    probs = F.interpolate(probs, scale_factor=scale, mode="bilinear", align_corners=False)
    roi = F.interpolate(roi[:, None], scale_factor=scale, mode="nearest")[:, 0]
    ignore = F.interpolate(label[:, None].float(), scale_factor=scale, mode="nearest")[:, 0] == 255
    return weight * reference(images, probs.double(), roi, ignore, sigma_rgb, sigma_xy * scale)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("label_dims", [3, 4])
def test_matches_recipe(backend, label_dims):
    images, probs, roi, label = make_batch()
    probs = probs.requires_grad_()
    loss_fn = DenseEnergyLoss(weight=2.0, sigma_rgb=15.0, sigma_xy=8.0, scale_factor=0.5, backend=backend)
    seg_label = label if label_dims == 3 else label[:, None]
    loss = loss_fn(images, probs, roi, seg_label)
    (grad,) = torch.autograd.grad(loss, probs)
    expected = manual(images, probs, roi, label, 2.0, 15.0, 8.0, 0.5)
    (expected_grad,) = torch.autograd.grad(expected, probs)
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad.double(), expected_grad.double(), rtol=1e-4, atol=1e-7)


def test_unit_scale_is_the_op():
    images, probs, roi, label = make_batch(seed=1)
    loss = DenseEnergyLoss(weight=1.0, sigma_xy=5.0, scale_factor=1.0)(images, probs, roi.bool(), label)
    expected = reference(images, probs.double(), roi, label == 255, 15.0, 5.0)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-7)


def test_defaults_and_lattice_scale():
    loss_fn = DenseEnergyLoss()
    assert (loss_fn.weight, loss_fn.sigma_rgb, loss_fn.sigma_xy, loss_fn.scale_factor) == (5.8e-8, 15.0, 100.0, 0.5)
    assert LATTICE_SCALE == 0.58


def test_bad_inputs():
    images, probs, roi, label = make_batch()
    with pytest.raises(ValueError, match="seg_label"):
        DenseEnergyLoss()(images, probs, roi, label[0, 0])
    with pytest.raises(ValueError, match="roi"):
        DenseEnergyLoss()(images, probs, roi[:, None], label)
    with pytest.raises(ValueError, match="scale_factor"):
        DenseEnergyLoss(scale_factor=0)


@pytest.mark.parametrize("name,value", [("weight", math.nan), ("weight", -1.0), ("weight", "1e-7"), ("sigma_rgb", 0.0),
                                        ("sigma_xy", math.inf), ("sigma_xy", 1e200), ("scale_factor", math.nan),
                                        ("scale_factor", torch.ones(2)), ("sigma_rgb", True)])
def test_bad_settings_are_refused_at_construction(name, value):
    expected = {"weight": "non-negative", "scale_factor": "positive"}.get(name, "a real number in")
    with pytest.raises(ValueError, match=f"{name} must be {expected}"):
        DenseEnergyLoss(**{name: value})


def test_numpy_and_tensor_settings():
    images, probs, roi, label = make_batch(seed=2)
    loss_fn = DenseEnergyLoss(weight=np.float32(2.0), sigma_rgb=torch.tensor(15.0), sigma_xy=np.int64(8),
                              scale_factor=np.float64(0.5))
    assert all(type(v) is float for v in (loss_fn.weight, loss_fn.sigma_rgb, loss_fn.sigma_xy, loss_fn.scale_factor))
    expected = DenseEnergyLoss(weight=2.0, sigma_rgb=15.0, sigma_xy=8.0, scale_factor=0.5)(images, probs, roi, label)
    torch.testing.assert_close(loss_fn(images, probs, roi, label), expected)


@pytest.mark.parametrize("backend", ALL)
def test_empty_batch_is_an_error(backend):
    images, probs, roi, label = make_batch(B=0)
    with pytest.raises(ValueError, match="batch size B >= 1"):
        DenseEnergyLoss(backend=backend)(images, probs, roi, label)
