"""Training configuration: nested defaults, YAML files and ``key=value`` overrides.

A configuration is a tree of plain values. :data:`DEFAULTS` holds every key that exists;
a YAML file or an override may only change existing keys (an unknown key is an error that
names it), so a typo never silently does nothing. Values of overrides are parsed as YAML
(``optim.lr=4e-4``, ``model.stride=[4,2,1,1]``, ``refine.mode=par``).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; this loader reads it as a float too."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$""", re.X),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "work_dir": "runs/default",
    "data": {
        "name": "synthetic",  # a name of tscd.data.DATASETS
        "root": None,
        "train_split": "train",
        "val_split": "val",
        "num_classes": 6,  # K, background included
        "batch_size": 16,  # per process
        "num_workers": 0,
        "crop_size": 64,
        "scale_range": [1.0, 1.0],  # random rescale of §9 ([0.5, 2.0] for VOC)
        "flip": True,
        "color_jitter": 0.0,  # strength of brightness/contrast/saturation jitter; 0 = off
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "label_file": None,  # optional .npy dict name -> class vector (VOC); else from masks
        "synthetic": {
            "image_size": 64,
            "num_train": 100000,  # fresh images: index -> image, never stored
            "num_val": 200,
            "max_objects": 3,
            "radius": [0.13, 0.24],  # object size range, as a fraction of the image size
            "clutter": 6,  # at most this many distractor strokes/blobs per background
            "textures": "random",  # random: any texture on any shape | class: a texture family per class
            "seed": 0,
        },
    },
    "model": {
        "backbone": "mit_b1",
        "stride": [4, 2, 2, 1],
        "pooling": "gmp",  # gmp | gap | topk
        "topk_ratio": 0.25,  # fraction of positions averaged by topk pooling
        "drop_path_rate": 0.1,
        "embedding_dim": 256,
        "pretrained": None,
    },
    "cam": {
        "scales": [1.0, 0.5, 1.5],  # multi-scale CAM of §2 (each with its flip)
        "high": 0.55,
        "low": 0.35,
        "bkg_score": 0.45,  # plain CAM labels for evaluation (§3)
    },
    "refine": {
        "mode": "varm",  # varm | par | none
        "num_iter": 10,
        "dilations": [1, 2, 4, 8, 12, 24],
        "scale": 0.5,  # refinement runs at this fraction of the crop size (§4)
    },
    "loss": {
        "stage1_iters": 2000,  # iterations <= this: L_cls only (§9)
        "cls": 1.0,
        "seg": 0.1,
        "dense": 0.01,
        "aff": 0.1,
        "scd": 0.1,
        "er": 0.1,
        "er_released": False,  # True: the released code's inert ER (no gradient, first fg channel dropped)
        # The exact dense energy sum is ~1/0.58 of the released lattice's, whose weight was 1e-7 (§8).
        "dense_weight": 5.8e-8,
        "dense_sigma_rgb": 15.0,
        "dense_sigma_xy": 100.0,
        "dense_scale": 0.5,
        "scd_samples": 40,  # sampled positions per side; ignored when scd_dense
        "scd_dense": False,
        "scd_scale": 0.3,  # the second view of §6
        "aff_radius": 8,
    },
    "optim": {
        "lr": 6e-5,
        "head_lr_mult": 10.0,  # lr multiplier of the classifier + attn_proj and decoder groups (§1)
        "norm_lr_mult": 0.0,  # lr multiplier of the encoder's LayerNorms (§1 freezes them: 0)
        "betas": [0.9, 0.999],
        "weight_decay": 0.01,
        "eps": 1e-8,
        "warmup_iters": 1500,
        "warmup_ratio": 1e-6,
        "power": 1.0,
    },
    "train": {
        "max_iters": 20000,
        "log_interval": 20,
        "eval_interval": 2000,
        "ckpt_interval": 5000,
        "device": "auto",  # auto | cpu | cuda
        "backend": "auto",  # tscd.ops backend for every op (sets TSCD_BACKEND)
        "bf16": False,  # autocast in bfloat16 (CUDA only)
        "num_threads": 0,  # torch.set_num_threads; 0 = leave as is
    },
    "eval": {
        "batch_size": 1,
        "max_images": None,  # evaluate a prefix of the split (None = all)
        "num_vis": 6,  # rows of the PNG grid
        # `tscd eval` protocol (tscd.engine.inference.EvalProtocol; training-time checks are single-scale)
        "scales": [1.0],  # segmentation scales, max over scales (spec §10: [1.0, 0.5, 0.75])
        "flip": False,  # average each scale's logits with the un-flipped logits of the flipped image
        "crf": "none",  # auto | exact | pydensecrf | none: dense CRF on the final probabilities
        "resize_long": None,  # resize the image so its long side is this (spec §10: 512)
    },
}


