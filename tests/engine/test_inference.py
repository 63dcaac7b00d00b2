"""Evaluation protocol of method §10: multi-scale + flip inference, CRF step, streamed and sharded
confusion matrices, `tscd eval` flags."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tscd.config import config_from_dict, load_config, to_dict
from tscd.constants import CRF_PRESETS, CrfPreset
from tscd.data import build_dataset
from tscd.data.transforms import denormalize
from tscd.engine import distributed, inference
from tscd.engine.builders import build_model, build_pseudo_labeler, eval_loader
from tscd.engine.evaluator import Evaluator
from tscd.engine.inference import EvalProtocol, multi_scale_forward, resize_long_side

from . import TINY

SCALES = (1.0, 0.5, 0.75)


@pytest.fixture(scope="module")
def cfg():
    return load_config("synthetic", TINY)


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return build_model(cfg).eval()


def hand_written_msf(model, image, long_side):
    """AFA's test_msc_flip loop for one image (1, 3, H, W): (scale-1 logits, msf logits)."""
    h, w = image.shape[-2:]
    ratio = long_side / max(h, w)
    x = F.interpolate(image, size=(int(h * ratio), int(w * ratio)), mode="bilinear", align_corners=False)
    per_scale = []
    with torch.no_grad():
        seg = model(torch.cat([x, x.flip(-1)])).seg
        single = seg[:1]
        size = seg.shape[-2:]
        per_scale.append((seg[0] + seg[1].flip(-1)) / 2)
        for s in SCALES[1:]:
            xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            seg = F.interpolate(model(torch.cat([xs, xs.flip(-1)])).seg, size=size, mode="bilinear",
                                align_corners=False)
            per_scale.append((seg[0] + seg[1].flip(-1)) / 2)
    return single, torch.stack(per_scale).max(0).values[None]


