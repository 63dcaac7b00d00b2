"""Training configuration: a typed dataclass schema, YAML files and ``key=value`` overrides.

:class:`TSCDConfig` and its section dataclasses are the schema: every key, its type and its
default. A config is built in an OmegaConf structured config from the defaults, a YAML file,
``overrides`` and ``values``, and handed out as a plain :class:`TSCDConfig` (real lists). Rules:

* an unknown key is a :class:`ConfigError` that names the source (the file, ``override``,
  ``value``, ``stored config``) and the dotted key, so a typo never silently does nothing;
* a value must have its field's Python type, list elements included: an int is accepted (and
  stored) for a float, but bools and numbers never stand for each other and a string is never
  converted (OmegaConf alone would take ``"3e-4"`` for a float, ``1`` for a bool and ``5`` for
  ``"5"``, so values are checked first); a section takes a mapping of its keys;
* override values (``"dotted.key=value"``) are YAML (``optim.lr=1e-3``, ``model.stride=[4,2,1,1]``,
  ``eval.max_images=null``), except for string fields, which take the text after ``=`` literally
  (``data.root=my data #1``; ``yes`` and ``2024-01-01`` stay strings; empty: None if optional);
* ``values`` (dotted key -> Python value, e.g. command-line flags) are assigned as given;
* strings are never interpolated: ``${...}`` stays as written;
* the finished config's numbers must lie in their valid ranges (:data:`VALID_VALUES`: intervals
  >= 1, probabilities in [0, 1], sigmas > 0 and finite, 3 means and stds ...), else a
  :class:`ConfigError` names the key and the range: a bad value stops a run before it starts.
"""
import importlib.resources
import math
import re
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Union, get_args, get_origin, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf

from .constants import DEFAULT_CRF_PRESET, IMAGENET_MEAN, IMAGENET_STD, LOSS_TERMS


def _list(*items: Any) -> Any:
    return field(default_factory=lambda: list(items))


@dataclass
class SyntheticConfig:
    image_size: int = 64
    num_train: int = 100000  # fresh images: index -> image, never stored
    num_val: int = 200
    max_objects: int = 3
    radius: List[float] = _list(0.13, 0.24)  # object size range, as a fraction of the image size
    clutter: int = 6  # at most this many distractor strokes/blobs per background
    textures: str = "random"  # random: any texture on any shape | class: a texture family per class
    seed: int = 0


@dataclass
class DataConfig:
    name: str = "synthetic"  # a name of tscd.data.DATASETS
    root: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    # K, background included; None: the dataset's (synthetic 6, voc 21, coco 81, folder 1 + the
    # lines of classes.txt: tscd.data.dataset_num_classes); a value given must equal it
    num_classes: Optional[int] = None
    batch_size: int = 16  # per process
    num_workers: int = 0
    crop_size: int = 64
    scale_range: List[float] = _list(1.0, 1.0)  # random rescale of §9 ([0.5, 2.0] for VOC)
    flip: bool = True
    color_jitter: float = 0.0  # strength of brightness/contrast/saturation jitter; 0 = off
    mean: List[float] = _list(*IMAGENET_MEAN)
    std: List[float] = _list(*IMAGENET_STD)
    label_file: Optional[str] = None  # optional .npy dict name -> class vector (VOC); else from masks
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    # mit_b0 … mit_b5 | hybrid_b0 | hybrid_tiny | the timm name of a ViT (vit_base_patch16_224, vit_base_patch14_dinov2,
    # vit_base_patch16_clip_224.openai …: tscd.models.vit)
    backbone: str = "mit_b1"
    stride: List[int] = _list(4, 2, 2, 1)  # per-stage strides of MiT/hybrid; a ViT takes only the default
    pooling: str = "gmp"  # gmp | gap | topk
    topk_ratio: float = 0.25  # fraction of positions averaged by topk pooling
    drop_path_rate: float = 0.1
    embedding_dim: int = 256
    pretrained: Optional[str] = None
    # train the decoder, classifier and attn_proj on a frozen encoder (kept in eval mode, run
    # without autograd): the frozen-CLIP recipe
    freeze_backbone: bool = False


