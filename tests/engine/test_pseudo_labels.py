"""`tscd pseudo-labels`: refined labels of full images as palette PNGs, resumable, with mIoU."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tscd.class_activation import multi_scale_cam
from tscd.config import load_config, to_dict
from tscd.data import build_dataset
from tscd.engine import pseudo_labels as pl
from tscd.engine.builders import build_model, build_pseudo_labeler
from tscd.engine.metrics import ConfusionMatrix
from tscd.refine import Refiner, pseudo_label, refine_cams_with_bkg

from ..data.test_folder import make_folder
from . import TINY

SIZES = {"a": (64, 72), "b": (48, 64)}
OVERRIDES = TINY + ["data.num_classes=4", "data.num_workers=0", "eval.batch_size=1"]


@pytest.fixture()
def setup(tmp_path):
    root = make_folder(tmp_path / "data", sizes=SIZES)
    cfg = load_config("folder", [f"data.root={root}", *OVERRIDES])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    return cfg, model, build_dataset(cfg, "train", train=False), tmp_path / "out"


def test_export_writes_palette_pngs_of_the_image_size(setup):
    cfg, model, dataset, out = setup
    summary = pl.export_pseudo_labels(build_pseudo_labeler(cfg, "varm"), model, dataset, out, progress=False)
    assert summary["written"] == 2 and summary["skipped"] == 0
    for name, (h, w) in SIZES.items():
        png = Image.open(out / f"{name}.png")
        assert png.mode == "P" and png.size == (w, h)
        values = set(np.unique(np.asarray(png)).tolist())
        present = {0, 255} | {c + 1 for c in np.nonzero(dataset.labels[name])[0].tolist()}
        assert values <= present, name
    with pytest.raises(ValueError, match="different sizes .* set eval.batch_size=1"):
        pl.export_pseudo_labels(build_pseudo_labeler(cfg), model, dataset, out.parent / "other", batch_size=2,
                                progress=False)
    assert not list(out.glob(".*"))  # no temporary file left
    # mIoU over the images that have a mask (only "a"), 255 counting as wrong
    mat = ConfusionMatrix(4)
    mat.update(torch.from_numpy(np.asarray(Image.open(out / "a.png"), np.int64)), dataset[0]["mask"])
    assert summary["pseudo_miou"] == pytest.approx(mat.miou())
    assert json.loads((out / "summary.json").read_text())["pseudo_miou"] == pytest.approx(mat.miou())


def test_export_resumes(setup, monkeypatch):
    cfg, model, dataset, out = setup
    labeler = build_pseudo_labeler(cfg, "none")
    first = pl.export_pseudo_labels(labeler, model, dataset, out, progress=False)
    before = {n: (out / f"{n}.png").read_bytes() for n in SIZES}
    calls = []
    original = pl.pseudo_labels_for_batch

    def counting(labeler, model, images, *args, **kw):
        calls.append(images.shape)
        return original(labeler, model, images, *args, **kw)

    monkeypatch.setattr(pl, "pseudo_labels_for_batch", counting)
    again = pl.export_pseudo_labels(labeler, model, dataset, out, progress=False)
    assert calls == [] and again["written"] == 0 and again["skipped"] == 2
    assert again["pseudo_miou"] == pytest.approx(first["pseudo_miou"])  # stored labels still count
    (out / "b.png").unlink()
    third = pl.export_pseudo_labels(labeler, model, dataset, out, progress=False)
    assert third["written"] == 1 and calls == [(1, 3, *SIZES["b"])]
    assert {n: (out / f"{n}.png").read_bytes() for n in SIZES} == before


def test_batch_labels_follow_method_2_to_4(setup):
    cfg, model, dataset, _ = setup
    item = dataset[0]
    images, rgb, labels = item["image"][None], item["rgb"][None], item["label"][None]
    cam = multi_scale_cam(model, images, tuple(cfg.cam.scales))
    r = cfg.refine
    expected = refine_cams_with_bkg(rgb, cam, labels.long(), high=cfg.cam.high, low=cfg.cam.low,
                                    scale=r.scale, refiner=Refiner(tuple(r.dilations), r.num_iter, "par"))
    labels_of = lambda refine: pl.pseudo_labels_for_batch(build_pseudo_labeler(cfg, refine), model, images, rgb,  # noqa: E731
                                                          labels)
    assert torch.equal(labels_of("par"), expected)
    plain = pseudo_label(cam, labels, None, high=cfg.cam.high, low=cfg.cam.low)
    assert torch.equal(labels_of("none"), plain)
    with pytest.raises(ValueError, match="refine.mode must be one of"):
        build_pseudo_labeler(cfg, "crf")


def test_crf_on_labels_keeps_uncertain_pixels(monkeypatch):
    seen = {}

    def stand_in(rgb, probs, backend):
        seen["probs"], seen["backend"] = probs, backend
        return probs.roll(1, dims=1)  # channel c -> c+1: every confident label changes

    monkeypatch.setattr(pl, "dense_crf", stand_in)
    label = torch.tensor([[[0, 3, 255], [3, 255, 0]]])
    cls_labels = torch.tensor([[0.0, 0.0, 1.0]])  # class 3 present: channels (0, 3)
    out = pl.crf_on_labels(torch.zeros(1, 3, 2, 3), label, cls_labels, "exact")
    assert out.tolist() == [[[3, 0, 255], [0, 255, 3]]] and seen["backend"] == "exact"
    probs = seen["probs"][0]
    assert probs.shape == (2, 2, 3)
    torch.testing.assert_close(probs[:, 0, 0], torch.tensor([0.7, 0.3]))
    torch.testing.assert_close(probs[:, 0, 2], torch.tensor([0.5, 0.5]))


def test_pseudo_labels_command(setup, capsys):
    from tscd.cli import main
    from tscd.engine import checkpoint

    cfg, model, _, out = setup
    ckpt = out.parent / "model.pth"
    checkpoint.atomic_save({"model": model.state_dict(), "config": to_dict(cfg)}, ckpt)
    args = ["pseudo-labels", "--config", "folder", "--checkpoint", str(ckpt), "--data-root", cfg.data.root,
            "--split", "val", "--out", str(out), "--refine", "par", *OVERRIDES]
    assert main(args) == 0
    assert "2 written, 0 already there" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    assert main(args) == 0
    assert "0 written, 2 already there" in capsys.readouterr().out


def test_crf_on_labels_of_background_alone_leaves_the_label():
    """An image whose labels name no class: background is the only channel, so its unary (0.7 on a
    labelled pixel) was not a probability and the CRF refused it; nothing is left to decide."""
    label = torch.tensor([[[0, 0, 255], [0, 255, 0]]])
    out = pl.crf_on_labels(torch.full((1, 3, 2, 3), 100.0), label, torch.zeros(1, 3), "exact")
    assert torch.equal(out, label)
