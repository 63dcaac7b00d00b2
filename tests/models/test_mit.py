"""MiT encoder: shapes for every variant and stride, attention logits, names, init, timm registry."""
import math

import pytest
import timm
import torch

from tscd.models import MIT_CONFIGS, TIMM_NAMES, MixVisionTransformer, build_backbone


def _stage_sizes(h, w, stride):
    sizes = []
    for s in stride:
        h, w = math.ceil(h / s), math.ceil(w / s)
        sizes.append((h, w))
    return sizes


@pytest.mark.parametrize("stride", [(4, 2, 2, 1), (4, 2, 1, 1), (4, 2, 2, 2)])
def test_feature_and_attention_shapes_odd_input(stride):
    torch.manual_seed(0)
    enc = build_backbone("mit_b0", stride=stride).eval()
    feats, logits = enc(torch.randn(2, 3, 97, 65))
    sizes = _stage_sizes(97, 65, stride)
    assert [tuple(f.shape) for f in feats] == [(2, c, *hw) for c, hw in zip((32, 64, 160, 256), sizes)]
    expected = []
    for (h, w), heads, depth, sr in zip(sizes, (1, 2, 5, 8), (2, 2, 2, 2), (8, 4, 2, 1)):
        n = (h // sr) * (w // sr)
        expected += [(2, heads, n, n)] * depth
    assert [tuple(a.shape) for a in logits] == expected


def test_tscd_strides_give_output_stride_16_and_8():
    enc16 = build_backbone("mit_b0", stride=(4, 2, 2, 1))
    enc8 = build_backbone("mit_b0", stride=(4, 2, 1, 1))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        (feats16, logits16), (feats8, logits8) = enc16(x), enc8(x)
    assert feats16[3].shape[-2:] == (4, 6) and logits16[-1].shape == (1, 8, 24, 24)
    assert feats8[2].shape[-2:] == feats8[3].shape[-2:] == (8, 12) and logits8[-1].shape == (1, 8, 96, 96)


def test_attention_logits_are_unscaled_qk_pooled_over_sr():
    """Recompute block 1's logits by hand: q·kᵀ with keys from the sr conv, queries averaged
    over sr×sr windows (for a linear map, pooling logits = pooling queries)."""
    torch.manual_seed(1)
    enc = build_backbone("mit_b0").eval()
    x = torch.randn(1, 3, 64, 64)
    tokens, h, w = enc.patch_embed1(x)
    attn = enc.block1[0].attn
    y = enc.block1[0].norm1(tokens)
    q = attn.q(y)  # (1, N, 32), one head
    src = y.transpose(1, 2).reshape(1, 32, h, w)
    src = attn.norm(attn.sr(src).flatten(2).transpose(1, 2))
    k = attn.kv(src)[..., :32]
    q_pooled = torch.nn.functional.avg_pool2d(q.transpose(1, 2).reshape(1, 32, h, w), 8).flatten(2).transpose(1, 2)
    expected = q_pooled @ k.transpose(1, 2)
    got = enc(x)[1][0]
    torch.testing.assert_close(got[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_last_stage_logits_feed_a_softmax_with_head_dim_scale():
    torch.manual_seed(2)
    attn = build_backbone("mit_b0").block4[0].attn
    x = torch.randn(2, 6, 256)
    out, logits = attn(x, 2, 3)
    assert logits.shape == (2, 8, 6, 6)
    q = attn.q(x).reshape(2, 6, 8, 32).transpose(1, 2)
    k, v = attn.kv(x).reshape(2, 6, 2, 8, 32).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(logits, q @ k.transpose(-2, -1))
    ref = ((logits / math.sqrt(32)).softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 256)
    torch.testing.assert_close(out, attn.proj(ref))


# encoder parameters in millions, as the SegFormer paper lists them (Table 1)
PAPER_PARAMS = {"mit_b0": 3.3, "mit_b1": 13.1, "mit_b2": 24.2, "mit_b3": 44.0, "mit_b4": 60.8, "mit_b5": 81.4}


@pytest.mark.parametrize("name", sorted(MIT_CONFIGS))
def test_every_variant_structure_on_meta_device(name):
    """All variants, built and run on the meta device (shapes only, no compute)."""
    cfg = MIT_CONFIGS[name]
    with torch.device("meta"):
        enc = build_backbone(name)
        feats, logits = enc(torch.empty(1, 3, 64, 32))
    assert sum(p.numel() for p in enc.parameters()) / 1e6 == pytest.approx(PAPER_PARAMS[name], abs=0.1)
    assert [tuple(f.shape) for f in feats] == [(1, c, *hw) for c, hw in
                                               zip(cfg.embed_dims, ((16, 8), (8, 4), (4, 2), (4, 2)))]
    assert [len(getattr(enc, f"block{i}")) for i in range(1, 5)] == list(cfg.depths)
    assert [a.shape[1] for a in logits] == [h for h, d in zip(cfg.num_heads, cfg.depths) for _ in range(d)]
    assert logits[-1].shape == (1, 8, 8, 8) and logits[0].shape == (1, 1, 2, 2)


@pytest.mark.parametrize("name", ["mit_b1", "mit_b2"])
def test_larger_variants_run_for_real(name):
    enc = build_backbone(name).eval()
    with torch.no_grad():
        feats, logits = enc(torch.randn(1, 3, 33, 47))
    assert feats[3].shape == (1, 512, 3, 3) and torch.isfinite(feats[3]).all()
    assert len(logits) == sum(MIT_CONFIGS[name].depths)


def test_segformer_parameter_names():
    """Exactly SegFormer's MiT names (mit_b1: depths 2 per stage, sr > 1 in stages 1-3)."""
    expected = set()
    for i, sr in zip(range(1, 5), (8, 4, 2, 1)):
        expected |= {f"patch_embed{i}.{m}.{p}" for m in ("proj", "norm") for p in ("weight", "bias")}
        expected |= {f"norm{i}.weight", f"norm{i}.bias"}
        for j in range(2):
            mods = ["norm1", "attn.q", "attn.kv", "attn.proj", "norm2", "mlp.fc1", "mlp.dwconv.dwconv", "mlp.fc2"]
            if sr > 1:
                mods += ["attn.sr", "attn.norm"]
            expected |= {f"block{i}.{j}.{m}.{p}" for m in mods for p in ("weight", "bias")}
    enc = build_backbone("mit_b1")
    assert set(enc.state_dict()) == expected
    sd = enc.state_dict()
    assert sd["patch_embed1.proj.weight"].shape == (64, 3, 7, 7)
    assert sd["patch_embed2.proj.weight"].shape == (128, 64, 3, 3)
    assert sd["block1.0.attn.sr.weight"].shape == (64, 64, 8, 8)
    assert sd["block3.1.attn.kv.weight"].shape == (640, 320)
    assert sd["block4.0.mlp.dwconv.dwconv.weight"].shape == (2048, 1, 3, 3)


def test_layernorm_eps_and_segformer_init():
    enc = build_backbone("mit_b0")
    assert enc.block1[0].norm1.eps == 1e-6 and enc.norm4.eps == 1e-6
    assert enc.patch_embed1.norm.eps == 1e-5 and enc.block1[0].attn.norm.eps == 1e-5
    w = enc.block2[0].mlp.fc1.weight
    assert abs(w.std().item() - 0.02) < 0.003  # trunc_normal_(std=0.02), bounds ±2 as in SegFormer
    assert torch.all(enc.block2[0].mlp.fc1.bias == 0)
    conv = enc.patch_embed1.proj.weight  # fan-out normal: std sqrt(2 / (7·7·32))
    assert abs(conv.std().item() - math.sqrt(2 / (7 * 7 * 32))) < 0.01
    dpr = [getattr(b.drop_path, "drop_prob", 0.0) for i in range(1, 5) for b in getattr(enc, f"block{i}")]
    assert dpr[0] == 0.0 and dpr[-1] == pytest.approx(0.1)


def test_timm_registry():
    assert TIMM_NAMES == {n: n for n in [*MIT_CONFIGS, "hybrid_b0", "hybrid_tiny"]}  # timm 1.0 has no mit_* of its own
    assert set(timm.list_models("mit_b*")) >= set(MIT_CONFIGS)
    model = timm.create_model("mit_b1", stride=(4, 2, 1, 1), drop_path_rate=0.0)
    assert isinstance(model, MixVisionTransformer) and model.stride == [4, 2, 1, 1]
    with pytest.raises(ValueError, match="instead of True.*hf-hub:nvidia/mit-b0"):
        timm.create_model("mit_b0", pretrained=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("mit_b9")
    with pytest.raises(ValueError, match="stride"):
        build_backbone("mit_b0", stride=(4, 2, 2))
    with pytest.raises(ValueError, match="too small"):
        build_backbone("mit_b0")(torch.randn(1, 3, 16, 16))
