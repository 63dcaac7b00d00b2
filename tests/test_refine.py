"""tscd.refine: pseudo labels from CAMs (§3, crop boxes), the refiner module (VARM/PAR), the batched pseudo-label
refinement of method §4 and the PseudoLabeler that training, evaluation and the export share."""
import pytest
import torch
import torch.nn.functional as F

from tests.utils import ALL, DEVICE
from tscd.class_activation import MultiScaleCAM, multi_scale_cam
from tscd.ops import varm_refine
from tscd.refine import (
    PseudoLabeler,
    Refiner,
    apply_crop_box,
    cam_to_label,
    class_argmax,
    crop_box_mask,
    pseudo_label,
    refine_cams_with_bkg,
)


def _hand_cam():
    cam = torch.zeros(1, 3, 2, 4)
    cam[0, 0] = torch.tensor([[0.9, 0.56, 0.55, 0.2], [0.0, 0.0, 0.0, 0.0]])
    cam[0, 1] = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.36, 0.35, 0.46, 0.45]])
    cam[0, 2] = torch.tensor([[0.95, 0.95, 0.95, 0.95], [0.95, 0.95, 0.95, 0.95]])  # absent class
    return cam, torch.tensor([[1.0, 1.0, 0.0]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_class_argmax_is_argmax_with_ties_and_nan(dtype):
    torch.manual_seed(0)
    scores = torch.randint(0, 3, (4, 5, 7, 9)).to(dtype)  # many ties
    scores[0, 3, 0, 0] = float("nan")
    assert torch.equal(class_argmax(scores), scores.argmax(1))
    assert class_argmax(scores)[0, 0, 0] == 3
    assert torch.equal(class_argmax(scores[0], dim=0), scores[0].argmax(0))
    strided = scores.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert torch.equal(class_argmax(strided), scores.argmax(1))


def test_pseudo_label_thresholds():
    cam, labels = _hand_cam()
    out = pseudo_label(cam, labels)
    assert out.dtype == torch.int64
    assert out.tolist() == [[[1, 1, 255, 0], [255, 0, 255, 255]]]
    out = pseudo_label(cam, labels, crop_box=torch.tensor([[0, 2, 1, 3]]))
    assert out.tolist() == [[[255, 1, 255, 255], [255, 0, 255, 255]]]


def test_cam_to_label_background_score():
    cam, labels = _hand_cam()
    assert cam_to_label(cam, labels).tolist() == [[[1, 1, 1, 0], [0, 0, 2, 0]]]
    assert cam_to_label(cam, labels, bkg_score=0.3).tolist() == [[[1, 1, 1, 0], [2, 2, 2, 2]]]


def test_crop_box_and_errors():
    label = torch.zeros(2, 3, 4, dtype=torch.long)
    out = apply_crop_box(label, torch.tensor([[0, 3, 0, 4], [1, 2, 2, 4]]))
    assert out[0].eq(0).all() and out[1].tolist() == [[255] * 4, [255, 255, 0, 0], [255] * 4]
    with pytest.raises(ValueError, match=r"crop_box must be an integer \(B, 4\) = \(2, 4\)"):
        apply_crop_box(label, torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"crop_box must be an integer"):
        apply_crop_box(label, torch.zeros(2, 4))
    assert crop_box_mask([[1, 3, 0, 2]], 1, 4, 4).long().tolist() == [[[0] * 4, [1, 1, 0, 0], [1, 1, 0, 0], [0] * 4]]
    with pytest.raises(ValueError, match="cls_labels"):
        pseudo_label(torch.zeros(1, 3, 2, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="low"):
        pseudo_label(torch.zeros(1, 3, 2, 2), torch.ones(1, 3), high=0.3, low=0.5)


def _literal_per_image(images, cams, cls_labels, boxes, refiner, high=0.55, low=0.35, ignore=255):
    """Method §4's training use, one image at a time, as AFA's loop writes it."""
    b, _, h, w = images.shape
    small = (h // 2, w // 2)
    small_images = F.interpolate(images, size=small, mode="bilinear", align_corners=False)
    out = torch.full((b, h, w), ignore, dtype=torch.long, device=images.device)
    for i in range(b):
        keys = torch.nonzero(torch.cat([torch.ones(1, device=images.device), cls_labels[i].float()]))[:, 0]
        labels = []
        for bkg in (high, low):
            with_bkg = torch.cat([torch.full((1, 1, h, w), bkg, device=images.device), cams[i : i + 1]], dim=1)
            with_bkg = F.interpolate(with_bkg, size=small, mode="bilinear", align_corners=False)
            refined = refiner(small_images[i : i + 1], with_bkg[:, keys].softmax(dim=1))
            refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
            labels.append(keys[refined.argmax(dim=1)][0])
        label_high, label_low = labels
        label = label_high.clone()
        label[label_high == 0] = ignore
        label[(label_high + label_low) == 0] = 0
        y0, y1, x0, x1 = boxes[i]
        out[i, y0:y1, x0:x1] = label[y0:y1, x0:x1]
    return out


@pytest.mark.parametrize("backend", ALL)
def test_hand_made_case(backend):
    # Three vertical stripes: black (no CAM: background), grey (class 4 at 0.45, between the
    # thresholds: background for "high", class 4 for "low" -> ignore), white (class 2 at 0.9).
    # Class 1 fires everywhere but is absent from the image labels; the crop box ends at row 14.
    img = torch.zeros(1, 3, 16, 16, device=DEVICE)
    img[..., 6:12] = 0.5
    img[..., 12:] = 1.0
    cams = torch.zeros(1, 4, 16, 16, device=DEVICE)
    cams[0, 0] = 1.0
    cams[0, 1, :, 12:] = 0.9
    cams[0, 3, :, 6:12] = 0.45
    cls_labels = torch.tensor([[0, 1, 0, 1]], device=DEVICE)
    label = refine_cams_with_bkg(img, cams, cls_labels, crop_box=[[0, 14, 0, 16]], refiner=Refiner(backend=backend))
    expect = torch.full((1, 16, 16), 255, dtype=torch.long, device=DEVICE)
    expect[0, :14, :6] = 0
    expect[0, :14, 12:] = 2
    assert label.dtype == torch.long
    torch.testing.assert_close(label, expect)


def _random_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    b, h, w = 3, 20, 18
    # Smooth images and CAMs, so that the refinement has structure to follow.
    images = F.interpolate(torch.rand(b, 3, 5, 5, generator=g), size=(h, w), mode="bilinear", align_corners=False)
    cams = F.interpolate(torch.rand(b, 6, 4, 4, generator=g), size=(h, w), mode="bilinear", align_corners=False)
    cls_labels = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 1, 1]], dtype=torch.float32)
    boxes = torch.tensor([[0, 20, 0, 18], [3, 17, 2, 11], [0, 9, 5, 18]])
    return images.to(DEVICE), cams.to(DEVICE), cls_labels.to(DEVICE), boxes.to(DEVICE)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("mode", ["varm", "par"])
def test_batched_equals_literal_per_image_loop(backend, mode):
    images, cams, cls_labels, boxes = _random_case()
    refiner = Refiner(num_iter=3, mode=mode, backend=backend)
    label = refine_cams_with_bkg(images, cams, cls_labels, crop_box=boxes, refiner=refiner)
    expect = _literal_per_image(images, cams, cls_labels, boxes.tolist(), refiner)
    assert (label != 255).any() and (label == 255).any() and (label == 0).any()
    torch.testing.assert_close(label, expect)


def test_without_crop_box_and_with_other_thresholds():
    images, cams, cls_labels, boxes = _random_case(1)
    refiner = Refiner(num_iter=2, backend="torch")
    whole = torch.tensor([[0, 20, 0, 18]] * 3)
    for high, low in ((0.55, 0.35), (0.7, 0.2)):
        label = refine_cams_with_bkg(images, cams, cls_labels, high=high, low=low, ignore_index=254, refiner=refiner)
        expect = _literal_per_image(images, cams, cls_labels, whole.tolist(), refiner, high, low, 254)
        torch.testing.assert_close(label, expect)


def test_module_wraps_the_op():
    images, cams = torch.rand(1, 3, 6, 7), torch.rand(1, 2, 3, 4)
    module = Refiner(dilations=(1, 3), num_iter=2, mode="par", backend="torch")
    torch.testing.assert_close(
        module(images, cams), varm_refine(images, cams, dilations=(1, 3), num_iter=2, mode="par", backend="torch")
    )
    assert "mode='par'" in repr(module) and not list(module.parameters())


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(images=torch.rand(3, 1, 20, 18)), r"images must have shape \(B, 3, H, W\)"),
        (dict(cams=torch.rand(2, 6, 20, 18)), "batch sizes"),
        (dict(cls_labels=torch.ones(3, 5)), "class counts of cams and cls_labels"),
        (dict(crop_box=torch.zeros(3, 3, dtype=torch.long)), r"crop_box must be an integer \(B, 4\)"),
        (dict(crop_box=torch.zeros(3, 4)), r"crop_box must be an integer \(B, 4\)"),
        (dict(scale=0.0), "scale must be in"),
        (dict(scale=1.5), "scale must be in"),
    ],
)
def test_bad_inputs(change, match):
    images, cams, cls_labels, _ = _random_case()
    args = dict(images=images.cpu(), cams=cams.cpu(), cls_labels=cls_labels.cpu(), crop_box=None, scale=0.5)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        refine_cams_with_bkg(args.pop("images"), args.pop("cams"), args.pop("cls_labels"), **args)


