"""What the training loop keeps when a run fails, is stopped or is resumed (issue #17, items 4–8, 12).

Each scenario stops a tiny run at iteration 3 (the first of stage 2, where the step draws random
numbers and updates BatchNorm statistics), resumes it and compares the result with one
uninterrupted run, bit for bit: a saved state that is not exactly "after iteration 2" (or 3)
cannot give the same weights and optimiser state.
"""
import errno
import logging
import math
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from tscd.config import ConfigError, load_config
from tscd.data import DatasetError
from tscd.engine import checkpoint, signals
from tscd.engine import trainer as trainer_module
from tscd.engine.io import atomic_write
from tscd.engine.runtime import TRAINING_OPS, prepare_backends
from tscd.engine.trainer import NonFiniteLossError, Trainer, TrainingInterrupted
from tscd.losses.objective import TSCDObjective
from tscd.ops.backends import can_run

from . import TINY


def _cfg(*overrides):
    return load_config("synthetic", [*TINY, *overrides])


def _after_forward(monkeypatch, iteration: int, action) -> None:
    """Call ``action(model, total, terms)`` inside the objective of ``iteration``, after the model's
    forward (mid-step: BatchNorm statistics updated, random numbers drawn); a returned
    ``(total, terms)`` replaces the objective's."""
    original = TSCDObjective.forward

    def forward(self, net, batch, step):
        total, terms, aux = original(self, net, batch, step)
        if step == iteration:
            total, terms = action(net, total, terms) or (total, terms)
        return total, terms, aux

    monkeypatch.setattr(TSCDObjective, "forward", forward)


def _assert_same_state(a: Trainer, b: Trainer) -> None:
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    oa, ob = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for i, state in oa["state"].items():
        for key, value in state.items():
            assert torch.equal(value, ob["state"][i][key]), (i, key)
    assert a.scheduler.state_dict() == b.scheduler.state_dict()


def _last(work):
    return checkpoint.load(work / "checkpoints" / "last.pth")


def _resume(work, *overrides) -> Trainer:
    trainer = Trainer(_cfg(*overrides), work, resume=True, progress=False)
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 4-iteration run (config work_dir: runs/demo, the synthetic config's)."""
    trainer = Trainer(_cfg(), tmp_path_factory.mktemp("reference") / "run", progress=False)
    trainer.train()
    return trainer


def test_a_failure_mid_step_saves_the_last_completed_iteration(tmp_path, monkeypatch, reference):
    def fail(model, total, terms):
        raise OSError("image-003.jpg: image file is truncated")

    _after_forward(monkeypatch, 3, fail)
    work = tmp_path / "run"
    with pytest.raises(OSError, match="truncated"):
        Trainer(_cfg(), work, progress=False).train()
    assert _last(work)["step"] == 2
    monkeypatch.undo()
    _assert_same_state(reference, _resume(work))


def test_a_signal_stops_at_the_step_boundary_and_resume_is_exact(tmp_path, monkeypatch, reference):
    """(Here with a loader worker process, which changes nothing either.)"""
    _after_forward(monkeypatch, 3, lambda model, total, terms: os.kill(os.getpid(), signal.SIGTERM))
    work = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        Trainer(_cfg("data.num_workers=1"), work, progress=False).train()
    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back
    assert _last(work)["step"] == 3  # iteration 3 was finished, not cut off
    monkeypatch.undo()
    _assert_same_state(reference, _resume(work, "data.num_workers=1"))


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # "Signal 17 ignored ..."
def test_a_signal_to_the_whole_process_group_stops_the_run_as_an_interruption(tmp_path, monkeypatch, reference):
    """SIGTERM sent to every process of the run (``kill -- -PGID``, ``timeout``, a cluster's
    scheduler cancelling the job) kills the loader's worker too (torch's worker dies of a SIGTERM
    that its parent did not send), and torch raises that into the main process mid-step: the
    iteration under way must still finish, and the run stop as interrupted by SIGTERM."""
    sigchld = []

    def terminate_all(model, total, terms):
        workers = multiprocessing.active_children()
        assert workers  # the loader's
        sigchld.append(signal.getsignal(signal.SIGCHLD))  # torch's, installed with the workers
        subprocess.run(["kill", "-TERM", str(os.getpid()), *(str(w.pid) for w in workers)], check=True)
        time.sleep(2.0)  # the worker dies meanwhile: torch's SIGCHLD handler would raise here

    _after_forward(monkeypatch, 3, terminate_all)
    work = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        Trainer(_cfg("data.num_workers=1"), work, progress=False).train()
    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGCHLD) is sigchld[0]  # put back once stopped
    assert _last(work)["step"] == 3
    monkeypatch.undo()
    _assert_same_state(reference, _resume(work, "data.num_workers=1"))


