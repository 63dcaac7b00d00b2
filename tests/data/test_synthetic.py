import numpy as np
import torch

from tscd.config import load_config
from tscd.data import DATASETS, StreamSampler, build_dataset
from tscd.data.synthetic import CLASSES, SyntheticDataset, generate


def test_deterministic_by_seed_and_index():
    a_img, a_mask = generate(3, "train", 17)
    b_img, b_mask = generate(3, "train", 17)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    c_img, _ = generate(4, "train", 17)
    d_img, _ = generate(3, "val", 17)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)


def test_labels_match_masks_and_train_items_hide_masks():
    train = SyntheticDataset("train", length=40, image_size=48)
    val = SyntheticDataset("val", length=40, image_size=48)
    for i in range(40):
        _, mask = val.raw(i)
        item = val[i]
        present = set(np.unique(mask).tolist()) - {0}
        assert present, "every image holds at least one object"
        assert set((torch.nonzero(item["label"])[:, 0] + 1).tolist()) == present
        assert item["mask"].shape == (48, 48) and item["image"].shape == (3, 48, 48)
        t = train[i]
        assert "mask" not in t and t["label"].shape == (len(CLASSES) - 1,)
        assert t["box"].tolist() == [0, 48, 0, 48]


def test_every_class_appears_and_colour_is_not_the_class():
    ds = SyntheticDataset("val", length=60, image_size=64)
    counts = np.zeros(len(CLASSES), int)
    mean_colour = {c: [] for c in range(1, len(CLASSES))}
    for i in range(60):
        img, mask = ds.raw(i)
        counts += np.bincount(mask.ravel(), minlength=len(CLASSES)) > 0
        for c in np.unique(mask):
            if c:
                mean_colour[c].append(img[mask == c].mean(0))
    assert (counts[1:] >= 5).all()
    for c, cols in mean_colour.items():  # random colours per object: a wide spread within a class
        assert np.std(np.array(cols), axis=0).mean() > 30, c


def test_registry_and_stream_sampler_resume():
    cfg = load_config("synthetic", ["data.synthetic.num_train=10"])
    assert {"synthetic", "voc", "coco"} <= set(DATASETS)
    ds = build_dataset(cfg, "train", train=True)
    assert len(ds) == 10
    full = StreamSampler(10, seed=1)
    it = iter(full)
    first = [next(it) for _ in range(25)]
    assert sorted(k for k, _ in first[:10]) == list(range(10))  # an epoch is a permutation
    resumed = iter(StreamSampler(10, seed=1, start=13))
    assert [next(resumed) for _ in range(12)] == first[13:]
    r0, r1 = iter(StreamSampler(10, 1, rank=0, world_size=2)), iter(StreamSampler(10, 1, rank=1, world_size=2))
    shards = [next(r0) for _ in range(5)] + [next(r1) for _ in range(5)]
    assert sorted(p for _, p in shards) == list(range(10))


def test_class_textures_give_each_class_its_texture_family():
    ds = SyntheticDataset("val", length=40, image_size=64, clutter=0, textures="class")
    colours = {c: [] for c in range(1, len(CLASSES))}
    for i in range(40):
        img, mask = ds.raw(i)
        for c in np.unique(mask):
            if c:
                colours[c].append(len(np.unique(img[mask == c].reshape(-1, 3), axis=0)))
    # disks, crosses and rings are plain (one colour), squares and triangles two-coloured (checks,
    # stripes); exceptions: two objects of a class in one image, or a tiny visible part
    for c in (1, 4, 5):
        assert np.mean(np.array(colours[c]) == 1) >= 0.7, CLASSES[c]
    for c in (2, 3):
        assert np.mean(np.array(colours[c]) >= 2) >= 0.9, CLASSES[c]
    with np.testing.assert_raises_regex(ValueError, "textures"):
        SyntheticDataset("val", length=1, textures="stripes")
    with np.testing.assert_raises_regex(ValueError, "textures"):
        generate(0, "val", 0, textures="plaid")
