"""Building blocks shared by the encoders (MiT, hybrid): SegFormer's transformer block with its
efficient attention that also returns the raw attention logits (method §1), the overlapping
patch embedding, and SegFormer's initialisation."""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, to_2tuple, trunc_normal_
from torch import nn

__all__ = ["Attention", "Block", "DWConv", "Mlp", "OverlapPatchEmbed", "init_segformer_weights", "layer_norm",
           "stage_strides", "tokens_to_map"]


def init_segformer_weights(module: nn.Module) -> None:
    """SegFormer's initialisation for one module (use with ``model.apply``)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


layer_norm = partial(nn.LayerNorm, eps=1e-6)  # SegFormer's LayerNorm


def stage_strides(stride) -> list[int]:
    """The four per-stage strides as ints (ValueError unless 4 positive ints)."""
    if len(stride) != 4 or any(int(s) < 1 for s in stride):
        raise ValueError(f"stride must be 4 positive ints (one per stage), got {stride}")
    return [int(s) for s in stride]


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, N, C) tokens → (B, C, h, w) map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class DWConv(nn.Module):
    """3×3 depthwise convolution over the token grid (the "Mix" of Mix-FFN)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x: (B, N, C) with N = h·w → (B, N, C)."""
        return self.dwconv(tokens_to_map(x, h, w)).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Mix-FFN: fc1 → depthwise 3×3 conv → GELU → fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Attention(nn.Module):
    """Efficient self-attention with spatial reduction ratio ``sr_ratio``.

    Returns the block output and the raw logits q·kᵀ (unscaled, before softmax). With
    sr > 1 keys come from an sr×sr, stride-sr grid, and the logits are average-pooled over
    sr×sr query positions, so both axes index the same reduced grid.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, sr_ratio: int = 1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, C), N = h·w → (out (B, N, C), logits (B, heads, N_r, N_r)).

        N_r = N for sr = 1, else ⌊h/sr⌋·⌊w/sr⌋.
        """
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        src = x
        if self.sr_ratio > 1:
            src = self.norm(self.sr(tokens_to_map(x, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(src).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1)  # (B, heads, N, N')
        out = (logits * self.scale).softmax(dim=-1) @ v
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        if self.sr_ratio > 1:
            r = self.sr_ratio
            # (B, heads, h, w, N') pooled over (h, w) windows of r×r query positions
            grid = logits.reshape(b, heads, h, w, logits.shape[-1])
            logits = F.avg_pool3d(grid, kernel_size=(r, r, 1), stride=(r, r, 1))
            logits = logits.reshape(b, heads, -1, logits.shape[-1])
        return out, logits


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1 x), then x + mix-ffn(norm2 x)."""

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, drop_path, norm_layer, sr_ratio):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, sr_ratio=sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        y, logits = self.attn(self.norm1(x), h, w)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x), h, w))
        return x, logits


class OverlapPatchEmbed(nn.Module):
    """k×k conv (padding k//2, given stride) + LayerNorm; returns tokens and grid size."""

    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int):
        super().__init__()
        k = to_2tuple(patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=k, stride=stride,
                              padding=(k[0] // 2, k[1] // 2))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """x: (B, C_in, H, W) → (tokens (B, h·w, C), h, w)."""
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w
