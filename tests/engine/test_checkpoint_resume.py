import os

import pytest
import torch

from tscd.config import load_config
from tscd.engine import checkpoint
from tscd.engine.trainer import Trainer

from . import TINY


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pth"
    checkpoint.atomic_save({"model": {"w": torch.ones(2)}}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_save({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(2))
    assert os.listdir(path.parent) == ["last.pth"]  # no temporary file left behind


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "none.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="bad.pth"):
        checkpoint.load(bad)


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


def test_sigterm_saves_last_checkpoint_and_exits_143(tmp_path):
    """A scheduler's SIGTERM during training: the iteration under way is finished, last.pth is
    written at its end, the CLI says how to continue and exits 128 + 15."""
    import signal
    import subprocess
    import sys
    import time

    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "tscd", "train", "--config", "synthetic", "--work-dir", str(work), *TINY,
           "train.max_iters=100000", "train.eval_interval=100000", "train.ckpt_interval=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (work / "checkpoints" / "last.pth").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)  # inside the training loop once the first iteration is saved
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    state = checkpoint.load(work / "checkpoints" / "last.pth")
    assert state["step"] >= 1
    assert f"interrupted at iteration {state['step']}" in err and "--resume" in err


def test_atomic_writes_keep_the_usual_permissions(tmp_path):
    from tscd.engine.io import atomic_write, write_json

    old = os.umask(0o022)
    try:
        path = write_json({"a": 1}, tmp_path / "sub" / "m.json")
        assert (path.stat().st_mode & 0o777) == 0o644 and path.read_text() == '{\n  "a": 1\n}'
        with pytest.raises(RuntimeError):
            atomic_write(path, lambda f: (f.write(b"partial"), (_ for _ in ()).throw(RuntimeError("disk full"))))
        assert path.read_text() == '{\n  "a": 1\n}' and [p.name for p in path.parent.iterdir()] == ["m.json"]
    finally:
        os.umask(old)


def test_resume_refuses_a_changed_freeze_backbone(tmp_path):
    """Freezing or unfreezing the encoder changes the optimiser's parameter groups: a resumed run
    would fail inside torch; it is refused up front, naming the key and the way out."""
    Trainer(load_config("synthetic", TINY), tmp_path, progress=False).train(stop_at=1)
    with pytest.raises(checkpoint.CheckpointError, match=r"model.freeze_backbone=False \(the config says True\).*"
                                                     r"model.pretrained="):
        Trainer(load_config("synthetic", [*TINY, "model.freeze_backbone=true"]), tmp_path, resume=True,
                progress=False)
