"""Hybrid encoders: convolutional stages 1–3, MiT stage 4 (for training from scratch).

MiT learns slowly from random initialisation: on the synthetic demo, MiT-b0 sits at the
label prior for hundreds of iterations, while a BatchNorm CNN of the same size starts to
learn within a hundred (measured: docs/demo.md). A hybrid keeps what TSCD needs from the
transformer — stage 4 is a stack of MiT blocks, so the attention affinity of method §5 comes
from attention logits as in MiT — and replaces stages 1–3 with conv–BN–ReLU layers, the
hybrid design of the ViT paper (Dosovitskiy et al., 2021).

- ``hybrid_b0``: MiT-b0's widths (32, 64, 160, 256) and its stage 4 (two blocks, eight heads).
- ``hybrid_tiny``: widths (32, 64, 96, 96), stage 4 two blocks of three heads; cheaper per
  demo step than ``hybrid_b0``: the demo's encoder (figures of both in docs/demo.md, "Where the
  time goes" and "Why not MiT-b0 or a ViT").

They have the interface of :class:`~tscd.models.mit.MixVisionTransformer`; the layers they
share with MiT live in :mod:`tscd.models.layers`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import Block, OverlapPatchEmbed, init_segformer_weights, layer_norm, stage_strides, tokens_to_map

__all__ = ["HybridEncoder", "HYBRID_CONFIGS"]


@dataclass(frozen=True)
class HybridConfig:
    embed_dims: tuple[int, int, int, int]
    conv_depths: tuple[int, int, int]  # extra stride-1 conv layers of stages 1–3
    depth4: int  # MiT blocks of stage 4
    num_heads4: int


HYBRID_CONFIGS: dict[str, HybridConfig] = {
    "hybrid_b0": HybridConfig((32, 64, 160, 256), (1, 1, 1), 2, 8),
    "hybrid_tiny": HybridConfig((32, 64, 96, 96), (1, 1, 1), 2, 3),
}


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def conv_stage(cin: int, cout: int, stride: int, depth: int) -> nn.Sequential:
    """Stride-2 conv layers down to ``stride`` (a power of two), then ``depth`` stride-1 layers;
    the first layer maps ``cin`` to ``cout``."""
    if stride & (stride - 1):
        raise ValueError(f"the strides of the convolutional stages must be powers of two, got {stride}")
    layers, c = [], cin
    while stride > 1:
        layers.append(conv_bn_relu(c, cout, 2))
        c, stride = cout, stride // 2
    if c != cout:
        layers.append(conv_bn_relu(c, cout))
    layers += [conv_bn_relu(cout, cout) for _ in range(depth)]
    return nn.Sequential(*layers)


class HybridEncoder(nn.Module):
    """``forward(x)`` → ``(features, attention_logits)`` as MixVisionTransformer: four maps
    (B, C_i, H_i, W_i) with H_i = ⌈H_{i-1}/s_i⌉, and the (B, heads, N, N) logits of the
    stage-4 blocks (stages 1–3 have no attention)."""

    def __init__(self, embed_dims=(32, 64, 160, 256), conv_depths=(1, 1, 1), depth4: int = 2, num_heads4: int = 8,
                 stride=(4, 2, 2, 1), drop_path_rate: float = 0.1, mlp_ratio: int = 4, in_chans: int = 3):
        super().__init__()
        self.stride = stage_strides(stride)
        self.embed_dims = list(embed_dims)
        self.num_heads = [0, 0, 0, num_heads4]
        chans = [in_chans] + self.embed_dims
        self.stages = nn.ModuleList(conv_stage(chans[i], chans[i + 1], self.stride[i], conv_depths[i])
                                    for i in range(3))
        self.patch_embed4 = OverlapPatchEmbed(3, self.stride[3], chans[3], chans[4])
        dpr = torch.linspace(0, drop_path_rate, depth4, device="cpu").tolist()
        self.block4 = nn.ModuleList(Block(chans[4], num_heads4, mlp_ratio, True, dpr[j], layer_norm, 1)
                                    for j in range(depth4))
        self.norm4 = layer_norm(chans[4])
        self.apply(init_segformer_weights)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features, logits = [], []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        x, h, w = self.patch_embed4(x)
        for blk in self.block4:
            x, a = blk(x, h, w)
            logits.append(a)
        features.append(tokens_to_map(self.norm4(x), h, w).contiguous())
        return features, logits
