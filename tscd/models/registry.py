"""The encoders by name: :func:`build_backbone`, and their entries in timm's model registry.

:func:`build_backbone` builds the built-in encoders (:data:`BACKBONES`) and, for any other name
that timm builds as a ``VisionTransformer`` (``vit_base_patch16_224``, ``vit_base_patch14_dinov2``,
``vit_base_patch16_clip_224.openai`` ...), a :class:`~tscd.models.vit.ViTEncoder`.

``mit_b0`` … ``mit_b5`` (:mod:`tscd.models.mit`), ``hybrid_b0`` and ``hybrid_tiny``
(:mod:`tscd.models.hybrid`) are registered with timm when this module is imported, so
``timm.create_model("mit_b1", stride=(4, 2, 2, 1))`` builds them. A name timm already defines is registered as
``tscd_<name>`` instead (logged at DEBUG); :data:`TIMM_NAMES` says under which name each
variant went.
"""
from __future__ import annotations

import logging

from timm.models import is_model, model_entrypoint, register_model
from torch import nn

from .hybrid import HYBRID_CONFIGS, HybridEncoder
from .mit import MIT_CONFIGS, MixVisionTransformer
from .vit import VIT_EXAMPLES, ViTEncoder

__all__ = ["BACKBONES", "build_backbone", "TIMM_NAMES"]

logger = logging.getLogger(__name__)

BACKBONES = (*MIT_CONFIGS, *HYBRID_CONFIGS)
"""The built-in encoders; timm ViT names are accepted besides ([`build_backbone`][tscd.models.build_backbone])."""
DEFAULT_STRIDE = (4, 2, 2, 1)
_ACCEPTED = (f"expected one of {', '.join(BACKBONES)}, or the timm name of a VisionTransformer "
             f"(e.g. {', '.join(VIT_EXAMPLES)}; see timm.list_models('vit_*'))")


def build_backbone(name: str = "mit_b1", stride=DEFAULT_STRIDE, drop_path_rate: float = 0.1, **kwargs) -> nn.Module:
    """An encoder by name: a built-in one (``BACKBONES``) or a timm Vision Transformer.

    Args:
        name: ``mit_b0`` … ``mit_b5``, ``hybrid_b0``, ``hybrid_tiny``, or the timm name of a
            ``VisionTransformer`` (``vit_base_patch16_224``, ``vit_base_patch14_dinov2``,
            ``vit_base_patch16_clip_224.openai`` ...), built as a ``tscd.models.ViTEncoder``.
        stride: the per-stage strides of a built-in encoder. A ViT's stride is its patch size, so
            for a ViT it must stay ``DEFAULT_STRIDE`` (4, 2, 2, 1).
        drop_path_rate: stochastic depth.
        **kwargs: passed to the encoder's constructor.

    Returns:
        The encoder, an ``nn.Module`` whose forward returns ``(features, attention_logits)``.

    Raises:
        ValueError: the name is unknown (the message lists what is accepted), or a ViT is given
            another stride.
    """
    if name in MIT_CONFIGS:
        cfg = MIT_CONFIGS[name]
        return MixVisionTransformer(cfg.embed_dims, cfg.depths, cfg.num_heads, cfg.mlp_ratios, cfg.sr_ratios,
                                    stride=stride, drop_path_rate=drop_path_rate, **kwargs)
    if name in HYBRID_CONFIGS:
        h = HYBRID_CONFIGS[name]
        return HybridEncoder(h.embed_dims, h.conv_depths, h.depth4, h.num_heads4, stride=stride,
                             drop_path_rate=drop_path_rate, **kwargs)
    if is_model(name):
        if tuple(stride) != DEFAULT_STRIDE:
            raise ValueError(f"stride (model.stride) has no meaning for the ViT backbone {name!r}, whose "
                             f"stride is its patch size: set it to the default {list(DEFAULT_STRIDE)}, got "
                             f"{list(stride)}")
        try:
            return ViTEncoder(name, drop_path_rate=drop_path_rate, **kwargs)
        except ValueError as err:
            raise ValueError(f"{err}; {_ACCEPTED}") from None
    raise ValueError(f"unknown backbone {name!r}; {_ACCEPTED}")


def _timm_entrypoint(variant: str, registered_as: str):
    def entrypoint(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
                   **kwargs):
        model = build_backbone(variant, **kwargs)
        if pretrained:
            if not isinstance(pretrained, str):
                hub = f" or 'hf-hub:nvidia/{variant.replace('_', '-')}'" if variant in MIT_CONFIGS else ""
                raise ValueError(f"{registered_as}: pass the weights instead of True: pretrained='path/to/"
                                 f"{variant}.pth' (a SegFormer ImageNet file){hub}")
            from .checkpoint import load_checkpoint
            load_checkpoint(model, pretrained)
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = registered_as
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{variant} encoder (tscd), kwargs as tscd.models.build_backbone."
    return entrypoint


def _register_with_timm() -> dict[str, str]:
    names = {}
    for variant in BACKBONES:
        name = variant
        if is_model(name) and model_entrypoint(name).__module__ != __name__:
            name = f"tscd_{variant}"
            logger.debug("timm already defines %r; the tscd encoder is registered as %r", variant, name)
        if not is_model(name):
            globals()[name] = register_model(_timm_entrypoint(variant, name))  # timm lists it in __all__
        names[variant] = name
    return names


TIMM_NAMES = _register_with_timm()
"""The timm model name of each variant (normally the variant's own name)."""
