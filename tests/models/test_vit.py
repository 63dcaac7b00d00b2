"""timm ViTs as the TSCD encoder: features and attention logits against timm, odd crops, patch 14,
prefix tokens, frozen training, parameter groups, errors."""
import math

import pytest
import timm.layers.attention
import torch
import torch.nn.functional as F

from tscd.config import load_config
from tscd.engine.builders import build_model
from tscd.engine.schedule import build_optimizer
from tscd.losses import AffinityLoss
from tscd.models import TSCD, ViTEncoder, build_backbone
from tscd.models.vit import feature_blocks

# (timm name, creation overrides): class token; class + 4 registers at patch 14 (DINOv2, layer
# scale); no prefix token and a pooled norm (fc_norm); CLIP (pre-norm); q/k normalisation
VARIANTS = [
    ("vit_tiny_patch16_224", {"depth": 4}),
    ("vit_small_patch14_reg4_dinov2", {"depth": 3}),
    ("vit_tiny_patch16_224", {"depth": 3, "class_token": False, "global_pool": "avg"}),
    ("vit_base_patch16_clip_224.openai", {"depth": 2}),
    ("vit_tiny_patch16_224", {"depth": 2, "qk_norm": True}),
]


def _reference_logits(block, x, prefix):
    """q·kᵀ·scale between the patch tokens, from the block's input x and its qkv weights."""
    attn = block.attn
    heads, hd = attn.num_heads, attn.head_dim
    y = block.norm1(x)[:, prefix:]
    qkv = y @ attn.qkv.weight.T + (attn.qkv.bias if attn.qkv.bias is not None else 0)
    q = qkv[..., : heads * hd].reshape(*y.shape[:2], heads, hd).transpose(1, 2)
    k = qkv[..., heads * hd: 2 * heads * hd].reshape(*y.shape[:2], heads, hd).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return torch.einsum("bhid,bhjd->bhij", q, k) * hd ** -0.5


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=lambda v: v if isinstance(v, str) else str(sorted(v)))
def test_features_and_logits_match_timm(name, kwargs, monkeypatch):
    torch.manual_seed(0)
    enc = ViTEncoder(name, drop_path_rate=0.0, **kwargs).eval()
    vit, p = enc.vit, enc.patch_size
    x = torch.randn(2, 3, 2 * p + 3, 3 * p - 5)  # not multiples of the patch: resized to 3p × 3p
    h, w = 3, 3
    fused = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(timm.layers.attention.F, "scaled_dot_product_attention",
                        lambda *a, **k: fused.append(1) or sdpa(*a, **k))
    block_inputs = {}
    hooks = [vit.blocks[i].register_forward_pre_hook(lambda m, args, i=i: block_inputs.__setitem__(i, args[0]))
             for i in (-2, -1)]
    with torch.no_grad():
        features, logits = enc(x)
    for hook in hooks:
        hook.remove()
    monkeypatch.undo()
    assert len(fused) == len(vit.blocks)  # every block ran timm's fused attention, the last two too

    prefix = vit.num_prefix_tokens
    assert prefix == {"vit_small_patch14_reg4_dinov2": 5}.get(name, 0 if "class_token" in kwargs else 1)
    assert len(logits) == 2
    for a, i in zip(logits, (-2, -1)):
        assert a.shape == (2, vit.blocks[i].attn.num_heads, h * w, h * w)
        torch.testing.assert_close(a, _reference_logits(vit.blocks[i], block_inputs[i], prefix))

    # the maps: timm's own block outputs (the hook changes nothing), final norm, prefix dropped
    resized = F.interpolate(x, size=(h * p, w * p), mode="bilinear", align_corners=False)
    blocks = sorted(set(enc.feature_blocks))
    with torch.no_grad():
        raw = dict(zip(blocks, vit.forward_intermediates(resized, indices=blocks, output_fmt="NLC",
                                                         intermediates_only=True)))
    norm = vit.norm if "global_pool" not in kwargs else vit.fc_norm
    c = vit.embed_dim
    assert enc.embed_dims == [c] * 4 and enc.output_stride == p
    assert len(features) == 4
    for f, i, up in zip(features, enc.feature_blocks, (4, 2, 1, 1)):
        ref = norm(raw[i]).transpose(1, 2).reshape(2, c, h, w)
        if up > 1:
            ref = F.interpolate(ref, scale_factor=up, mode="bilinear", align_corners=False)
        assert f.shape == (2, c, h * up, w * up)
        torch.testing.assert_close(f, ref)


