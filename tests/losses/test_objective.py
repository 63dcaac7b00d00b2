import math

import pytest
import torch
import torch.nn.functional as F

from tests.engine import TINY
from tscd.config import load_config
from tscd.data import build_dataset, collate
from tscd.engine.builders import build_model, build_objective, build_pseudo_labeler
from tscd.losses.equivariance import equivariance_loss, live_cam
from tscd.losses.segmentation import segmentation_loss


def test_segmentation_loss_halves_background_and_foreground():
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 0, 0, 0] = 2.0  # a confident background pixel
    label = torch.tensor([[[0, 0, 2, 255]]])
    ce = lambda x, c: -F.log_softmax(x, 0)[c]  # noqa: E731
    bkg = (ce(logits[0, :, 0, 0], 0) + ce(logits[0, :, 0, 1], 0)) / 2
    fg = ce(logits[0, :, 0, 2], 2)
    assert segmentation_loss(logits, label) == pytest.approx(float(0.5 * bkg + 0.5 * fg))
    only_bkg = segmentation_loss(logits, torch.tensor([[[0, 0, 255, 255]]]))
    assert only_bkg == pytest.approx(float(0.5 * bkg))  # no foreground pixel: that half is 0, not NaN
    up = segmentation_loss(torch.zeros(2, 3, 2, 2), torch.zeros(2, 8, 8, dtype=torch.long))
    assert up.item() == pytest.approx(math.log(3) / 2)


def test_equivariance_live_and_released():
    full = torch.zeros(1, 3, 4, 4)
    full[:, 1] = 1.0
    small = torch.zeros(1, 3, 2, 2, requires_grad=True)
    loss = equivariance_loss(full, small)
    assert loss.item() == pytest.approx(1 / 3)
    loss.backward()
    assert small.grad is not None and small.grad.abs().sum() > 0
    released = equivariance_loss(full, small, released=True)  # channels 1: only, no gradient
    assert released == pytest.approx(0.5) and not released.requires_grad
    cam = live_cam(torch.tensor([[[[-1.0, 1.0], [2.0, 4.0]]]]), (2, 2))
    assert cam.flatten().tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0], abs=1e-4)


def _setup(*extra):
    cfg = load_config("synthetic", TINY + list(extra))
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = collate([build_dataset(cfg, "train", True)[(i, i)] for i in range(2)])
    return cfg, model, build_objective(cfg, build_pseudo_labeler(cfg)), batch


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("TSCD_BACKEND", "torch")


def test_schedule_and_weights():
    cfg, model, objective, batch = _setup()
    total, terms, _ = objective(model, batch, step=cfg.loss.stage1_iters)
    assert set(terms) == {"cls"} and total.item() == pytest.approx(terms["cls"].item())
    total, terms, aux = objective(model, batch, step=cfg.loss.stage1_iters + 1)
    assert set(terms) == {"cls", "seg", "dense", "aff", "scd", "er"}
    w = cfg.loss
    expected = sum(terms[k].item() * getattr(w, k) for k in terms)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert aux["pseudo"].shape == (2, 64, 64) and aux["cam"].shape == (2, 5, 64, 64)
    total.backward()
    assert model.decoder.linear_pred.weight.grad is not None
    assert objective.terms["dense"].weight == pytest.approx(1e-7 * 0.58)


def test_terms_switch_off_and_refinement_modes():
    for mode in ("none", "par"):
        cfg, model, objective, batch = _setup("loss.scd=0", "loss.dense=0", "loss.er=0", f"refine.mode={mode}")
        _, terms, _ = objective(model, batch, step=10)
        assert set(terms) == {"cls", "seg", "aff"}
    with pytest.raises(ValueError, match="refine.mode"):
        _setup("loss.scd=0", "refine.mode=crf")


@pytest.mark.parametrize(("backbone", "flip"), [("mit_b0", True), ("hybrid_b0", False)])
def test_reuse_forward_cam_gives_the_separate_pass_numbers(backbone, flip):
    """A deterministic forward (drop_path 0): the teachers taken from the step's own forward equal those of
    a separate no-gradient pass, and so do every term and the gradients. (BatchNorm with flips is not
    exact: a separate pass normalises x with the statistics of [x, flip x].)"""
    results = []
    for reuse in (False, True):
        cfg, model, objective, batch = _setup(f"model.backbone={backbone}", "cam.scales=[1.0, 1.5]",
                                              f"cam.flip={str(flip).lower()}", f"cam.reuse_forward={reuse}")
        calls = []
        model.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
        total, terms, aux = objective(model, batch, step=cfg.loss.stage1_iters + 1)
        total.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((terms, aux, grads, calls))
    (terms, aux, grads, calls), (terms_r, aux_r, grads_r, calls_r) = results
    for name in terms:
        torch.testing.assert_close(terms_r[name], terms[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(aux_r["cam"], aux["cam"], rtol=1e-4, atol=1e-5)
    assert torch.equal(aux_r["pseudo"], aux["pseudo"])
    for g_r, g in zip(grads_r, grads):
        torch.testing.assert_close(g_r, g, rtol=1e-3, atol=1e-6)
    # the un-flipped scale-1 images of each view (batch 2) went through the encoder once, not twice
    assert sum(calls) - sum(calls_r) == 2 * 2


def test_reuse_forward_cam_needs_scale_one():
    with pytest.raises(ValueError, match="include 1.0"):
        _setup("cam.scales=[0.5, 1.5]", "cam.reuse_forward=true")