def test_multi_scale_flip_equals_hand_written_loop(model):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 88)
    protocol = EvalProtocol(scales=SCALES, flip=True, resize_long=96)
    fwd, preds = protocol.predict(model, images, (64, 88))
    assert list(preds) == ["seg", "seg_msf"]
    for i in range(2):
        single, msf = hand_written_msf(model, images[i:i + 1], 96)
        torch.testing.assert_close(fwd.seg[i:i + 1], single, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fwd.msf[i:i + 1], msf, atol=1e-4, rtol=1e-4)
        up = lambda t: F.interpolate(t, size=(64, 88), mode="bilinear", align_corners=False)  # noqa: E731
        for kind, logits in (("seg", single), ("seg_msf", msf)):
            agree = (preds[kind][i] == up(logits).argmax(1)[0]).float().mean()
            assert agree > 0.999, kind  # identical up to float ties
    assert fwd.grid == (-(-69 // model.output_stride), -(-96 // model.output_stride))
    assert fwd.attn_pred.shape == (2, fwd.grid[0] * fwd.grid[1], fwd.grid[0] * fwd.grid[1])


def test_single_scale_protocol_is_one_plain_forward_pass(model):
    images = torch.randn(1, 3, 64, 72)
    fwd, preds = EvalProtocol().predict(model, images, (64, 72))
    with torch.no_grad():
        cls, seg, *_ = model(images)
    assert list(preds) == ["seg"] and torch.equal(fwd.msf, fwd.seg)
    torch.testing.assert_close(fwd.cls, cls)
    expected = F.interpolate(seg, size=(64, 72), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(preds["seg"], expected)


def test_crf_step_gets_the_image_in_0_255_and_the_upsampled_softmax(model, monkeypatch):
    calls = []

    def stand_in(rgb, probs, *, num_iter, smooth, appearance, backend):
        calls.append((rgb, probs, backend, CrfPreset(num_iter, smooth, appearance)))
        return probs.flip(1)  # any change of the argmax shows the result is used

    monkeypatch.setattr(inference, "dense_crf", stand_in)
    images = torch.randn(1, 3, 64, 80)
    protocol = EvalProtocol(scales=(1.0, 0.5), flip=True, crf="exact", resize_long=96)
    with pytest.raises(ValueError, match="pass rgb"):
        protocol.predict(model, images, (64, 80))
    fwd, preds = protocol.predict(model, images, (64, 80), denormalize(images))
    assert list(preds) == ["seg", "seg_msf", "seg_msf_crf"]
    rgb, probs, choice, settings = calls[0]
    assert choice == "exact" and rgb.shape == (1, 3, 64, 80) and probs.shape == (1, 6, 64, 80)
    assert settings == CrfPreset(10, (3.0, 3.0), (64.0, 5.0, 4.0))  # AFA's test_msc_flip, the default
    torch.testing.assert_close(rgb, (denormalize(images) * 255).round())
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 64, 80))
    assert torch.equal(preds["seg_msf_crf"], probs.flip(1).argmax(1))
    assert EvalProtocol(crf="auto").kinds() == ("seg", "seg_crf")
    for name, preset in CRF_PRESETS.items():
        EvalProtocol(crf="exact", crf_preset=name).predict(model, images, (64, 80), denormalize(images))
        assert calls[-1][3] == preset


def test_exact_crf_choice_is_an_exact_dense_crf_backend():
    from tscd.ops import backends
    from tscd.ops.dense_crf import dense_crf

    assert backends.resolve("dense_crf", "exact", "cpu") in ("cpp", "torch")  # never the approximation
    torch.manual_seed(2)
    rgb = torch.randint(0, 256, (1, 3, 9, 11)).float()
    probs = torch.randn(1, 3, 9, 11).softmax(1)
    torch.testing.assert_close(dense_crf(rgb, probs, backend="exact"), dense_crf(rgb, probs, backend="torch"),
                               atol=1e-4, rtol=1e-4)


def test_protocol_arguments_are_checked():
    with pytest.raises(ValueError, match="contain 1.0"):
        EvalProtocol(scales=(0.5, 0.75))
    with pytest.raises(ValueError, match="crf must be one of"):
        EvalProtocol(crf="yes")
    with pytest.raises(ValueError, match=r"crf_preset must be one of \('afa', 'toco', 'seco', 'excel', 'weclip'\), "
                                         r"got 'dcrf'"):
        EvalProtocol(crf="auto", crf_preset="dcrf")
    with pytest.raises(ValueError, match="contain 1.0"):
        multi_scale_forward(None, torch.zeros(1, 3, 8, 8), scales=(0.5,))


def test_resize_long_side():
    x = torch.randn(1, 3, 375, 500)
    assert resize_long_side(x, 512).shape[-2:] == (384, 512)
    assert resize_long_side(x, None) is x and resize_long_side(x, 0) is x


def test_config_and_flags_build_the_protocol():
    from tscd.cli import build_parser, flag_values

    voc = EvalProtocol.from_config(load_config("voc"))
    assert voc == EvalProtocol(scales=SCALES, flip=True, crf="auto", resize_long=512, crf_preset="afa")
    args = build_parser().parse_args(["eval", "--checkpoint", "x.pth", "--scales", "1.0,0.5", "--no-flip",
                                      "--crf", "lattice", "--crf-preset", "toco", "--resize-long", "0"])
    assert flag_values(args) == {"eval.scales": [1.0, 0.5], "eval.flip": False, "eval.crf": "lattice",
                                 "eval.crf_preset": "toco", "eval.resize_long": 0}
    cfg = load_config("voc", values=flag_values(args))
    assert EvalProtocol.from_config(cfg) == EvalProtocol(scales=(1.0, 0.5), flip=False, crf="lattice",
                                                         crf_preset="toco")
    infer_args = build_parser().parse_args(["infer", "--checkpoint", "x.pth", "a.png", "--out", "o",
                                            "--crf-preset", "excel"])
    assert flag_values(infer_args) == {"eval.crf_preset": "excel"}
    with pytest.raises(ValueError, match="--scales"):
        flag_values(build_parser().parse_args(["eval", "--checkpoint", "x", "--scales", "1,big"]))


def _evaluate(cfg, model, protocol, max_images=None, **kw):
    dataset = build_dataset(cfg, "val", train=False)
    evaluator = Evaluator(cfg, build_pseudo_labeler(cfg), dataset.class_names, "cpu", protocol, **kw)
    return evaluator.run(model, eval_loader(dataset, 1), max_images)


def test_streamed_confusion_matrix_equals_all_predictions_at_once(cfg, model, tmp_path):
    protocol = EvalProtocol(scales=(1.0, 0.75), flip=True)
    metrics = _evaluate(cfg, model, protocol, save_preds=tmp_path)
    dataset = build_dataset(cfg, "val", train=False)
    preds = np.stack([np.asarray(Image.open(tmp_path / f"{dataset[i]['name']}.png")) for i in range(len(dataset))])
    gts = np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))])
    k = cfg.data.num_classes
    keep = gts != 255
    hist = np.bincount(gts[keep] * k + preds[keep], minlength=k * k).reshape(k, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    assert metrics["seg_msf_miou"] == pytest.approx(np.nanmean(iou))
    per_class = metrics["per_class_iou_by_output"]["seg_msf"]
    assert [v if v is not None else np.nan for v in per_class.values()] == pytest.approx(iou.tolist(), nan_ok=True)
    assert {"seg_miou", "cam_miou", "pseudo_miou", "aff_miou", "cls_f1"} <= metrics.keys()
    assert metrics["num_images"] == len(dataset)


def _shard_worker(rank, world, init_file, cfg_tree, state, protocol, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = config_from_dict(cfg_tree)
    model = build_model(cfg).eval()
    model.load_state_dict(state)
    dataset = build_dataset(cfg, "val", train=False)
    part = distributed.shard(dataset, rank, world, max_images=3)
    evaluator = Evaluator(cfg, build_pseudo_labeler(cfg), dataset.class_names, "cpu", protocol, distributed=True)
    metrics = evaluator.run(model, eval_loader(part, 1))
    if rank == 0:
        out.write_text(json.dumps(metrics))
    torch.distributed.destroy_process_group()


def test_sharded_evaluation_equals_single_process(cfg, model, tmp_path):
    protocol = EvalProtocol(scales=(1.0, 0.75), flip=True)
    single = _evaluate(cfg, model, protocol, max_images=3)
    out = tmp_path / "metrics.json"
    torch.multiprocessing.spawn(_shard_worker, args=(2, str(tmp_path / "init"), to_dict(cfg), model.state_dict(),
                                                     protocol, out), nprocs=2)
    sharded = json.loads(out.read_text())
    for key in ("seg_miou", "seg_msf_miou", "cam_miou", "pseudo_miou", "aff_miou", "cls_f1", "num_images"):
        assert sharded[key] == pytest.approx(single[key], abs=1e-12), key


def test_eval_command_with_protocol_flags(cfg, model, tmp_path):
    from tscd.cli import main
    from tscd.engine import checkpoint

    ckpt = tmp_path / "model.pth"
    checkpoint.atomic_save({"model": model.state_dict(), "config": to_dict(cfg),
                         "class_names": list(build_dataset(cfg, "val", train=False).class_names)}, ckpt)
    out, preds = tmp_path / "m.json", tmp_path / "preds"
    rc = main(["eval", "--checkpoint", str(ckpt), "--scales", "1.0,0.75", "--flip", "--crf", "none",
               "--save-preds", str(preds), "--out", str(out), "eval.max_images=2"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert metrics["num_images"] == 2 and "seg_msf_miou" in metrics and "seg_msf_crf_miou" not in metrics
    written = sorted(os.listdir(preds))
    assert len(written) == 2 and all(Image.open(preds / f).mode == "P" for f in written)