@dataclass
class CamConfig:
    scales: List[float] = _list(1.0, 0.5, 1.5)  # multi-scale CAM of §2 (each with its flip)
    flip: bool = True  # run each scale with its horizontal flip too (§2; false: half the no-grad passes)
    # training: the teachers' un-flipped scale-1 CAMs come from the step's own forward (detached), one
    # encoder pass per view fewer; exact when the forward is deterministic (drop_path_rate 0; with BatchNorm,
    # cam.flip false)
    reuse_forward: bool = False
    high: float = 0.55
    low: float = 0.35
    bkg_score: float = 0.45  # plain CAM labels for evaluation (§3)


@dataclass
class RefineConfig:
    mode: str = "varm"  # varm | par | none
    num_iter: int = 10
    dilations: List[int] = _list(1, 2, 4, 8, 12, 24)
    scale: float = 0.5  # refinement runs at this fraction of the crop size (§4)


@dataclass
class LossConfig:
    stage1_iters: int = 2000  # iterations <= this: L_cls only (§9)
    cls: float = 1.0
    seg: float = 0.1
    dense: float = 0.01
    aff: float = 0.1
    scd: float = 0.1
    er: float = 0.1
    er_released: bool = False  # True: the released code's inert ER (no gradient, first fg channel dropped)
    dense_weight: float = 5.8e-8  # the released 1e-7 × LATTICE_SCALE, tscd.losses.DenseEnergyLoss's default (§8)
    dense_sigma_rgb: float = 15.0
    dense_sigma_xy: float = 100.0
    dense_scale: float = 0.5
    scd_samples: int = 40  # sampled positions per side; ignored when scd_dense
    scd_dense: bool = False
    scd_scale: float = 0.3  # the second view of §6
    aff_radius: int = 8


@dataclass
class OptimConfig:
    lr: float = 6e-5
    head_lr_mult: float = 10.0  # lr multiplier of the classifier + attn_proj and decoder groups (§1)
    decoder_lr_mult: Optional[float] = None  # the decoder group's own multiplier (None: head_lr_mult)
    norm_lr_mult: float = 0.0  # lr multiplier of the encoder's LayerNorms (§1 freezes them: 0)
    betas: List[float] = _list(0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0


@dataclass
class TrainConfig:
    max_iters: int = 20000
    log_interval: int = 20
    eval_interval: int = 2000
    ckpt_interval: int = 5000
    # also save checkpoints/last.pth once this many minutes of training passed since the last save
    # (at the end of an iteration); 0 = off
    ckpt_minutes: float = 30.0
    # bit-identical runs for one config, seed and machine: torch.use_deterministic_algorithms(True)
    # while training (+ CUBLAS_WORKSPACE_CONFIG=:4096:8 on CUDA); tscd's own kernels use no atomics.
    # An op torch cannot run deterministically stops the run naming it: on CUDA, torch has no
    # deterministic backward of bilinear interpolation (SegFormer head, losses), so this is CPU-only
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda
    backend: str = "auto"  # tscd.ops backend of the ops every module of the run builds (auto | torch | triton | cpp)
    bf16: bool = False  # autocast in bfloat16 (CUDA only)
    num_threads: int = 0  # torch.set_num_threads; 0 = leave as is


@dataclass
class EvalConfig:
    batch_size: int = 1
    max_images: Optional[int] = None  # evaluate a prefix of the split (None = all)
    num_vis: int = 6  # rows of the PNG grid
    # `tscd eval` protocol (tscd.engine.inference.EvalProtocol; training-time checks are single-scale)
    scales: List[float] = _list(1.0)  # segmentation scales, max over scales (method §10: [1.0, 0.5, 0.75])
    flip: bool = False  # average each scale's logits with the un-flipped logits of the flipped image
    crf: str = "none"  # auto | exact | lattice | pydensecrf | none: dense CRF on the final probabilities
    crf_preset: str = DEFAULT_CRF_PRESET  # its settings (constants.CRF_PRESETS): afa | toco | seco | excel | weclip
    resize_long: Optional[int] = None  # resize the image so its long side is this (method §10: 512)
    # also the CAM, refined-label and random-walk mIoUs (the multi-scale CAM's passes); false: the
    # protocol's segmentation outputs alone, one protocol forward per image (training's checks keep them)
    cam_metrics: bool = True


@dataclass
class TSCDConfig:
    seed: int = 0
    work_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class ConfigError(ValueError):
    """A configuration file, override or value that cannot be used (the message names the key)."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; this loader reads it as a float too."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$""", re.X),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _field_type(key: str, source: str) -> Any:
    """The declared type of the dotted ``key`` (a dataclass for a section); unknown keys raise."""
    tp: Any = TSCDConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part not in (fields := get_type_hints(tp) if is_dataclass(tp) else {}):
            raise ConfigError(f"{source}: unknown config key '{'.'.join(parts[: i + 1])}'")
        tp = fields[part]
    return tp


