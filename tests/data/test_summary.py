"""The one line a run prints about its data before the first step (tscd.data.summary)."""
from tests.data.test_voc import _make_voc
from tscd.config import load_config
from tscd.data import build_dataset
from tscd.data.summary import describe_data


def test_describe_voc_with_and_without_a_label_file(tmp_path):
    root = _make_voc(tmp_path / "voc")
    cfg = load_config("voc", [f"data.root={root}", "data.crop_size=16"])
    train, val = build_dataset(cfg, "train_aug", train=True), build_dataset(cfg, "val", train=False)
    assert describe_data(cfg, train, val) == (f"data: voc at {root}: train_aug 2 images, val 2 images; 21 classes "
                                              "(VOC); image-level labels from the masks (SegmentationClassAug/)")
    labels = tmp_path / "labels.json"
    labels.write_text('{"a": [' + ", ".join(["0"] * 20) + '], "b": [' + ", ".join(["0"] * 20) + "]}")
    cfg = load_config("voc", [f"data.root={root}", "data.crop_size=16", f"data.label_file={labels}"])
    assert describe_data(cfg, build_dataset(cfg, "train_aug", train=True)).endswith(
        f"train_aug 2 images; 21 classes (VOC); image-level labels from the label file {labels}")


def test_describe_synthetic():
    cfg = load_config("synthetic", ["data.synthetic.num_train=10", "data.synthetic.num_val=4"])
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "val", train=False)
    assert describe_data(cfg, train, val) == ("data: synthetic: train 10 images, val 4 images; 6 classes; "
                                              "image-level labels from the generator (procedural shapes)")
