"""``tscd train`` / ``tscd demo`` and their work dir: one run at a time, an existing run continued
(``--resume``) or replaced (``--overwrite``) only when asked, interrupts exit 128 + signal."""
import json
import os
import signal
import subprocess
import sys

import pytest

from tscd.cli import main
from tscd.losses.objective import TSCDObjective

from .engine import TINY

ONE_ITERATION = [*TINY, "train.max_iters=1"]


def _err(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return lines[-1]


def _train(work, *extra):
    return main(["train", "--config", "synthetic", "--work-dir", str(work), *ONE_ITERATION, *extra])


def test_an_existing_run_is_continued_or_replaced_only_when_asked(tmp_path, capsys):
    work = tmp_path / "run"
    assert _train(work) == 0
    last = work / "checkpoints" / "last.pth"
    before = last.read_bytes()
    (work / "notes.txt").write_text("mine")
    (work / "checkpoints" / "keep.txt").write_text("mine")
    stale = [work / "checkpoints" / "iter_000500.pth", work / "vis" / "iter_000500.png"]
    for path in stale:
        path.write_bytes(b"old run")

    assert _train(work) == 1
    err = _err(capsys)
    assert str(work) in err and "--resume" in err and "--overwrite" in err
    assert last.read_bytes() == before and all(p.exists() for p in stale)

    assert _train(work, "--overwrite") == 0
    assert not any(p.exists() for p in stale)
    assert (work / "notes.txt").read_text() == "mine" and (work / "checkpoints" / "keep.txt").read_text() == "mine"
    assert [h["iteration"] for h in json.loads((work / "metrics.json").read_text())["history"]] == [1]
    assert sorted(p.name for p in work.iterdir()) == ["checkpoints", "config.yaml", "metrics.json", "notes.txt",
                                                      *(["tb"] if (work / "tb").exists() else []), "vis"]

    with pytest.raises(SystemExit):
        _train(work, "--resume", "--overwrite")
    assert "not allowed with argument" in _err(capsys)


def test_a_work_dir_in_use_is_refused_and_a_dead_holder_does_not_block(tmp_path, capsys):
    work = tmp_path / "run"
    hold = (f"import time; from tscd.engine.workdir import WorkDirLock; lock = WorkDirLock({str(work)!r}).acquire(); "
            "print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _train(work) == 1
        err = _err(capsys)
        assert str(work) in err and f"pid {holder.pid}" in err
    finally:
        holder.kill()  # SIGKILL: no clean-up, its lock file stays
        holder.wait()
    assert any(work.iterdir())  # the dead holder's lock file
    assert _train(work) == 0


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_exits_128_plus_the_signal(tmp_path, monkeypatch, capsys, interactive_sigint, signum, status):
    original = TSCDObjective.forward

    def forward(self, net, batch, step):
        if step == 1:
            os.kill(os.getpid(), signum)
        return original(self, net, batch, step)

    monkeypatch.setattr(TSCDObjective, "forward", forward)
    work = tmp_path / "run"
    assert main(["train", "--config", "synthetic", "--work-dir", str(work), *TINY]) == status
    assert "interrupted at iteration 1" in capsys.readouterr().err


def test_demo_records_its_work_dir(tmp_path, monkeypatch):
    """``demo --work-dir X`` trains into X and records X (not the config's runs/demo)."""
    import yaml

    work = tmp_path / "demo"
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--work-dir", str(work), *ONE_ITERATION]) == 0
    assert yaml.safe_load((work / "config.yaml").read_text())["work_dir"] == str(work)
    assert not (tmp_path / "runs").exists()
    assert main(["demo", "--work-dir", str(work), *ONE_ITERATION, "--overwrite"]) == 0


def test_a_work_dir_that_is_a_file_is_named(tmp_path, capsys):
    """Formerly "[Errno 17] File exists"."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for work, says in [(notes, f"work dir {notes} is a file"), (notes / "run", f"work dir {notes / 'run'}: {notes} "
                                                                                "is a file")]:
        assert _train(work) == 1
        assert _err(capsys) == f"tscd: error: {says}"
    assert notes.read_text() == "mine"


def test_a_run_never_writes_or_deletes_a_file_it_reads(tmp_path, capsys):
    """The work dir's config.yaml was written over the --config it read; --overwrite deleted the
    model.pretrained checkpoint it was about to read; a failed check left an --overwrite run
    deleted."""
    work = tmp_path / "run"
    work.mkdir()
    mine = work / "config.yaml"
    mine.write_text("# my settings\nmodel:\n  backbone: mit_b0\n")
    assert main(["train", "--config", str(mine), "--work-dir", str(work), *ONE_ITERATION]) == 1
    assert _err(capsys) == f"tscd: error: {mine} (a file the run in {work} writes or --overwrite deletes) would " \
                           f"overwrite the input {mine}: choose another output folder"
    assert mine.read_text().startswith("# my settings") and not (work / "checkpoints").exists()
    mine.rename(tmp_path / "mine.yaml")

    assert _train(work) == 0
    last = work / "checkpoints" / "last.pth"
    before = last.read_bytes()
    assert _train(work, "--overwrite", f"model.pretrained={last}") == 1
    assert _err(capsys).startswith(f"tscd: error: {last} (a file the run in {work} writes or --overwrite deletes) "
                                   f"would overwrite the input {last}")
    assert _train(work, "--overwrite", "data.crop_size=3") == 1
    assert "'data.crop_size' is 3" in _err(capsys)
    assert last.read_bytes() == before  # the run is replaced only once every check passed
    # resuming reads the run's own config.yaml, which the run rewrites
    assert main(["train", "--config", str(work / "config.yaml"), "--work-dir", str(work), "--resume",
                 *ONE_ITERATION, "train.max_iters=2"]) == 0


def test_train_says_what_data_it_found_before_the_first_step(tmp_path, caplog):
    caplog.set_level("INFO", logger="tscd")
    assert _train(tmp_path / "run") == 0
    lines = [r.getMessage() for r in caplog.records]
    first = next(i for i, line in enumerate(lines) if line.startswith("data: synthetic"))
    assert lines[first] == ("data: synthetic: train 50 images, val 4 images; 6 classes; image-level labels from "
                            "the generator (procedural shapes)")
    assert not any(line.startswith("iteration") for line in lines[:first])