def _typed(tp: Any, value: Any, key: str, source: str) -> Any:
    """``value`` as a plain instance of the declared type ``tp``, which it must have (ints pass as floats)."""
    if get_origin(tp) is Union:  # Optional[X]
        if value is None:
            return None
        tp = get_args(tp)[0]
    if get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' expects a list, got {value!r}")
        return [_typed(get_args(tp)[0], item, key, source) for item in value]
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, (int, float) if tp is float else tp):
        raise ConfigError(f"{source}: '{key}' expects a {tp.__name__}, got {value!r}")
    return tp(value)


def _assign(node: DictConfig, key: str, value: Any, source: str) -> None:
    tp = _field_type(key, source)
    if is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' is a section, expected a mapping, got {value!r}")
        _merge(node, value, source, key + ".")
        return
    value = _typed(tp, value, key, source)
    if isinstance(value, str):  # escaped, or OmegaConf would resolve "${...}" as an interpolation
        value = re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + "\\${", value)
    OmegaConf.update(node, key, value)


def _merge(node: DictConfig, tree: Mapping, source: str, prefix: str = "") -> None:
    for key, value in tree.items():
        _assign(node, f"{prefix}{key}", value, source)


def _parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)``: YAML, or the literal text for a string field."""
    key, eq, raw = text.partition("=")
    if not eq:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key = key.strip()
    tp = _field_type(key, "override")
    if tp in (str, Optional[str]):
        return key, raw if raw or tp is str else None
    try:
        return key, _yaml(raw)
    except yaml.YAMLError:
        return key, raw  # rejected by the type check, which names the key


def _build(tree: Mapping[str, Any], source: str, overrides: Iterable[str] = (),
           values: Optional[Mapping[str, Any]] = None) -> DictConfig:
    """The defaults, updated by the nested mapping ``tree``, ``key=value`` overrides, then ``values``."""
    node = OmegaConf.structured(TSCDConfig)
    _merge(node, tree, source)
    for text in overrides:
        _assign(node, *_parse_override(text), "override")
    _merge(node, values or {}, "value")
    return node


def builtin_config_dir() -> Path:
    """The shipped YAML configs, ``tscd/configs``."""
    return Path(str(importlib.resources.files("tscd") / "configs"))


def resolve_config_path(name: Union[str, Path]) -> Path:
    """A path to a YAML file, or a built-in config's name (``synthetic``, ``voc``, ``coco``, ``folder``)."""
    path = Path(name)
    if path.is_file():
        return path
    builtin = builtin_config_dir() / f"{name}.yaml"
    if path.suffix == "" and path.parent == Path(".") and builtin.is_file():
        return builtin
    if path.is_dir():
        raise ConfigError(f"config {name} is a folder, not a YAML file (or the name of a built-in config: "
                          f"{', '.join(sorted(p.stem for p in builtin_config_dir().glob('*.yaml')))})")
    raise ConfigError(f"config file not found: {name}")


def read_text(path: Union[str, Path], what: str, error: Optional[type] = None) -> str:
    """The UTF-8 text of ``path``, a leading byte order mark dropped (Excel's "CSV UTF-8" writes
    one): the rule of every text file tscd reads (configs; a dataset's lists, CSVs, class and
    label files, through :func:`tscd.data.base.read_text`). A missing or unreadable file, or
    another encoding (Latin-1 and the other 8-bit encodings cannot be told apart from the bytes,
    and a guessed name would be silently wrong), raises ``error`` (default :class:`ConfigError`)
    naming the file as ``what`` and, for the encoding, the line and the byte."""
    error = error or ConfigError
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(f"{path} line {line}: not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); "
                    f"save the {what} as UTF-8") from None


def load_config(path: Union[str, Path, None] = None, overrides: Iterable[str] = (),
                values: Optional[Mapping[str, Any]] = None) -> TSCDConfig:
    """The defaults, updated by the YAML file ``path`` (if any), ``key=value`` overrides, then ``values``."""
    file = None if path is None else resolve_config_path(path)
    try:
        tree = _yaml(read_text(file, "config file")) if file else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(tree, (Mapping, type(None))):
        raise ConfigError(f"{file}: expected a mapping at the top level, got {type(tree).__name__}")
    return _finish(_build(tree or {}, str(file), overrides, values))


