"""Checkpoints hold only tensors and plain data, so they load with ``weights_only=True``: a crafted
file that would run code when unpickled is refused, one clear line naming it."""
import pickle
import random

import numpy as np
import pytest
import torch

from tscd.config import load_config, to_dict
from tscd.engine import checkpoint
from tscd.engine.builders import build_model
from tscd.engine.schedule import build_optimizer, build_scheduler

from . import TINY


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears if the loader runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _trainer_style_checkpoint() -> dict:
    """What the trainer saves: model, AdamW and schedule states after a step, RNG, history, config."""
    cfg = load_config("synthetic", TINY)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler.step()
    history = [{"iteration": 4, "seg_miou": 0.25, "cls_f1": float("nan"), "num_images": 4,
                "per_class_iou": {"background": 0.5, "circle": None}}]
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "step": 1, "rng": [checkpoint.rng_state()], "history": history, "wall_time": 12.5,
            "config": to_dict(cfg), "class_names": ["background", "circle"]}


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


def test_a_trainer_checkpoint_loads_weights_only_and_round_trips(tmp_path):
    state = _trainer_style_checkpoint()
    path = tmp_path / "last.pth"
    checkpoint.atomic_save(state, path)
    torch.load(path, weights_only=True)  # no pickled object in it
    assert _same(checkpoint.load(path), state)


def test_rng_state_restores_every_stream_exactly(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # cached Gaussians are part of the state
    path = tmp_path / "rng.pth"
    checkpoint.atomic_save({"model": {}, "rng": [checkpoint.rng_state()]}, path)
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3), np.random.standard_normal(),
                torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.set_rng_state(checkpoint.load(path)["rng"][0])
    again = (random.random(), random.gauss(0, 1), np.random.rand(3), np.random.standard_normal(), torch.rand(3))
    assert expected[:2] == again[:2] and np.array_equal(expected[2], again[2]) and expected[3] == again[3]
    assert torch.equal(expected[4], again[4])


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path, fmt):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    payload = {"model": {"w": torch.ones(1)}, "x": _Payload(marker)}
    if fmt == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path)
    assert not marker.exists()
    message = str(info.value)
    expected = (f"refused to load {path}: loading it would run code" if fmt == "torch"
                else f"{path} is damaged or not a PyTorch checkpoint")  # a bare pickle is no torch.save file
    assert message.startswith(expected)
    assert "\n" not in message and "Traceback" not in message


def test_a_checkpoint_with_numpy_objects_names_the_older_format(tmp_path):
    """What tscd wrote before: the numpy RNG state as a pickled array."""
    path = tmp_path / "old.pth"
    torch.save({"model": {}, "rng": [{"numpy": np.random.get_state()}]}, path)
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert message.startswith(f"refused to load {path}: loading it would run code")
    assert "numpy" in message and "\n" not in message


def test_a_safetensors_file_is_read_but_is_no_training_checkpoint(tmp_path):
    """safetensors files are read (tensors only), yet a weights file cannot resume training."""
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2)}, path)
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path)
    assert str(info.value) == f"{path} is not a tscd training checkpoint (no 'model' entry)"
