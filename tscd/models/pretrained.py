"""Pretrained weights from where users find them: the foreign checkpoint layouts tscd converts,
and the remote sources ``hf-hub:`` and ``timm:``.

:func:`tscd.models.checkpoint.load_checkpoint` reads every file and calls these converters; the
layout is detected from the keys (:data:`LAYOUTS`):

- MiT layouts, converted to the original SegFormer names of :class:`~tscd.models.mit.MixVisionTransformer`
  (:func:`to_segformer_layout`): Hugging Face transformers SegFormer (``segformer.encoder.*`` of
  ``SegformerForSemanticSegmentation``/``ForImageClassification``, ``encoder.*`` of
  ``SegformerModel``, and transformers 5's in-memory ``stages.*`` names), mmseg 1.x MiT
  (``backbone.layers.{i}.{0,1,2}.*``, converted by ``mit2mmseg.py`` or trained by mmseg) and the
  SegFormer repository's mmseg 0.x files (``backbone.patch_embed1.*``). Their decode heads and
  classifiers are dropped. Separate query/key/value projections become MiT's ``q`` and fused
  ``kv`` (keys first, then values, head-major as MiT reshapes them); mmseg's
  ``nn.MultiheadAttention`` ``in_proj`` (q, k, v stacked) is split the same way, and its Mix-FFN
  1×1 convolutions become linear layers.
- timm ViTs (:func:`to_timm_vit`): a timm, original DINOv2 or OpenAI-CLIP state dict goes
  through timm's own ``checkpoint_filter_fn`` for the target model (positional embeddings
  resampled to its grid), and the ImageNet classifier is dropped.

A remote source (:func:`fetch`) is only contacted when asked (``model.pretrained=hf-hub:…`` or
``timm:…``), through huggingface_hub's cache, so a file downloaded once works offline.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["LAYOUTS", "PretrainedSourceError", "error_line", "fetch", "is_remote", "timm_vit",
           "to_segformer_layout", "to_timm_vit"]

#: The layouts ``load_checkpoint`` recognises: name -> what identifies it.
LAYOUTS = {
    "tscd": "tscd/AFA/TSCD checkpoints (encoder.*, decoder.*, classifier.*, attn_proj.*) or the target's own keys",
    "segformer": "original SegFormer/MiT backbone (patch_embed1.proj.weight, block1.0.attn.q.weight, …)",
    "hf-segformer": "Hugging Face transformers SegFormer (segformer.encoder.* or encoder.patch_embeddings.*)",
    "mmseg": "mmseg MiT (backbone.layers.0.0.projection.weight, …) or SegFormer-repo mmseg (backbone.patch_embed1.*)",
    "timm": "timm / DINOv2 / OpenAI-CLIP ViT (cls_token, blocks.0.attn.qkv.weight, …) into a timm ViT encoder",
}

REMOTE_PREFIXES = ("hf-hub:", "timm:")
_HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what a transformers/timm hub repository holds


class PretrainedSourceError(ValueError):
    """A remote source (``hf-hub:``/``timm:``) that cannot be fetched: one line naming it, what was
    tried, and how to get the file by hand."""


class _Layout:
    """A foreign MiT layout: the keys that identify it, the prefix its encoder keys carry, the
    prefixes of the parts tscd drops (decode heads, classifiers), and its names per stage and
    inside a block."""

    def __init__(self, name: str, sentinel: str, prefix: str, drop: tuple[str, ...],
                 stage_rules: tuple[tuple[str, str], ...], block_renames: tuple[tuple[str, str], ...]):
        self.name = name
        self.sentinel = re.compile(sentinel)
        self.prefix = re.compile(prefix)
        self.drop = drop
        self.stage_rules = tuple((re.compile(pattern), template) for pattern, template in stage_rules)
        self.block_renames = block_renames

    def matches(self, state: Mapping[str, torch.Tensor]) -> bool:
        return any(self.sentinel.fullmatch(k) for k in state)

    def rename(self, key: str) -> str | None:
        """The intermediate MiT name of ``key`` (``attn.k``/``attn.v``/``attn.qkv`` still separate), or None."""
        key = self.prefix.sub("", key, count=1)
        for pattern, template in self.stage_rules:
            found = pattern.fullmatch(key)
            if not found:
                continue
            parts = found.groupdict()
            if "s" in parts:
                parts["s"] = int(parts["s"]) + 1  # MiT numbers its stages from 1
            if "m" in parts:  # a parameter inside a block: rename its module path
                old, new = next(((o, n) for o, n in self.block_renames if parts["m"].startswith(o)), (None, None))
                if old is None:
                    return None
                parts["m"] = new + parts["m"][len(old):]
            return template.format(**parts)
        return None


_STAGE_HF = (
    # transformers ≤ 4 and the files on the hub (transformers 5 writes these names back on save)
    (r"patch_embeddings\.(?P<s>\d+)\.proj\.(?P<p>\w+)", "patch_embed{s}.proj.{p}"),
    (r"patch_embeddings\.(?P<s>\d+)\.layer_norm\.(?P<p>\w+)", "patch_embed{s}.norm.{p}"),
    (r"block\.(?P<s>\d+)\.(?P<j>\d+)\.(?P<m>.+)", "block{s}.{j}.{m}"),
    (r"layer_norm\.(?P<s>\d+)\.(?P<p>\w+)", "norm{s}.{p}"),
    # transformers 5's module names (a state_dict() saved with torch.save)
    (r"stages\.(?P<s>\d+)\.patch_embeddings\.proj\.(?P<p>\w+)", "patch_embed{s}.proj.{p}"),
    (r"stages\.(?P<s>\d+)\.patch_embeddings\.layer_norm\.(?P<p>\w+)", "patch_embed{s}.norm.{p}"),
    (r"stages\.(?P<s>\d+)\.blocks\.(?P<j>\d+)\.(?P<m>.+)", "block{s}.{j}.{m}"),
    (r"stages\.(?P<s>\d+)\.layer_norm\.(?P<p>\w+)", "norm{s}.{p}"),
)
_BLOCK_HF = (
    ("layer_norm_1.", "norm1."), ("layernorm_before.", "norm1."),
    ("attention.self.query.", "attn.q."), ("attention.q_proj.", "attn.q."),
    ("attention.self.key.", "attn.k."), ("attention.k_proj.", "attn.k."),
    ("attention.self.value.", "attn.v."), ("attention.v_proj.", "attn.v."),
    ("attention.self.sr.", "attn.sr."), ("attention.sequence_reduction.sequence_reduction.", "attn.sr."),
    ("attention.self.layer_norm.", "attn.norm."), ("attention.sequence_reduction.layer_norm.", "attn.norm."),
    ("attention.output.dense.", "attn.proj."), ("attention.o_proj.", "attn.proj."),
    ("layer_norm_2.", "norm2."), ("layernorm_after.", "norm2."),
    ("mlp.dense1.", "mlp.fc1."), ("mlp.fc1.", "mlp.fc1."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
    ("mlp.dense2.", "mlp.fc2."), ("mlp.fc2.", "mlp.fc2."),
)
_STAGE_MMSEG = (
    (r"layers\.(?P<s>\d+)\.0\.projection\.(?P<p>\w+)", "patch_embed{s}.proj.{p}"),
    (r"layers\.(?P<s>\d+)\.0\.norm\.(?P<p>\w+)", "patch_embed{s}.norm.{p}"),
    (r"layers\.(?P<s>\d+)\.1\.(?P<j>\d+)\.(?P<m>.+)", "block{s}.{j}.{m}"),
    (r"layers\.(?P<s>\d+)\.2\.(?P<p>\w+)", "norm{s}.{p}"),
)
_BLOCK_MMSEG = (
    ("norm1.", "norm1."), ("norm2.", "norm2."),
    ("attn.attn.in_proj_", "attn.qkv."),  # in_proj_weight / in_proj_bias: q, k, v stacked
    ("attn.attn.out_proj.", "attn.proj."),
    ("attn.sr.", "attn.sr."), ("attn.norm.", "attn.norm."),
    ("ffn.layers.0.", "mlp.fc1."), ("ffn.layers.1.", "mlp.dwconv.dwconv."), ("ffn.layers.4.", "mlp.fc2."),
)
_STAGE_SAME = ((r"(?P<rest>(?:patch_embed|block|norm)\d.*)", "{rest}"),)

_MIT_LAYOUTS = (
    _Layout("hf-segformer", r"(segformer\.)?(encoder\.patch_embeddings\.0|stages\.0\.patch_embeddings)\.proj\.weight",
            r"^(segformer\.)?(encoder\.)?", ("decode_head.", "classifier."), _STAGE_HF, _BLOCK_HF),
    _Layout("mmseg", r"backbone\.layers\.0\.0\.projection\.weight", r"^backbone\.",
            ("decode_head.", "auxiliary_head."), _STAGE_MMSEG, _BLOCK_MMSEG),
    _Layout("mmseg", r"backbone\.patch_embed1\.proj\.weight", r"^backbone\.",
            ("decode_head.", "auxiliary_head."), _STAGE_SAME, ()),
)


def _fuse_attention(renamed: dict[str, torch.Tensor], original: dict[str, str]) -> dict[str, torch.Tensor]:
    """MiT's ``attn.q`` and fused ``attn.kv`` from separate ``attn.k``/``attn.v`` (kv = [k; v]) or
    from a stacked ``attn.qkv`` ([q; k; v]); 1×1-conv Mix-FFN weights as linear weights. A tensor
    that cannot be converted keeps its original name (so a strict load names it)."""
    out = {}
    for key, value in renamed.items():
        head, _, param = key.rpartition(".")
        if head.endswith("attn.k") or head.endswith("attn.v"):
            base = head[: -len("k")]
            k, v = renamed.get(f"{base}k.{param}"), renamed.get(f"{base}v.{param}")
            if k is None or v is None or k.shape[1:] != v.shape[1:]:
                out[original[key]] = value
            elif head.endswith("attn.k"):
                out[f"{base}kv.{param}"] = torch.cat([k, v], dim=0)
        elif head.endswith("attn.qkv"):
            if value.shape[0] % 3:
                out[original[key]] = value
            else:
                dim = value.shape[0] // 3
                out[f"{head[:-len('qkv')]}q.{param}"] = value[:dim]
                out[f"{head[:-len('qkv')]}kv.{param}"] = value[dim:]
        elif re.search(r"mlp\.fc[12]\.weight$", key) and value.dim() == 4 and value.shape[2:] == (1, 1):
            out[key] = value.flatten(1)
        else:
            out[key] = value
    return out


def to_segformer_layout(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor], list[str]] | None:
    """``(layout, state in MiT's names, dropped keys)`` for a Hugging Face or mmseg SegFormer
    state dict, None for any other layout. Keys the layout does not know keep their names, so a
    strict load reports them: nothing is left out silently."""
    layout = next((lay for lay in _MIT_LAYOUTS if lay.matches(state)), None)
    if layout is None:
        return None
    dropped = sorted(k for k in state if k.startswith(layout.drop))
    renamed, original = {}, {}
    for key, value in state.items():
        if key.startswith(layout.drop):
            continue
        new = layout.rename(key) or key
        renamed[new], original[new] = value, key
    return layout.name, _fuse_attention(renamed, original), dropped


def timm_vit(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The timm VisionTransformer a checkpoint in timm's layout goes into, and its name: the
    ``encoder.vit`` of a TSCD model, the ``vit`` of a bare encoder, or ``model`` itself."""
    from timm.models.vision_transformer import VisionTransformer

    for name, module in (("encoder.vit", getattr(getattr(model, "encoder", None), "vit", None)),
                         ("vit", getattr(model, "vit", None)), ("model", model)):
        if isinstance(module, VisionTransformer):
            return module, name
    return None


def to_timm_vit(state: Mapping[str, torch.Tensor], vit: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(state for vit, dropped keys)``: ``state`` (timm, original DINOv2 or OpenAI-CLIP layout)
    through timm's ``checkpoint_filter_fn`` for ``vit`` (which converts the foreign layouts and
    resamples the positional embedding to vit's grid); the classifier named by vit's pretrained
    config (``head``) is dropped when vit has none."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    filtered = checkpoint_filter_fn(dict(state), vit)
    classifier = (getattr(vit, "pretrained_cfg", None) or {}).get("classifier") or "head"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    own = vit.state_dict()
    dropped = sorted(k for k in filtered if k not in own and any(k == h or k.startswith(f"{h}.") for h in heads))
    return {k: v for k, v in filtered.items() if k not in dropped}, dropped


def is_remote(spec) -> bool:
    """Whether ``spec`` names a remote source (``hf-hub:repo[@revision]`` or ``timm:model_name``)."""
    return isinstance(spec, str) and spec.startswith(REMOTE_PREFIXES)


def _hub_files(spec: str) -> tuple[str, str | None, tuple[str, ...]]:
    """(repository, revision, candidate file names) of a remote source."""
    kind, _, name = spec.partition(":")
    if kind == "hf-hub":
        repo, _, revision = name.partition("@")
        if not repo:
            raise PretrainedSourceError(f"{spec}: expected hf-hub:owner/name or hf-hub:owner/name@revision")
        return repo, revision or None, _HUB_WEIGHTS
    from timm.models import get_pretrained_cfg, is_model

    arch = name.partition(".")[0]
    if not name or not is_model(arch):
        raise PretrainedSourceError(f"{spec}: timm has no model {arch!r} (see timm.list_pretrained())")
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as err:  # an unknown tag
        raise PretrainedSourceError(f"{spec}: {err} (see timm.list_pretrained('{arch}*'))") from None
    if cfg is None or not cfg.hf_hub_id:
        where = f" (its weights: {cfg.url})" if cfg is not None and cfg.url else ""
        raise PretrainedSourceError(f"{spec}: timm names no Hugging Face hub file for {name}{where}; "
                                    f"download the weights and pass model.pretrained=PATH")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    return repo, revision or None, (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_WEIGHTS


def error_line(err: BaseException) -> str:
    """``Type: the first line of its message`` (``Type`` alone for an empty one), for one-line errors."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def fetch(spec: str) -> Path:
    """The local file of the remote source ``spec``, offline-first: a file in huggingface_hub's
    cache (``HF_HOME``) is used without asking the hub; otherwise it is downloaded into the cache,
    unless ``HF_HUB_OFFLINE=1``.

    ``hf-hub:owner/name[@revision]`` takes the repository's ``model.safetensors``, else its
    ``pytorch_model.bin``; ``timm:name`` the hub file of timm's pretrained config for ``name``.
    Raises :class:`PretrainedSourceError` (one line: the source, the files tried and why they
    failed, how to download one by hand) when no file can be had.
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo, revision, files = _hub_files(spec)
    for filename in files:
        try:
            return Path(huggingface_hub.hf_hub_download(repo, filename, revision=revision, local_files_only=True))
        except EntryNotFoundError:  # LocalEntryNotFoundError included: not in the cache
            pass
    why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else ""
    answers = []
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings: the error below says what failed
    try:
        for filename in files if not why else ():
            try:
                return Path(huggingface_hub.hf_hub_download(repo, filename, revision=revision))
            except LocalEntryNotFoundError as err:  # not cached, and the hub did not answer
                cause = err.__cause__ or err.__context__
                why = f"the hub cannot be reached ({error_line(cause) if cause else 'no connection'})"
                break
            except EntryNotFoundError:
                answers.append(f"{filename} is not in the repository")
            except RepositoryNotFoundError:
                answers.append(f"no repository {repo} (or it is private or gated)")
                break
            except (OSError, ValueError) as err:  # HTTP and revision errors
                answers.append(f"{filename}: {error_line(err)}")
    finally:
        hub_logger.setLevel(level)
    why = why or "the hub answered: " + ", ".join(answers)
    at = f"{repo}@{revision}" if revision else repo
    url = f"https://huggingface.co/{repo}/resolve/{revision or 'main'}/{files[0]}"
    raise PretrainedSourceError(
        f"cannot get the weights of {spec}: {' or '.join(files)} of {at} is not in the cache {constants.HF_HUB_CACHE} "
        f"and {why}; download {url} on a machine with a network and pass model.pretrained=PATH")
