"""SegFormer's all-MLP decoder (spec §1), with the module names of the released checkpoints."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegFormerHead"]


class MLP(nn.Module):
    """Per-position linear embedding of a feature map: (B, C, h, w) → (B, E, h, w)."""

    def __init__(self, input_dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)


class ConvBNReLU(nn.Module):
    """1×1 conv without bias → BatchNorm → ReLU (names ``conv``/``bn`` as mmcv's ConvModule)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SegFormerHead(nn.Module):
    """Fuses the four encoder stages into segmentation logits at the stage-1 resolution.

    ``forward([c1, c2, c3, c4])`` with c_i (B, C_i, h_i, w_i) → (B, num_classes, h_1, w_1).
    Each stage is embedded by a linear layer, upsampled (bilinear) to (h_1, w_1), and the
    four are concatenated in the order c4, c3, c2, c1 (the released weights depend on it).
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
        embedded = []
        for i in (3, 2, 1, 0):
            e = getattr(self, f"linear_c{i + 1}")(features[i])
            if i:
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
            embedded.append(e)
        return self.linear_pred(self.dropout(self.linear_fuse(torch.cat(embedded, dim=1))))
