"""load_checkpoint: our files, SegFormer backbone files, AFA/TSCD checkpoints, clear errors."""
import pytest
import timm
import torch

from tscd.models import TSCD, CheckpointMismatchError, build_backbone, load_checkpoint


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    return TSCD("mit_b0", num_classes=4)


def _fresh():
    torch.manual_seed(1)
    return TSCD("mit_b0", num_classes=4)


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)


def test_round_trip_of_our_file_with_ddp_prefixes(source, tmp_path):
    path = tmp_path / "ours.pth"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": state, "iteration": 7}, path)
    target = _fresh()
    report = load_checkpoint(target, path)
    assert report["target"] == "model" and not report["missing"] and not report["unexpected"]
    _assert_same(source, target)
    source.eval(), target.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(source(x), target(x)):
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(a, b)


def test_afa_style_plain_state_dict(source, tmp_path):
    path = tmp_path / "afa.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    target = _fresh()
    load_checkpoint(target, path)
    _assert_same(source, target)


def test_segformer_backbone_file_with_head(source, tmp_path):
    state = dict(source.encoder.state_dict())
    state["head.weight"] = torch.randn(1000, 256)
    state["head.bias"] = torch.randn(1000)
    path = tmp_path / "mit_b0.pth"
    torch.save(state, path)
    target = _fresh()
    decoder_before = {k: v.clone() for k, v in target.decoder.state_dict().items()}
    report = load_checkpoint(target, path)
    assert report["target"] == "encoder" and report["dropped"] == ["head.bias", "head.weight"]
    _assert_same(source.encoder, target.encoder)
    for k, v in target.decoder.state_dict().items():
        torch.testing.assert_close(v, decoder_before[k])
    enc = build_backbone("mit_b0")
    load_checkpoint(enc, {"state_dict": state})  # mmseg-style wrapper, into a bare encoder
    _assert_same(source.encoder, enc)
    plain = build_backbone("mit_b0")  # what "strict after dropping head.*" means literally
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")}, strict=True)


def test_pretrained_argument_and_timm(source, tmp_path):
    path = tmp_path / "mit_b0.pth"
    torch.save(source.encoder.state_dict(), path)
    _assert_same(source.encoder, TSCD("mit_b0", num_classes=4, pretrained=str(path)).encoder)
    _assert_same(source.encoder, timm.create_model("mit_b0", pretrained=str(path)))


def test_full_checkpoint_into_bare_encoder(source):
    enc = build_backbone("mit_b0")
    report = load_checkpoint(enc, source.state_dict())
    assert "classifier.weight" in report["dropped"]
    _assert_same(source.encoder, enc)


def test_missing_key_is_named(source):
    state = source.state_dict()
    del state["decoder.linear_pred.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): decoder\.linear_pred\.bias"):
        load_checkpoint(_fresh(), state)
    enc_state = source.encoder.state_dict()
    del enc_state["block4.1.mlp.fc2.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"encoder.*\n.*missing \(1\): block4\.1\.mlp\.fc2\.weight"):
        load_checkpoint(_fresh(), enc_state)


def test_size_and_unexpected_keys_are_named(source):
    state = source.state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(TSCD("mit_b0", num_classes=6), state)
    message = str(err.value)
    assert "unexpected (1): extra.weight" in message
    assert "classifier.weight: checkpoint (3, 256, 1, 1) vs model (5, 256, 1, 1)" in message
    assert "decoder.linear_pred.weight" in message
    with pytest.raises(CheckpointMismatchError, match="size mismatch"):
        load_checkpoint(build_backbone("mit_b1"), source.encoder.state_dict())


def test_non_strict_loads_what_matches(source):
    target = TSCD("mit_b0", num_classes=6)
    report = load_checkpoint(target, source.state_dict(), strict=False)
    assert sorted(k.split(":")[0] for k in report["mismatched"]) == [
        "classifier.weight", "decoder.linear_pred.bias", "decoder.linear_pred.weight"]
    _assert_same(source.encoder, target.encoder)


def test_not_a_state_dict():
    with pytest.raises(ValueError, match="no state dict"):
        load_checkpoint(_fresh(), {"epoch": 3})
