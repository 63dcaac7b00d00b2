import numpy as np
import torch

from tscd.constants import IGNORE_INDEX as IGNORE
from tscd.data.transforms import EvalTransform, TrainTransform, denormalize, random_crop


def _coded_image(h, w):
    """An image whose red channel equals the mask id, so image and mask can be compared."""
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy // 6) * 3 + (xx // 6)) % 7  # 6×6 blocks
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = mask * 30
    img[..., 1] = 200
    return img, mask


def test_random_crop_box_marks_the_image_and_pads_with_zeros():
    rng = np.random.default_rng(0)
    image = torch.ones(3, 10, 20)
    mask = torch.zeros(10, 20, dtype=torch.long)
    for _ in range(20):
        out, m, box = random_crop(image, mask, 16, rng)
        y0, y1, x0, x1 = box.tolist()
        assert out.shape == (3, 16, 16) and m.shape == (16, 16)
        assert y1 - y0 == 10 and x1 - x0 == 16  # short side padded, long side cropped
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert (out[:, inside] == 1).all() and (out[:, ~inside] == 0).all()
        assert (m[inside] == 0).all() and (m[~inside] == IGNORE).all()


def test_train_transform_keeps_image_and_mask_aligned():
    img, mask = _coded_image(30, 40)
    t = TrainTransform(32, scale_range=(0.5, 2.0), flip=True)
    for seed in range(10):
        item = t(img, mask, np.random.default_rng(seed))
        m, box = item["mask"], item["box"]
        rgb = (item["rgb"] * 255).round()
        assert torch.equal(item["rgb"], denormalize(item["image"][None])[0])
        y0, y1, x0, x1 = box.tolist()
        region = m[y0:y1, x0:x1]
        assert (region != IGNORE).all()
        # nearest-resized mask and bilinear image agree on most pixels (edges blur)
        agree = (rgb[0, y0:y1, x0:x1] - region * 30).abs() <= 20
        assert agree.float().mean() > 0.7
        assert (m[:y0] == IGNORE).all() and (m[y1:] == IGNORE).all()


def test_train_transform_is_reproducible_from_its_rng():
    img, mask = _coded_image(24, 24)
    t = TrainTransform(24, scale_range=(0.7, 1.3), flip=True, color_jitter=0.3)
    a = t(img, mask, np.random.default_rng(5))
    state = torch.get_rng_state()
    b = t(img, mask, np.random.default_rng(5))
    assert a.keys() == b.keys() == {"image", "rgb", "mask", "box"} and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is untouched


def test_eval_transform_keeps_the_whole_image():
    img, mask = _coded_image(13, 17)
    item = EvalTransform()(img, mask)
    assert item["box"].tolist() == [0, 13, 0, 17] and torch.equal(item["mask"], torch.from_numpy(mask).long())
    torch.testing.assert_close(item["rgb"] * 255, torch.from_numpy(img).permute(2, 0, 1).float(), atol=1e-3, rtol=0)
    assert "mask" not in EvalTransform()(img)  # images without a mask (tscd infer)
