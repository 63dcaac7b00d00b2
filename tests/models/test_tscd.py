"""TSCD network: outputs, pooling, decoder factorisation, parameter groups, gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from tscd.losses import AffinityLoss
from tscd.models import TSCD


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TSCD("mit_b0", num_classes=5, drop_path_rate=0.0)


def test_outputs_for_odd_input(model):
    x = torch.randn(2, 3, 97, 65)
    out = model(x)
    h4, w4 = math.ceil(97 / 16), math.ceil(65 / 16)
    assert out.cls.shape == (2, 4)
    assert out.seg.shape == (2, 5, math.ceil(97 / 4), math.ceil(65 / 4))
    assert out.attn_pred.shape == (2, h4 * w4, h4 * w4)
    assert torch.all((out.attn_pred > 0) & (out.attn_pred < 1))
    assert out.seg_small is None and out.cam_small is None
    _, logits = model.encoder(x)
    assert len(logits) == 8 and logits[-1].shape == (2, 8, h4 * w4, h4 * w4)
    cam, attn_cam = model.forward_cam(x)
    assert cam.shape == (2, 4, h4, w4)
    assert cam.requires_grad  # the caller decides (no_grad for pseudo labels, live for ER)
    model.eval()
    with torch.no_grad():
        a_eval = model(x).attn_pred
        cam_eval, a2 = model.forward_cam(x)
    model.train()
    torch.testing.assert_close(a_eval, a2)


def test_classify_only_gives_the_same_image_logits_without_decoder_or_affinity(model):
    x = torch.randn(2, 3, 64, 48)
    model.eval()
    with torch.no_grad():
        full, cls_only = model(x), model(x, classify_only=True)
    model.train()
    torch.testing.assert_close(cls_only.cls, full.cls)
    assert cls_only.seg is None and cls_only.attn_pred is None
    calls = []
    hook = model.decoder.register_forward_hook(lambda *a: calls.append(1))
    model(x, classify_only=True)
    hook.remove()
    assert not calls
    with pytest.raises(ValueError, match="x_small"):
        model(x, x[..., :32, :24], classify_only=True)


def test_two_view_forward(model):
    torch.manual_seed(3)
    x, small = torch.randn(2, 3, 64, 48), torch.randn(2, 3, 48, 32)
    model.eval()
    with torch.no_grad():
        both, alone, view2 = model(x, small), model(x), model.forward_cam(small)
    model.train()
    for name in ("cls", "seg", "attn_pred"):
        torch.testing.assert_close(getattr(both, name), getattr(alone, name))
    torch.testing.assert_close(both.cam_small, view2.cam)
    assert both.seg_small.shape == (2, 5, 12, 8)


def test_output_stride_and_stride_config():
    m = TSCD("mit_b0", num_classes=3, stride=(4, 2, 1, 1))
    assert m.output_stride == 8
    cam, attn = m.forward_cam(torch.randn(1, 3, 64, 64))
    assert cam.shape == (1, 2, 8, 8) and attn.shape == (1, 64, 64)


def test_attention_affinity_is_sigmoid_of_projected_symmetrised_logits(model):
    logits = [torch.randn(2, 8, 6, 6) for _ in range(3)]
    s = torch.cat(logits[-2:], 1)
    s = s + s.transpose(-2, -1)
    w, b = model.attn_proj.weight.view(16), model.attn_proj.bias
    expected = torch.sigmoid(torch.einsum("bkij,k->bij", s, w) + b)
    torch.testing.assert_close(model.attention_affinity(logits), expected)
    torch.testing.assert_close(expected, expected.transpose(1, 2))
    plain = TSCD("mit_b0", num_classes=3, symmetrize_attention=False)
    s = torch.cat(logits[-2:], 1)
    expected = torch.sigmoid(plain.attn_proj(s))[:, 0]
    torch.testing.assert_close(plain.attention_affinity(logits), expected)


@pytest.mark.parametrize("pooling", ["gmp", "gap", "topk"])
def test_pooling(pooling):
    torch.manual_seed(0)
    m = TSCD("mit_b0", num_classes=4, pooling=pooling, topk_ratio=0.25).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        cls = m(x)[0]
        f4 = m.encoder(x)[0][3]
    cam = F.conv2d(f4, m.classifier.weight).flatten(2)  # (2, 3, 16)
    if pooling == "gmp":
        expected = torch.einsum("kc,bc->bk", m.classifier.weight.view(3, -1), f4.amax(dim=(2, 3)))
    elif pooling == "gap":
        expected = cam.mean(-1)
    else:
        expected = cam.sort(dim=-1, descending=True).values[..., :4].mean(-1)
    torch.testing.assert_close(cls, expected, rtol=1e-4, atol=1e-5)


def test_decoder_equals_segformer_concat_form(model):
    """The factored decoder computes SegFormer's concat → 1×1 conv → BN → ReLU → pred."""
    dec = model.decoder.eval()
    torch.manual_seed(3)
    dec.linear_fuse.bn.running_mean.normal_()
    dec.linear_fuse.bn.running_var.uniform_(0.5, 2.0)
    feats = [torch.randn(2, c, h, w) for c, (h, w) in zip((32, 64, 160, 256), ((13, 9), (7, 5), (4, 3), (4, 3)))]
    embedded = []
    for i in (3, 2, 1, 0):
        lin = getattr(dec, f"linear_c{i + 1}").proj
        e = lin(feats[i].flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, -1, *feats[i].shape[-2:])
        embedded.append(F.interpolate(e, size=(13, 9), mode="bilinear", align_corners=False))
    fused = dec.linear_fuse.bn(dec.linear_fuse.conv(torch.cat(embedded, 1))).relu()
    expected = dec.linear_pred(fused)
    with torch.no_grad():
        torch.testing.assert_close(dec(feats), expected, rtol=1e-4, atol=1e-4)
    dec.train()


