"""Every file of a dataset is checked when it is built, not hours later; errors name the file,
also from inside a DataLoader worker."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.test_folder import cfg_for, make_folder
from tests.data.test_voc import _cfg, _make_voc
from tscd.data import DatasetError, build_dataset, collate
from tscd.data.base import image_size


def _save_mask(path, mask):
    Image.fromarray(mask.astype(np.uint8), mode="L").convert("P").save(path)


def test_a_bad_val_mask_is_found_when_the_dataset_is_built(tmp_path):
    root = _make_voc(tmp_path / "voc", names=("a", "b", "c"))
    mask = np.zeros((20, 30), np.uint8)
    mask[4, 4] = 30  # VOC has 21 classes
    _save_mask(root / "SegmentationClassAug" / "b.png", mask)
    _save_mask(root / "SegmentationClassAug" / "c.png", np.zeros((20, 31)))
    with pytest.raises(DatasetError, match=r"mask .*b.png has class 30.* \(and 1 more bad file in the val split\)"):
        build_dataset(_cfg(root), "val", train=False)
    with pytest.raises(DatasetError, match=r"mask .*b.png has class 30"):  # labels from masks: training reads them
        build_dataset(_cfg(root), "train_aug", train=True)
    (root / "SegmentationClassAug" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetError, match=r"cannot read mask .*b.png"):
        build_dataset(_cfg(root), "val", train=False)
    (root / "SegmentationClassAug" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"mask not found: .*b.png"):
        build_dataset(_cfg(root), "val", train=False)


def test_labels_from_the_masks_are_read_once(tmp_path):
    root = _make_voc(tmp_path / "voc")
    train = build_dataset(_cfg(root), "train_aug", train=True)
    (root / "SegmentationClassAug" / "a.png").unlink()  # training items no longer need the masks
    assert train[(0, 1)]["label"].nonzero()[:, 0].tolist() == [4]


def test_truncated_images_are_found_up_front(tmp_path):
    root = _make_voc(tmp_path / "voc", size=(60, 80))
    jpeg = root / "JPEGImages" / "b.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(jpeg)
    whole = jpeg.read_bytes()
    jpeg.write_bytes(whole[: len(whole) // 2])
    assert image_size  # a header check alone passes a truncated file:
    assert Image.open(jpeg).size == (80, 60)
    with pytest.raises(DatasetError, match=r"cannot read image .*b.jpg: image file is truncated"):
        build_dataset(_cfg(root), "val", train=False)
    with pytest.raises(DatasetError, match=r"b.jpg: image file is truncated"):
        build_dataset(_cfg(root), "train_aug", train=True)
    jpeg.write_bytes(whole + b"\x00\x00 trailing bytes some cameras write")
    assert image_size(jpeg) == (60, 80)  # not truncated: it decodes
    folder = make_folder(tmp_path / "d")
    png = folder / "images" / "b.png"
    png.write_bytes(png.read_bytes()[:-40])
    with pytest.raises(DatasetError, match=r"cannot read image .*b.png"):
        build_dataset(cfg_for(folder), "val", train=False)


def test_a_huge_image_is_named(tmp_path, monkeypatch):
    root = _make_voc(tmp_path / "voc")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 20×30 is now a "decompression bomb"
    with pytest.raises(DatasetError, match=r"cannot read image .*a.jpg: Image size \(600 pixels\) exceeds"):
        build_dataset(_cfg(root), "val", train=False)


def test_errors_inside_a_dataloader_worker_name_the_file(tmp_path, monkeypatch):
    root = _make_voc(tmp_path / "voc")
    val = build_dataset(_cfg(root), "val", train=False)
    loader = torch.utils.data.DataLoader(val, batch_size=1, num_workers=1, collate_fn=collate)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the image went bad after the check (the worker forks)
    with pytest.raises(DatasetError, match=r"(?s)DataLoader worker.*cannot read image .*a.jpg"):
        next(iter(loader))
    monkeypatch.undo()
    _save_mask(root / "SegmentationClassAug" / "b.png", np.full((20, 30), 40))
    with pytest.raises(DatasetError, match=r"(?s)DataLoader worker.*mask .*b.png has class 40"):
        list(loader)
