import math

import numpy as np
import pytest
import torch

from tscd.engine.metrics import ConfusionMatrix, MultiLabelF1
from tscd.engine.schedule import lr_factor


def test_confusion_matrix_matches_hand_computation():
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 255]])
    cm = ConfusionMatrix(3)
    cm.update(pred[:1], gt[:1])
    cm.update(pred[1:], gt[1:])  # streamed = all at once
    # class 0: tp 1 (gt 0 -> 0), fn 1 (gt 0 -> 1), fp 1 (gt 2 -> 0); IoU 1/3
    # class 1: tp 2, fn 1 (gt 1 -> 255 counts as wrong), fp 1; IoU 2/4
    # class 2: tp 1, fn 1, fp 0; IoU 1/2
    assert cm.iou().tolist() == pytest.approx([1 / 3, 2 / 4, 1 / 2])
    assert cm.miou() == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 7)
    empty = ConfusionMatrix(4)
    empty.update(torch.zeros(5), torch.zeros(5))
    assert np.isnan(empty.iou()[1].item()) and empty.miou() == 1.0


def test_confusion_matrix_counts_every_pixel():
    """Against a count pixel by pixel: truths outside 0..K-1 (255, negative) are skipped, predictions
    outside it fall in column K."""
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(-1, 5, (2, 7, 9), generator=g)
    gt[0, 0] = 255
    pred = torch.randint(-2, 7, (2, 7, 9), generator=g)
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    expected = torch.zeros(4, 5, dtype=torch.int64)
    for t, p in zip(gt.flatten().tolist(), pred.flatten().tolist()):
        if 0 <= t < 4:
            expected[t, p if 0 <= p < 4 else 4] += 1
    assert torch.equal(cm.mat, expected)


def test_f1():
    f1 = MultiLabelF1()
    f1.update(torch.tensor([[1.0, -1.0, 2.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert f1.f1() == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))


def test_warmup_then_poly():
    assert lr_factor(0, 100, 10, 1e-6, 1.0) == pytest.approx(1e-6)
    assert lr_factor(5, 100, 10, 0.0, 1.0) == pytest.approx(0.5 * 0.95)
    assert lr_factor(10, 100, 10, 1e-6, 1.0) == pytest.approx(0.9)
    assert lr_factor(100, 100, 10, 1e-6, 1.0) == 0.0
    assert math.isclose(lr_factor(50, 100, 0, 0, 2.0), 0.25)


def test_optimizer_groups_follow_the_config():
    from tscd.config import apply, load_config
    from tscd.engine.builders import build_model
    from tscd.engine.schedule import build_optimizer, build_scheduler

    from . import TINY

    cfg = load_config("synthetic", TINY + ["optim.lr=1e-3", "optim.head_lr_mult=3", "optim.norm_lr_mult=0.5",
                                          "optim.warmup_iters=0"])
    opt = build_optimizer(build_model(cfg), cfg)
    build_scheduler(opt, cfg)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"encoder": 1e-3, "encoder_norm": 5e-4, "heads": 3e-3, "decoder": 3e-3})
    # the decoder's own multiplier, when set, replaces head_lr_mult for the decoder only
    cfg = apply(cfg, values={"optim.decoder_lr_mult": 5.0})
    opt = build_optimizer(build_model(cfg), cfg)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"encoder": 1e-3, "encoder_norm": 5e-4, "heads": 3e-3, "decoder": 5e-3})
    assert load_config().optim.norm_lr_mult == 0.0  # method §1: frozen encoder norms by default
