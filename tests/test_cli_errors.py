"""The CLI's one error line names the cause: bad config values before anything runs, the file
behind a DataLoader worker's error; overrides may come before, between or after the flags."""
import os

import pytest
import torch

from tscd import cli
from tscd.cli import _config, build_parser, main
from tscd.data import DatasetError

from .engine import TINY


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("args, message", [
    (["train.max_iters=-1"], "'train.max_iters' must be >= 1, got -1"),
    (["--max-iters", "0"], "'train.max_iters' must be >= 1, got 0"),
    (["train.eval_interval=0"], "'train.eval_interval' must be >= 1, got 0"),
    (["data.mean=[0.5,0.5]"], "'data.mean' must be 3 finite numbers, got [0.5, 0.5]"),
])
def test_bad_config_values_stop_before_anything_runs(tmp_path, capsys, args, message):
    work = tmp_path / "run"
    assert main(["train", "--config", "synthetic", "--work-dir", str(work), *args]) == 1
    assert _error_lines(capsys) == [f"tscd: error: {message}"]
    assert not work.exists()


@pytest.mark.parametrize("argv", [
    ["train", "--config", "synthetic", "--max-iters", "5", "optim.lr=1e-3", "loss.seg=0.2"],
    ["train", "optim.lr=1e-3", "--config", "synthetic", "loss.seg=0.2", "--max-iters", "5"],
    ["train", "--config", "synthetic", "optim.lr=1e-3", "--resume", "--max-iters", "5", "loss.seg=0.2", "--debug"],
    ["demo", "--max-iters", "5", "optim.lr=1e-3", "--backend", "torch", "loss.seg=0.2"],
])
def test_overrides_go_anywhere_among_the_flags_of_train_and_demo(argv):
    args = build_parser().parse_args(argv)
    assert args.overrides == ["optim.lr=1e-3", "loss.seg=0.2"]
    cfg = _config(args)
    assert cfg.train.max_iters == 5 and cfg.optim.lr == 1e-3 and cfg.loss.seg == 0.2
    assert args.resume == ("--resume" in argv) and args.debug == ("--debug" in argv)


def test_overrides_go_anywhere_among_the_flags_of_eval_and_pseudo_labels():
    args = build_parser().parse_args(["eval", "eval.max_images=2", "--checkpoint", "c.pth", "--flip",
                                      "eval.num_vis=1", "--out", "x.json", "--scales", "1.0,0.5"])
    assert (args.overrides, args.checkpoint, args.flip, args.out, args.scales) == (
        ["eval.max_images=2", "eval.num_vis=1"], "c.pth", True, "x.json", "1.0,0.5")
    args = build_parser().parse_args(["pseudo-labels", "--checkpoint", "c.pth", "refine.num_iter=3", "--out", "o",
                                      "cam.high=0.6", "--refine", "par"])
    assert (args.overrides, args.out, args.refine) == (["refine.num_iter=3", "cam.high=0.6"], "o", "par")
    args = build_parser().parse_args(["infer", "--checkpoint", "c.pth", "a.png", "--out", "o", "b.png"])
    assert args.images == ["a.png", "b.png"] and args.out == "o"


def test_a_late_override_reaches_the_config_check(tmp_path, capsys):
    """Formerly argparse's "unrecognized arguments: optim.lrr=1"; now the config names the key."""
    assert main(["train", "--config", "synthetic", "optim.lr=1e-3", "--max-iters", "5", "optim.lrr=1",
                 "--work-dir", str(tmp_path)]) == 1
    assert _error_lines(capsys) == ["tscd: error: override: unknown config key 'optim.lrr'"]
    with pytest.raises(SystemExit):
        main(["train", "--config", "synthetic", "--max-iters", "5", "--bogus", "optim.lr=1"])
    assert "unrecognized arguments: --bogus" in _error_lines(capsys)[-1]


class _BadFiles(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        try:
            raise OSError("truncated")
        except OSError as err:  # a chained error, as a dataset reading a file raises it
            raise DatasetError(f"cannot read image /data/images/{index}.jpg: {err}\nsecond line") from err


def test_an_error_in_a_dataloader_worker_names_its_file(monkeypatch, capsys):
    def run(args):
        for _ in torch.utils.data.DataLoader(_BadFiles(), num_workers=1):
            pass

    add_args, _, help_text = cli.COMMANDS["train"]
    monkeypatch.setitem(cli.COMMANDS, "train", (add_args, run, help_text))
    assert main(["train", "--config", "synthetic"]) == 1
    assert _error_lines(capsys) == ["tscd: error: cannot read image /data/images/0.jpg: truncated"]


def test_other_errors_keep_their_first_line(monkeypatch, capsys):
    def run(args):
        raise ValueError("the first line\nthe second")

    add_args, _, help_text = cli.COMMANDS["train"]
    monkeypatch.setitem(cli.COMMANDS, "train", (add_args, run, help_text))
    assert main(["train", "--config", "synthetic"]) == 1
    assert _error_lines(capsys) == ["tscd: error: the first line"]


def test_a_config_that_is_a_folder_or_not_text_is_one_line_naming_it(tmp_path, capsys):
    """A folder said "config file not found"; a binary file gave a bare UTF-8 decode error."""
    folder = tmp_path / "configs"
    folder.mkdir()
    binary = tmp_path / "model.pth"
    binary.write_bytes(b"PK\x03\x04\x80\xff\x00 not text")
    for config, says in [(folder, f"config {folder} is a folder, not a YAML file (or the name of a built-in "
                                  "config: coco, folder, synthetic, voc"),
                         (binary, f"{binary} line 1: not UTF-8 (byte 0x80 at offset 4); save the config file as "
                                  "UTF-8")]:
        assert main(["train", "--config", str(config), "--work-dir", str(tmp_path / "run")]) == 1
        [line] = _error_lines(capsys)
        assert line.startswith(f"tscd: error: {says}"), line
    assert not (tmp_path / "run").exists()


def test_an_unknown_log_level_is_one_line_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("TSCD_LOG_LEVEL", "LOUD")
    assert main(["train", "--config", "synthetic", "--max-iters", "0"]) == 1
    assert _error_lines(capsys) == ["tscd: error: TSCD_LOG_LEVEL must be a logging level name (DEBUG, INFO, "
                                    "WARNING, ERROR), got 'LOUD'"]


def test_triton_on_the_cpu_without_its_interpreter_is_refused_up_front(tmp_path, monkeypatch, capsys):
    """It trained, then failed at the first evaluation: "Cannot call @triton.jit'd outside of the
    scope of a kernel" (TRITON_INTERPRET set by the run itself, after Triton was imported)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    work = tmp_path / "run"
    assert main(["train", "--config", "synthetic", "--work-dir", str(work), "--backend", "triton",
                 "train.device=cpu", *TINY, "train.max_iters=3", "loss.stage1_iters=1", "train.eval_interval=1"]) == 1
    [line] = _error_lines(capsys)
    assert line.startswith("tscd: error: train.backend=triton cannot run on the cpu: triton runs on CPU tensors "
                           "only with TRITON_INTERPRET=1; "), line
    assert "TRITON_INTERPRET=1" in line and "CUDA" in line and "--backend" in line
    assert "TRITON_INTERPRET" not in os.environ and not work.exists()
