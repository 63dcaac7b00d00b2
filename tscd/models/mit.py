"""Mix Transformer (MiT) encoder of SegFormer, as TSCD uses it (method §1).

Differences from the ImageNet MiT: the patch-embedding strides are configurable (TSCD: 4,2,2,1,
so the last stage has output stride 16), there is no classification head, and every block also
returns its raw attention logits. Parameter names are SegFormer's, so the public ``mit_b*.pth``
files load with ``strict=True`` once their ``head.*`` entries are dropped. The variants are
built by name through :mod:`tscd.models.registry` (also timm's ``timm.create_model("mit_b1")``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import Block, OverlapPatchEmbed, init_segformer_weights, layer_norm, stage_strides, tokens_to_map

__all__ = ["MixVisionTransformer", "MiTConfig", "MIT_CONFIGS"]


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
            x = tokens_to_map(getattr(self, f"norm{i + 1}")(x), h, w).contiguous()
            features.append(x)
        return features, logits
