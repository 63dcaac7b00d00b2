"""tscd.class_activation: multi-scale CAM (§2), attention random walk (§5)."""
import pytest
import torch
import torch.nn.functional as F

from tscd.class_activation import MultiScaleCAM, affinity_window, attention_random_walk, multi_scale_cam, normalize_cam


class LeftHalfCam(torch.nn.Module):
    """CAM = image channels 0..C−1 on the left half of the columns only (not flip-equivariant);
    records the input sizes it sees; returns a dummy attention of the input width when asked for."""

    def __init__(self, classes=2):
        super().__init__()
        self.classes, self.sizes = classes, []

    def forward_cam(self, x, affinity=True):
        self.sizes.append(tuple(x.shape))
        cam = x[:, : self.classes].clone()
        cam[..., x.shape[-1] // 2:] = 0
        return cam, torch.full((x.shape[0], 1, 1), float(x.shape[-1])) if affinity else None


def test_flip_recovers_the_right_half():
    img = torch.zeros(1, 3, 8, 8)
    img[0, 0] = torch.arange(64.0).view(8, 8) + 1
    img[0, 1, 2:4, 5:7] = 5.0  # class 2 only on the right half
    model = LeftHalfCam()
    cam = multi_scale_cam(model, img, scales=[1.0])
    assert model.sizes == [(2, 3, 8, 8)]
    expected = torch.maximum(img[:, :2], torch.zeros(1))  # left from the image, right from the flip
    expected = normalize_cam(expected)
    torch.testing.assert_close(cam, expected)
    assert cam[0, 1, 2:4, 5:7].min() > 0.99 and cam[0, 1].sum() == pytest.approx(4, abs=1e-3)


def test_without_flip_one_pass_per_scale_sees_only_the_left_half():
    img = torch.zeros(1, 3, 8, 8)
    img[0, 0] = torch.arange(64.0).view(8, 8) + 1
    img[0, 1, 2:4, 5:7] = 5.0  # class 2 only on the right half: invisible without the flip
    model = LeftHalfCam()
    cam = multi_scale_cam(model, img, scales=[1.0, 0.5], flip=False)
    assert model.sizes == [(1, 3, 8, 8), (1, 3, 4, 4)]
    assert cam[0, 0, :, 4:].abs().max() < 0.2 and cam[0, 1].max() == 0  # the right half stays dark
    single = multi_scale_cam(LeftHalfCam(), img, scales=[1.0], flip=False)
    torch.testing.assert_close(single, normalize_cam(torch.cat([img[:, :2, :, :4], torch.zeros(1, 2, 8, 4)], -1)))


def test_scales_are_resized_summed_and_normalised():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 12, 10)
    model = LeftHalfCam()
    cam, attn = multi_scale_cam(model, img, scales=[1.0, 0.5, 1.5], return_attention=True)
    assert model.sizes == [(4, 3, 12, 10), (4, 3, 6, 5), (4, 3, 18, 15)]
    assert attn.shape == (2, 1, 1) and torch.all(attn == 15)  # largest scale, un-flipped half
    # independent per-image, per-flip oracle
    for b in range(2):
        total = 0
        for s in (1.0, 0.5, 1.5):
            x = F.interpolate(img[b:b + 1], size=(int(12 * s), int(10 * s)), mode="bilinear", align_corners=False)
            c1 = F.interpolate(model.forward_cam(x)[0], size=(12, 10), mode="bilinear", align_corners=False)
            c2 = F.interpolate(model.forward_cam(x.flip(-1))[0], size=(12, 10), mode="bilinear", align_corners=False)
            total = total + torch.maximum(c1, c2.flip(-1)).clamp_min(0)
        total = total - total.amin(dim=(-2, -1), keepdim=True)
        total = total / (total.amax(dim=(-2, -1), keepdim=True) + 1e-5)
        torch.testing.assert_close(cam[b:b + 1], total)
    assert cam.min() >= 0 and cam.max() <= 1


def test_negative_scale_contributions_are_removed_by_relu():
    class Signed(LeftHalfCam):
        def forward_cam(self, x, affinity=True):
            cam, attn = super().forward_cam(x, affinity)
            return (-cam if x.shape[-1] == 4 else cam), attn

    img = torch.rand(1, 3, 8, 8) + 0.5
    with_neg = multi_scale_cam(Signed(), img, scales=[1.0, 0.5])
    torch.testing.assert_close(with_neg, multi_scale_cam(Signed(), img, scales=[1.0]))


def test_module_is_the_function_with_its_settings():
    img = torch.rand(2, 3, 8, 6)
    cams = MultiScaleCAM(scales=(1.0, 0.5), flip=False)
    torch.testing.assert_close(cams(LeftHalfCam(), img), multi_scale_cam(LeftHalfCam(), img, (1.0, 0.5), flip=False))
    assert repr(cams) == "MultiScaleCAM(scales=(1.0, 0.5), flip=False)"


def test_no_gradient():
    img = torch.rand(1, 3, 8, 8, requires_grad=True)
    assert not multi_scale_cam(LeftHalfCam(), img, scales=[1.0]).requires_grad


def test_affinity_window_is_chebyshev():
    win = affinity_window(3, 4, radius=1)
    i, j = 0, 5  # (0,0) and (1,1)
    assert win[i, j] and win[j, i] and not win[0, 2] and win.diagonal().all()
    assert win.sum(1).tolist()[5] == 9


def test_random_walk_hand_case():
    """Grid 1×3, A = 1 between positions 0 and 1, ~0 elsewhere (radius 1 keeps 0–1 and 1–2)."""
    a = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    cam = torch.tensor([[[[0.9, 0.1, 0.2]], [[0.7, 0.7, 0.7]]]])  # 2 fg classes, class 2 absent
    out = attention_random_walk(cam, a, torch.tensor([[1.0, 0.0]]), radius=1, bkg_score=0.35)
    p = torch.softmax(torch.tensor([[0.35, 0.35, 0.35], [0.9, 0.1, 0.2]]), dim=0)  # (bkg, class 1)
    expected = torch.stack([(p[:, 0] + p[:, 1]) / 2.1, (p[:, 0] + p[:, 1]) / 2.1, p[:, 2] / 1.1], dim=1)
    assert out.shape == (1, 3, 1, 3)
    torch.testing.assert_close(out[0, :2, 0], expected)
    assert torch.all(out[0, 2] == 0)


def test_random_walk_window_and_resizing():
    torch.manual_seed(0)
    a = torch.rand(1, 6, 6)
    a = (a + a.transpose(1, 2)) / 2
    cam = torch.rand(1, 2, 2, 3)
    far = attention_random_walk(cam, a, torch.ones(1, 2), radius=0)  # only the diagonal survives
    p = torch.cat([torch.full_like(cam[:, :1], 0.35), cam], 1).softmax(1)
    diag = a[0].diagonal().view(1, 1, 2, 3) ** 2
    torch.testing.assert_close(far, p * diag / (diag + 0.1))
    big = attention_random_walk(F.interpolate(cam, size=(8, 12), mode="nearest"), a, torch.ones(1, 2),
                                grid_size=(2, 3))
    assert big.shape == (1, 3, 8, 12)
    with pytest.raises(ValueError, match="grid_size"):
        attention_random_walk(cam, torch.rand(1, 4, 4), torch.ones(1, 2))
