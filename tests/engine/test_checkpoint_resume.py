import os

import pytest
import torch

from tscd.config import load_config
from tscd.engine import checkpoint as ckpt_io
from tscd.engine.trainer import Trainer

from . import TINY


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pth"
    ckpt_io.atomic_save({"model": {"w": torch.ones(2)}}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt_io.atomic_save({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt_io.load(path)["model"]["w"], torch.ones(2))
    assert os.listdir(path.parent) == ["last.pth"]  # no temporary file left behind


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ckpt_io.CheckpointError, match="not found"):
        ckpt_io.load(tmp_path / "none.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ckpt_io.CheckpointError, match="bad.pth"):
        ckpt_io.load(bad)


def test_resume_is_exact(tmp_path):
    """4 steps in one go == 2 steps, save, resume, 2 more (across the cls-only stage boundary)."""
    cfg = lambda: load_config("synthetic", TINY)  # noqa: E731
    full = Trainer(cfg(), tmp_path / "full", progress=False)
    full.train()
    Trainer(cfg(), tmp_path / "part", progress=False).train(stop_at=3)
    resumed = Trainer(cfg(), tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 3
    resumed.train()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.optimizer.state_dict()["state"].keys() == full.optimizer.state_dict()["state"].keys()
