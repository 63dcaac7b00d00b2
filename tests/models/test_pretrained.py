"""Pretrained weights from where users find them (tscd.models.pretrained): mmseg MiT checkpoints,
timm / DINOv2 ViT checkpoints into a timm ViT encoder, the ``hf-hub:`` and ``timm:`` sources
through huggingface_hub's cache (never the network), and the one-line errors, at the CLI too.
The Hugging Face SegFormer conversion is compared with transformers in test_pretrained_hf.py."""
import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from tscd.cli import main
from tscd.models import TSCD, CheckpointMismatchError, build_backbone, load_checkpoint
from tscd.models.mit import MixVisionTransformer
from tscd.models.pretrained import PretrainedSourceError, fetch

from ..engine import TINY

IMAGENET_STRIDES = (4, 2, 2, 2)


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Every floating-point parameter and buffer drawn at random (LayerNorm weights around 1), so
    that a swapped weight, bias or norm shows in the outputs; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if not p.is_floating_point():
                continue
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("running_var"):
                p.copy_(1 + 0.2 * noise.abs())
            else:
                p.copy_(noise * (0.1 if p.dim() == 1 else 0.5 / max(p[0].numel(), 1) ** 0.5))
    return model.eval()


def _mit_b0(seed=None) -> MixVisionTransformer:
    torch.manual_seed(0)
    model = build_backbone("mit_b0", stride=IMAGENET_STRIDES, drop_path_rate=0.0).eval()
    return randomised(model, seed) if seed is not None else model


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- mmseg ------------------------------------------------------------------------------------
# mmseg's MiT (mmseg/models/backbones/mit.py; configs/_base_/models/segformer_mit-b0.py):
# layers[i] = ModuleList([PatchEmbed (projection: Conv2d k×k, norm: LN), ModuleList of
# TransformerEncoderLayer, LN]); a layer holds norm1, attn = EfficientMultiheadAttention (attn:
# nn.MultiheadAttention with in_proj_weight (3C, C) = [q; k; v], out_proj; sr: Conv2d sr×sr and
# norm when sr > 1), norm2, ffn = MixFFN (layers: Conv2d 1×1, depthwise Conv2d 3×3, GELU,
# Dropout, Conv2d 1×1, Dropout: indices 0, 1, 4). mit_b0: embed_dims=32, num_heads (1, 2, 5, 8)
# (stage width = embed_dims·heads), num_layers (2, 2, 2, 2), patch_sizes (7, 3, 3, 3),
# sr_ratios (8, 4, 2, 1), mlp_ratio 4, qkv_bias True.
def _mmseg_mit_layout(embed_dims=32, num_heads=(1, 2, 5, 8), num_layers=(2, 2, 2, 2), patch_sizes=(7, 3, 3, 3),
                      sr_ratios=(8, 4, 2, 1), mlp_ratio=4, in_channels=3) -> dict[str, tuple]:
    """Key -> shape of mmseg's MixVisionTransformer state dict, written from its module structure."""
    layout, cin = {}, in_channels
    for i, (heads, depth, k, sr) in enumerate(zip(num_heads, num_layers, patch_sizes, sr_ratios)):
        c, hidden = embed_dims * heads, embed_dims * heads * mlp_ratio
        layout |= {f"layers.{i}.0.projection.weight": (c, cin, k, k), f"layers.{i}.0.projection.bias": (c,),
                   f"layers.{i}.0.norm.weight": (c,), f"layers.{i}.0.norm.bias": (c,)}
        for j in range(depth):
            b = f"layers.{i}.1.{j}."
            layout |= {b + "norm1.weight": (c,), b + "norm1.bias": (c,),
                       b + "attn.attn.in_proj_weight": (3 * c, c), b + "attn.attn.in_proj_bias": (3 * c,),
                       b + "attn.attn.out_proj.weight": (c, c), b + "attn.attn.out_proj.bias": (c,),
                       b + "norm2.weight": (c,), b + "norm2.bias": (c,),
                       b + "ffn.layers.0.weight": (hidden, c, 1, 1), b + "ffn.layers.0.bias": (hidden,),
                       b + "ffn.layers.1.weight": (hidden, 1, 3, 3), b + "ffn.layers.1.bias": (hidden,),
                       b + "ffn.layers.4.weight": (c, hidden, 1, 1), b + "ffn.layers.4.bias": (c,)}
            if sr > 1:
                layout |= {b + "attn.sr.weight": (c, c, sr, sr), b + "attn.sr.bias": (c,),
                           b + "attn.norm.weight": (c,), b + "attn.norm.bias": (c,)}
        layout |= {f"layers.{i}.2.weight": (c,), f"layers.{i}.2.bias": (c,)}
        cin = c
    return layout


