"""TSCD network: encoders (MiT, hybrid, timm ViTs; timm registry), SegFormer head, TSCD model, checkpoints."""
from .checkpoint import CheckpointMismatchError, load_checkpoint
from .mit import MIT_CONFIGS, MixVisionTransformer
from .registry import BACKBONES, TIMM_NAMES, build_backbone
from .segformer_head import SegFormerHead
from .tscd import PARAM_GROUPS, POOLINGS, TSCD, CAMOutput, TSCDOutput
from .vit import ViTEncoder

__all__ = [
    "BACKBONES", "MIT_CONFIGS", "TIMM_NAMES", "MixVisionTransformer", "build_backbone", "SegFormerHead", "TSCD",
    "TSCDOutput", "CAMOutput", "POOLINGS", "PARAM_GROUPS", "load_checkpoint", "CheckpointMismatchError", "ViTEncoder",
]
