"""Mix Transformer (MiT) encoder of SegFormer, as TSCD uses it (spec §1).

Differences from the ImageNet MiT: the patch-embedding strides are configurable (TSCD: 4,2,2,1,
so the last stage has output stride 16), there is no classification head, and every block also
returns its raw attention logits. Parameter names are SegFormer's, so the public ``mit_b*.pth``
files load with ``strict=True`` once their ``head.*`` entries are dropped.

The variants are registered in timm's model registry (``timm.create_model("mit_b1",
stride=(4, 2, 2, 1))``) when those names are free there.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, to_2tuple, trunc_normal_
from torch import nn

__all__ = ["MixVisionTransformer", "MIT_CONFIGS", "build_backbone", "TIMM_NAMES"]


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


def _tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, N, C) tokens → (B, C, h, w) map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class DWConv(nn.Module):
    """3×3 depthwise convolution over the token grid (the "Mix" of Mix-FFN)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x: (B, N, C) with N = h·w → (B, N, C)."""
        return self.dwconv(_tokens_to_map(x, h, w)).flatten(2).transpose(1, 2)


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
            src = self.norm(self.sr(_tokens_to_map(x, h, w)).flatten(2).transpose(1, 2))
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


@dataclass(frozen=True)
class MiTConfig:
    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    mlp_ratios: tuple[int, int, int, int] = (4, 4, 4, 4)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)


_B1_DIMS = (64, 128, 320, 512)
MIT_CONFIGS: dict[str, MiTConfig] = {
    "mit_b0": MiTConfig((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTConfig(_B1_DIMS, (2, 2, 2, 2)),
    "mit_b2": MiTConfig(_B1_DIMS, (3, 4, 6, 3)),
    "mit_b3": MiTConfig(_B1_DIMS, (3, 4, 18, 3)),
    "mit_b4": MiTConfig(_B1_DIMS, (3, 8, 27, 3)),
    "mit_b5": MiTConfig(_B1_DIMS, (3, 6, 40, 3)),
}


class MixVisionTransformer(nn.Module):
    """Four-stage MiT encoder.

    ``forward(x)`` with x (B, 3, H, W) returns ``(features, attention_logits)``:
    features = 4 maps (B, C_i, H_i, W_i), H_1 = ⌈H/s_1⌉ and H_i = ⌈H_{i-1}/s_i⌉ (so with
    strides (4,2,2,1) the last map is ⌈H/16⌉ × ⌈W/16⌉ for any H); attention_logits = one
    (B, heads_i, N_r, N_r) tensor per block in order (see ``Attention``).
    """

    def __init__(self, embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), num_heads=(1, 2, 5, 8),
                 mlp_ratios=(4, 4, 4, 4), sr_ratios=(8, 4, 2, 1), stride=(4, 2, 2, 1),
                 drop_path_rate: float = 0.1, qkv_bias: bool = True, in_chans: int = 3):
        super().__init__()
        self.stride = stage_strides(stride)
        self.embed_dims = list(embed_dims)
        self.depths = list(depths)
        self.num_heads = list(num_heads)
        self.sr_ratios = list(sr_ratios)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # stochastic depth decay
        chans = [in_chans] + self.embed_dims
        first = 0
        for i in range(4):
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(
                7 if i == 0 else 3, self.stride[i], chans[i], chans[i + 1]))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                Block(embed_dims[i], num_heads[i], mlp_ratios[i], qkv_bias, dpr[first + j], layer_norm,
                      sr_ratios[i])
                for j in range(depths[i])))
            setattr(self, f"norm{i + 1}", layer_norm(embed_dims[i]))
            first += depths[i]
        self.apply(init_segformer_weights)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features, logits = [], []
        for i in range(4):
            x, h, w = getattr(self, f"patch_embed{i + 1}")(x)
            sr = self.sr_ratios[i]
            if h < sr or w < sr:
                raise ValueError(f"input too small: stage {i + 1} grid is {h}×{w}, smaller than its "
                                 f"spatial reduction {sr}×{sr}")
            for blk in getattr(self, f"block{i + 1}"):
                x, a = blk(x, h, w)
                logits.append(a)
            x = _tokens_to_map(getattr(self, f"norm{i + 1}")(x), h, w).contiguous()
            features.append(x)
        return features, logits


def build_backbone(name: str = "mit_b1", stride=(4, 2, 2, 1), drop_path_rate: float = 0.1, **kwargs) -> nn.Module:
    """One of ``mit_b0`` … ``mit_b5`` (or the hybrid ``hybrid_b0``, see tscd.models.hybrid) with the
    given per-stage strides."""
    from .hybrid import HYBRID_CONFIGS, HybridEncoder

    if name in MIT_CONFIGS:
        cfg = MIT_CONFIGS[name]
        return MixVisionTransformer(cfg.embed_dims, cfg.depths, cfg.num_heads, cfg.mlp_ratios, cfg.sr_ratios,
                                    stride=stride, drop_path_rate=drop_path_rate, **kwargs)
    if name in HYBRID_CONFIGS:
        h = HYBRID_CONFIGS[name]
        return HybridEncoder(h.embed_dims, h.conv_depths, h.depth4, h.num_heads4, stride=stride,
                             drop_path_rate=drop_path_rate, **kwargs)
    raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(MIT_CONFIGS) + sorted(HYBRID_CONFIGS)}")


# ---- timm registry -------------------------------------------------------------------------

def _timm_entrypoint(variant: str, registered_as: str):
    def entrypoint(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
                   **kwargs):
        model = build_backbone(variant, **kwargs)
        if pretrained:
            if not isinstance(pretrained, str):
                raise ValueError(f"{registered_as}: nothing is downloaded; pass pretrained='path/to/"
                                 f"{variant}.pth' (a SegFormer ImageNet file) instead of True")
            from .checkpoint import load_checkpoint
            load_checkpoint(model, pretrained)
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = registered_as
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{variant} encoder (tscd), kwargs as tscd.models.build_backbone."
    return entrypoint


def _register_with_timm() -> dict[str, str]:
    """Register mit_b0…b5 and hybrid_b0 in timm under their own names, or ``tscd_<name>`` if
    timm has one."""
    from timm.models import is_model, model_entrypoint, register_model

    from .hybrid import HYBRID_CONFIGS

    names = {}
    for variant in [*MIT_CONFIGS, *HYBRID_CONFIGS]:
        name = variant
        if is_model(name) and model_entrypoint(name).__module__ != __name__:
            name = f"tscd_{variant}"
            warnings.warn(f"timm already defines {variant!r}; the tscd encoder is registered as {name!r}")
        if not is_model(name):
            globals()[name] = register_model(_timm_entrypoint(variant, name))  # timm lists it in __all__
        names[variant] = name
    return names


TIMM_NAMES = _register_with_timm()
"""The timm model name of each variant (normally the variant's own name)."""