def _to_mmseg(mit_state: dict) -> dict:
    """tscd/SegFormer MiT names -> mmseg's (the inverse of the conversion under test, written key by key)."""
    out = {}
    for key, v in mit_state.items():
        head, rest = key.split(".", 1)
        stage = int(head[-1]) - 1
        if head.startswith("patch_embed"):
            out[f"layers.{stage}.0.{rest.replace('proj.', 'projection.')}"] = v
        elif head.startswith("norm"):
            out[f"layers.{stage}.2.{rest}"] = v
        else:
            j, name = rest.split(".", 1)
            b = f"layers.{stage}.1.{j}."
            param = name.rsplit(".", 1)[1]
            if name.startswith("attn.q."):
                out[f"{b}attn.attn.in_proj_{param}"] = torch.cat([v, mit_state[key.replace("attn.q.", "attn.kv.")]])
            elif name.startswith("attn.kv."):
                continue
            elif name.startswith("attn.proj."):
                out[f"{b}attn.attn.out_proj.{param}"] = v
            elif name.startswith("mlp."):
                index = {"mlp.fc1": 0, "mlp.dwconv.dwconv": 1, "mlp.fc2": 4}[name.rsplit(".", 1)[0]]
                out[f"{b}ffn.layers.{index}.{param}"] = v[..., None, None] if v.dim() == 2 else v
            else:  # norm1, norm2, attn.sr, attn.norm keep their names
                out[b + name] = v
    return out


def _mmseg_reference_features(state: dict, x: torch.Tensor, num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1),
                              strides=IMAGENET_STRIDES) -> list[torch.Tensor]:
    """mmseg's MiT forward, computed from the mmseg-named tensors with torch's own multi-head
    attention (what mmseg's nn.MultiheadAttention runs). LayerNorm eps as tscd's MiT (1e-5 in
    the patch embedding and the spatial reduction, 1e-6 elsewhere; mmseg uses 1e-6 throughout)."""
    def ln(t, prefix, eps=1e-6):
        return F.layer_norm(t, t.shape[-1:], state[prefix + "weight"], state[prefix + "bias"], eps)

    features = []
    for i, (heads, sr, stride) in enumerate(zip(num_heads, sr_ratios, strides)):
        w = state[f"layers.{i}.0.projection.weight"]
        x = F.conv2d(x, w, state[f"layers.{i}.0.projection.bias"], stride=stride, padding=w.shape[-1] // 2)
        b, c, h, wd = x.shape
        tokens = ln(x.flatten(2).transpose(1, 2), f"layers.{i}.0.norm.", eps=1e-5)
        j = 0
        while f"layers.{i}.1.{j}.norm1.weight" in state:
            p = f"layers.{i}.1.{j}."
            q = ln(tokens, p + "norm1.")
            kv = q
            if sr > 1:
                grid = F.conv2d(q.transpose(1, 2).reshape(b, c, h, wd), state[p + "attn.sr.weight"],
                                state[p + "attn.sr.bias"], stride=sr)
                kv = ln(grid.flatten(2).transpose(1, 2), p + "attn.norm.", eps=1e-5)
            attn, _ = F.multi_head_attention_forward(
                q.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), c, heads,
                state[p + "attn.attn.in_proj_weight"], state[p + "attn.attn.in_proj_bias"], None, None, False, 0.0,
                state[p + "attn.attn.out_proj.weight"], state[p + "attn.attn.out_proj.bias"], training=False,
                need_weights=False)
            tokens = tokens + attn.transpose(0, 1)
            y = ln(tokens, p + "norm2.").transpose(1, 2).reshape(b, c, h, wd)
            y = F.conv2d(y, state[p + "ffn.layers.0.weight"], state[p + "ffn.layers.0.bias"])
            y = F.conv2d(y, state[p + "ffn.layers.1.weight"], state[p + "ffn.layers.1.bias"], padding=1,
                         groups=y.shape[1])
            y = F.conv2d(F.gelu(y), state[p + "ffn.layers.4.weight"], state[p + "ffn.layers.4.bias"])
            tokens = tokens + y.flatten(2).transpose(1, 2)
            j += 1
        x = ln(tokens, f"layers.{i}.2.").transpose(1, 2).reshape(b, c, h, wd)
        features.append(x)
    return features


