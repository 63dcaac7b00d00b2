"""SegFormer's all-MLP decoder (method §1), with the module names of the released checkpoints."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegFormerHead"]


class MLP(nn.Module):
    """Per-position linear embedding of a stage (holds ``proj``; applied inside ``SegFormerHead``)."""

    def __init__(self, input_dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim)


class ConvBNReLU(nn.Module):
    """1×1 conv without bias → BatchNorm → ReLU (names ``conv``/``bn`` as mmcv's ConvModule;
    ``SegFormerHead`` applies the conv in its factored form)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class SegFormerHead(nn.Module):
    """Fuses the four encoder stages into segmentation logits at the stage-1 resolution.

    ``forward([c1, c2, c3, c4])`` with c_i (B, C_i, h_i, w_i) → (B, num_classes, h_1, w_1).
    As SegFormer: each stage is embedded by a linear layer (``linear_c{i}``), upsampled
    (bilinear) to (h_1, w_1), the four are concatenated in the order c4, c3, c2, c1 (the
    released weights depend on it) and fused by a 1×1 conv (``linear_fuse``) + BN + ReLU.

    Computed here in an equivalent, cheaper order: the fuse conv is linear and bilinear
    upsampling acts per channel with weights summing to 1, so fuse(concat_i up(L_i c_i)) =
    Σ_i up((W_i L_i) c_i), with W_i the fuse weight's block for stage i. Each stage then needs
    one (C_i → E) product at its own resolution instead of a (4E → E) conv at stage-1 size.
    """

    def __init__(self, in_channels, embedding_dim: int = 256, num_classes: int = 21, dropout: float = 0.1):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must list the 4 stage widths, got {in_channels}")
        for i, c in enumerate(in_channels):
            setattr(self, f"linear_c{i + 1}", MLP(c, embedding_dim))
        self.linear_fuse = ConvBNReLU(4 * embedding_dim, embedding_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embedding_dim, num_classes, kernel_size=1)

    def forward(self, features) -> torch.Tensor:
        size = features[0].shape[-2:]
        fuse = self.linear_fuse.conv.weight.flatten(1).chunk(4, dim=1)  # blocks for c4, c3, c2, c1
        by_size = {}  # stages of equal size are summed before one (linear) upsampling
        for block, i in zip(fuse, (3, 2, 1, 0)):
            proj = getattr(self, f"linear_c{i + 1}").proj
            weight, bias = block @ proj.weight, block @ proj.bias
            z = F.conv2d(features[i], weight[:, :, None, None], bias)
            key = tuple(z.shape[-2:])
            by_size[key] = by_size[key] + z if key in by_size else z
        fused = sum(z if z.shape[-2:] == size else F.interpolate(z, size=size, mode="bilinear", align_corners=False)
                    for z in by_size.values())
        x = self.linear_fuse.act(self.linear_fuse.bn(fused))
        return self.linear_pred(self.dropout(x))
