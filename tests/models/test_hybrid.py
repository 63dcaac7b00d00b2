"""hybrid_b0, hybrid_tiny: convolutional stages 1–3 + MiT stage 4, with MiT's interface inside TSCD."""
import math

import pytest
import torch
import torch.nn.functional as F

from tscd.losses import AffinityLoss
from tscd.models import TSCD, build_backbone
from tscd.models.layers import Block

# name -> (widths, stage-4 heads)
VARIANTS = {"hybrid_b0": ((32, 64, 160, 256), 8), "hybrid_tiny": ((32, 64, 96, 96), 3)}


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("stride", [(4, 2, 2, 1), (4, 2, 1, 1), (2, 2, 2, 2)])
def test_feature_and_attention_shapes_odd_input(stride, name):
    torch.manual_seed(0)
    widths, heads = VARIANTS[name]
    enc = build_backbone(name, stride=stride).eval()
    feats, logits = enc(torch.randn(2, 3, 97, 65))
    h, w, sizes = 97, 65, []
    for s in stride:
        h, w = math.ceil(h / s), math.ceil(w / s)
        sizes.append((h, w))
    assert [tuple(f.shape) for f in feats] == [(2, c, *hw) for c, hw in zip(widths, sizes)]
    n = sizes[3][0] * sizes[3][1]
    assert [tuple(a.shape) for a in logits] == [(2, heads, n, n)] * 2  # stage 4 only: two MiT blocks
    assert enc.num_heads[3] == heads and enc.embed_dims == list(widths)
    assert sum(isinstance(m, Block) for m in enc.modules()) == 2


@pytest.mark.parametrize("name", VARIANTS)
def test_in_tscd_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    m = TSCD(name, num_classes=4, stride=(4, 2, 1, 1), drop_path_rate=0.0, pooling="topk")
    x = torch.randn(2, 3, 64, 48)
    cls, seg, attn_pred, *_ = m(x)
    assert cls.shape == (2, 3) and seg.shape == (2, 4, 16, 12) and attn_pred.shape == (2, 48, 48)
    assert m.output_stride == 8
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    pseudo = torch.randint(0, 4, (2, 64, 48))
    seg_up = F.interpolate(seg, size=(64, 48), mode="bilinear", align_corners=False)
    loss = (F.multilabel_soft_margin_loss(cls, labels) + 0.1 * F.cross_entropy(seg_up, pseudo)
            + 0.1 * AffinityLoss()(attn_pred, pseudo, grid_size=(8, 6)))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_timm_registry():
    import timm

    from tscd.models.hybrid import HybridEncoder
    for name, (widths, _) in VARIANTS.items():
        model = timm.create_model(name, stride=(4, 2, 1, 1))
        assert isinstance(model, HybridEncoder) and model.stride == [4, 2, 1, 1] and model.embed_dims == list(widths)


def test_bad_arguments():
    with pytest.raises(ValueError, match="powers of two"):
        build_backbone("hybrid_b0", stride=(3, 2, 2, 1))
    with pytest.raises(ValueError, match="hybrid_b0"):
        build_backbone("resnet50")