def test_a_worker_found_dead_after_a_stop_signal_counts_as_the_interruption(tmp_path, monkeypatch, reference):
    """A signal that arrives while the main process awaits a batch, and killed the worker that was
    to send it: torch reports the worker's exit when the wait times out; the run stops as
    interrupted, keeping the last completed iteration."""
    loader = Trainer._loader

    def dying_loader(self):
        batches = loader(self)

        def stream():
            for served, batch in enumerate(batches):
                if served == 2:  # the batch of iteration 3
                    os.kill(os.getpid(), signal.SIGTERM)
                    raise RuntimeError("DataLoader worker (pid(s) 12345) exited unexpectedly")
                yield batch
        return stream()

    monkeypatch.setattr(Trainer, "_loader", dying_loader)
    work = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        Trainer(_cfg(), work, progress=False).train()
    assert stopped.value.signum == signal.SIGTERM
    assert isinstance(stopped.value.__cause__, RuntimeError)
    assert _last(work)["step"] == 2
    monkeypatch.undo()
    _assert_same_state(reference, _resume(work))


def test_a_loader_worker_ignores_ctrl_c():
    """Ctrl-C reaches the whole process group: the main process handles it, the worker does not."""
    before = signal.getsignal(signal.SIGINT)
    try:
        signals.leave_interrupts_to_the_main_process(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_second_signal_stops_at_once_keeping_the_last_completed_iteration(tmp_path, monkeypatch, reference,
                                                                           interactive_sigint):
    def twice(model, total, terms):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    _after_forward(monkeypatch, 3, twice)
    work = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        Trainer(_cfg(), work, progress=False).train()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert stopped.value.signum == signal.SIGINT
    assert _last(work)["step"] == 2
    monkeypatch.undo()
    _assert_same_state(reference, _resume(work))


def test_an_ignored_signal_stays_ignored_while_training(tmp_path, monkeypatch):
    seen = []
    _after_forward(monkeypatch, 1, lambda *_: seen.append(signal.getsignal(signal.SIGINT)))
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job
    try:
        Trainer(_cfg("train.max_iters=1"), tmp_path / "run", progress=False).train()
    finally:
        signal.signal(signal.SIGINT, before)
    assert seen == [signal.SIG_IGN]


def test_a_non_finite_loss_names_the_term_and_keeps_the_state_before_it(tmp_path, monkeypatch, reference):
    def nan_seg(model, total, terms):
        return total * math.nan, {**terms, "seg": terms["seg"] * math.nan}

    _after_forward(monkeypatch, 3, nan_seg)
    work = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: seg is nan") as err:
        Trainer(_cfg(), work, progress=False).train()
    assert err.value.iteration == 3 and err.value.terms == ["seg"]
    state = _last(work)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    monkeypatch.undo()
    _assert_same_state(reference, _resume(work))


def test_weights_that_became_non_finite_are_never_saved(tmp_path, monkeypatch):
    """A finite loss with a non-finite gradient (sqrt at 0) spoils the weights in iteration 2:
    its checkpoint (saved every iteration here) is refused, last.pth keeps iteration 1."""
    def nan_gradient(model, total, terms):
        return total + torch.sqrt(next(model.parameters()).flatten()[0] * 0), terms

    _after_forward(monkeypatch, 2, nan_gradient)
    work = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="non-finite weights after iteration 2"):
        Trainer(_cfg("train.ckpt_interval=1"), work, progress=False).train()
    state = _last(work)
    assert state["step"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (work / "checkpoints" / "iter_000002.pth").exists()


def test_checkpoints_by_wall_time(tmp_path, monkeypatch):
    saved = []
    original = checkpoint.atomic_save
    monkeypatch.setattr(checkpoint, "atomic_save", lambda obj, path: (saved.append(obj["step"]), original(obj, path)))
    Trainer(_cfg("train.max_iters=2", "train.ckpt_minutes=1e-9"), tmp_path / "a", progress=False).train()
    assert saved == [1, 2]  # due after every iteration, at its end; the final save
    saved.clear()
    Trainer(_cfg("train.max_iters=2", "train.ckpt_minutes=0"), tmp_path / "b", progress=False).train()
    assert saved == [2]


def test_the_real_work_dir_is_recorded(reference):
    work = reference.work_dir
    assert yaml.safe_load((work / "config.yaml").read_text())["work_dir"] == str(work)
    assert _last(work)["config"]["work_dir"] == str(work)


def test_resume_with_another_model_shape_names_the_key(reference):
    work = reference.work_dir
    with pytest.raises(DatasetError, match=r"data\.num_classes=5 does not match the dataset"):
        Trainer(_cfg("data.num_classes=5"), work, resume=True, progress=False)  # the dataset says first
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.embedding_dim=16 \(the config says 32\)"):
        Trainer(_cfg("model.embedding_dim=32"), work, resume=True, progress=False)


def test_resume_of_a_finished_run_trains_nothing_and_names_changed_settings(reference, caplog):
    work = reference.work_dir
    before = (work / "checkpoints" / "last.pth").read_bytes()
    with caplog.at_level(logging.INFO, logger="tscd"):
        trainer = Trainer(_cfg("optim.lr=1e-4"), work, resume=True, progress=False)
        metrics = trainer.train()
    assert "optim.lr" in caplog.text and "0.0001" in caplog.text
    assert "already finished at iteration 4" in caplog.text
    assert trainer.step == 4 and metrics["iteration"] == 4
    assert (work / "checkpoints" / "last.pth").read_bytes() == before


def test_deterministic_runs_are_bit_identical(tmp_path, monkeypatch):
    seen = []
    _after_forward(monkeypatch, 3, lambda *_: seen.append(torch.are_deterministic_algorithms_enabled()))
    a = Trainer(_cfg("train.max_iters=3", "train.deterministic=true"), tmp_path / "a", progress=False)
    a.train()
    b = Trainer(_cfg("train.max_iters=3", "train.deterministic=true"), tmp_path / "b", progress=False)
    b.train()
    assert seen == [True, True] and not torch.are_deterministic_algorithms_enabled()
    _assert_same_state(a, b)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_the_ops_backends_are_resolved_before_the_first_step(tmp_path, monkeypatch, backend):
    """A first build of the C++ extension happens while the trainer is built, before the first
    step and the ETA measured on it, not at the first refinement (the demo's first evaluation)."""
    resolved = []
    monkeypatch.setattr(trainer_module, "prepare_backends",
                        lambda cfg, device: resolved.append(prepare_backends(cfg, device)))
    trainer = Trainer(_cfg(f"train.backend={backend}"), tmp_path, progress=False)
    expected = "torch" if backend == "torch" or not can_run("cpp", "cpu") else "cpp"
    assert trainer.step == 0 and resolved == [{op: expected for op in TRAINING_OPS}]


def test_after_a_full_disk_resume_continues_from_the_newest_checkpoint(tmp_path, monkeypatch, reference, caplog):
    """iter_000002.pth was saved, last.pth then hit a full disk: the message claimed a previous
    last.pth was kept (there was none) and --resume did not look at iter_000002.pth."""
    original = checkpoint.atomic_save

    def full_disk(obj, path):
        if Path(path).name != "last.pth":
            return original(obj, path)

        def write(f):
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        atomic_write(path, write)

    monkeypatch.setattr(checkpoint, "atomic_save", full_disk)
    work = tmp_path / "run"
    with pytest.raises(OSError, match=r"last.pth: no space left on device \(no last.pth was written\)$"):
        Trainer(_cfg("train.ckpt_interval=2"), work, progress=False).train()
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["iter_000002.pth"]
    assert "iter_000002.pth holds iteration 2: continue with --resume" in caplog.text
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tscd"):
        _assert_same_state(reference, _resume(work, "train.ckpt_interval=2"))
    assert "resuming from iter_000002.pth (iteration 2)" in caplog.text


@pytest.mark.parametrize("backbone, crop, says", [
    # trained and evaluated on 1×1 maps without a word
    ("hybrid_tiny", 3, "'data.crop_size' is 3, below 16, the smallest crop the network can use: its output stride "
                       "is 8 (model.backbone=hybrid_tiny, model.stride=[4, 2, 1, 1]), and a smaller crop leaves its "
                       "CAM fewer than 2×2 positions"),
    # failed in the first step of stage 2 with "input too small: stage 1 grid ..."
    ("mit_b0", 40, "'data.crop_size' is 40, below 58, the smallest crop the network can use: on a smaller one, "
                   "the second view (loss.scd_scale=0.5 × the crop) fails: input too small: stage 1 grid is 7×7"),
])
def test_a_crop_the_network_cannot_use_is_refused_naming_the_minimum(tmp_path, backbone, crop, says):
    with pytest.raises(ConfigError) as info:
        Trainer(_cfg(f"model.backbone={backbone}", f"data.crop_size={crop}"), tmp_path / "run", progress=False)
    assert str(info.value).startswith(says), str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB."),
])
def test_running_out_of_memory_in_a_step_names_the_settings(tmp_path, monkeypatch, error):
    """Formerly torch's raw allocation error."""
    def fail(model, total, terms):
        raise error

    _after_forward(monkeypatch, 3, fail)
    with pytest.raises(MemoryError) as info:
        Trainer(_cfg(), tmp_path / "run", progress=False).train()
    assert str(info.value) == (f"out of memory in training iteration 3 with data.batch_size=2 and data.crop_size=64 "
                               f"(model.backbone=mit_b0): lower either ({str(error).splitlines()[0]})")
    assert _last(tmp_path / "run")["step"] == 2
