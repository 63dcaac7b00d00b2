"""A timm Vision Transformer as the TSCD encoder (plain ViT, DeiT, DINOv2, CLIP image towers ...).

:class:`ViTEncoder` wraps any model timm builds as a ``VisionTransformer`` (``vit_base_patch16_224``,
``vit_base_patch14_dinov2``, ``vit_base_patch16_clip_224.openai``, ``vit_tiny_patch16_224`` ...)
and gives it the interface of :class:`~tscd.models.mit.MixVisionTransformer`: ``forward(x)`` →
``(features, attention_logits)``.

**Features.** A ViT has one resolution, 1/p (p the patch size), where the SegFormer head wants a
pyramid. The four maps come from the blocks that close each quarter of the depth — blocks
3, 6, 9, 12 of a 12-block ViT — as DPT reads a ViT for dense prediction (Ranftl et al., ICCV 2021:
hooks on layers 3/6/9/12 of ViT-B) and as timm's ``forward_intermediates`` and DINOv2's segmentation
probes take the last layers of each quarter. All four go through the ViT's final LayerNorm
(timm's ``norm=True``); the prefix tokens (class, registers) are dropped. The last map, the one the
CAM classifier reads, is the final block's output: single-stage ViT methods put their classifier
there (ToCo, Ru et al., CVPR 2023, ``model/model_seg_neg.py``; AFA/TSCD on MiT's stage 4). The
pyramid is made without parameters, as ViTDet's simple feature pyramid (Li et al., ECCV 2022)
but by bilinear resampling instead of learned deconvolutions: the first map is upsampled ×4 and
the second ×2, so the strides are p/4, p/2, p, p (4, 8, 16, 16 for p = 16) and ``seg`` is at
stride p/4 (4·h × 4·w for an h × w token grid). No parameters means a timm checkpoint fills the
whole encoder (``encoder.vit.*``) and a frozen encoder is really frozen.

**Affinity.** ``attention_logits`` are the attention logits (q·kᵀ·scale, what the softmax sees)
of the last two blocks only, between patch tokens: (B, heads, N, N) with N = h·w (method §5).
(MiT's are unscaled, as in the released AFA code; the scale, head_dim^-0.5 in both blocks, is a
constant factor that ``attn_proj``'s weights absorb.)
timm's attention runs a fused kernel that never forms them, so they are computed from the
block's own q and k, read off its ``qkv`` projection by a forward hook while the block runs as
timm wrote it (its output is unchanged); every other block runs untouched. The logits keep
their gradient, so the affinity loss trains the encoder as it does MiT's.

**Input size.** The input is resized (bilinear) to the next multiple of the patch size when it
is not one already, so that the h × w = ⌈H/p⌉ × ⌈W/p⌉ token grid covers the image exactly: every
user of the maps (CAM, affinity, losses, inference) stretches them over the image. Padding
instead would shift them by up to p − 1 pixels. Positional embeddings are interpolated for any
grid (timm's ``dynamic_img_size``).
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["ViTEncoder", "VIT_EXAMPLES", "feature_blocks"]

#: Examples of accepted names (any timm name that builds a ``VisionTransformer`` is).
VIT_EXAMPLES = ("vit_base_patch16_224", "vit_base_patch14_dinov2", "vit_base_patch16_clip_224.openai",
                "vit_small_patch16_224", "vit_tiny_patch16_224")
#: The factors by which the four maps are upsampled from the token grid (strides p/4, p/2, p, p).
PYRAMID_UPSAMPLING = (4, 2, 1, 1)


def feature_blocks(depth: int) -> tuple[int, int, int, int]:
    """The 0-based blocks that feed the four maps: the last block of each quarter of the depth
    (2, 5, 8, 11 for 12 blocks, as DPT)."""
    return tuple(max(0, round(depth * (i + 1) / 4) - 1) for i in range(4))


class ViTEncoder(nn.Module):
    """A timm ``VisionTransformer`` as a four-map TSCD encoder (see the module docstring).

    Args:
        name: a timm model name that builds a ``VisionTransformer``, with an optional
            pretrained tag (``vit_base_patch16_clip_224.openai``); held as :attr:`timm_name`.
        drop_path_rate: stochastic depth of the ViT.
        **timm_kwargs: further arguments of ``timm.create_model`` (``depth``, ``class_token`` ...).

    The timm model is :attr:`vit` (built with ``pretrained=False``, ``num_classes=0``,
    ``dynamic_img_size=True``: nothing is downloaded here), so a TSCD state dict holds it as
    ``encoder.vit.*``. ``forward(x)`` with x (B, 3, H, W) → ``(features, attention_logits)``:
    four maps (B, C, 4h, 4w), (B, C, 2h, 2w), (B, C, h, w), (B, C, h, w) with h = ⌈H/p⌉, w = ⌈W/p⌉,
    and the logits of the last two blocks, each (B, heads, h·w, h·w).

    Attributes: ``embed_dims`` and ``num_heads`` (four equal entries, as MiT's per-stage lists),
    ``patch_size`` p, ``output_stride`` (= p: the stride of the last map and of the attention
    grid; a ViT has no per-stage ``stride``), ``feature_blocks``.
    """

    def __init__(self, name: str, drop_path_rate: float = 0.1, **timm_kwargs):
        super().__init__()
        try:
            vit = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True,
                                    drop_path_rate=drop_path_rate, **timm_kwargs)
        except TypeError as err:  # a model class without these arguments
            raise ValueError(f"backbone {name!r} is not a timm VisionTransformer ({err})") from None
        if not isinstance(vit, VisionTransformer):
            raise ValueError(f"backbone {name!r} is a timm {type(vit).__name__}, not a VisionTransformer")
        if len(vit.blocks) < 2:
            raise ValueError(f"backbone {name!r} has {len(vit.blocks)} block(s); the affinity needs the last two")
        for i in (-2, -1):
            if not isinstance(getattr(vit.blocks[i], "attn", None), Attention):
                raise ValueError(f"backbone {name!r}: block {len(vit.blocks) + i} has no timm Attention "
                                 f"(qkv projection) to take the attention logits from")
        patch = vit.patch_embed.patch_size
        if patch[0] != patch[1]:
            raise ValueError(f"backbone {name!r} has non-square patches {tuple(patch)}")
        self.vit = vit
        self.timm_name = name
        self.patch_size = int(patch[0])
        self.output_stride = int(vit.patch_embed.feat_ratio())
        heads = vit.blocks[-1].attn.num_heads
        self.embed_dims = [vit.embed_dim] * 4
        self.num_heads = [heads] * 4
        self.feature_blocks = feature_blocks(len(vit.blocks))

    def _final_norm(self) -> nn.Module:
        """The ViT's last LayerNorm: ``norm``, or ``fc_norm`` for models that pool before it."""
        return self.vit.fc_norm if isinstance(self.vit.norm, nn.Identity) else self.vit.norm

    def _fit_to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """x resized (bilinear) to the next multiple of the output stride, if it is not one."""
        s = self.output_stride
        h, w = x.shape[-2:]
        size = (-(-h // s) * s, -(-w // s) * s)
        if size == (h, w):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def _block_with_logits(self, block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's own output for tokens x (B, P+N, C) and its attention logits between the N
        patch tokens (B, heads, N, N), from the q and k of its ``qkv`` projection."""
        attn = block.attn
        captured = []
        handle = attn.qkv.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            x = block(x)
        finally:
            handle.remove()
        qkv = captured[0][:, self.vit.num_prefix_tokens:]
        q, k, _ = qkv.unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        return x, (q * attn.scale) @ k.transpose(-2, -1)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        vit = self.vit
        tokens = vit.patch_embed(self._fit_to_grid(x))  # (B, h, w, C)
        b, h, w, c = tokens.shape
        x = vit.norm_pre(vit._pos_embed(tokens))
        depth, taken, logits = len(vit.blocks), {}, []
        for i, block in enumerate(vit.blocks):  # (no patch dropout: a dense map needs every patch)
            if i < depth - 2:
                x = block(x)
            else:
                x, a = self._block_with_logits(block, x)
                logits.append(a)
            if i in self.feature_blocks:
                taken[i] = x
        norm, p = self._final_norm(), vit.num_prefix_tokens
        features = []
        for i, up in zip(self.feature_blocks, PYRAMID_UPSAMPLING):
            f = norm(taken[i][:, p:]).transpose(1, 2).reshape(b, c, h, w)
            features.append(f if up == 1 else F.interpolate(f, scale_factor=up, mode="bilinear",
                                                            align_corners=False))
        return features, logits