def test_the_inverse_mapping_gives_mmsegs_documented_mit_b0_layout():
    """The test's mmseg state dict has exactly the keys and shapes of mmseg's mit_b0, so the
    conversion below is checked against mmseg's layout, not against itself."""
    state = _to_mmseg(_mit_b0().state_dict())
    assert {k: tuple(v.shape) for k, v in state.items()} == _mmseg_mit_layout()


@pytest.mark.parametrize("wrapped", ["mmseg 1.x", "mmseg 0.x"])
def test_mmseg_checkpoint_reproduces_mmsegs_outputs(wrapped):
    source = _mit_b0(seed=5)
    mmseg = {f"backbone.{k}": v for k, v in _to_mmseg(source.state_dict()).items()}
    mmseg |= {"decode_head.linear_fuse.conv.weight": torch.zeros(8, 32, 1, 1),
              "auxiliary_head.conv_seg.weight": torch.zeros(2, 8, 1, 1)}
    checkpoint = {"meta": {"mmseg_version": "1.2.2", "CLASSES": ("a", "b")}, "state_dict": mmseg}
    if wrapped == "mmseg 0.x":  # mmcv's DataParallel prefix
        checkpoint["state_dict"] = {f"module.{k}": v for k, v in mmseg.items()}
    target = _mit_b0()
    report = load_checkpoint(target, checkpoint)
    assert report["layout"] == "mmseg" and report["dropped"] == [
        "auxiliary_head.conv_seg.weight", "decode_head.linear_fuse.conv.weight"]
    _assert_same_state(target.state_dict(), source.state_dict())
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    reference = _mmseg_reference_features(_to_mmseg(source.state_dict()), x)
    with torch.no_grad():
        ours = target(x)[0]
    for i, (a, b) in enumerate(zip(ours, reference)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"stage {i + 1}")


def test_segformer_repo_mmseg_checkpoint_fills_the_tscd_encoder():
    """The SegFormer repository's trained models (mmseg 0.11): ``backbone.patch_embed1.*`` + ``decode_head.*``."""
    torch.manual_seed(0)
    source = TSCD("mit_b0", num_classes=4)
    state = {f"backbone.{k}": v for k, v in source.encoder.state_dict().items()}
    state["decode_head.linear_c4.proj.weight"] = torch.zeros(256, 256)
    target = TSCD("mit_b0", num_classes=4)
    report = load_checkpoint(target, {"state_dict": state, "meta": {}})
    assert report["target"] == "encoder" and report["layout"] == "mmseg"
    assert report["dropped"] == ["decode_head.linear_c4.proj.weight"]
    _assert_same_state(target.encoder.state_dict(), source.encoder.state_dict())


def test_a_broken_mmseg_checkpoint_is_named():
    state = {f"backbone.{k}": v for k, v in _to_mmseg(_mit_b0().state_dict()).items()}
    state["backbone.layers.1.1.0.attn.attn.in_proj_bias"] = torch.zeros(7)  # not 3·C
    del state["backbone.layers.3.2.bias"]
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(_mit_b0(), state)
    first = str(err.value).splitlines()[0]
    assert "missing (3): block2.0.attn.kv.bias, …" in first, first
    assert "unexpected (1): backbone.layers.1.1.0.attn.attn.in_proj_bias" in first, first
    assert "norm4.bias" in str(err.value)


