import numpy as np
import torch

from tscd.data.transforms import IGNORE, TrainTransform, denormalize, random_crop


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
        image, m, box = t(img, mask, np.random.default_rng(seed))
        rgb = (denormalize(image[None])[0] * 255).round()
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
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert torch.equal(state, torch.get_rng_state())  # the global generator is untouched
