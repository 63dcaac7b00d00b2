import numpy as np
import pytest
from PIL import Image

from tscd.config import load_config
from tscd.data import DatasetError, build_dataset


def _make_voc(root, names=("a", "b"), size=(20, 30)):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros(size, np.uint8)
        mask[2:8, 3:9] = 5 + i
        mask[0, 0] = 255
        Image.fromarray(mask, mode="L").convert("P").save(root / "SegmentationClassAug" / f"{name}.png")
    for split in ("train_aug", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def _cfg(root, *extra):
    return load_config("voc", [f"data.root={root}", "data.crop_size=16", *extra])


def test_labels_from_masks_and_items(tmp_path):
    root = _make_voc(tmp_path / "voc")
    val = build_dataset(_cfg(root), "val", train=False)
    item = val[1]
    assert item["image"].shape == (3, 20, 30) and item["mask"].shape == (20, 30)
    assert item["label"].nonzero()[:, 0].tolist() == [5]  # class 6 (index 5 of the foreground vector)
    train = build_dataset(_cfg(root), "train_aug", train=True)
    t = train[(0, 3)]
    assert t["image"].shape == (3, 16, 16) and "mask" not in t
    assert t["label"].nonzero()[:, 0].tolist() == [4]


def test_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="needs a root"):
        build_dataset(load_config("voc"), "val", train=False)
    with pytest.raises(DatasetError, match="not found"):
        build_dataset(_cfg(tmp_path / "nowhere"), "val", train=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="JPEGImages"):
        build_dataset(_cfg(tmp_path / "empty"), "val", train=False)
    root = _make_voc(tmp_path / "voc")
    with pytest.raises(DatasetError, match="no name list for split 'test'"):
        build_dataset(_cfg(root), "test", train=False)
    val = build_dataset(_cfg(root), "val", train=False)
    (root / "JPEGImages" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="cannot read image .*a.jpg"):  # found when the dataset is built
        build_dataset(_cfg(root), "val", train=False)
    with pytest.raises(DatasetError, match="a.jpg"):  # or when the file breaks later
        val[0]
    (root / "SegmentationClassAug" / "b.png").unlink()
    with pytest.raises(DatasetError, match="mask not found: .*b.png"):
        val[1]