def config_from_dict(tree: Mapping[str, Any]) -> TSCDConfig:
    """A config from a stored nested dict (e.g. a checkpoint's), filled up with today's defaults."""
    return _finish(_build(tree, "stored config"))


def apply(cfg: TSCDConfig, overrides: Iterable[str] = (),
          values: Optional[Mapping[str, Any]] = None) -> TSCDConfig:
    """A new config: ``cfg`` updated by ``key=value`` overrides, then ``values`` (``cfg`` is unchanged)."""
    return _finish(_build(asdict(cfg), "config", overrides, values))


def to_dict(cfg: TSCDConfig) -> dict:
    """``cfg`` as nested dicts and lists of plain values (``yaml.safe_dump``-able)."""
    return OmegaConf.to_container(_build(asdict(cfg), "config"), resolve=True)


# ---- valid values --------------------------------------------------------------------------
def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class Bounds:
    """The valid range of a number: finite, above ``low`` and below ``high`` (None: no bound),
    each bound included unless ``*_open``; ``why_high``: the reason for the upper bound, said to
    a value above it. The ranges of the config's keys and of the ops' settings
    (``tscd.ops.checks.real``)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    why_high: str = ""

    def __contains__(self, x: float) -> bool:
        return (math.isfinite(x)
                and (self.low is None or x > self.low or (x == self.low and not self.low_open))
                and (self.high is None or x < self.high or (x == self.high and not self.high_open)))

    def __str__(self) -> str:
        """``>= 1``, ``> 0``, ``in (0, 1]`` ...; empty when only finiteness is asked."""
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_number(self.low)}, "
                    f"{_number(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return ""


@dataclass(frozen=True)
class Items:
    """The valid values of a list of numbers: ``length`` items (None: one or more), each in
    ``each``, and non-decreasing if ``ordered`` (a [low, high] range)."""

    each: Bounds
    length: Optional[int] = None
    ordered: bool = False

    def __contains__(self, items: List[float]) -> bool:
        return (len(items) == self.length if self.length is not None else len(items) >= 1) \
            and all(x in self.each for x in items) and not (self.ordered and items != sorted(items))

    def __str__(self) -> str:
        count = "1 or more" if self.length is None else str(self.length)
        text = f"{count} numbers, each {self.each}" if str(self.each) else f"{count} finite numbers"
        return text + (", the first <= the second" if self.ordered else "")


_FINITE, _POSITIVE, _NON_NEGATIVE, _AT_LEAST_ONE = Bounds(), Bounds(0, low_open=True), Bounds(0), Bounds(1)
_PROBABILITY = Bounds(0, 1)
#: The longest image side a setting may ask for (crop, long side, synthetic images): at 8192 px
#: and the usual output stride 16, one image's attention affinity alone is 512⁴ float32 numbers,
#: 256 GiB.
MAX_IMAGE_SIDE = 8192
_TOO_LARGE = ("a larger image does not fit in memory (one image's attention affinity alone holds "
              "(side / output stride)⁴ numbers)")

#: dotted key -> the valid values of every number and list of numbers of the schema (None, where
#: a field is optional, is always valid)
VALID_VALUES: dict[str, Union[Bounds, Items]] = {
    "seed": Bounds(0, 2**32 - 1),  # numpy's global seed
    "data.synthetic.image_size": Bounds(1, MAX_IMAGE_SIDE, why_high=_TOO_LARGE),
    "data.synthetic.num_train": _AT_LEAST_ONE,
    "data.synthetic.num_val": _AT_LEAST_ONE,
    "data.synthetic.max_objects": _AT_LEAST_ONE,
    "data.synthetic.radius": Items(_POSITIVE, 2, ordered=True),
    "data.synthetic.clutter": _NON_NEGATIVE,
    "data.synthetic.seed": _NON_NEGATIVE,
    "data.num_classes": Bounds(2),  # the background and at least one class
    "data.batch_size": _AT_LEAST_ONE,
    "data.num_workers": _NON_NEGATIVE,
    "data.crop_size": Bounds(1, MAX_IMAGE_SIDE, why_high=_TOO_LARGE),
    "data.scale_range": Items(_POSITIVE, 2, ordered=True),
    "data.color_jitter": _NON_NEGATIVE,
    "data.mean": Items(_FINITE, 3),
    "data.std": Items(_POSITIVE, 3),
    "model.stride": Items(_AT_LEAST_ONE, 4),
    "model.topk_ratio": Bounds(0, 1, low_open=True),
    "model.drop_path_rate": Bounds(0, 1, high_open=True),
    "model.embedding_dim": _AT_LEAST_ONE,
    "cam.scales": Items(_POSITIVE),
    "cam.high": _PROBABILITY,
    "cam.low": _PROBABILITY,
    "cam.bkg_score": _PROBABILITY,
    "refine.num_iter": _NON_NEGATIVE,
    "refine.dilations": Items(_AT_LEAST_ONE),
    "refine.scale": _POSITIVE,
    "loss.stage1_iters": _NON_NEGATIVE,
    **{f"loss.{term}": _NON_NEGATIVE for term in (*LOSS_TERMS, "dense_weight")},
    "loss.dense_sigma_rgb": _POSITIVE,
    "loss.dense_sigma_xy": _POSITIVE,
    "loss.dense_scale": _POSITIVE,
    "loss.scd_samples": _AT_LEAST_ONE,
    "loss.scd_scale": _POSITIVE,
    "loss.aff_radius": _NON_NEGATIVE,
    "optim.lr": _POSITIVE,
    "optim.head_lr_mult": _NON_NEGATIVE,
    "optim.decoder_lr_mult": _NON_NEGATIVE,
    "optim.norm_lr_mult": _NON_NEGATIVE,
    "optim.betas": Items(Bounds(0, 1, high_open=True), 2),
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.eps": _NON_NEGATIVE,
    "optim.warmup_iters": _NON_NEGATIVE,
    "optim.warmup_ratio": _NON_NEGATIVE,
    "optim.power": _NON_NEGATIVE,
    "train.max_iters": _AT_LEAST_ONE,
    "train.log_interval": _AT_LEAST_ONE,
    "train.eval_interval": _AT_LEAST_ONE,
    "train.ckpt_interval": _NON_NEGATIVE,  # 0: no periodic checkpoints
    "train.num_threads": _NON_NEGATIVE,  # 0: leave as is
    "train.ckpt_minutes": _NON_NEGATIVE,  # 0: no checkpoints by wall time
    "eval.batch_size": _AT_LEAST_ONE,
    "eval.max_images": _AT_LEAST_ONE,
    "eval.num_vis": _NON_NEGATIVE,
    "eval.scales": Items(_POSITIVE),
    "eval.resize_long": Bounds(0, MAX_IMAGE_SIDE, why_high=_TOO_LARGE),  # 0: keep the size
}

#: (low, high) keys whose values must not decrease
_ORDERED_KEYS = (("cam.low", "cam.high"),)


def _value(cfg: TSCDConfig, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_order(low_name: str, low: float, high_name: str, high: float, error: type = ValueError) -> None:
    """Raise ``error`` "<low_name> (<low>) must not exceed <high_name> (<high>)" unless ``low <= high``:
    the rule of a pair of thresholds (the config's ``cam.low`` and ``cam.high``, the pseudo labels'
    ``low`` and ``high``)."""
    if not low <= high:
        raise error(f"{low_name} ({low!r}) must not exceed {high_name} ({high!r})")


def validate(cfg: TSCDConfig) -> None:
    """Raise a :class:`ConfigError` naming the key and its valid range for the first value of
    ``cfg`` outside :data:`VALID_VALUES` (or two keys of :data:`_ORDERED_KEYS` out of order)."""
    for key, valid in VALID_VALUES.items():
        value = _value(cfg, key)
        if value is None or value in valid:
            continue
        if isinstance(valid, Bounds) and not math.isfinite(value):
            raise ConfigError(f"'{key}' must be a finite number{f' {valid}' if str(valid) else ''}, got {value!r}")
        why = valid.why_high if isinstance(valid, Bounds) and valid.why_high and value > valid.high else ""
        raise ConfigError(f"'{key}' must be {valid}, got {value!r}{f': {why}' if why else ''}")
    for low, high in _ORDERED_KEYS:
        check_order(f"'{low}'", _value(cfg, low), f"'{high}'", _value(cfg, high), ConfigError)


def _finish(node: DictConfig) -> TSCDConfig:
    """The plain config built in ``node``, its values checked by :func:`validate`."""
    cfg = OmegaConf.to_object(node)
    validate(cfg)
    return cfg
