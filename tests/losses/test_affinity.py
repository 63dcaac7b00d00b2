"""Affinity loss of method §5 on hand-made labels, against a brute-force loop."""
import itertools

import pytest
import torch

from tscd.losses import AffinityLoss, affinity_targets


def _brute_force(attn, small_label, radius, ignore=255):
    b, h, w = small_label.shape
    pos_sum = neg_sum = 0.0
    n_pos = n_neg = 0
    for n in range(b):
        for (y1, x1), (y2, x2) in itertools.product(itertools.product(range(h), range(w)), repeat=2):
            if max(abs(y1 - y2), abs(x1 - x2)) > radius:
                continue
            l1, l2 = small_label[n, y1, x1].item(), small_label[n, y2, x2].item()
            if ignore in (l1, l2):
                continue
            a = attn[n, y1 * w + x1, y2 * w + x2].item()
            if l1 == l2:
                pos_sum, n_pos = pos_sum + 1 - a, n_pos + 1
            else:
                neg_sum, n_neg = neg_sum + a, n_neg + 1
    return 0.5 * pos_sum / (n_pos + 1) + 0.5 * neg_sum / (n_neg + 1)


def test_targets_hand_made():
    small = torch.tensor([[[1, 1, 0], [255, 0, 2]]])
    label = small.repeat_interleave(16, 1).repeat_interleave(16, 2)  # (1, 32, 48) at stride 16
    t = affinity_targets(label, (2, 3), radius=1)
    assert t.shape == (1, 6, 6)
    assert t[0, 0].tolist() == [1, 1, 255, 255, 0, 255]  # (0,0)-(0,2) is outside radius 1; 3 is ignore
    assert t[0, 3].eq(255).all() and t[0, :, 3].eq(255).all()
    assert t[0, 2].tolist() == [255, 0, 1, 255, 1, 0]
    assert torch.equal(t, t.transpose(1, 2))


@pytest.mark.parametrize("radius", [1, 2, 8])
def test_loss_matches_brute_force(radius):
    torch.manual_seed(radius)
    small = torch.randint(0, 3, (2, 4, 5))
    small[0, 1, 2] = 255
    small[1, 3, :] = 255
    label = small.repeat_interleave(16, 1).repeat_interleave(16, 2)
    attn = torch.rand(2, 20, 20)
    loss = AffinityLoss(radius=radius)(attn, label, (4, 5))
    assert loss.item() == pytest.approx(_brute_force(attn, small, radius), rel=1e-5)


def test_label_downsampled_nearest_to_ceil_grid_and_gradient():
    torch.manual_seed(0)
    label = torch.randint(0, 2, (1, 40, 33))  # grid ⌈40/16⌉×⌈33/16⌉ = 3×3
    attn = torch.rand(1, 9, 9, requires_grad=True)
    loss = AffinityLoss()(attn, label, (3, 3))
    small = torch.nn.functional.interpolate(label[:, None].float(), size=(3, 3), mode="nearest")[:, 0].long()
    assert loss.item() == pytest.approx(_brute_force(attn.detach(), small, 8), rel=1e-5)
    loss.backward()
    t = affinity_targets(label, (3, 3))
    n_pos, n_neg = (t == 1).sum(), (t == 0).sum()
    expected = torch.where(t == 1, -0.5 / (n_pos + 1), torch.where(t == 0, 0.5 / (n_neg + 1), 0.0)).float()
    torch.testing.assert_close(attn.grad, expected)
    stride8 = AffinityLoss()(torch.rand(1, 25, 25), label, (5, 5))  # ⌈40/8⌉×⌈33/8⌉
    assert stride8.ndim == 0


def test_all_ignored_gives_zero_and_bad_shape_errors():
    label = torch.full((1, 32, 32), 255)
    assert AffinityLoss()(torch.rand(1, 4, 4), label, (2, 2)).item() == 0.0
    with pytest.raises(ValueError, match=r"attn_pred must have shape \(B, N, N\) = \(1, 4, 4\)"):
        AffinityLoss()(torch.rand(1, 9, 9), label, (2, 2))
    with pytest.raises(ValueError, match="label"):
        affinity_targets(torch.zeros(32, 32), (2, 2))