class ColourModel(torch.nn.Module):
    """A model whose CAM of six classes is the image's colours, twice (all multi_scale_cam needs)."""

    def forward_cam(self, x, affinity=True):
        return x.repeat(1, 2, 1, 1) * 4 - 1, torch.zeros(x.shape[0], 1, 1) if affinity else None


@pytest.mark.parametrize("refine", ["varm", "par", "none"])
def test_pseudo_labeler_is_cams_then_thresholds_then_refinement(refine):
    images, cams, cls_labels, boxes = _random_case()
    rgb = images
    labeler = PseudoLabeler(MultiScaleCAM((1.0, 0.5)), high=0.6, low=0.3, mode=refine, dilations=(1, 2), num_iter=3,
                            scale=0.5, backend="torch")
    model = ColourModel()
    got_cams, labels = labeler(model, images, rgb, cls_labels, boxes)
    torch.testing.assert_close(got_cams, multi_scale_cam(model, images, (1.0, 0.5)))
    if refine == "none":
        expected = pseudo_label(got_cams, cls_labels, boxes, high=0.6, low=0.3)
    else:
        expected = refine_cams_with_bkg(rgb, got_cams, cls_labels, high=0.6, low=0.3, crop_box=boxes,
                                        refiner=Refiner((1, 2), 3, refine, "torch"))
    assert torch.equal(labels, expected)
    # one background score for both thresholds: a full label (evaluation)
    full = labeler.labels(rgb, got_cams, cls_labels, boxes, high=0.45, low=0.45)
    assert not ((full == 255) & crop_box_mask(boxes, *full.shape, device=full.device)).any()


def test_pseudo_labeler_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        PseudoLabeler(mode="crf")
    with pytest.raises(ValueError, match="low"):
        PseudoLabeler(high=0.3, low=0.5)
    assert "mode='par'" in repr(PseudoLabeler(mode="par"))
