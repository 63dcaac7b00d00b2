"""Hugging Face transformers SegFormer checkpoints load into tscd's MiT exactly: a randomly
initialised ``transformers.SegformerModel`` saved with ``save_pretrained`` gives, through
``load_checkpoint``, the same four stage outputs (to 1e-5) as transformers itself.

transformers is a test-only dependency (the ``test`` extra); without it these tests are skipped,
saying so. Every parameter is drawn at random before saving (transformers initialises biases and
LayerNorms to constants, which would hide a swapped bias), and the inputs are not square. The
strides are SegFormer's ImageNet ones, (4, 2, 2, 2) (TSCD's last stage has stride 1).
"""
import re

import pytest
import torch

from tscd.models import TSCD, CheckpointMismatchError, build_backbone, load_checkpoint
from tscd.models.mit import MixVisionTransformer

from .test_pretrained import IMAGENET_STRIDES, randomised

transformers = pytest.importorskip("transformers", reason="transformers (the test extra) is not installed")

MIT_B0 = dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
              sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4])
ODD = dict(hidden_sizes=[24, 40, 72, 96], depths=[1, 3, 1, 2], num_attention_heads=[1, 2, 3, 4],
           sr_ratios=[4, 2, 2, 1], mlp_ratios=[2, 3, 4, 2])


# transformers 5 names, then transformers 4 names
_BLOCK_AND_STAGE_NORMS = r"(layernorm_(before|after)|stages\.\d+\.layer_norm|layer_norm_[12]|encoder\.layer_norm\.\d+)$"


def _original_eps(hf_model: torch.nn.Module) -> None:
    """transformers' SegFormer normalises its blocks and stage outputs with eps=1e-5 although the
    original SegFormer (which trained the weights) uses 1e-6 there, as tscd's MiT does; give the
    reference the original's eps, so that outputs agree to 1e-5 (the weights are what is under test)."""
    for name, module in hf_model.named_modules():
        if isinstance(module, torch.nn.LayerNorm) and re.search(_BLOCK_AND_STAGE_NORMS, name):
            module.eps = 1e-6


def _hf_features(hf_model, x: torch.Tensor) -> list[torch.Tensor]:
    base = getattr(hf_model, "segformer", hf_model)
    with torch.no_grad():
        return list(base(x, output_hidden_states=True).hidden_states)


def _mit_for(cfg: dict) -> MixVisionTransformer:
    torch.manual_seed(123)
    return MixVisionTransformer(cfg["hidden_sizes"], cfg["depths"], cfg["num_attention_heads"], cfg["mlp_ratios"],
                                cfg["sr_ratios"], stride=IMAGENET_STRIDES, drop_path_rate=0.0).eval()


def _assert_same_features(ours, theirs):
    assert len(ours) == len(theirs) == 4
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"stage {i + 1}")


@pytest.fixture(scope="module", params=["mit_b0", "odd"])
def hf_model(request):
    cfg = transformers.SegformerConfig(**(MIT_B0 if request.param == "mit_b0" else ODD))
    model = randomised(transformers.SegformerModel(cfg), seed=7)
    _original_eps(model)
    return request.param, model


def test_save_pretrained_safetensors_and_bin_reproduce_the_stage_outputs(hf_model, tmp_path):
    name, model = hf_model
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    from safetensors.torch import load_file

    saved = load_file(path)
    assert "encoder.block.0.0.attention.self.key.weight" in saved  # the hub's (transformers 4) names
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    expected = _hf_features(model, x)
    cfg = MIT_B0 if name == "mit_b0" else ODD
    for file in (path, tmp_path / "pytorch_model.bin"):
        if file.suffix == ".bin":  # transformers 5 always writes safetensors; a .bin is torch.save of the same dict
            torch.save(saved, file)
        mit = _mit_for(cfg)
        report = load_checkpoint(mit, file)
        assert report["layout"] == "hf-segformer" and not report["dropped"], report
        assert len(report["loaded"]) == len(mit.state_dict())
        with torch.no_grad():
            _assert_same_features(mit(x)[0], expected)


def test_an_in_memory_state_dict_converts_too(hf_model):
    """``model.state_dict()`` saved by torch.save: transformers 5's module names (``stages.*``,
    ``q_proj``/``k_proj``/``v_proj``, …), which its save_pretrained renames to the hub's."""
    name, model = hf_model
    mit = _mit_for(MIT_B0 if name == "mit_b0" else ODD)
    assert load_checkpoint(mit, model.state_dict())["layout"] == "hf-segformer"
    x = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_same_features(mit(x)[0], _hf_features(model, x))


def test_semantic_segmentation_checkpoint_fills_the_tscd_encoder(tmp_path):
    """``segformer.encoder.*`` of SegformerForSemanticSegmentation; its decode head is dropped and
    TSCD's own decoder is left as it was."""
    cfg = transformers.SegformerConfig(**MIT_B0, num_labels=5, decoder_hidden_size=64)
    model = randomised(transformers.SegformerForSemanticSegmentation(cfg), seed=3)
    _original_eps(model)
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    tscd = TSCD("mit_b0", num_classes=4, stride=IMAGENET_STRIDES, drop_path_rate=0.0).eval()
    decoder_before = {k: v.clone() for k, v in tscd.decoder.state_dict().items()}
    report = load_checkpoint(tscd, tmp_path / "model.safetensors")
    assert report["target"] == "encoder" and report["layout"] == "hf-segformer"
    assert report["dropped"] and all(k.startswith("decode_head.") for k in report["dropped"])
    for k, v in tscd.decoder.state_dict().items():
        torch.testing.assert_close(v, decoder_before[k])
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _assert_same_features(tscd.encoder(x)[0], _hf_features(model, x))
    # the same file through the constructor, into TSCD's own strides (4, 2, 2, 1)
    same = TSCD("mit_b0", num_classes=4, pretrained=str(tmp_path / "model.safetensors"))
    for k, v in tscd.encoder.state_dict().items():
        torch.testing.assert_close(same.encoder.state_dict()[k], v)


def test_image_classification_checkpoint_drops_the_classifier():
    cfg = transformers.SegformerConfig(**MIT_B0, num_labels=10)
    model = randomised(transformers.SegformerForImageClassification(cfg), seed=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_checkpoint(build_backbone("mit_b0"), state)
    assert report["dropped"] == ["classifier.bias", "classifier.weight"]


def test_nothing_is_left_at_random_init(hf_model, tmp_path):
    """A key the converter does not know, or one missing, fails the strict load and is named."""
    from safetensors.torch import load_file

    name, model = hf_model
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    mit_cfg = MIT_B0 if name == "mit_b0" else ODD
    state = saved | {"encoder.block.1.0.attention.self.rotary.weight": torch.zeros(3)}
    with pytest.raises(CheckpointMismatchError,
                       match=r"unexpected \(1\): encoder\.block\.1\.0\.attention\.self\.rotary\.weight"):
        load_checkpoint(_mit_for(mit_cfg), state)
    state = dict(saved)
    del state["encoder.block.2.0.attention.self.value.bias"]  # a key without its value: kept under its own name
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(_mit_for(mit_cfg), state)
    first = str(err.value).splitlines()[0]
    assert "missing (1): block3.0.attn.kv.bias" in first, first
    assert "unexpected (1): encoder.block.2.0.attention.self.key.bias" in first, first
