"""The shipped ViT configs (voc_vit_b, voc_clip_frozen) train through stage 2 and evaluate to
finite metrics on VOC-layout data, at a tiny crop and two iterations, with their own backbones."""
import json
import math

import pytest

from tests.data.test_voc import _make_voc
from tscd.cli import main
from tscd.config import load_config
from tscd.engine import checkpoint

TINY_RUN = [
    "data.crop_size=32", "data.batch_size=2", "data.num_workers=0", "refine.num_iter=2", "loss.stage1_iters=1",
    "optim.warmup_iters=1", "train.max_iters=2", "train.eval_interval=100", "train.ckpt_interval=0",
    "eval.batch_size=1", "eval.num_vis=1",
]


@pytest.mark.parametrize("config,backbone,frozen", [
    ("voc_vit_b", "vit_base_patch16_224", False),
    ("voc_clip_frozen", "vit_base_patch16_clip_quickgelu_224.openai", True),
])
def test_vit_config_trains_and_evaluates(tmp_path, config, backbone, frozen):
    cfg = load_config(config)
    assert (cfg.model.backbone, cfg.model.freeze_backbone) == (backbone, frozen)
    root = _make_voc(tmp_path / "voc", names=("a", "b", "c"))
    work = tmp_path / "run"
    args = ["train", "--config", config, "--work-dir", str(work), "--data-root", str(root), "--backend", "torch",
            *TINY_RUN]
    assert main(args) == 0
    latest = json.loads((work / "metrics.json").read_text())["latest"]
    assert latest["iteration"] == 2  # iteration 2 is past stage 1: every loss term ran
    for key in ("seg_miou", "cam_miou", "pseudo_miou", "cls_f1"):
        assert math.isfinite(latest[key]), key
    state = checkpoint.load(work / "checkpoints" / "last.pth")
    assert "encoder.vit.blocks.11.attn.qkv.weight" in state["model"]
    assert state["config"]["model"]["freeze_backbone"] is frozen
    encoder_group = state["optimizer"]["param_groups"][0]
    assert encoder_group["name"] == "encoder" and (encoder_group["params"] == []) is frozen
