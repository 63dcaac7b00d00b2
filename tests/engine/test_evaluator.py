"""Where ``tscd eval``'s time goes (tscd.engine.stage_timer) and the passes it saves: the scale-1
CAM taken from the protocol's forward, no attention affinity in the CAM's passes."""
import logging
import time

import pytest
import torch

from tscd.class_activation import multi_scale_cam
from tscd.config import load_config, to_dict
from tscd.data import build_dataset
from tscd.engine.builders import build_model, build_pseudo_labeler, eval_loader
from tscd.engine.evaluator import Evaluator
from tscd.engine.inference import EvalProtocol
from tscd.engine.stage_timer import STAGES, StageTimer

from . import TINY

FLIPPED_CAM = [*TINY, "data.synthetic.num_val=2", "cam.scales=[1.0, 0.5]", "cam.flip=true"]


@pytest.fixture(scope="module")
def cfg():
    return load_config("synthetic", FLIPPED_CAM)


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _evaluate(cfg, model, protocol, separate_cam_pass=False, cam_metrics=True, num_vis=0):
    """The evaluation's metrics and the batch size of every encoder pass; ``separate_cam_pass``:
    the multi-scale CAM runs its own scale-1 pass, as before the protocol's forward lent it."""
    dataset = build_dataset(cfg, "val", train=False)
    labeler = build_pseudo_labeler(cfg)
    if separate_cam_pass:
        cams = labeler.cams
        labeler.cams = lambda model, images, scale1_cam=None: cams(model, images)
        labeler.cams.scales = cams.scales
    evaluator = Evaluator(cfg, labeler, dataset.class_names, "cpu", protocol, cam_metrics=cam_metrics)
    passes = []
    hook = model.encoder.register_forward_hook(lambda module, args, out: passes.append(args[0].shape[0]))
    try:
        metrics = evaluator.run(model, eval_loader(dataset, cfg.eval.batch_size), num_vis=num_vis)
        metrics["samples"] = evaluator.samples
    finally:
        hook.remove()
    return metrics, passes


def _scores(metrics):
    return {k: v for k, v in metrics.items() if k not in ("eval_seconds", "stage_seconds", "samples")}


def test_stage_seconds_cover_the_evaluation(cfg, model):
    metrics, _ = _evaluate(cfg, model, EvalProtocol(scales=(1.0, 0.75), flip=True, crf="exact"))
    stages = metrics["stage_seconds"]
    assert tuple(stages) == STAGES and all(stages[name] > 0 for name in STAGES)
    assert 0.8 * metrics["eval_seconds"] <= sum(stages.values()) <= metrics["eval_seconds"]


def test_single_scale_takes_the_forwards_scale_one_cam(cfg, model):
    """Single scale, a flipped CAM: the forward's un-flipped CAM replaces that pass (one image pass
    per batch fewer); the CAM of a batch of B equals that of 2B to rounding."""
    reused, passes = _evaluate(cfg, model, EvalProtocol())
    separate, separate_passes = _evaluate(cfg, model, EvalProtocol(), separate_cam_pass=True)
    assert passes == [2, 2, 4] and separate_passes == [2, 4, 4]
    assert _scores(reused).keys() == _scores(separate).keys()
    for key in ("seg_miou", "cam_miou", "pseudo_miou", "aff_miou", "cls_f1"):
        assert reused[key] == pytest.approx(separate[key], abs=1e-4), key


def test_flipped_protocol_at_the_images_size_lends_both_halves(cfg, model):
    """Scales with flips and no resizing: the protocol's scale-1 pass of [x, flip x] is the CAM's,
    and the metrics are those of a separate pass exactly."""
    protocol = EvalProtocol(scales=(1.0, 0.75), flip=True)
    reused, passes = _evaluate(cfg, model, protocol)
    separate, separate_passes = _evaluate(cfg, model, protocol, separate_cam_pass=True)
    assert passes == [4, 4, 4] and separate_passes == [4, 4, 4, 4]
    assert _scores(reused) == _scores(separate)


