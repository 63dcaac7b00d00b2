"""``tscd data coco DIR`` end to end on tiny archives in COCO 2014's real layout (instances JSON
with polygons, compressed and uncompressed RLE, crowd regions): the lineage's conversion (the
smaller instance wins, crowds keep their class), the lists, the label file, the 80 names;
checksums, truncated archives, an interrupted run that resumes, a DIR with the user's files."""
import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from tests.data import prepare_fixtures as fx
from tscd.cli import main
from tscd.config import load_config
from tscd.data import build_dataset
from tscd.data.coco import COCO_CLASSES
from tscd.data.prepare import coco as prep

pytest.importorskip("pycocotools", reason="tscd data coco needs pycocotools (the prepare extra)")
COCO_ARCHIVES = ("train2014.zip", "val2014.zip", "annotations_trainval2014.zip")
TRAIN = [fx.coco_name("train", i) for i in (9, 25, 34)]
VAL = [fx.coco_name("val", i) for i in (42, 73)]


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    return fx.make_coco_archives(tmp_path_factory.mktemp("coco_archives"))


@pytest.fixture
def official(monkeypatch, archives):
    fx.official(monkeypatch, archives, COCO_ARCHIVES)
    monkeypatch.setattr(prep, "EXPECTED", {"train": fx.list_expectation(TRAIN), "val": fx.list_expectation(VAL)})
    return archives


def _run(capsys, *args):
    rc = main(["data", "coco", *map(str, args)])
    out = capsys.readouterr()
    return rc, [s for s in out.out.splitlines() if s.strip()], [s for s in out.err.splitlines() if s.strip()]


def _mask(root, name) -> np.ndarray:
    with Image.open(root / "SegmentationClass" / f"{name}.png") as im:
        assert im.mode == "P"
        return np.asarray(im)


def test_coco_from_folder_converts_as_the_lineage_does(tmp_path, capsys, official):
    rc, out, _ = _run(capsys, tmp_path / "data", "--from", official)
    root = tmp_path / "data" / "coco2014"
    assert rc == 0 and out[-1] == str(root.resolve())
    # images without an annotation (train 30, val 74) are left out, as in the lineage's lists
    assert (root / "ImageSets/Segmentation/train.txt").read_text().split() == TRAIN
    assert (root / "ImageSets/Segmentation/val.txt").read_text().split() == VAL
    assert sorted(p.stem for p in (root / "JPEGImages").iterdir()) == sorted(TRAIN + VAL)
    m = _mask(root, TRAIN[0])
    person, car, dog, toothbrush = (COCO_CLASSES.index(n) for n in ("person", "car", "dog", "toothbrush"))
    assert (person, car, dog, toothbrush) == (1, 3, 17, 80)  # ranks in COCO's id order (dog is id 18)
    assert m[2, 2] == person and m[12, 12] == dog          # the dog, smaller, wins over the person around it
    assert m[5, 30] == car                                  # the crowd region keeps its class (uncompressed RLE)
    assert m[24, 34] == toothbrush and m[29, 39] == 0       # compressed RLE; background
    assert set(np.unique(m).tolist()) == {0, person, car, dog, toothbrush}
    chair, couch = COCO_CLASSES.index("chair"), COCO_CLASSES.index("couch")
    m = _mask(root, TRAIN[1])
    assert m[3, 3] == chair and m[8, 8] == couch            # the smaller wins though it is listed later
    # the JPEG stored turned (EXIF orientation 6): its mask is turned with it, as tscd shows the image
    m = _mask(root, TRAIN[2])
    assert m.shape == (30, 20) and m[0:10, 15:20].min() == COCO_CLASSES.index("cat") and m[20:, :].max() == 0
    labels = json.loads((root / "cls_labels.json").read_text())
    assert sorted(labels) == sorted(TRAIN + VAL)
    assert [i + 1 for i, v in enumerate(labels[TRAIN[0]]) if v] == [person, car, dog, toothbrush]
    cfg = load_config("coco", [f"data.root={root}", f"data.label_file={root / 'cls_labels.json'}",
                               "data.crop_size=16"])
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "val", train=False)
    assert (len(train), len(val)) == (3, 2) and val.class_names[:3] == ("background", "person", "bicycle")
    assert val[0]["mask"].shape == (26, 34)
    assert json.loads((root / "annotations/instances_val2014.json").read_text()) == fx.coco_json("val")

    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    rc, out, _ = _run(capsys, tmp_path / "data", "--from", official)
    assert rc == 0 and out[-1] == str(root.resolve())
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_coco_checksum_mismatch_and_truncated_zip(tmp_path, capsys, official):
    bad = tmp_path / "from"
    shutil.copytree(official, bad)
    data = bytearray((bad / "val2014.zip").read_bytes())
    data[100] ^= 0xFF
    (bad / "val2014.zip").write_bytes(bytes(data))
    rc, _, err = _run(capsys, tmp_path / "a", "--from", bad)
    assert rc == 1 and len(err) == 1 and err[0].startswith(
        f"tscd: error: {bad / 'val2014.zip'} is not the official val2014.zip (md5 ")
    zip_path = bad / "train2014.zip"
    zip_path.write_bytes(zip_path.read_bytes()[:-30])  # the end of the central directory is lost
    rc, _, err = _run(capsys, tmp_path / "b", "--from", bad)
    assert rc == 1 and err[0].startswith(f"tscd: error: {zip_path} is truncated: ")
    rc, _, err = _run(capsys, tmp_path / "c", "--from", bad, "--no-verify")
    assert rc == 1 and len(err) == 1
    assert err[0].startswith(f"tscd: error: {zip_path} is truncated or damaged (") and "download it again" in err[0]


def test_an_interrupted_coco_conversion_resumes_to_the_same_tree(tmp_path, capsys, official, monkeypatch,
                                                                 interactive_sigint):
    assert _run(capsys, tmp_path / "whole", "--from", official)[0] == 0
    calls = {"n": 0}
    encode = prep.encode_mask

    def interrupted(mask):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return encode(mask)

    monkeypatch.setattr(prep, "encode_mask", interrupted)
    assert main(["data", "coco", str(tmp_path / "cut"), "--from", str(official)]) == 130
    assert len(list((tmp_path / "cut/coco2014/SegmentationClass").iterdir())) == 1
    rc, out, _ = _run(capsys, tmp_path / "cut", "--from", official)
    assert rc == 0 and out[-1].endswith("coco2014") and calls["n"] == 2 + 4  # the 4 masks still missing
    assert fx.tree_bytes(tmp_path / "cut") == fx.tree_bytes(tmp_path / "whole")


def test_coco_never_replaces_the_users_files(tmp_path, capsys, official):
    root = tmp_path / "data" / "coco2014"
    (root / "annotations").mkdir(parents=True)
    theirs = root / "annotations" / "instances_val2014.json"
    theirs.write_text("{}")
    rc, _, err = _run(capsys, tmp_path / "data", "--from", official)
    assert rc == 2 and err[0] == (f"tscd: error: {theirs} is already there and is not the file tscd data writes "
                                  "there: tscd data never replaces a file it did not write; move it away, or "
                                  "prepare into another DIR")
    assert theirs.read_text() == "{}"


def test_coco_needs_pycocotools(tmp_path, capsys, official, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    rc, _, err = _run(capsys, tmp_path / "data", "--from", official)
    assert rc == 2 and err == ["tscd: error: tscd data coco needs pycocotools to read COCO's annotations: pip install "
                               "pycocotools (or pip install 'tscd[prepare]')"]
