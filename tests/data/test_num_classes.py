"""``data.num_classes`` defaults to the dataset's own count; an explicit value must agree with it."""
import pytest

from tests.data.test_folder import make_folder
from tscd.config import load_config
from tscd.data import DatasetError, build_dataset, dataset_num_classes, resolve_num_classes
from tscd.engine.builders import build_model


def test_the_default_is_the_datasets_count(tmp_path):
    assert load_config().data.num_classes is None
    assert load_config("folder").data.num_classes is None
    root = make_folder(tmp_path / "d")
    assert dataset_num_classes(load_config()) == 6
    assert dataset_num_classes(load_config("voc")) == 21 and dataset_num_classes(load_config("coco")) == 81
    cfg = load_config("folder", [f"data.root={root}", "model.backbone=mit_b0"])
    assert dataset_num_classes(cfg) == 4
    assert build_dataset(cfg, "val", train=False).num_classes == 4
    assert build_model(cfg).classifier.out_channels == 3
    resolved = resolve_num_classes(cfg)
    assert resolved.data.num_classes == 4 and cfg.data.num_classes is None
    (root / "classes.txt").unlink()  # a stored config with K builds its model without the dataset (tscd infer)
    assert build_model(resolved).classifier.out_channels == 3
    with pytest.raises(DatasetError, match="class list not found"):
        build_model(cfg)


def test_an_explicit_count_must_match(tmp_path):
    root = make_folder(tmp_path / "d")
    cfg = load_config("folder", [f"data.root={root}", "data.num_classes=4"])
    assert dataset_num_classes(cfg) == 4
    with pytest.raises(DatasetError, match=r"data.num_classes=3 does not match the dataset: .*classes.txt lists 3 "
                                           r"classes: pass data.num_classes=4 \(background included\) or leave"):
        dataset_num_classes(load_config("folder", [f"data.root={root}", "data.num_classes=3"]))
    with pytest.raises(DatasetError, match=r"data.num_classes=20 does not match the dataset: the voc dataset has "
                                           r"21 classes"):
        dataset_num_classes(load_config("voc", ["data.num_classes=20"]))
    with pytest.raises(DatasetError, match="data.num_classes=5 .*synthetic dataset has 6"):
        build_dataset(load_config(None, ["data.num_classes=5"]), "val", train=False)
    with pytest.raises(DatasetError, match="the folder dataset needs a root"):
        dataset_num_classes(load_config("folder"))