def test_state_dict_names(model):
    keys = set(model.state_dict())
    assert {"classifier.weight", "attn_proj.weight", "attn_proj.bias", "decoder.linear_fuse.conv.weight",
            "decoder.linear_fuse.bn.weight", "decoder.linear_fuse.bn.running_var", "decoder.linear_pred.weight",
            "decoder.linear_pred.bias"} <= keys
    assert {f"decoder.linear_c{i}.proj.{p}" for i in range(1, 5) for p in ("weight", "bias")} <= keys
    tops = {k.split(".")[0] for k in keys}
    assert tops == {"encoder", "decoder", "classifier", "attn_proj"}
    assert model.classifier.bias is None and model.classifier.weight.shape == (4, 256, 1, 1)


def test_param_groups(model):
    groups = model.param_groups()
    assert list(groups) == ["encoder", "encoder_norm", "heads", "decoder"]
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] for p in groups["encoder_norm"])
    assert all("norm" not in names[id(p)] and names[id(p)].startswith("encoder.") for p in groups["encoder"])
    assert {names[id(p)] for p in groups["heads"]} == {"classifier.weight", "attn_proj.weight", "attn_proj.bias"}


def test_total_loss_reaches_every_parameter():
    torch.manual_seed(0)
    m = TSCD("mit_b0", num_classes=4, drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 48)
    cls, seg, attn_pred, *_ = m(x)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    pseudo = torch.randint(0, 4, (2, 64, 48))
    seg_up = F.interpolate(seg, size=(64, 48), mode="bilinear", align_corners=False)
    loss = (F.multilabel_soft_margin_loss(cls, labels) + 0.1 * F.cross_entropy(seg_up, pseudo)
            + 0.1 * AffinityLoss()(attn_pred, pseudo, grid_size=(4, 3)))
    loss.backward()
    for name, params in m.param_groups().items():
        for p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments():
    with pytest.raises(ValueError, match="pooling"):
        TSCD("mit_b0", pooling="max")
    with pytest.raises(ValueError, match="topk_ratio"):
        TSCD("mit_b0", pooling="topk", topk_ratio=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        TSCD("mit_b0", num_classes=1)
