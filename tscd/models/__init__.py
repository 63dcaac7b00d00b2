"""TSCD network: MiT encoder (registered with timm), SegFormer head, TSCD model, checkpoints."""
from .checkpoint import CheckpointMismatchError, load_checkpoint
from .mit import MIT_CONFIGS, TIMM_NAMES, MixVisionTransformer, build_backbone
from .segformer_head import SegFormerHead
from .tscd import POOLINGS, TSCD

__all__ = [
    "MIT_CONFIGS", "TIMM_NAMES", "MixVisionTransformer", "build_backbone", "SegFormerHead", "TSCD",
    "POOLINGS", "load_checkpoint", "CheckpointMismatchError",
]
