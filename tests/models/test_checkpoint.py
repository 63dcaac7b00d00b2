"""load_checkpoint: our files, SegFormer backbone files, AFA/TSCD checkpoints, clear errors; files
that pickle code are refused (weights-only loading, always)."""
import inspect
import json
import struct
import warnings
import zipfile

import pytest
import timm
import torch

from tscd.models import TSCD, CheckpointMismatchError, build_backbone, load_checkpoint
from tscd.models.checkpoint import CheckpointReadError, read_checkpoint_file
from tscd.models.pretrained import LAYOUTS


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


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for a checkpoint that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(params=["zip", "legacy"])
def pickled_code(request, source, tmp_path):
    """(a checkpoint whose weights are fine but which also pickles code, the marker that code would write)."""
    path, marker = tmp_path / "payload.pth", tmp_path / "marker"
    torch.save({"model": source.state_dict(), "meta": WritesMarker(marker)}, path,
               _use_new_zipfile_serialization=request.param == "zip")
    return path, marker


def test_pickled_code_is_refused_and_never_runs(pickled_code):
    path, marker = pickled_code
    loaders = {"load_checkpoint": lambda: load_checkpoint(_fresh(), path),
               "pretrained=": lambda: TSCD("mit_b0", num_classes=4, pretrained=str(path)),
               "timm": lambda: timm.create_model("mit_b0", pretrained=str(path))}
    for name, load in loaders.items():
        with pytest.raises(CheckpointReadError) as err:
            load()
        message = str(err.value)
        assert "\n" not in message and str(path) in message, name
        assert "refused" in message and "open" in message, message  # the object it would have called
    assert not marker.exists()
    assert "weights_only" not in inspect.signature(load_checkpoint).parameters  # no way to switch it off


class RunsSystem:
    """Unpickling this calls ``os.system``: the refusal must say that loading would run code, and never
    repeat torch's advice to load with ``weights_only=False``."""

    def __reduce__(self):
        import os

        return os.system, ("true",)


@pytest.mark.parametrize("zip_format", [True, False])
def test_code_is_refused_as_code_not_as_damage(zip_format, tmp_path):
    path = tmp_path / "system.pth"
    torch.save({"w": torch.ones(2), "x": RunsSystem()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointReadError) as err:
        read_checkpoint_file(path)
    message = str(err.value)
    assert "would run code" in message and "system" in message and "damaged" not in message, message
    assert "weights_only" not in message, message


def test_a_damaged_file_does_not_repeat_torchs_advice(tmp_path):
    path = tmp_path / "damaged.pth"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[:2] + b"\xff\xfe" * 40)
    with pytest.raises(CheckpointReadError, match="damaged") as err:
        read_checkpoint_file(path)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("damage", ["nan", "inf", "integer"])
def test_weights_that_would_load_as_garbage_are_refused(source, tmp_path, suffix, damage):
    """NaN/inf weights (a diverged run) or float weights stored as integers load silently into junk
    masks unless refused, naming the file and the first bad key; by --checkpoint, pretrained= and timm."""
    state = dict(source.state_dict())
    key = sorted(k for k, v in state.items() if v.is_floating_point())[3]
    if damage == "integer":
        state[key] = state[key].round().to(torch.int32)
    else:
        state[key] = state[key].clone()
        state[key].view(-1)[0] = float(damage)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state}, path)
    expected = "int32" if damage == "integer" else "non-finite"
    for load in (lambda: load_checkpoint(_fresh(), path), lambda: load_checkpoint(_fresh(), path, strict=False),
                 lambda: TSCD("mit_b0", num_classes=4, pretrained=str(path))):
        with pytest.raises(CheckpointMismatchError) as err:
            load()
        message = str(err.value)
        assert str(path) in message and key in message and expected in message and "\n" not in message, message


def _damaged_safetensors(path):
    """A safetensors header promising 16 bytes of data, followed by 4."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)


def _zip_of_text(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "not a checkpoint")


def _torchscript(path):
    """A torch.jit.save archive, as OpenAI's CLIP ViT-B-16.pt."""
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)


def _truncated(path, state):
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncated_legacy(path, state):
    torch.save(state, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


NOT_CHECKPOINTS = {  # name -> (writer, what the message says)
    "text": (lambda p, s: p.write_text("quote: a text file\n"), "is not a PyTorch checkpoint"),
    "text2": (lambda p, s: p.write_text("hello\n"), "is not a PyTorch checkpoint"),
    "empty": (lambda p, s: p.write_bytes(b""), "is empty"),
    "folder": (lambda p, s: p.mkdir(), "is a folder"),
    "missing": (lambda p, s: None, "checkpoint not found"),
    "zip": (lambda p, s: _zip_of_text(p), "is a zip archive but not a PyTorch checkpoint"),
    "torchscript": (lambda p, s: _torchscript(p),
                    "is a TorchScript archive (as OpenAI's CLIP .pt files), which holds code; tscd loads weights only"),
    "safetensors": (lambda p, s: _damaged_safetensors(p), "is a damaged safetensors file"),
    "truncated": (lambda p, s: _truncated(p, s), "damaged"),
    "truncated_legacy": (lambda p, s: _truncated_legacy(p, s), "damaged"),
}


@pytest.mark.parametrize("kind", NOT_CHECKPOINTS)
def test_a_file_that_is_not_a_checkpoint_is_named_in_one_line(kind, source, tmp_path):
    write, says = NOT_CHECKPOINTS[kind]
    path = tmp_path / "weights.pth"
    write(path, source.encoder.state_dict())
    for load in (lambda: read_checkpoint_file(path), lambda: load_checkpoint(_fresh(), path),
                 lambda: TSCD("mit_b0", num_classes=4, pretrained=str(path))):
        with pytest.raises(CheckpointReadError) as err:
            load()
        message = str(err.value)
        assert isinstance(err.value, ValueError) and "\n" not in message, message
        assert str(path) in message and says in message, message


def test_safetensors_files_load(source, tmp_path):
    """safetensors holds tensors only: read as they are, in any layout load_checkpoint knows."""
    from safetensors.torch import save_file

    path = tmp_path / "mit_b0.safetensors"
    save_file({k: v.contiguous() for k, v in source.encoder.state_dict().items()}, path)
    state = read_checkpoint_file(path)
    assert state.keys() == source.encoder.state_dict().keys()
    target = _fresh()
    assert load_checkpoint(target, path)["target"] == "encoder"
    _assert_same(source.encoder, target.encoder)
    _assert_same(source.encoder, TSCD("mit_b0", num_classes=4, pretrained=str(path)).encoder)
    save_file({"w": torch.zeros(1)}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(_fresh(), path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path} is in no weights layout tscd knows for a TSCD"), message
    assert "(first keys: w)" in message and all(f"{name}: " in message for name in LAYOUTS), message


def test_a_mismatch_names_the_file_and_the_first_keys_on_its_first_line(source, tmp_path):
    path = tmp_path / "b1.pth"
    torch.save(build_backbone("mit_b1").state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(_fresh(), path)
    first = str(err.value).splitlines()[0]  # the CLI shows only this line
    assert first.startswith(f"{path} does not match the encoder"), first
    assert "size mismatch (176): block1.0.attn.kv.bias: checkpoint (128,) vs model (64,)" in first, first
