"""`tscd infer`, `eval` and `pseudo-labels` on bad input: one line naming the file; nothing written
over an input, over another output of the same run, or into a dataset's own folders; every hint
names a flag the command has; weights files that pickle code are refused."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tscd.cli import build_parser, main
from tscd.config import load_config, to_dict
from tscd.engine.builders import build_model
from tscd.engine.checkpoint import atomic_save

from .data.test_folder import make_folder
from .engine import TINY
from .models.test_checkpoint import WritesMarker

SUBCOMMANDS = {action.dest: action for action in build_parser()._subparsers._group_actions}[  # noqa: SLF001
    "command"].choices


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny synthetic-config checkpoint (with its config) and one without a config."""
    cfg = load_config("synthetic", TINY)
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    folder = tmp_path_factory.mktemp("ckpt")
    atomic_save({"model": state, "config": to_dict(cfg)}, folder / "model.pth")
    atomic_save({"model": state}, folder / "bare.pth")
    return folder / "model.pth"


def _photo(path, seed=0, size=(40, 50)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _error(capsys) -> str:
    """The one line a failed command printed (and nothing else on stderr)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tscd: error: "), lines
    return lines[0]


def _contents(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _infer(ckpt, out, *images, extra=()):
    return main(["infer", "--checkpoint", str(ckpt), *map(str, images), "--out", str(out), *extra])


# ---- infer writes over no input, no other output, and no file it did not write -----------------
def test_infer_never_replaces_a_file_that_is_not_its_own(ckpt, tmp_path, capsys):
    """``tscd infer photos/p.jpg --out photos/`` replaced an unrelated photos/p.png with the mask."""
    src = tmp_path / "photos"
    photo, unrelated = _photo(src / "p.jpg"), _photo(src / "p.png", 1)
    before = unrelated.read_bytes()
    assert _infer(ckpt, src, photo) == 0
    assert unrelated.read_bytes() == before
    assert sorted(p.name for p in src.iterdir()) == ["p.jpg", "p.png", "p_mask.png", "p_overlay.png",
                                                     "tscd-infer.json"]
    record = json.loads((src / "tscd-infer.json").read_text())
    [entry] = record["images"]
    assert entry["input"] == str(photo.absolute()) and (entry["mask"], entry["overlay"]) == ("p_mask.png",
                                                                                          "p_overlay.png")
    assert set(record["files"]) == {"p_mask.png", "p_overlay.png"}
    # a file of the user's where an output goes: refused before anything is written, naming it
    theirs = _photo(tmp_path / "other" / "p_mask.png", 2)
    before = _contents(theirs.parent)
    assert _infer(ckpt, theirs.parent, photo) == 1
    assert _error(capsys) == (f"tscd: error: {theirs} (the mask of {photo}) already exists and tscd infer did not "
                              f"write it (it is not in {theirs.parent / 'tscd-infer.json'}): move it away or choose "
                              f"another output folder")
    assert _contents(theirs.parent) == before
    # tscd's own outputs are replaced by a rerun, unless changed since
    first = _contents(src)
    assert _infer(ckpt, src, photo) == 0
    assert _contents(src) == first
    _photo(src / "p_overlay.png", 3)
    assert _infer(ckpt, src, photo) == 1
    assert _error(capsys).startswith(f"tscd: error: {src / 'p_overlay.png'} (the overlay of {photo}) already exists "
                                     f"and was changed since tscd infer wrote it")


def test_infer_refuses_to_write_over_an_input(ckpt, tmp_path, capsys):
    src = tmp_path / "photos"
    photo, other = _photo(src / "photo.jpg"), _photo(src / "photo_mask.png", 1)
    before = _contents(src)
    assert _infer(ckpt, src, photo, other) == 1
    err = _error(capsys)
    assert f"{src / 'photo_mask.png'} (the mask of {photo}) would overwrite the input {other}" in err, err
    assert _contents(src) == before  # nothing written, not even other's outputs
    link = tmp_path / "link"
    link.symlink_to(src)
    assert _infer(ckpt, link, photo, other) == 1  # the same folder through a symbolic link
    assert "would overwrite the input" in _error(capsys)
    assert _contents(src) == before
    weights = tmp_path / "out" / "photo_overlay.png"  # a checkpoint where an output goes
    weights.parent.mkdir()
    weights.write_bytes(ckpt.read_bytes())
    assert _infer(weights, weights.parent, photo) == 1
    assert f"(the overlay of {photo}) would overwrite the input {weights}" in _error(capsys)


def test_infer_refuses_an_overlay_that_would_replace_an_input(ckpt, tmp_path, capsys):
    src = tmp_path / "photos"
    photo, shown = _photo(src / "photo.jpg"), _photo(src / "photo_overlay.png", 1)
    before = _contents(src)
    assert _infer(ckpt, src, photo, shown) == 1
    assert f"(the overlay of {photo}) would overwrite the input {shown}" in _error(capsys)
    assert _contents(src) == before


@pytest.mark.parametrize("names", [("photo.jpg", "photo.png"), ("Photo.jpg", "photo.png")])
def test_infer_refuses_two_inputs_of_one_stem_in_one_folder_naming_both(names, ckpt, tmp_path, capsys):
    images = [_photo(tmp_path / "in" / name, seed) for seed, name in enumerate(names)]
    if len({p.stat().st_ino for p in images}) == 1:
        pytest.skip("a case-insensitive file system: one file")
    out = tmp_path / "out"
    assert _infer(ckpt, out, *images) == 1
    err = _error(capsys)
    assert "would be written twice" in err and str(images[0]) in err and str(images[1]) in err, err
    assert not out.exists() or not any(out.iterdir())  # planned before anything is written


def test_infer_mirrors_the_inputs_folders_under_out(ckpt, tmp_path):
    """Same-stem inputs of different folders were refused."""
    images = [_photo(tmp_path / "in" / name, seed) for seed, name in enumerate(
        ["a/photo.jpg", "b/photo.jpg", "b/c/photo_overlay.jpg", "Photo.jpg"])]
    out = tmp_path / "out"
    assert _infer(ckpt, out, *images) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "Photo_mask.png", "Photo_overlay.png", "a/photo_mask.png", "a/photo_overlay.png", "b/c/photo_overlay_mask.png",
        "b/c/photo_overlay_overlay.png", "b/photo_mask.png", "b/photo_overlay.png", "tscd-infer.json"]
    record = json.loads((out / "tscd-infer.json").read_text())
    assert [e["mask"] for e in record["images"]] == ["a/photo_mask.png", "b/photo_mask.png",
                                                     "b/c/photo_overlay_mask.png", "Photo_mask.png"]
    assert all(isinstance(e["classes"], list) for e in record["images"])


def test_infer_reruns_into_its_own_output_folder_and_reads_each_file_once(ckpt, tmp_path, capsys):
    photo = _photo(tmp_path / "photo.jpg")
    out = tmp_path / "not" / "yet" / "there"
    assert _infer(ckpt, out, photo, tmp_path / "." / "photo.jpg") == 0  # one file named twice
    assert sorted(p.name for p in out.iterdir()) == ["photo_mask.png", "photo_overlay.png", "tscd-infer.json"]
    first = _contents(out)
    assert _infer(ckpt, out, photo) == 0  # an earlier run's outputs are replaced
    assert _contents(out) == first
    other = _photo(tmp_path / "other.jpg", 1)
    assert _infer(ckpt, out, other) == 0  # another run into the folder keeps the record of the first
    record = json.loads((out / "tscd-infer.json").read_text())
    assert [e["mask"] for e in record["images"]] == ["photo_mask.png", "other_mask.png"]
    assert _infer(ckpt, out, photo) == 0


# ---- infer on bad input: one line naming the file --------------------------------------------------
def test_infer_bad_input_is_one_line_naming_the_file(ckpt, tmp_path, capsys):
    photo, out = _photo(tmp_path / "photo.png"), tmp_path / "out"
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("quote: not a checkpoint\n")
    cases = [((ckpt, out, not_image), f"cannot read image {not_image}"),
             ((ckpt, out, folder), f"{folder} is a folder, not an image file"),
             ((ckpt, out, tmp_path / "nope.jpg"), f"image not found: {tmp_path / 'nope.jpg'}"),
             ((ckpt, a_file, photo), f"output folder {a_file} is a file"),
             ((ckpt, a_file / "sub", photo), f"output folder {a_file / 'sub'}: {a_file} is a file"),
             ((tmp_path / "missing.pth", out, photo), f"{tmp_path / 'missing.pth'}"),
             ((garbage, out, photo), f"{garbage}")]
    for args, says in cases:
        assert _infer(*args) == 1
        err = _error(capsys)
        assert says in err and "Traceback" not in err, (says, err)
    assert not out.exists()


# ---- eval --out / --save-preds and pseudo-labels --out: never over the dataset or the checkpoint ----
@pytest.fixture()
def folder_run(ckpt, tmp_path):
    """(dataset root, a checkpoint of a 4-class model trained on it, the overrides it needs)."""
    root = make_folder(tmp_path / "data")
    overrides = [*TINY, "data.num_classes=4"]
    cfg = load_config("folder", [f"data.root={root}", *overrides])
    torch.manual_seed(0)
    path = tmp_path / "run" / "model.pth"
    atomic_save({"model": build_model(cfg).state_dict(), "config": to_dict(cfg)}, path)
    return root, path


def test_eval_and_pseudo_labels_never_write_over_their_inputs(folder_run, tmp_path, capsys):
    root, ckpt = folder_run
    before = {**_contents(root), **_contents(ckpt.parent)}
    evaluate = ["eval", "--checkpoint", str(ckpt), "eval.max_images=1"]
    label = ["pseudo-labels", "--checkpoint", str(ckpt), "--split", "val"]
    cases = [(evaluate + ["--save-preds", str(root / "masks")], "dataset folder"),
             (evaluate + ["--save-preds", str(root / "images")], "dataset folder"),
             (evaluate + ["--out", str(ckpt)], f"would overwrite the input {ckpt}"),
             (evaluate + ["--out", str(tmp_path / "m.png")], "would be written twice"),
             (evaluate + ["--out", str(root / "masks" / "m.json")], "dataset folder"),
             (evaluate + ["--out", str(ckpt / "m.json")], f"output folder {ckpt} is a file"),
             (label + ["--out", str(root / "masks")], "dataset folder"),
             (label + ["--out", str(root / "images")], "dataset folder")]
    for argv, says in cases:
        assert main(argv) == 1, argv
        err = _error(capsys)
        assert says in err, (argv, err)
    assert {**_contents(root), **_contents(ckpt.parent)} == before
    assert not (tmp_path / "m.png").exists()


# ---- item 10: hints name flags the command has -----------------------------------------------------
def _hinted(message: str) -> tuple[set[str], bool]:
    """(the --flags a message names, whether it suggests a key=value override)."""
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", message)), bool(re.search(r"\b[a-z_]+\.[a-z_.]+=\S", message))


def _assert_hints_exist(command: str, message: str) -> None:
    parser = SUBCOMMANDS[command]
    flags, override = _hinted(message)
    assert flags <= set(parser._option_string_actions), (command, message)  # noqa: SLF001
    if override:
        assert any(a.dest == "overrides" for a in parser._actions), (command, message)  # noqa: SLF001


def test_every_hint_names_a_flag_of_the_command(ckpt, tmp_path, capsys):
    bare = ckpt.with_name("bare.pth")
    photo = _photo(tmp_path / "photo.png")
    runs = {
        "infer": [["infer", "--checkpoint", str(bare), str(photo), "--out", str(tmp_path / "o")],
                  ["infer", "--checkpoint", str(ckpt), str(photo), "--out", str(photo)]],
        "eval": [["eval", "--checkpoint", str(bare)],
                 ["eval", "--checkpoint", str(ckpt), "data.name=folder"]],
        "pseudo-labels": [["pseudo-labels", "--checkpoint", str(bare), "--out", str(tmp_path / "p")],
                          ["pseudo-labels", "--checkpoint", str(ckpt), "--out", str(tmp_path / "p"),
                           "data.name=folder"]],
    }
    seen = []
    for command, argvs in runs.items():
        for argv in argvs:
            assert main(argv) == 1, argv
            err = _error(capsys)
            _assert_hints_exist(command, err)
            seen.append(err)
    assert any("--config" in e for e in seen) and any("--data-root" in e for e in seen)
    # the check itself: a hint naming a flag the command lacks fails it
    with pytest.raises(AssertionError):
        _assert_hints_exist("infer", "tscd: error: the folder dataset needs a root: pass --data-root DIR")
    with pytest.raises(AssertionError):
        _assert_hints_exist("infer", "tscd: error: images of different sizes: set eval.batch_size=1")


# ---- items 1 and 10: model.pretrained= -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["text", "payload"])
def test_pretrained_file_that_is_not_plain_weights_is_one_line(kind, tmp_path, capsys):
    path, marker = tmp_path / "weights.pth", tmp_path / "marker"
    if kind == "text":
        path.write_text("uote: this is a text file\n")
        says = f"tscd: error: {path} is not a PyTorch checkpoint"
    else:
        torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": WritesMarker(marker)}, path)
        says = f"tscd: error: refused to load {path}"
    argv = ["train", "--config", "synthetic", "--work-dir", str(tmp_path / "run"), *TINY, f"model.pretrained={path}"]
    assert main(argv) == 1
    err = _error(capsys)
    assert err.startswith(says), err
    assert not marker.exists()


def test_infer_refuses_a_long_side_beyond_any_memory(ckpt, tmp_path, capsys):
    """``--resize-long 100000`` ended in torch's raw allocation error."""
    photo, out = _photo(tmp_path / "photo.png"), tmp_path / "out"
    assert _infer(ckpt, out, photo, extra=["--resize-long", "100000"]) == 1
    assert _error(capsys).startswith("tscd: error: 'eval.resize_long' must be in [0, 8192], got 100000: a larger "
                                     "image does not fit in memory")
    assert not out.exists()


# ---- an image too small for the network is named, up front where the job reads a dataset ---------
def test_an_image_too_small_for_the_network_is_named(folder_run, ckpt, tmp_path, capsys):
    """A 1×1 image passed the dataset check and failed later: "input too small: stage 1 grid is
    1×1, smaller than its spatial reduction 8×8", without its name (in training, only at the
    first evaluation)."""
    root, trained = folder_run
    tiny = root / "images" / "b.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    says = f"image {tiny} (1×1): input too small: stage 1 grid is 1×1, smaller than its spatial reduction 8×8"
    assert main(["eval", "--checkpoint", str(trained), "--out", str(tmp_path / "m.json")]) == 1
    assert _error(capsys).startswith(f"tscd: error: {says}; --resize-long")
    assert not (tmp_path / "m.json").exists()
    work = tmp_path / "run2"
    assert main(["train", "--config", "folder", "--data-root", str(root), "--work-dir", str(work), *TINY]) == 1
    assert _error(capsys).startswith(f"tscd: error: {says}")
    assert not (work / "checkpoints").exists()
    assert _infer(ckpt, tmp_path / "out", tiny) == 1
    assert _error(capsys).startswith(f"tscd: error: image {tiny} (1×1): input too small")
    assert main(["pseudo-labels", "--checkpoint", str(trained), "--split", "val", "--out", str(tmp_path / "p"),
                 "eval.batch_size=1", "data.num_workers=0"]) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar, which a.jpg moved on
    assert last.startswith(f"tscd: error: image {tiny} (1×1): input too small"), last


def test_no_output_is_a_file_the_command_reads(folder_run, tmp_path, capsys):
    """``eval --data-root DIR --out DIR/classes.txt`` replaced the dataset's classes.txt with the
    metrics; the split CSV, the config and (for pseudo-labels) the checkpoint were as exposed."""
    root, ckpt = folder_run
    config = tmp_path / "my.yaml"
    config.write_text("data:\n  name: folder\n  num_classes: 4\n")
    kept = tmp_path / "kept"
    kept.mkdir()
    weights = kept / "summary.json"  # a checkpoint where the export writes its summary
    weights.write_bytes(ckpt.read_bytes())
    before = {**_contents(root), **_contents(ckpt.parent), **_contents(kept), config: config.read_bytes()}
    evaluate = ["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "eval.max_images=1"]
    cases = [(evaluate + ["--out", str(root / "classes.txt")], f"would overwrite the input {root / 'classes.txt'}"),
             (evaluate + ["--out", str(root / "val.csv")], f"would overwrite the input {root / 'val.csv'}"),
             (evaluate + ["--config", str(config), *TINY, "--out", str(config)],
              f"would overwrite the input {config}"),
             (["pseudo-labels", "--checkpoint", str(weights), "--data-root", str(root), "--split", "val", "--out",
               str(kept)], f"would overwrite the input {weights}")]
    for argv, says in cases:
        assert main(argv) == 1, argv
        err = _error(capsys)
        assert says in err, (argv, err)
    assert {**_contents(root), **_contents(ckpt.parent), **_contents(kept), config: config.read_bytes()} == before


def test_infer_records_what_a_failed_run_wrote_and_keeps_a_foreign_record(ckpt, tmp_path, capsys):
    photo, out = _photo(tmp_path / "in" / "a.jpg"), tmp_path / "out"
    broken = tmp_path / "in" / "b.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert _infer(ckpt, out, photo, broken) == 1
    assert f"cannot read image {broken}" in _error(capsys)
    record = json.loads((out / "tscd-infer.json").read_text())
    assert set(record["files"]) == {"a_mask.png", "a_overlay.png"}  # what the failed run wrote is on record
    assert _infer(ckpt, out, photo) == 0  # so a rerun replaces it
    notes = tmp_path / "notes"
    (notes / "tscd-infer.json").parent.mkdir()
    (notes / "tscd-infer.json").write_text('{"mine": true}')
    assert _infer(ckpt, notes, photo) == 1
    assert _error(capsys).startswith(f"tscd: error: {notes / 'tscd-infer.json'} (the record of what tscd infer "
                                     "wrote) already exists and is not a record of tscd infer")
    assert sorted(p.name for p in notes.iterdir()) == ["tscd-infer.json"]
