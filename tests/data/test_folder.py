"""The `folder` dataset: round trip and the errors that name the file and line."""
import numpy as np
import pytest
import torch
from PIL import Image

from tscd.config import load_config
from tscd.data import DatasetError, build_dataset
from tscd.data.folder import FolderDataset

CLASSES = ["cat", "dog", "bird"]


def make_folder(root, rows=None, sizes=None, masks=("a",)):
    """images a.jpg (40×50), b.png (30×20); masks for ``masks``; a train.csv and val.csv."""
    sizes = sizes or {"a": (40, 50), "b": (30, 20)}
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        ext = "jpg" if name == "a" else "png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{name}.{ext}")
    for name in masks:
        h, w = sizes[name]
        mask = np.zeros((h, w), np.uint8)
        mask[5:15, 5:15] = 1
        mask[20:25, 30:40] = 3
        mask[0, :] = 255
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{name}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n\n")
    rows = rows or ["a.jpg,cat;bird", "b,dog"]
    for split in ("train", "val"):
        (root / f"{split}.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    return root


def cfg_for(root, *extra):
    return load_config("folder", [f"data.root={root}", "data.num_classes=4", *extra])


def test_round_trip(tmp_path):
    root = make_folder(tmp_path / "d")
    val = build_dataset(cfg_for(root), "val", train=False)
    assert isinstance(val, FolderDataset) and len(val) == 2
    assert val.class_names == ("background", "cat", "dog", "bird") and val.num_classes == 4
    a, b = val[0], val[1]
    assert a["name"] == "a" and a["image"].shape == (3, 40, 50)
    assert a["label"].tolist() == [1.0, 0.0, 1.0]
    assert a["mask"][10, 10] == 1 and a["mask"][22, 35] == 3 and a["mask"][0, 0] == 255
    assert a["box"].tolist() == [0, 40, 0, 50]
    assert b["name"] == "b" and b["label"].tolist() == [0.0, 1.0, 0.0]
    assert b["image"].shape == (3, 30, 20) and bool((b["mask"] == 255).all())  # no mask: all ignore
    train = build_dataset(cfg_for(root, "data.crop_size=32"), "train", train=True)
    item = train[(1, 7)]
    assert item["image"].shape == (3, 32, 32) and "mask" not in item and item["label"].tolist() == [0.0, 1.0, 0.0]


def test_quoted_csv_and_spaces(tmp_path):
    root = make_folder(tmp_path / "d", rows=['"a.jpg", cat ; dog;', "b.png,bird"])
    ds = FolderDataset(root, "val", train=False)
    assert ds.labels["a"].tolist() == [1.0, 1.0, 0.0] and ds.labels["b"].tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("rows, message", [
    (["a.jpg,cat;dgo"], r"val.csv line 2: unknown class 'dgo'"),
    (["a.jpg,cat", "c.jpg,dog"], r"val.csv line 3: image 'c.jpg' not found"),
    (["a.jpg,cat", "b.png,"], r"val.csv line 3: image 'b.png' has no labels"),
    (["a.jpg,cat", "b.png", "a,dog"], r"val.csv line 3: image 'b.png' has no labels"),
    (["a.jpg,cat", "a,dog"], r"val.csv line 3: image 'a' is already listed on line 2"),
])
def test_bad_rows_name_file_and_line(tmp_path, rows, message):
    root = make_folder(tmp_path / "d", rows=rows)
    with pytest.raises(DatasetError, match=message):
        FolderDataset(root, "val", train=False)


def test_mask_size_mismatch(tmp_path):
    root = make_folder(tmp_path / "d")
    Image.fromarray(np.zeros((30, 50), np.uint8), mode="L").save(root / "masks" / "a.png")
    with pytest.raises(DatasetError,
                       match=r"val.csv line 2: mask .*a.png is \(30, 50\), its image .*a.jpg is \(40, 50\)"):
        FolderDataset(root, "val", train=False)


def test_other_errors(tmp_path):
    root = make_folder(tmp_path / "d")
    with pytest.raises(DatasetError, match="split file not found: .*test.csv"):
        FolderDataset(root, "test")
    with pytest.raises(DatasetError, match="needs a root"):
        FolderDataset(None)
    with pytest.raises(DatasetError, match="has no images/ folder"):
        FolderDataset(tmp_path / "nothing")
    with pytest.raises(DatasetError, match=r"classes.txt lists 3 classes: pass data.num_classes=4"):
        build_dataset(cfg_for(root, "data.num_classes=21"), "val", train=False)

    (root / "val.csv").write_text("file,tags\na.jpg,cat\n")
    with pytest.raises(DatasetError, match="val.csv line 1: the header must be 'image,labels'"):
        FolderDataset(root, "val")
    (root / "classes.txt").write_text("background\ncat\n")
    with pytest.raises(DatasetError, match="classes.txt line 1: 'background' is implicit"):
        FolderDataset(root, "val")
    (root / "classes.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(DatasetError, match="classes.txt line 3: class 'cat' is already listed on line 1"):
        FolderDataset(root, "val")


def test_mask_with_a_class_beyond_classes_txt(tmp_path):
    root = make_folder(tmp_path / "d")
    mask = np.zeros((40, 50), np.uint8)
    mask[3, 3] = 7
    Image.fromarray(mask, mode="L").save(root / "masks" / "a.png")
    with pytest.raises(DatasetError, match=r"mask .*a.png has class 7, but .*classes.txt .* defines classes 0..3"):
        FolderDataset(root, "val", train=False)  # found when the dataset is built
    ds = FolderDataset(root, "val", train=False, check=False)
    with pytest.raises(DatasetError, match=r"mask .*a.png has class 7"):
        ds[0]
    assert torch.is_tensor(ds[1]["mask"])


def test_a_row_without_suffix_that_fits_two_images_names_both(tmp_path):
    """``im0`` with both im0.jpg and im0.png present was silently taken as the .jpg."""
    root = make_folder(tmp_path / "d", rows=["a,cat", "b,dog"])
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "images" / "a.png")
    says = r"val.csv line 2: image 'a' is ambiguous, 2 files fit it: .*a\.jpg, .*a\.png; write"
    with pytest.raises(DatasetError, match=says):
        FolderDataset(root, "val", train=False)
    (root / "val.csv").write_text("image,labels\na.jpg,cat\nb,dog\n")  # naming the file settles it
    assert FolderDataset(root, "val", train=False).image_path("a").name == "a.jpg"


@pytest.mark.parametrize("line, separator", [("cat;dog", ";"), ("cat, dog", ",")])
def test_a_class_name_holding_a_label_separator_is_refused_in_classes_txt(tmp_path, line, separator):
    """``cat;dog`` was accepted as one class; the CSV, whose labels it splits, was blamed later."""
    root = make_folder(tmp_path / "d")
    (root / "classes.txt").write_text(f"bird\n{line}\n")
    says = rf"classes.txt line 2: class '{line}' contains '{separator}', which separates the labels"
    with pytest.raises(DatasetError, match=says):
        FolderDataset(root, "val")
    with pytest.raises(DatasetError, match=says):  # also where only the class count is asked
        build_dataset(cfg_for(root), "val", train=False)
