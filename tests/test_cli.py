import json

import numpy as np
import pytest
from PIL import Image

from tscd.cli import main
from tscd.config import ConfigError

from .engine import TINY


def _err(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return lines[-1]


def test_error_lines(tmp_path, capsys):
    assert main(["train", "--config", "synthetic", "--work-dir", str(tmp_path), "optim.lrr=1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "tscd: error: override: unknown config key 'optim.lrr'" and "Traceback" not in err
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "config file not found" in _err(capsys)
    assert main(["train", "--config", "voc", "--work-dir", str(tmp_path / "w")]) == 1
    assert "needs a root" in _err(capsys)
    assert main(["train", "--config", "voc", "--data-root", str(tmp_path / "missing"), "--work-dir",
                 str(tmp_path / "w")]) == 1
    assert _err(capsys) == f"tscd: error: voc root not found: {tmp_path / 'missing'}"
    assert main(["train", "--config", "synthetic", "--work-dir", str(tmp_path / "w"), "--resume"]) == 1
    assert "no checkpoint" in _err(capsys)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"junk")
    assert main(["infer", "--checkpoint", str(bad), str(bad), "--out", str(tmp_path)]) == 1
    assert _err(capsys) == f"tscd: error: {bad} is not a PyTorch checkpoint (a file written by torch.save)"
    with pytest.raises(ConfigError):
        main(["train", "--config", "synthetic", "--debug", "--work-dir", str(tmp_path), "optim.lrr=1"])
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", "x.pth", "--crf-preset", "dcrf"])
    err = _err(capsys)
    assert "invalid choice: 'dcrf'" in err and "weclip" in err


def test_train_eval_infer_end_to_end(tmp_path, capsys):
    work = tmp_path / "run"
    args = ["train", "--config", "synthetic", "--work-dir", str(work), "--backend", "torch", *TINY]
    assert main(args) == 0
    ckpt = work / "checkpoints" / "last.pth"
    metrics = json.loads((work / "metrics.json").read_text())
    for key in ("seg_miou", "cam_miou", "pseudo_miou", "cls_f1", "per_class_iou", "iteration", "wall_time"):
        assert key in metrics["latest"]
    assert metrics["history"][-1]["iteration"] == 4
    assert (work / "vis" / "iter_000004.png").is_file()

    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--out", str(out), "eval.max_images=2"]) == 0
    assert json.loads(out.read_text())["num_images"] == 2
    assert main(["eval", "--config", "voc", "--checkpoint", str(ckpt), "--data-root", str(tmp_path)]) == 1
    assert "data.num_classes=6" in _err(capsys)
    assert main(["eval", "--checkpoint", str(ckpt), "--out", str(out), "eval.crf=exact", "eval.crf_preset=dcrf"]) == 1
    assert _err(capsys) == ("tscd: error: crf_preset must be one of ('afa', 'toco', 'seco', 'excel', 'weclip'), "
                            "got 'dcrf'")

    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(img)
    masks = tmp_path / "masks"
    assert main(["infer", "--checkpoint", str(ckpt), str(img), "--out", str(masks)]) == 0
    mask = Image.open(masks / "photo_mask.png")
    assert mask.mode == "P" and mask.size == (50, 40)
    assert (masks / "photo_overlay.png").is_file()
    crf_masks = tmp_path / "crf_masks"
    assert main(["infer", "--checkpoint", str(ckpt), str(img), "--out", str(crf_masks), "--crf", "exact",
                 "--crf-preset", "toco"]) == 0
    assert Image.open(crf_masks / "photo_mask.png").size == (50, 40)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8garbage")
    assert main(["infer", "--checkpoint", str(ckpt), str(corrupt), "--out", str(masks)]) == 1
    assert "corrupt.jpg" in _err(capsys)


@pytest.mark.parametrize("root", ["runs/my data #1", "yes", "2024-01-01", "1:30", "null"])
def test_flags_go_into_the_config_literally(root):
    from tscd.cli import _config, build_parser

    args = build_parser().parse_args(["train", "--config", "synthetic", "--data-root", root, "--max-iters", "7",
                                      "--backend", "torch", "optim.lr=2e-4"])
    cfg = _config(args)
    assert cfg.data.root == root and cfg.train.max_iters == 7 and cfg.train.backend == "torch"
    assert cfg.optim.lr == 2e-4