class ConfigError(ValueError):
    """A configuration file or override that cannot be used (the message names the key)."""


class Config(dict):
    """A dict with attribute access to its keys (``cfg.optim.lr``); nested dicts are Configs."""

    def __init__(self, tree: dict | None = None):
        super().__init__()
        for key, value in (tree or {}).items():
            self[key] = Config(value) if isinstance(value, dict) else value

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}


def _checked(old: Any, value: Any, path: str, source: str) -> Any:
    """``value`` if its type fits the default ``old`` (ints are accepted for floats)."""
    if old is None or value is None:
        return value
    number = (int, float)
    if isinstance(old, bool) or isinstance(value, bool):
        ok = isinstance(old, bool) and isinstance(value, bool)
    elif isinstance(old, number):
        ok = isinstance(value, number)
        value = float(value) if ok and isinstance(old, float) else value
    else:
        ok = isinstance(value, type(old))
    if not ok:
        raise ConfigError(f"{source}: '{path}' expects a {type(old).__name__}, got {value!r}")
    return value


def _merge(base: dict, update: dict, source: str, prefix: str = "") -> None:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{source}: unknown config key '{path}'")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{path}' is a section, expected a mapping, got {value!r}")
            _merge(base[key], value, source, path + ".")
        else:
            base[key] = _checked(base[key], value, path, source)


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", yaml value)``."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = _yaml(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_key(tree: dict, dotted: str, value: Any, source: str = "override") -> None:
    """Set an existing entry ``a.b.c`` of ``tree``; unknown keys raise :class:`ConfigError`."""
    node, parts = tree, dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{source}: unknown config key '{'.'.join(parts[: i + 1])}'")
        if i == len(parts) - 1:
            if isinstance(node[part], dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: '{dotted}' is a section, not a value")
                _merge(node[part], value, source, dotted + ".")
            else:
                node[part] = _checked(node[part], value, dotted, source)
        else:
            node = node[part]


def builtin_config_dir() -> Path:
    """The shipped ``configs/`` folder (next to the package in a checkout or editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"cannot find the built-in configs next to {here}")


def resolve_config_path(name: str | Path) -> Path:
    """A path to a YAML file, or the name of a built-in config (``synthetic``, ``voc``, ``coco``)."""
    path = Path(name)
    if path.is_file():
        return path
    if path.suffix == "" and path.parent == Path("."):
        builtin = builtin_config_dir() / f"{name}.yaml"
        if builtin.is_file():
            return builtin
    raise ConfigError(f"config file not found: {name}")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, updated by the YAML file ``path`` (if any), then by ``key=value`` overrides."""
    tree = copy.deepcopy(DEFAULTS)
    if path is not None:
        file = resolve_config_path(path)
        try:
            loaded = _yaml(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{file}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level")
        _merge(tree, loaded, str(file))
    for text in overrides:
        key, value = parse_override(text)
        set_key(tree, key, value)
    return Config(tree)


def config_from_dict(tree: dict) -> Config:
    """A Config from a stored dict (e.g. a checkpoint's), filled up with today's defaults."""
    merged = copy.deepcopy(DEFAULTS)
    _merge(merged, tree, "stored config")
    return Config(merged)
