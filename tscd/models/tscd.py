"""The TSCD network (method §1): MiT (or timm ViT) encoder, SegFormer head, CAM classifier,
attention affinity.

Module names follow the released AFA/TSCD code (``encoder``, ``decoder``, ``classifier``,
``attn_proj``), so their checkpoints load with ``tscd.models.load_checkpoint``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .registry import build_backbone
from .segformer_head import SegFormerHead
from .vit import ViTEncoder

__all__ = ["TSCD", "TSCDOutput", "CAMOutput", "POOLINGS", "PARAM_GROUPS"]

POOLINGS = ("gmp", "gap", "topk")
#: The parameter groups of :meth:`TSCD.param_groups`, in order.
PARAM_GROUPS = ("encoder", "encoder_norm", "heads", "decoder")


class TSCDOutput(NamedTuple):
    """What [`TSCD.forward`][tscd.models.TSCD.forward] returns, all with gradient.

    A ``classify_only`` forward holds ``cls`` alone (the others None); ``seg_small`` and
    ``cam_small`` are set when a second view x′ (method §6) was given.

    Shapes:
        - ``cls``: (B, K−1), the image logits.
        - ``seg``: (B, K, h₁, w₁), the segmentation logits at the first map's size: ⌈H/4⌉ × ⌈W/4⌉
          for MiT; 4·⌈H/p⌉ × 4·⌈W/p⌉, covering the image, for a ViT of patch p.
        - ``attn_pred``: (B, N, N), the attention affinity of method §5; N = h₄·w₄, the stage-4
          positions.
        - ``seg_small``: (B, K, h₁′, w₁′), the segmentation logits of x′.
        - ``cam_small``: (B, K−1, h₄′, w₄′), the CAM of x′.
        - ``cam``: (B, K−1, h₄, w₄), the raw CAM of x.
    """

    cls: torch.Tensor
    seg: torch.Tensor | None
    attn_pred: torch.Tensor | None
    seg_small: torch.Tensor | None = None
    cam_small: torch.Tensor | None = None
    cam: torch.Tensor | None = None


class CAMOutput(NamedTuple):
    """What [`TSCD.forward_cam`][tscd.models.TSCD.forward_cam] returns.

    Shapes:
        - ``cam``: (B, K−1, h₄, w₄), the raw CAM.
        - ``attn_pred``: (B, N, N), the attention affinity, N = h₄·w₄; None when not asked for.
    """

    cam: torch.Tensor
    attn_pred: torch.Tensor | None


class TSCD(nn.Module):
    """The TSCD / AFA network of method §1: encoder, SegFormer head, CAM classifier, attention affinity.

    Module names follow the released AFA/TSCD code (``encoder``, ``decoder``, ``classifier``,
    ``attn_proj``), so their checkpoints load with [`load_checkpoint`][tscd.models.load_checkpoint].

    Args:
        backbone: ``"mit_b0"`` … ``"mit_b5"``, ``"hybrid_b0"`` / ``"hybrid_tiny"`` (convolutional
            stages 1–3 + a MiT stage 4; learn much faster from random initialisation, see
            tscd.models.hybrid),
            or the timm name of a ViT (``"vit_base_patch16_224"``, ``"vit_base_patch14_dinov2"``,
            ``"vit_base_patch16_clip_224.openai"`` ...: ``tscd.models.ViTEncoder``).
        num_classes: K, background included (the classifier predicts the K−1 foreground classes).
        stride: per-stage strides of the encoder; (4, 2, 2, 1) gives a stride-16 last stage. A ViT's
            stride is its patch size: it takes the default only.
        pooling: image-level pooling of the classifier: ``"gmp"`` (global max of the stage-4
            features, the paper's default), ``"gap"`` (global average), or ``"topk"`` (per class,
            the mean of the highest ``topk_ratio`` fraction of CAM values: covers whole objects
            better than gmp on small maps).
        topk_ratio: fraction of positions averaged by ``"topk"`` pooling (at least one).
        embedding_dim: width of the SegFormer head.
        pretrained: optional weights for the encoder or the whole model, loaded with
            [`load_checkpoint`][tscd.models.load_checkpoint]: a file in any layout of ``tscd.models.pretrained``
            (SegFormer/MiT, Hugging Face, mmseg, timm ViT, a TSCD checkpoint), or a remote source
            ``hf-hub:<repo>`` / ``timm:<name>`` (the Hugging Face cache first).
        drop_path_rate: stochastic depth of the encoder.
        symmetrize_attention: add the transpose of the concatenated attention logits before
            ``attn_proj`` (S + Sᵀ), as the released AFA/TSCD code does; their ``attn_proj``
            weights expect it, and it makes ``attn_pred`` symmetric.
        freeze_backbone: train the decoder, classifier and ``attn_proj`` on a frozen encoder
            (the frozen-CLIP recipe of WeCLIP, Zhang et al., CVPR 2024): the encoder's
            parameters do not require gradients, it stays in eval mode when the model is put
            in training mode (dropout, drop-path and BatchNorm statistics off), and its forward
            runs without autograd — the attention logits need no gradient upstream of
            ``attn_proj``, so no activation of the encoder is kept for the backward pass.

    Raises:
        ValueError: ``pooling``, ``topk_ratio`` or ``num_classes`` is invalid, or the backbone
            is unknown.
    """

    def __init__(self, backbone: str = "mit_b1", num_classes: int = 21, stride=(4, 2, 2, 1),
                 pooling: str = "gmp", embedding_dim: int = 256, pretrained: str | None = None,
                 topk_ratio: float = 0.25, drop_path_rate: float = 0.1, symmetrize_attention: bool = True,
                 freeze_backbone: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not 0.0 < topk_ratio <= 1.0:
            raise ValueError(f"topk_ratio must be in (0, 1], got {topk_ratio}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.pooling = pooling
        self.topk_ratio = topk_ratio
        self.symmetrize_attention = symmetrize_attention
        self.freeze_backbone = freeze_backbone
        self.encoder = build_backbone(backbone, stride=stride, drop_path_rate=drop_path_rate)
        dims = self.encoder.embed_dims
        self.decoder = SegFormerHead(dims, embedding_dim=embedding_dim, num_classes=num_classes)
        self.classifier = nn.Conv2d(dims[3], num_classes - 1, kernel_size=1, bias=False)
        affinity_heads = 2 * self.encoder.num_heads[3]  # the last two blocks (MiT: both in stage 4)
        self.attn_proj = nn.Conv2d(affinity_heads, 1, kernel_size=1, bias=True)
        nn.init.kaiming_normal_(self.attn_proj.weight, a=math.sqrt(5), mode="fan_out")
        if pretrained:
            from .checkpoint import load_checkpoint
            load_checkpoint(self, pretrained)
        if freeze_backbone:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @property
    def output_stride(self) -> int:
        """Stride of the stage-4 features (CAM and attention grid): 16 for strides (4, 2, 2, 1);
        a ViT's patch size (16, or 14 for DINOv2)."""
        if isinstance(self.encoder, ViTEncoder):
            return self.encoder.output_stride
        return math.prod(self.encoder.stride)

    def train(self, mode: bool = True) -> TSCD:
        """As ``nn.Module.train``; a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.freeze_backbone:
            self.encoder.eval()
        return self

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The encoder's ``(features, attention_logits)`` of x; without autograd when frozen."""
        if not self.freeze_backbone:
            return self.encoder(x)
        with torch.no_grad():
            return self.encoder(x)

    def attention_affinity(self, attention_logits: list[torch.Tensor]) -> torch.Tensor:
        """The learned affinity ``A = sigmoid(attn_proj(S))`` of method §5.

        S is the last two blocks' logits concatenated on the head axis (plus its transpose if
        symmetrised). ``attn_proj`` is a 1×1 conv, i.e. Σ_k w_k S_k + b, and the transpose commutes
        with the sum, so it is computed as P + Pᵀ + b with P = Σ_k w_k S_k: no concatenated copy
        of S.

        Args:
            attention_logits: the encoder's attention logits per block; the last two are used.

        Shapes:
            - ``attention_logits[-2]``, ``attention_logits[-1]``: (B, heads, N, N).
            - returns: (B, N, N), N = h₄·w₄.
        """
        first, second = attention_logits[-2:]
        b, heads, n, _ = first.shape
        w = self.attn_proj.weight.flatten()
        p = (w[:heads] @ first.flatten(2) + w[heads:] @ second.flatten(2)).view(b, n, n)
        if self.symmetrize_attention:
            p = p + p.transpose(1, 2)
        return torch.sigmoid(p + self.attn_proj.bias)

    def cam(self, features4: torch.Tensor) -> torch.Tensor:
        """Class activation maps of stage-4 features.

        Shapes:
            - ``features4``: (B, C₄, h, w).
            - returns: (B, K−1, h, w).
        """
        return F.conv2d(features4, self.classifier.weight)

    def _image_logits(self, f4: torch.Tensor, cam: torch.Tensor | None = None) -> torch.Tensor:
        """Image logits (B, K−1) of stage-4 features f4; ``cam``: their CAM when already computed."""
        if self.pooling == "gmp":
            return self.classifier(F.adaptive_max_pool2d(f4, 1)).flatten(1)
        if self.pooling == "gap":
            return self.classifier(F.adaptive_avg_pool2d(f4, 1)).flatten(1)
        cam = (self.cam(f4) if cam is None else cam).flatten(2)  # (B, K-1, N)
        k = max(1, math.ceil(self.topk_ratio * cam.shape[-1]))
        return cam.topk(k, dim=-1).values.mean(dim=-1)

    def forward(self, x: torch.Tensor, x_small: torch.Tensor | None = None, *,
                classify_only: bool = False) -> TSCDOutput:
        """The trainable forward of normalised images and, in a training step, of their second view.

        Both views go through one call, so that DDP wraps the model itself.

        Args:
            x: normalised images.
            x_small: their second view x′ of method §6 (the 0.3× images), or None.
            classify_only: the image logits alone (the L_cls-only stage of §9): neither the
                decoder nor the affinity is computed.

        Shapes:
            - ``x``: (B, 3, H, W).
            - ``x_small``: (B, 3, H′, W′).

        Returns:
            A [`TSCDOutput`][tscd.models.TSCDOutput].

        Raises:
            ValueError: ``classify_only`` with ``x_small``.
        """
        if classify_only:
            if x_small is not None:
                raise ValueError("classify_only takes no second view x_small")
            features, _ = self.encode(x)
            return TSCDOutput(self._image_logits(features[3]), None, None)
        features, attention_logits = self.encode(x)
        attn_pred = self.attention_affinity(attention_logits)
        seg = self.decoder(features)
        cam = self.cam(features[3])
        cls = self._image_logits(features[3], cam)
        if x_small is None:
            return TSCDOutput(cls, seg, attn_pred, cam=cam)
        features_small, _ = self.encode(x_small)
        return TSCDOutput(cls, seg, attn_pred, self.decoder(features_small), self.cam(features_small[3]), cam)

    def forward_cam(self, x: torch.Tensor, affinity: bool = True) -> CAMOutput:
        """CAM and attention affinity of normalised images; the decoder is skipped.

        The CAM keeps its gradient: wrap in ``torch.no_grad()`` for pseudo labels.

        Args:
            x: normalised images.
            affinity: also compute the attention affinity; False leaves ``attn_pred`` None (the
                multi-scale CAM's passes need the CAM alone).

        Shapes:
            - ``x``: (B, 3, H, W).

        Returns:
            A [`CAMOutput`][tscd.models.CAMOutput].
        """
        features, attention_logits = self.encode(x)
        return CAMOutput(self.cam(features[3]), self.attention_affinity(attention_logits) if affinity else None)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by the groups of method §1.

        Their learning rates and weight decay are the optimiser's policy
        (``tscd.engine.schedule.build_optimizer``). Only parameters that train are listed: with
        ``freeze_backbone`` the two encoder groups are empty.

        Returns:
            ``{"encoder": ..., "encoder_norm": ..., "heads": ..., "decoder": ...}`` (``PARAM_GROUPS``):
            the encoder's weights; its norms (every encoder parameter whose name contains "norm",
            i.e. all LayerNorms, as AFA); the classifier and ``attn_proj``; the decoder.
        """
        encoder, norms = [], []
        for name, p in self.encoder.named_parameters():
            if p.requires_grad:
                (norms if "norm" in name else encoder).append(p)
        heads = [*self.classifier.parameters(), *self.attn_proj.parameters()]
        return dict(zip(PARAM_GROUPS, (encoder, norms, heads, list(self.decoder.parameters()))))