# ---- timm ViT ---------------------------------------------------------------------------------
class StandInViTEncoder(nn.Module):
    """What tscd's ViT encoder holds (tscd/models/vit.py): a timm VisionTransformer as ``vit``."""

    def __init__(self, img_size=224):
        super().__init__()
        self.vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True,
                                     img_size=img_size)
        self.timm_name = "vit_tiny_patch16_224"
        self.extra = nn.Linear(2, 2)  # a layer of tscd's own, outside the pretrained ViT


class StandInTSCD(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = StandInViTEncoder()
        self.decoder = nn.Linear(3, 3)


@pytest.fixture(scope="module")
def timm_state():
    """A timm vit_tiny checkpoint as timm's hub holds it: ImageNet head, 224² positional embedding."""
    torch.manual_seed(3)
    return randomised(timm.create_model("vit_tiny_patch16_224", pretrained=False), seed=3).state_dict()


def test_timm_checkpoint_into_the_vit_encoder(timm_state):
    model = StandInTSCD()
    extra_before = model.encoder.extra.weight.clone()
    report = load_checkpoint(model, timm_state)
    assert report["target"] == "encoder.vit" and report["layout"] == "timm"
    assert report["dropped"] == ["head.bias", "head.weight"]
    without_head = {k: v for k, v in timm_state.items() if not k.startswith("head")}
    _assert_same_state(model.encoder.vit.state_dict(), without_head)
    assert torch.equal(model.encoder.extra.weight, extra_before)
    bare = StandInViTEncoder()
    assert load_checkpoint(bare, timm_state)["target"] == "vit"
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    assert load_checkpoint(vit, timm_state)["target"] == "model"
    _assert_same_state(vit.state_dict(), bare.vit.state_dict())


def test_positional_embedding_is_resampled_as_timm_does(timm_state):
    """A 224² checkpoint into a ViT built for 64² crops: timm's resampling, bicubic with antialias."""
    encoder = StandInViTEncoder(img_size=64)
    load_checkpoint(encoder, timm_state)
    expected = resample_abs_pos_embed(timm_state["pos_embed"], new_size=(4, 4), old_size=(14, 14),
                                      num_prefix_tokens=1, interpolation="bicubic", antialias=True)
    assert encoder.vit.pos_embed.shape == (1, 17, 192)
    torch.testing.assert_close(encoder.vit.pos_embed, expected)
    with torch.no_grad():
        assert torch.isfinite(encoder.vit(torch.randn(1, 3, 48, 64))).all()  # dynamic_img_size: any crop


def test_dinov2_original_layout(timm_state):
    """The original DINOv2 files carry a mask_token (timm's filter recognises and drops it)."""
    state = {k: v for k, v in timm_state.items() if not k.startswith("head")} | {"mask_token": torch.zeros(1, 192)}
    encoder = StandInViTEncoder()
    assert load_checkpoint(encoder, state)["layout"] == "timm"
    torch.testing.assert_close(encoder.vit.blocks[0].attn.qkv.weight, timm_state["blocks.0.attn.qkv.weight"])


def _openai_clip_visual(vit) -> dict:
    """``vit``'s weights in OpenAI CLIP's layout (``visual.*``, as open_clip_pytorch_model.bin holds
    them), with a text-tower key and the image projection beside them."""
    s = vit.state_dict()
    out = {"visual.conv1.weight": s["patch_embed.proj.weight"], "visual.class_embedding": s["cls_token"][0, 0],
           "visual.positional_embedding": s["pos_embed"][0], "visual.proj": torch.randn(s["norm.weight"].numel(), 8),
           "token_embedding.weight": torch.zeros(10, 8)}
    for ours, theirs in (("norm_pre", "ln_pre"), ("norm", "ln_post")):
        out |= {f"visual.{theirs}.{p}": s[f"{ours}.{p}"] for p in ("weight", "bias")}
    renames = (("norm1", "ln_1"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"), ("norm2", "ln_2"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))
    for key, v in s.items():
        if key.startswith("blocks."):
            for ours, theirs in renames:
                key = key.replace(ours, theirs)
            out["visual.transformer.resblocks." + key[len("blocks."):]] = v
    return out


def test_openai_clip_layout():
    """OpenAI CLIP's vision tower (pre-norm ViT: no patch-embedding bias), converted by timm; the text tower
    and the image projection (timm's head) do not reach the encoder."""
    def clip_like():
        return timm.models.VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2,
                                             pre_norm=True, num_classes=0, dynamic_img_size=True)

    torch.manual_seed(0)
    source = randomised(clip_like(), seed=9)
    target = clip_like()
    report = load_checkpoint(target, _openai_clip_visual(source))
    assert report["layout"] == "timm" and report["dropped"] == ["head.bias", "head.weight"]
    _assert_same_state(target.state_dict(), source.state_dict())


def test_unknown_layout_for_a_vit_is_one_line(timm_state):
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(StandInTSCD(), {"foo.weight": torch.zeros(2)})
    message = str(err.value)
    assert "\n" not in message and "is in no weights layout tscd knows for a StandInTSCD" in message
    assert "timm: timm / DINOv2 / OpenAI-CLIP ViT" in message
    state = dict(timm_state)
    del state["blocks.0.norm1.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"does not match the encoder\.vit .*missing \(1\): "
                                                      r"blocks\.0\.norm1\.weight"):
        load_checkpoint(StandInTSCD(), state)


# ---- remote sources, offline ------------------------------------------------------------------
@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """huggingface_hub offline, with an empty cache of its own (what HF_HUB_OFFLINE=1 and HF_HOME set)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _cache_file(cache, repo: str, filename: str, state: dict, commit: str = "a" * 40, ref: str = "main"):
    """Write ``state`` where huggingface_hub keeps a downloaded file: models--owner--name/snapshots/<commit>/file."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    if filename.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, snapshot / filename)
    else:
        torch.save(state, snapshot / filename)
    return snapshot / filename


def test_hf_hub_offline_without_the_file_is_one_clear_line(hub_cache):
    with pytest.raises(PretrainedSourceError) as err:
        load_checkpoint(build_backbone("mit_b0"), "hf-hub:nvidia/mit-b0")
    assert isinstance(err.value, ValueError)
    assert str(err.value) == (
        f"cannot get the weights of hf-hub:nvidia/mit-b0: model.safetensors or pytorch_model.bin of nvidia/mit-b0 is "
        f"not in the cache {hub_cache} and HF_HUB_OFFLINE is set; download "
        f"https://huggingface.co/nvidia/mit-b0/resolve/main/model.safetensors on a machine with a network and pass "
        f"model.pretrained=PATH")


def test_what_the_hub_answered_is_in_the_line(hub_cache, monkeypatch):
    """Online (the download function stands in for the hub): unreachable, no such file, no such repository."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    answers, asked = [], []

    def hub(repo, filename, revision=None, local_files_only=False):
        asked.append((filename, local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        raise answers.pop(0)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    unreachable = LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")
    unreachable.__cause__ = ConnectionError("[Errno -2] Name or service not known")
    url = "https://huggingface.co/nvidia/mit-b9/resolve/v1/model.safetensors"

    class NoRepository(RepositoryNotFoundError):
        def __init__(self):  # the hub's answer, without an HTTP response object
            Exception.__init__(self, "401 Client Error: Repository Not Found")

    cases = (([unreachable], "the hub cannot be reached (ConnectionError: [Errno -2] Name or service not known)"),
             ([EntryNotFoundError("404")] * 2, "the hub answered: model.safetensors is not in the repository, "
                                               "pytorch_model.bin is not in the repository"),
             ([NoRepository()], "the hub answered: no repository nvidia/mit-b9 (or it is private or gated)"))
    for answer, says in cases:
        answers[:], asked[:] = answer, []
        with pytest.raises(PretrainedSourceError) as err:
            fetch("hf-hub:nvidia/mit-b9@v1")
        message = str(err.value)
        assert "\n" not in message and f" of nvidia/mit-b9@v1 is not in the cache {hub_cache} and {says}; download " \
            f"{url} on a machine" in message, message
        assert asked[:2] == [("model.safetensors", True), ("pytorch_model.bin", True)]  # the cache first
        assert not answers  # and nothing asked of the hub after it could not be reached


def test_hf_hub_from_the_cache(hub_cache):
    source = _mit_b0(seed=1)
    _cache_file(hub_cache, "nvidia/mit-b0", "pytorch_model.bin", source.state_dict())
    target = _mit_b0()
    report = load_checkpoint(target, "hf-hub:nvidia/mit-b0")  # no model.safetensors: the .bin
    assert report["layout"] == "segformer"
    _assert_same_state(target.state_dict(), source.state_dict())
    commit = "b" * 40
    path = _cache_file(hub_cache, "nvidia/mit-b0", "model.safetensors", _mit_b0(seed=2).state_dict(), commit=commit,
                       ref="v2")
    assert fetch(f"hf-hub:nvidia/mit-b0@{commit}") == path
    assert fetch("hf-hub:nvidia/mit-b0@v2") == path
    load_checkpoint(target, "hf-hub:nvidia/mit-b0@v2")
    _assert_same_state(target.state_dict(), _mit_b0(seed=2).state_dict())


def test_timm_source_uses_timms_hub_file(hub_cache, timm_state):
    repo = timm.models.get_pretrained_cfg("vit_tiny_patch16_224").hf_hub_id
    assert repo == "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    with pytest.raises(PretrainedSourceError, match=f"model.safetensors or pytorch_model.bin of {repo} is not in"):
        load_checkpoint(StandInViTEncoder(), "timm:vit_tiny_patch16_224")
    _cache_file(hub_cache, repo, "model.safetensors", timm_state)
    encoder = StandInViTEncoder()
    report = load_checkpoint(encoder, "timm:vit_tiny_patch16_224")
    assert report["layout"] == "timm" and report["target"] == "vit"
    torch.testing.assert_close(encoder.vit.pos_embed, timm_state["pos_embed"])
    for bad, says in (("timm:no_such_model", "timm has no model 'no_such_model'"),
                      ("timm:vit_tiny_patch16_224.nope", "Invalid pretrained tag (nope)"),
                      ("hf-hub:", "expected hf-hub:owner/name")):
        with pytest.raises(PretrainedSourceError, match=None) as err:
            fetch(bad)
        assert says in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_environment_variables_are_respected(tmp_path):
    """HF_HUB_OFFLINE=1 and an empty HF_HOME, as a user sets them (read when huggingface_hub starts)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_CACHE", None)
    code = ("from tscd.models.pretrained import fetch, PretrainedSourceError\n"
            "try:\n    fetch('hf-hub:nvidia/mit-b1')\nexcept PretrainedSourceError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(
        "cannot get the weights of hf-hub:nvidia/mit-b1: model.safetensors or pytorch_model.bin of nvidia/mit-b1 is "
        f"not in the cache {tmp_path / 'hf' / 'hub'} and HF_HUB_OFFLINE is set;"), out.stdout


# ---- the CLI ----------------------------------------------------------------------------------
def _cli_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tscd: error: "), lines
    return lines[0]


def test_a_bad_pretrained_is_one_line_at_the_cli(hub_cache, tmp_path, capsys):
    run = ["train", "--config", "synthetic", "--work-dir", str(tmp_path / "run"), *TINY]
    assert main([*run, "model.pretrained=hf-hub:nvidia/mit-b0"]) == 1
    assert _cli_error(capsys).startswith("tscd: error: cannot get the weights of hf-hub:nvidia/mit-b0: model.")
    unknown = tmp_path / "unknown.safetensors"
    save_file({"w": torch.zeros(1)}, unknown)
    assert main([*run, f"model.pretrained={unknown}"]) == 1
    assert _cli_error(capsys).startswith(f"tscd: error: {unknown} is in no weights layout tscd knows for a TSCD")
    wrong = tmp_path / "b1.safetensors"  # a Hugging Face mit-b1 file for the config's mit_b0
    save_file({f"segformer.encoder.layer_norm.{i}.weight": torch.ones(c) for i, c in enumerate((64, 128, 320, 512))}
              | {"segformer.encoder.patch_embeddings.0.proj.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    assert main([*run, f"model.pretrained={wrong}"]) == 1
    line = _cli_error(capsys)
    assert line.startswith(f"tscd: error: {wrong} does not match the encoder (MixVisionTransformer): missing"), line
    assert "size mismatch (5): norm1.weight: checkpoint (64,) vs model (32,)" in line, line