def test_resized_protocol_input_is_not_the_cams(cfg, model):
    _, passes = _evaluate(cfg, model, EvalProtocol(resize_long=48))
    assert passes == [2, 4, 4]


def test_scale1_cam_of_both_halves_is_the_separate_pass(model):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        both = model(torch.cat([images, images.flip(-1)])).cam
        alone = model(images).cam
    expected = multi_scale_cam(model, images, (1.0, 0.5))
    assert torch.equal(multi_scale_cam(model, images, (1.0, 0.5), scale1_cam=both), expected)
    torch.testing.assert_close(multi_scale_cam(model, images, (1.0, 0.5), scale1_cam=alone), expected,
                               rtol=0, atol=1e-5)
    assert torch.equal(multi_scale_cam(model, images, (1.0, 0.5), flip=False, scale1_cam=both),
                       multi_scale_cam(model, images, (1.0, 0.5), flip=False))
    with pytest.raises(ValueError, match="scale1_cam must hold"):
        multi_scale_cam(model, images, (1.0,), scale1_cam=both[:3])


def test_cam_passes_skip_the_affinity(model, monkeypatch):
    calls = []
    affinity = model.attention_affinity
    monkeypatch.setattr(model, "attention_affinity", lambda logits: calls.append(1) or affinity(logits))
    images = torch.randn(1, 3, 64, 64)
    multi_scale_cam(model, images, (1.0, 0.5))
    assert calls == []
    _, attn = multi_scale_cam(model, images, (1.0, 0.5), return_attention=True)
    assert calls == [1] and attn.shape == (1, 64, 64)


def test_timer_sums_each_stage():
    timer = StageTimer()
    for _ in range(2):
        with timer.stage("cam"):
            time.sleep(0.01)
    timer.images = 4
    assert 0.02 <= timer.seconds["cam"] < 0.5 and timer.seconds["crf"] == 0
    line = timer.summary(total=timer.seconds["cam"] * 2)
    assert line.startswith(f"{timer.seconds['cam'] / 2:.3g} s/image over 4 images: cam ")
    assert "(50 %)" in line and "other" in line and "crf" not in line


def test_eval_command_logs_the_breakdown(cfg, model, tmp_path, caplog):
    from tscd.cli import main
    from tscd.engine import checkpoint

    ckpt = tmp_path / "model.pth"
    checkpoint.atomic_save({"model": model.state_dict(), "config": to_dict(cfg),
                            "class_names": list(build_dataset(cfg, "val", train=False).class_names)}, ckpt)
    with caplog.at_level(logging.INFO, logger="tscd"):
        assert main(["eval", "--checkpoint", str(ckpt), "--scales", "1.0", "--no-flip", "--crf", "none",
                     "--out", str(tmp_path / "m.json"), "eval.max_images=2"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval time: ")]
    assert len(lines) == 1 and "s/image over 2 images: io " in lines[0] and "forward" in lines[0]


@pytest.mark.parametrize("protocol", [EvalProtocol(), EvalProtocol(scales=(1.0, 0.75), flip=True)])
def test_without_cam_metrics_only_the_protocols_passes_run(cfg, model, protocol):
    """``eval.cam_metrics=false``: the segmentation outputs alone, the same numbers, and no encoder
    pass besides the protocol's (a plain grid row still comes out)."""
    full, _ = _evaluate(cfg, model, protocol, num_vis=1)
    seg_only, passes = _evaluate(cfg, model, protocol, cam_metrics=False, num_vis=1)
    kinds = protocol.kinds()
    assert {k for k in seg_only if k.endswith("_miou")} == {f"{k}_miou" for k in kinds}
    for key in (*(f"{k}_miou" for k in kinds), "cls_f1", "pixel_acc", "per_class_iou"):
        assert seg_only[key] == full[key], key
    assert len(passes) == len(protocol.scales)  # the one val batch: one encoder pass per protocol scale
    assert seg_only["stage_seconds"]["cam"] == seg_only["stage_seconds"]["walk"] == 0
    sample = seg_only["samples"][0]
    assert (sample["cam"] == 0).all() and (sample["pseudo"] == 255).all() and sample["pred"].shape == sample["gt"].shape