def test_feature_blocks_close_each_quarter():
    assert feature_blocks(12) == (2, 5, 8, 11)  # DPT's hooks on ViT-B
    assert feature_blocks(24) == (5, 11, 17, 23)
    assert feature_blocks(2) == (0, 0, 1, 1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TSCD("vit_tiny_patch16_224", num_classes=5, drop_path_rate=0.0)


def test_tscd_on_odd_crops_and_batch_one(tiny):
    x = torch.randn(1, 3, 37, 50)
    h, w = math.ceil(37 / 16), math.ceil(50 / 16)
    assert tiny.output_stride == 16
    out = tiny(x, torch.randn(1, 3, 11, 15))
    assert out.cls.shape == (1, 4)
    assert out.seg.shape == (1, 5, 4 * h, 4 * w)
    assert out.attn_pred.shape == (1, h * w, h * w) and torch.all((out.attn_pred > 0) & (out.attn_pred < 1))
    assert out.seg_small.shape == (1, 5, 4, 4) and out.cam_small.shape == (1, 4, 1, 1)
    cam, attn = tiny.forward_cam(x)
    assert cam.shape == (1, 4, h, w) and attn.shape == (1, h * w, h * w)
    assert tiny.attn_proj.in_channels == 2 * 3  # vit_tiny: 3 heads in each of the last two blocks


def test_patch14_output_stride_and_affinity_grid():
    torch.manual_seed(0)
    m = TSCD("vit_small_patch14_reg4_dinov2", num_classes=3, drop_path_rate=0.0)
    assert m.output_stride == 14 and m.attn_proj.in_channels == 12
    x = torch.randn(2, 3, 30, 44)
    grid = (-(-30 // m.output_stride), -(-44 // m.output_stride))  # as inference does
    out = m(x)
    assert tuple(out.cam.shape[-2:]) == grid  # the grid the objective takes, the CAM's size
    n = grid[0] * grid[1]
    assert out.attn_pred.shape == (2, n, n) and out.seg.shape == (2, 3, 4 * grid[0], 4 * grid[1])
    pseudo = torch.randint(0, 3, (2, 30, 44))
    loss = AffinityLoss()(out.attn_pred, pseudo, grid_size=grid)
    assert torch.isfinite(loss)


def test_every_parameter_trains_and_the_affinity_reaches_the_encoder(tiny):
    tiny.zero_grad()
    x = torch.randn(2, 3, 48, 32)
    cls, seg, attn_pred, *_ = tiny(x)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    pseudo = torch.randint(0, 5, (2, 48, 32))
    seg_up = F.interpolate(seg, size=(48, 32), mode="bilinear", align_corners=False)
    loss = (F.multilabel_soft_margin_loss(cls, labels) + 0.1 * F.cross_entropy(seg_up, pseudo)
            + 0.1 * AffinityLoss()(attn_pred, pseudo, grid_size=(3, 2)))
    loss.backward()
    for name, params in tiny.param_groups().items():
        for p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the affinity alone: through attn_proj into the last block's q/k projection
    tiny.zero_grad()
    AffinityLoss()(tiny(x).attn_pred, pseudo, grid_size=(3, 2)).backward()
    assert tiny.attn_proj.weight.grad.abs().sum() > 0
    assert tiny.encoder.vit.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0
    tiny.zero_grad()


def _saved_bytes(model, x):
    """Bytes autograd keeps for the backward pass of a training forward."""
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, F.interpolate(x, scale_factor=0.5))
    return sum(total), out


@pytest.mark.parametrize("backbone", ["vit_tiny_patch16_224", "hybrid_b0", "mit_b0"])
def test_frozen_backbone(backbone):
    torch.manual_seed(0)
    kwargs = {"stride": (4, 2, 1, 1)} if backbone == "mit_b0" else {}
    frozen = TSCD(backbone, num_classes=4, freeze_backbone=True, **kwargs).train()
    assert not frozen.encoder.training and frozen.decoder.training
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    groups = frozen.param_groups()
    assert groups["encoder"] == [] == groups["encoder_norm"] and groups["heads"] and groups["decoder"]
    buffers = {k: v.clone() for k, v in frozen.encoder.named_buffers()}  # BatchNorm statistics (hybrid)
    before = {k: v.clone() for k, v in frozen.encoder.state_dict().items()}

    x = torch.randn(2, 3, 64, 64)
    saved_frozen, out = _saved_bytes(frozen, x)
    pseudo = torch.randint(0, 4, (2, 64, 64))
    grid = (-(-64 // frozen.output_stride),) * 2
    loss = out.seg.mean() + out.cam_small.mean() + AffinityLoss()(out.attn_pred, pseudo, grid_size=grid)
    cfg = load_config("synthetic", ["optim.warmup_iters=0"])
    opt = build_optimizer(frozen, cfg)
    assert [g["name"] for g in opt.param_groups] == ["encoder", "encoder_norm", "heads", "decoder"]
    assert opt.param_groups[0]["params"] == [] and opt.param_groups[0]["lr"] == cfg.optim.lr
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in frozen.encoder.parameters())
    assert frozen.attn_proj.weight.grad.abs().sum() > 0 and frozen.classifier.weight.grad.abs().sum() > 0
    for k, v in frozen.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in frozen.encoder.named_buffers():
        assert torch.equal(v, buffers[k]), k

    torch.manual_seed(0)
    trained = TSCD(backbone, num_classes=4, **kwargs).train()
    saved_trained, _ = _saved_bytes(trained, x)
    assert saved_frozen < 0.5 * saved_trained  # the encoder keeps nothing for the backward pass


def test_build_model_passes_freeze_backbone():
    cfg = load_config("synthetic", ["model.backbone=vit_tiny_patch16_224", "model.stride=[4,2,2,1]",
                                    "model.freeze_backbone=true", "data.num_classes=3"])
    model = build_model(cfg)
    assert model.freeze_backbone and model.encoder.timm_name == "vit_tiny_patch16_224"
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("encoder.")} == {"vit"}


def test_errors_name_what_is_accepted():
    accepted = (r"expected one of mit_b0, .*hybrid_b0, hybrid_tiny, or the timm name of a VisionTransformer "
                r"\(e\.g\. vit_base")
    with pytest.raises(ValueError, match=f"unknown backbone 'vit_nonexistent'; {accepted}"):
        build_backbone("vit_nonexistent")
    with pytest.raises(ValueError, match=f"'resnet18' is not a timm VisionTransformer .*; {accepted}"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="block 0 has no timm Attention"):
        build_backbone("vit_small_patch16_18x2_224", depth=2)  # parallel blocks: no single attn
    with pytest.raises(ValueError, match=r"stride \(model.stride\) has no meaning for the ViT backbone "
                                         r"'vit_tiny_patch16_224'.*default \[4, 2, 2, 1\], got \[4, 2, 1, 1\]"):
        TSCD("vit_tiny_patch16_224", stride=(4, 2, 1, 1))
    with pytest.raises(ValueError, match=r"model.stride"):
        build_model(load_config("synthetic", ["model.backbone=vit_tiny_patch16_224"]))  # its stride: [4,2,1,1]
    with pytest.raises(ValueError) as info:
        build_backbone("nope")
    assert "\n" not in str(info.value)
