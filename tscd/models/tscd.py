"""The TSCD network (spec §1): MiT encoder, SegFormer head, CAM classifier, attention affinity.

Module names follow the released AFA/TSCD code (``encoder``, ``decoder``, ``classifier``,
``attn_proj``), so their checkpoints load with ``tscd.models.load_checkpoint``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .mit import build_backbone
from .segformer_head import SegFormerHead

__all__ = ["TSCD", "POOLINGS"]

POOLINGS = ("gmp", "gap", "topk")


class TSCD(nn.Module):
    """TSCD / AFA network.

    Args:
        backbone: ``"mit_b0"`` … ``"mit_b5"``, or ``"hybrid_b0"`` (convolutional stages 1–3 +
            MiT-b0's stage 4; learns much faster from random initialisation, see tscd.models.hybrid).
        num_classes: K, background included (the classifier predicts the K−1 foreground classes).
        stride: per-stage strides of the encoder; (4, 2, 2, 1) gives a stride-16 last stage.
        pooling: image-level pooling of the classifier: ``"gmp"`` (global max of the stage-4
            features, the paper's default), ``"gap"`` (global average), or ``"topk"`` (per class,
            the mean of the highest ``topk_ratio`` fraction of CAM values: covers whole objects
            better than gmp on small maps).
        topk_ratio: fraction of positions averaged by ``"topk"`` pooling (at least one).
        embedding_dim: width of the SegFormer head.
        pretrained: optional path of a checkpoint (SegFormer ImageNet backbone or a full model),
            loaded with ``tscd.models.load_checkpoint``.
        drop_path_rate: stochastic depth of the encoder.
        symmetrize_attention: add the transpose of the concatenated attention logits before
            ``attn_proj`` (S + Sᵀ), as the released AFA/TSCD code does; their ``attn_proj``
            weights expect it, and it makes ``attn_pred`` symmetric.
    """

    def __init__(self, backbone: str = "mit_b1", num_classes: int = 21, stride=(4, 2, 2, 1),
                 pooling: str = "gmp", embedding_dim: int = 256, pretrained: str | None = None,
                 topk_ratio: float = 0.25, drop_path_rate: float = 0.1, symmetrize_attention: bool = True):
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
        self.encoder = build_backbone(backbone, stride=stride, drop_path_rate=drop_path_rate)
        dims = self.encoder.embed_dims
        self.decoder = SegFormerHead(dims, embedding_dim=embedding_dim, num_classes=num_classes)
        self.classifier = nn.Conv2d(dims[3], num_classes - 1, kernel_size=1, bias=False)
        affinity_heads = 2 * self.encoder.num_heads[3]  # the last two blocks are both in stage 4
        self.attn_proj = nn.Conv2d(affinity_heads, 1, kernel_size=1, bias=True)
        nn.init.kaiming_normal_(self.attn_proj.weight, a=math.sqrt(5), mode="fan_out")
        if pretrained:
            from .checkpoint import load_checkpoint
            load_checkpoint(self, pretrained)

    @property
    def output_stride(self) -> int:
        """Stride of the stage-4 features (CAM and attention grid): 16 for strides (4, 2, 2, 1)."""
        return math.prod(self.encoder.stride)

    def attention_affinity(self, attention_logits: list[torch.Tensor]) -> torch.Tensor:
        """A = sigmoid(attn_proj(S)) with S the last two blocks' logits concatenated on the head
        axis (B, 16, N, N) (plus its transpose if symmetrised): (B, N, N), N = h₄·w₄.

        attn_proj is a 1×1 conv, i.e. Σ_k w_k S_k + b, and the transpose commutes with the sum,
        so it is computed as P + Pᵀ + b with P = Σ_k w_k S_k: no concatenated copy of S.
        """
        first, second = attention_logits[-2:]
        b, heads, n, _ = first.shape
        w = self.attn_proj.weight.flatten()
        p = (w[:heads] @ first.flatten(2) + w[heads:] @ second.flatten(2)).view(b, n, n)
        if self.symmetrize_attention:
            p = p + p.transpose(1, 2)
        return torch.sigmoid(p + self.attn_proj.bias)

    def cam(self, features4: torch.Tensor) -> torch.Tensor:
        """Class activation maps of stage-4 features (B, C₄, h, w) → (B, K−1, h, w)."""
        return F.conv2d(features4, self.classifier.weight)

    def _image_logits(self, f4: torch.Tensor) -> torch.Tensor:
        if self.pooling == "gmp":
            return self.classifier(F.adaptive_max_pool2d(f4, 1)).flatten(1)
        if self.pooling == "gap":
            return self.classifier(F.adaptive_avg_pool2d(f4, 1)).flatten(1)
        cam = self.cam(f4).flatten(2)  # (B, K-1, N)
        k = max(1, math.ceil(self.topk_ratio * cam.shape[-1]))
        return cam.topk(k, dim=-1).values.mean(dim=-1)

    def forward(self, x: torch.Tensor, cam_only: bool = False):
        """x: (B, 3, H, W), normalised image.

        Returns ``(cls_logits (B, K−1), seg_logits (B, K, ⌈H/4⌉, ⌈W/4⌉), attention_logits,
        attn_pred (B, N, N))`` with N the number of stage-4 positions, or with
        ``cam_only=True`` ``(cam (B, K−1, h₄, w₄), attn_pred)`` (the decoder is skipped; the
        CAM keeps its gradient: wrap in ``torch.no_grad()`` for pseudo labels).
        """
        features, attention_logits = self.encoder(x)
        attn_pred = self.attention_affinity(attention_logits)
        if cam_only:
            return self.cam(features[3]), attn_pred
        seg = self.decoder(features)
        return self._image_logits(features[3]), seg, attention_logits, attn_pred

    def param_groups(self, lr: float = 6e-5, weight_decay: float = 0.01) -> list[dict]:
        """The four AdamW groups of spec §1, as dicts for ``torch.optim.AdamW``.

        encoder (lr), encoder norms (lr 0, no decay: every encoder parameter whose name
        contains "norm", i.e. all LayerNorms, as AFA), classifier + attn_proj (10·lr),
        decoder (10·lr). Each dict carries its ``name`` and its ``lr_mult`` for schedulers.
        """
        encoder, norms = [], []
        for name, p in self.encoder.named_parameters():
            (norms if "norm" in name else encoder).append(p)
        spec = [
            ("encoder", encoder, 1.0, weight_decay),
            ("encoder_norm", norms, 0.0, 0.0),
            ("heads", [*self.classifier.parameters(), *self.attn_proj.parameters()], 10.0, weight_decay),
            ("decoder", list(self.decoder.parameters()), 10.0, weight_decay),
        ]
        return [{"name": n, "params": ps, "lr": lr * m, "lr_mult": m, "weight_decay": wd}
                for n, ps, m, wd in spec]
