"""``tscd data voc DIR`` end to end on tiny archives in VOC's and SBD's real layouts: the merge
(VOC's annotation wins), the lists, the label file, what --config voc reads; checksums, truncated
archives, an interrupted run that resumes, a DIR that already holds the user's files."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.data import prepare_fixtures as fx
from tscd.cli import main
from tscd.config import load_config
from tscd.data import build_dataset
from tscd.data.prepare import voc as prep

VOC_ARCHIVES = ("VOCtrainval_11-May-2012.tar", "benchmark.tgz")


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    return fx.make_voc_archives(tmp_path_factory.mktemp("voc_archives"))


@pytest.fixture
def official(monkeypatch, archives):
    """The fixture archives are "the official ones": their checksums in the table, their lists and
    labels as the standard ones."""
    fx.official(monkeypatch, archives, VOC_ARCHIVES)
    monkeypatch.setattr(prep, "EXPECTED", {"train_aug": fx.list_expectation(fx.TRAIN_AUG),
                                           "val": fx.list_expectation(fx.VAL)})
    monkeypatch.setattr(prep, "KNOWN", {"2007_000032": ("train_aug", ("aeroplane", "person")),
                                        "2007_000033": ("val", ("aeroplane",))})
    return archives


def _run(capsys, *args) -> tuple[int, list[str], list[str]]:
    rc = main(["data", "voc", *map(str, args)])
    out = capsys.readouterr()
    return rc, [line for line in out.out.splitlines() if line.strip()], [
        line for line in out.err.splitlines() if line.strip()]


def test_voc_from_folder_writes_what_config_voc_reads(tmp_path, capsys, official):
    rc, out, _ = _run(capsys, tmp_path / "data", "--from", official)
    root = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    assert rc == 0 and out[-1] == str(root.resolve())
    # only what is needed: the images of the two splits, no Annotations/, SegmentationObject/, Main/
    assert sorted(p.stem for p in (root / "JPEGImages").iterdir()) == sorted(fx.TRAIN_AUG + fx.VAL)
    assert sorted(p.name for p in root.iterdir()) == ["ImageSets", "JPEGImages", "SegmentationClassAug",
                                                      "cls_labels.json"]
    assert (root / "ImageSets/Segmentation/train_aug.txt").read_text().split() == fx.TRAIN_AUG
    assert (root / "ImageSets/Segmentation/val.txt").read_text().split() == fx.VAL
    # where VOC and SBD both annotate an image, VOC's PNG is kept byte for byte (255 boundary included)
    for name in ("2007_000032", "2007_000033"):
        assert (root / f"SegmentationClassAug/{name}.png").read_bytes() == fx.voc_member_bytes(name)["png"]
    # SBD's images get its GTcls.Segmentation as a palette PNG
    with Image.open(root / "SegmentationClassAug/2008_000003.png") as im:
        assert im.mode == "P" and im.getpalette()[15 * 3:15 * 3 + 3] == [192, 128, 128]  # person's VOC colour
        np.testing.assert_array_equal(np.asarray(im), fx.sbd_seg("2008_000003"))
    assert (root / "JPEGImages/2008_000002.jpg").read_bytes() == fx.voc_member_bytes("2008_000002")["jpg"]
    # the labels are the XML's (PSA/AFA), the person of 2008_000008 included though its mask lacks it
    labels = json.loads((root / "cls_labels.json").read_text())
    assert sorted(labels) == sorted(fx.TRAIN_AUG + fx.VAL)
    assert all(labels[n] == fx.voc_label(n) for n in labels)
    cfg = load_config("voc", [f"data.root={root}", f"data.label_file={root / 'cls_labels.json'}",
                              "data.crop_size=16"])
    train, val = build_dataset(cfg, "train_aug", train=True), build_dataset(cfg, "val", train=False)
    assert (len(train), len(val)) == (5, 2)
    item = val[0]
    assert item["mask"].shape == (44, 52) and set(item["mask"].unique().tolist()) == {0, 1, 255}
    summary = json.loads((tmp_path / "data/.tscd-data/voc.done").read_text())
    assert summary["labels_differing_from_masks"] == 1 and summary["examples"] == ["2008_000008"]

    # a second run checks and skips: same last line, no file rewritten
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    rc, out, _ = _run(capsys, tmp_path / "data", "--from", official)
    assert rc == 0 and out[-1] == str(root.resolve())
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_a_checksum_mismatch_is_one_line_naming_the_file(tmp_path, capsys, official, monkeypatch):
    bad = tmp_path / "from"
    shutil.copytree(official, bad)
    data = bytearray((bad / "benchmark.tgz").read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes
    (bad / "benchmark.tgz").write_bytes(bytes(data))
    rc, _, err = _run(capsys, tmp_path / "data", "--from", bad)
    assert rc == 1 and len(err) == 1
    assert err[0].startswith(f"tscd: error: {bad / 'benchmark.tgz'} is not the official benchmark.tgz (md5 ")
    assert "download it again" in err[0] and "--no-verify" in err[0]
    assert not (tmp_path / "data" / "VOCdevkit").exists()


def test_a_truncated_archive_is_one_line_naming_the_file(tmp_path, capsys, official):
    cut = tmp_path / "from"
    shutil.copytree(official, cut)
    tar = cut / "VOCtrainval_11-May-2012.tar"
    tar.write_bytes(tar.read_bytes()[:20000])
    rc, _, err = _run(capsys, tmp_path / "a", "--from", cut)  # verified: the size tells
    size = (official / tar.name).stat().st_size
    assert rc == 1 and err == [f"tscd: error: {tar} is truncated: 20,000 of {size:,} bytes; download it again "
                               "(without --from, tscd data downloads and resumes it)"]
    tgz = cut / "benchmark.tgz"
    shutil.copy(official / "VOCtrainval_11-May-2012.tar", tar)
    tgz.write_bytes(tgz.read_bytes()[:900])
    rc, _, err = _run(capsys, tmp_path / "b", "--from", cut, "--no-verify")  # unverified: reading tells
    assert rc == 1 and len(err) == 1
    assert err[0].startswith(f"tscd: error: {tgz} is truncated or damaged (") and "download it again" in err[0]


def test_an_interrupted_conversion_resumes_to_the_same_tree(tmp_path, capsys, official, monkeypatch,
                                                            interactive_sigint):
    rc, _, _ = _run(capsys, tmp_path / "whole", "--from", official)
    assert rc == 0
    calls = {"n": 0}
    encode = prep.encode_mask

    def interrupted(mask):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return encode(mask)

    monkeypatch.setattr(prep, "encode_mask", interrupted)
    assert main(["data", "voc", str(tmp_path / "cut"), "--from", str(official)]) == 130
    root = tmp_path / "cut" / "VOCdevkit" / "VOC2012"
    assert len(list((root / "SegmentationClassAug").iterdir())) == 2 and not (root / "JPEGImages").exists()
    assert not list(root.rglob("*.tscd-partial"))
    rc, out, _ = _run(capsys, tmp_path / "cut", "--from", official)
    assert rc == 0 and out[-1] == str(root.resolve()) and calls["n"] == 3 + 1  # only the missing masks were made
    assert fx.tree_bytes(tmp_path / "cut") == fx.tree_bytes(tmp_path / "whole")


def test_files_already_in_dir_are_never_replaced(tmp_path, capsys, official):
    data = tmp_path / "data"
    root = data / "VOCdevkit" / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (data / "notes.txt").write_text("mine")
    same = fx.voc_member_bytes("2007_000032")["jpg"]
    (root / "JPEGImages" / "2007_000032.jpg").write_bytes(same)  # the user's own extraction: adopted
    theirs = root / "SegmentationClassAug" / "2008_000002.png"
    theirs.write_bytes(b"the user's mask")
    rc, _, err = _run(capsys, data, "--from", official)
    assert rc == 2 and err == [f"tscd: error: {theirs} is already there and is not the file tscd data writes "
                               "there: tscd data never replaces a file it did not write; move it away, or prepare "
                               "into another DIR"]
    assert theirs.read_bytes() == b"the user's mask" and (data / "notes.txt").read_text() == "mine"
    theirs.rename(data / "moved.png")
    rc, out, _ = _run(capsys, data, "--from", official)
    assert rc == 0 and out[-1] == str(root.resolve())
    assert (root / "JPEGImages" / "2007_000032.jpg").read_bytes() == same
    assert (data / "notes.txt").read_text() == "mine" and (data / "moved.png").read_bytes() == b"the user's mask"


def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, official, monkeypatch):
    rc, _, err = _run(capsys, tmp_path / "d", "--from", tmp_path / "nowhere")
    assert rc == 2 and err == [f"tscd: error: --from {tmp_path / 'nowhere'}: no such folder (the folder holding the "
                               "downloaded archives)"]
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(official / "VOCtrainval_11-May-2012.tar", half)
    rc, _, err = _run(capsys, tmp_path / "d", "--from", half)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"tscd: error: {half} has no benchmark.tgz (the SBD")
    (tmp_path / "file").write_text("x")
    rc, _, err = _run(capsys, tmp_path / "file", "--from", official)
    assert rc == 2 and "is not a folder" in err[0]
    with pytest.raises(SystemExit) as exit_:  # argparse: --from and --mirror exclude each other
        main(["data", "voc", str(tmp_path / "d"), "--from", str(official), "--mirror", "http://x"])
    assert exit_.value.code == 2


def test_the_disk_space_is_checked_before_anything_is_fetched(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10**9, 10**9))
    rc, _, err = _run(capsys, tmp_path / "d", "--mirror", "http://127.0.0.1:9/nothing")
    assert rc == 2 and err == [f"tscd: error: {tmp_path / 'd'} has 1.0 GB free, tscd data voc needs about 5.1 GB "
                               "(3.4 GB of downloads and 1.4 GB of prepared files): free some space or choose "
                               "another DIR"]
    assert not (tmp_path / "d" / "downloads").exists()


def test_no_verify_reads_any_copy_and_says_the_lists_are_not_the_standard_ones(tmp_path, capsys, archives):
    rc, out, err = _run(capsys, tmp_path / "data", "--from", archives, "--no-verify")
    assert rc == 0 and out[-1].endswith("VOC2012")
    assert any("train_aug.txt has 5 names, not the 10,582 of the standard list" in line for line in err)


def test_config_voc_trains_and_evaluates_on_the_prepared_tree(tmp_path, capsys, official):
    rc, out, _ = _run(capsys, tmp_path / "data", "--from", official)
    root = out[-1]
    work = tmp_path / "run"
    tiny = ["model.backbone=mit_b0", "model.embedding_dim=16", "model.stride=[4,2,1,1]", "model.drop_path_rate=0.0",
            "data.crop_size=64", "data.num_workers=0", "cam.scales=[1.0]", "refine.num_iter=2", "loss.stage1_iters=1",
            "loss.scd_scale=0.5", "optim.warmup_iters=1", "train.eval_interval=100", "train.ckpt_interval=0",
            "eval.num_vis=1", "eval.crf=none", "eval.scales=[1.0]"]
    assert main(["train", "--config", "voc", "--data-root", root, "--work-dir", str(work), "--max-iters", "2",
                 "--backend", "torch", f"data.label_file={root}/cls_labels.json", *tiny]) == 0
    metrics = json.loads((work / "metrics.json").read_text())["latest"]
    assert metrics["iteration"] == 2 and 0.0 <= metrics["seg_miou"] <= 1.0
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(work / "checkpoints" / "last.pth"), "--data-root", root,
                 "--out", str(out_json), "--crf", "none", "--scales", "1.0", "--resize-long", "0"]) == 0
    evaluated = json.loads(out_json.read_text())
    assert set(evaluated["per_class_iou"]) >= {"aeroplane", "tvmonitor"}


def test_a_second_run_in_the_same_dir_at_once_is_refused(tmp_path, capsys, official):
    from tscd.data.prepare.archives import STATE_DIR, OutputTree

    state = tmp_path / "data" / STATE_DIR
    with OutputTree(tmp_path / "data", state, "voc"):
        rc, _, err = _run(capsys, tmp_path / "data", "--from", official)
    assert rc == 2 and err == [f"tscd: error: another tscd data voc is preparing {tmp_path / 'data'} (it holds "
                               f"{state / 'voc.lock'}): wait for it to finish"]
    assert _run(capsys, tmp_path / "data", "--from", official)[0] == 0


def test_the_prepare_package_imports_only_tscd_data_and_the_foundations():
    """tscd.data.prepare sits in the data layer and needs nothing above the foundations but tscd.data
    (no models, ops or engine): the rule of tests/test_layers.py, narrowed."""
    from pathlib import Path

    import tscd.data.prepare
    from tests.test_layers import imported_modules

    allowed = ("tscd.constants", "tscd.log", "tscd.config", "tscd.data")
    folder = Path(tscd.data.prepare.__file__).parent
    found = []
    for path in sorted(folder.glob("*.py")):
        module = "tscd.data.prepare" + ("" if path.stem == "__init__" else f".{path.stem}")
        for line, target in imported_modules(path.read_text(), module, path.stem == "__init__"):
            if target.startswith("tscd") and not target.startswith(allowed):
                found.append(f"{module}:{line} imports {target}")
    assert found == []
