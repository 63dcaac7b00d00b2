"""Constants shared by every layer: the ignore label, the ImageNet normalisation, the terms of
the training objective, the choices of refinement and dense CRF, and the dense CRF settings of the
published evaluations."""
from typing import NamedTuple

#: Label of pixels that no loss or metric counts (VOC boundaries, uncertain pseudo labels, padding).
IGNORE_INDEX = 255

#: Per-channel RGB mean and standard deviation of ImageNet, in [0, 1] units (the MiT weights' normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The terms of the training objective (method §9), each weighted by the config key ``loss.<term>``.
LOSS_TERMS = ("cls", "seg", "dense", "aff", "scd", "er")

#: How pseudo labels are refined (method §4): TSCD's VARM, AFA's PAR, or not at all.
REFINE_MODES = ("varm", "par", "none")

#: The dense CRF of an evaluation (method §10): a ``tscd.ops.dense_crf`` backend request, or none.
CRF_CHOICES = ("auto", "exact", "lattice", "pydensecrf", "none")


class CrfPreset(NamedTuple):
    """The dense CRF of one codebase's evaluation, in ``tscd.ops.dense_crf``'s (and pydensecrf's) terms."""

    num_iter: int  # mean-field iterations
    smooth: tuple[float, float]  # positional kernel: (σ_xy, weight)
    appearance: tuple[float, float, float]  # bilateral kernel: (σ_xy, σ_rgb, weight)


#: The dense CRF settings of each codebase's released segmentation evaluation, by preset name.
#: TSCD released no evaluation script; it reports AFA's protocol, the default ``afa``.
CRF_PRESETS = {
    # rulixiang/afa@adcfa29 scripts/test_msc_flip.py:106-113
    "afa": CrfPreset(10, (3.0, 3.0), (64.0, 5.0, 4.0)),
    # rulixiang/ToCo@e13514d tools/infer_seg_voc.py:92-99 (tools/infer_seg_coco_ddp.py:101-108 too)
    "toco": CrfPreset(10, (1.0, 1.0), (121.0, 5.0, 4.0)),
    # zwyang6/SeCo@202357f tools/infer_seg_voc.py:108-115 (ToCo's)
    "seco": CrfPreset(10, (1.0, 1.0), (121.0, 5.0, 4.0)),
    # zwyang6/ExCEL@2cd7f51 tools/infer_seg_voc.py:113-120 (zwyang6/MoRe tools/infer_seg_voc.py:117-124 too)
    "excel": CrfPreset(10, (1.0, 3.0), (67.0, 3.0, 4.0)),
    # zbf1991/WeCLIP@0f47db4 WeCLIP/test_msc_flip_voc.py:126-133 (AFA's)
    "weclip": CrfPreset(10, (3.0, 3.0), (64.0, 5.0, 4.0)),
}
DEFAULT_CRF_PRESET = "afa"
